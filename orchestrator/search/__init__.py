"""Running a search: open it (new or resumed), run Ray Tune over the replicate searcher, close it."""
