"""After a search: choose a configuration, register its model under an alias, re-evaluate it."""
