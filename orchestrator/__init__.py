"""Ray Tune, Optuna and MLflow around the trainables: two workflows over one record of a search.

- `orchestrator.search`: running a search (the driver, the replicate searcher, the worker that
  writes each trial's MLflow run, early stopping, the checks before anything starts).
- `orchestrator.promotion`: choosing a configuration, promoting its model to the registry, and
  re-evaluating a registered model.
- Shared by both, at this level: how a search is found and read in MLflow (`tracking`), the names
  it is written under (`names`), the Pareto front (`pareto`, `report`), the served model
  (`serving`), provenance, checks of stores and folders, and the one error type (`errors`).
"""
