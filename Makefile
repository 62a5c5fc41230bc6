# The two commands of the README. Both create .venv when it is missing.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: search test bench clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	touch $(STAMP)

# The quickstart search on the embedded synthetic benchmark (4 to 12 minutes on 2 cores).
search: $(STAMP)
	$(PY) run_search.py search --config search_spaces/quickstart.yaml

# Every test, the slow end-to-end group included; the 15 slowest are listed at the end.
test: $(STAMP)
	$(PY) -m pytest -q --durations=15

# The speed and search-efficiency targets, each printed as ratios measured side by side (not part of `make test`).
bench: $(STAMP)
	$(PY) bench/topk.py
	$(PY) bench/trial_throughput.py
	$(PY) bench/search_overhead.py
	$(PY) bench/scaling.py
	$(PY) bench/sampler_efficiency.py
	$(PY) bench/early_stopping.py

clean:
	rm -rf $(VENV) mlflow.db optuna.db ray_results mlruns mlartifacts pareto-*.csv pareto-*.png production.yaml
