# sweeplab: `make run` and `make test` are all a fresh machine needs (Python 3.10+ on PATH).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
CLUSTER_STAMP := $(VENV)/.cluster-installed-stamp
UI_TEST_STAMP := $(VENV)/.ui-test-installed-stamp
SERVER_STAMP := $(VENV)/.server-installed-stamp
UI_PORT ?= 5000

# Debian packages a target needs, installed only when CHECK fails (as root, else with sudo):
# $(call debian,CHECK,PACKAGES). No browser or database is downloaded any other way.
debian = @$(1) || { apt-get update && apt-get install -y $(2); } || \
	{ sudo apt-get update && sudo apt-get install -y $(2); }
CHROMIUM_CHECK := test -x /usr/bin/chromium -a -x /usr/bin/chromedriver
POSTGRES_CHECK := ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1

.PHONY: setup run test test-slow test-all test-cluster test-ui test-server ui bench bench-sweep \
	bench-server sweep data clean

# Recreated whenever pyproject.toml changes.
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade "pip>=23"
	$(PY) -m pip install --quiet -e ".[test]"
	touch $(STAMP)

setup: $(STAMP)

# The mission's sweep: experiment=lr_clip (LeNet on the bundled MNIST digits, 7 learning
# rates 0.00005-0.05 x 4 clipping modes = 28 jobs, one seed), trained side by side by the
# stacked launcher, then its answer: the table, the best config, where the map is (`make ui`
# shows it in MLflow). One seed is an anecdote: `make sweep` answers with five.
run: setup
	$(PY) -m runner -m experiment=lr_clip
	$(PY) -m runner report

# The same sweep with 5 seeds per config (140 jobs; replicates share graphs): n, mean, sd and
# a 95 % interval per config, and which configs cannot be told apart from the best.
sweep: setup
	$(PY) -m runner -m experiment=lr_clip 'seed=range(5)'
	$(PY) -m runner report

# Fast suite (about 7 min on 2 cores); slow end-to-end studies are marked and run by test-slow.
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

# The MLflow UI in a real browser (tests/test_ui.py): a 4-job sweep, `mlflow ui` on 127.0.0.1,
# headless Chromium driven by selenium. Chromium and its driver come from Debian (root or sudo;
# no browser download), selenium from the .[ui-test] extra. Saves docs/img/ui_*.png.
$(UI_TEST_STAMP): $(STAMP)
	$(PY) -m pip install --quiet -e ".[test,ui-test]"
	touch $(UI_TEST_STAMP)

test-ui: $(UI_TEST_STAMP)
	$(call debian,$(CHROMIUM_CHECK),chromium chromium-driver)
	$(PY) -m pytest -q -m browser

# `sweeplab server` for real (tests/test_server.py, marker `server`): Debian's PostgreSQL and
# `mlflow server --app-name sweeplab` (basic-auth) on 127.0.0.1; passwords, permissions, redaction, the
# UI's login in headless Chromium, direct postgresql+psycopg:// stores, and 4 sweeps at once
# (60 jobs, >= 200,000 metric values) while mlflow is SIGKILLed and PostgreSQL restarted.
# PostgreSQL and Chromium come from Debian (root or sudo); the driver, basic-auth's Flask-WTF
# and selenium from the .[postgres] and .[ui-test] extras. CI runs it after `make test`.
$(SERVER_STAMP): $(STAMP)
	$(PY) -m pip install --quiet -e ".[test,postgres,ui-test]"
	touch $(SERVER_STAMP)

test-server: $(SERVER_STAMP)
	$(call debian,$(POSTGRES_CHECK),postgresql)
	$(call debian,$(CHROMIUM_CHECK),chromium chromium-driver)
	$(PY) -m pytest -q -m server

# MLflow UI on the project's tracking store, local only. First prints the direct links to the
# newest sweep (MLflow 3 would otherwise open the experiment on its GenAI overview).
ui: setup
	@mkdir -p outputs
	-@$(PY) -c 'import sys; from runner.report import newest_sweep_links; \
	  print(*newest_sweep_links(sys.argv[1], sys.argv[2]), sep="\n")' \
	  sqlite:///$(CURDIR)/outputs/mlflow.db http://127.0.0.1:$(UI_PORT)
	$(VENV)/bin/mlflow ui --backend-store-uri sqlite:///$(CURDIR)/outputs/mlflow.db \
	  --default-artifact-root $(CURDIR)/outputs/mlartifacts --host 127.0.0.1 --port $(UI_PORT)

# Training-loop speed, measured side by side in one run (prints ratios).
bench: setup
	$(PY) benchmarks/bench_loop.py

# The 16-job lr x clipping sweep end to end per launcher (basic, joblib, stacked), side by
# side in one run: seconds, ratios, per-job breakdown. BENCH_SWEEP_ARGS="--steps 100" for a
# quick run.
bench-sweep: setup
	$(PY) benchmarks/bench_sweep.py $(BENCH_SWEEP_ARGS)

# The S16 sweep into sqlite and into `sweeplab server` side by side, and metric values per
# second for sqlite, the server and PostgreSQL directly (needs what `make test-server` installs).
bench-server: $(SERVER_STAMP)
	$(PY) benchmarks/bench_server.py $(BENCH_SERVER_ARGS)

# Optional: full Fashion-MNIST from Debian (needs root/sudo and apt).
data:
	apt-get install -y dataset-fashion-mnist || sudo apt-get install -y dataset-fashion-mnist

clean:
	rm -rf $(VENV) outputs multirun
