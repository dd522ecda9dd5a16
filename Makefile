# sweeplab: `make run` and `make test` are all a fresh machine needs (Python 3.10+ on PATH).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
CLUSTER_STAMP := $(VENV)/.cluster-installed-stamp
UI_PORT ?= 5000

.PHONY: setup run test test-slow test-all test-cluster ui bench data clean

# Recreated whenever pyproject.toml changes.
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade "pip>=23"
	$(PY) -m pip install --quiet -e ".[test]"
	touch $(STAMP)

setup: $(STAMP)

# The seed-000 study: LeNet on MNIST, no clipping vs element-wise clipping to +-0.001,
# as a 2-job sweep tracked in MLflow (outputs/mlflow.db). `make ui` shows it.
run: setup
	$(PY) -m runner -m experiment=lenet_clip

# Fast suite (< 10 min on 2 cores); slow end-to-end studies are marked and run by test-slow.
test: setup
	$(PY) -m pytest -q

test-slow: setup
	$(PY) -m pytest -q -m slow

test-all: setup
	$(PY) -m pytest -q -m "slow or not slow"

# The cluster launchers on this machine: a local Ray cluster (hydra/launcher=ray_cluster) and
# submitit's local executor, each running a 2-job sweep against a real `mlflow server` on
# 127.0.0.1. Installs the .[ray,slurm] extras first (~300 MB, once).
$(CLUSTER_STAMP): $(STAMP)
	$(PY) -m pip install --quiet -e ".[test,ray,slurm]"
	touch $(CLUSTER_STAMP)

test-cluster: $(CLUSTER_STAMP)
	$(PY) -m pytest -q -m cluster

# MLflow UI on the project's tracking store, local only.
ui: setup
	@mkdir -p outputs
	$(VENV)/bin/mlflow ui --backend-store-uri sqlite:///$(CURDIR)/outputs/mlflow.db \
	  --default-artifact-root $(CURDIR)/outputs/mlartifacts --host 127.0.0.1 --port $(UI_PORT)

# Training-loop speed, measured side by side in one run (prints ratios).
bench: setup
	$(PY) benchmarks/bench_loop.py

# Optional: full Fashion-MNIST from Debian (needs root/sudo and apt).
data:
	apt-get install -y dataset-fashion-mnist || sudo apt-get install -y dataset-fashion-mnist

clean:
	rm -rf $(VENV) outputs multirun
