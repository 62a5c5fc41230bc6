# The two commands of the README, `search` and `test`, and a contributor's faster loops.
# Each creates .venv when it is missing.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: search test test-fast lint bench clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test,lint]'
	touch $(STAMP)

# The quickstart search on the embedded synthetic benchmark (about 3 minutes on 2 cores).
search: $(STAMP)
	$(PY) run_search.py search --config search_spaces/quickstart.yaml

# Every test: the fast group on both cores, then the slow end-to-end and cluster groups one at a
# time (they start Ray, MLflow servers and clusters of their own). The slowest are listed.
test: $(STAMP)
	$(PY) -m pytest -q -m "not slow and not cluster" -n 2 --durations=10
	$(PY) -m pytest -q -m "slow or cluster" --durations=15

# Everything but the slow and cluster groups, on both cores: the loop to run after each change.
test-fast: $(STAMP)
	$(PY) -m pytest -q -m "not slow and not cluster" -n 2 --durations=10

# Style and types, as pyproject.toml configures them (ruff: lint and format; mypy).
lint: $(STAMP)
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	$(PY) -m mypy

# The speed and search-efficiency targets, each printed as ratios measured side by side (not part of `make test`).
bench: $(STAMP)
	$(PY) bench/topk.py
	$(PY) bench/trial_throughput.py
	$(PY) bench/search_overhead.py
	$(PY) bench/scaling.py
	$(PY) bench/sampler_efficiency.py
	$(PY) bench/early_stopping.py
	$(PY) bench/duplicates.py
	$(PY) bench/scale.py

clean:
	rm -rf $(VENV) mlflow.db optuna.db ray_results mlruns mlartifacts pareto-*.csv pareto-*.png production.yaml
