"""Every MLflow tag sweeplab writes or searches for, keys and values: the users' filter
language, in one place.

Plain names, no imports: any module (and the UI docs) can use them without loading anything.
A search in the MLflow UI reads e.g. tags.`sweeplab.role` = 'sweep'. Nothing under runner/ or
hydra_plugins/ spells a tag out itself (tests/test_tags.py keeps it that way).
"""

# ---------------------------------------------------------------- every run
OUTCOME = "outcome"  # one of the OUTCOME_* values below
OUTCOME_RUNNING = "running"  # the run's process is training (or died: see `lost`)
OUTCOME_OK = "ok"  # finished and learned (runner/outcome.py decides ok/diverged/collapsed)
OUTCOME_DIVERGED = "diverged"  # a loss or gradient went NaN/Inf: stopped at that step
OUTCOME_COLLAPSED = "collapsed"  # finite, but learned nothing
OUTCOME_KILLED = "killed"  # stopped by a signal
OUTCOME_ERROR = "error"  # raised: the reason is in ERROR, the traceback in error.txt
OUTCOME_LOST = "lost"  # its process died without closing the run (no heartbeat)
OVERRIDES = "sweeplab.overrides"  # the job's command-line overrides (credentials redacted)
TASK = "sweeplab.task"  # image_classification | language_model
CONFIG_HASH = "sweeplab.config_hash"  # the resolved config's hash: what resume matches on
PROCESS = "sweeplab.process"  # host:pid:start-time of the process writing the run
# A random key made before the run is created: a create request retried after an answer was
# lost (a server killed mid-request) finds the run it made instead of making a second one.
RUN_KEY = "sweeplab.run_key"
HEARTBEAT = "sweeplab.heartbeat"  # unix seconds, refreshed while the run's process lives
ERROR = "sweeplab.error"  # one line: why a run FAILED
LOST_ERROR_PREFIX = "lost:"  # starts ERROR on a run marked lost (`sweeplab sync` undoes it)
DATASET_SOURCE = "dataset.source"  # what was actually read

# ---------------------------------------------------------------- a sweep's child runs
PARENT_RUN = "mlflow.parentRunId"  # MLflow's own: nests the job under its sweep in the UI
SWEEP_ID = "sweeplab.sweep_id"  # the parent run's id
LAUNCHER = "sweeplab.launcher"  # the launcher that trained the job
STACKED = "sweeplab.stacked"  # how many jobs trained in this job's graph
REPLICATE = "sweeplab.replicate"  # hash of the config minus `seed`: runs that repeat a config

# ---------------------------------------------------------------- a sweep's parent run
ROLE, ROLE_SWEEP = "sweeplab.role", "sweep"
SWEEP_DIR = "sweeplab.sweep_dir"  # the parent's absolute sweep dir
SWEEP_KEY = "sweeplab.sweep_key"  # the command line's overrides, hashed: finds a sweep again
SUMMARY = "sweeplab.summary"  # e.g. "3 finished, 1 failed"
RESUMES = "sweeplab.resumes"  # how many times the sweep was resumed
JOBS = "sweeplab.jobs"  # how many job configs the report covers
REPORT_METRIC = "sweeplab.report_metric"  # what the report ranks by

# ---------------------------------------------------------------- code version
GIT_COMMIT = "mlflow.source.git.commit"  # MLflow's own; on every run and the parent
GIT_DIRTY = "sweeplab.git_dirty"  # TRUE when the checkout had uncommitted changes, else FALSE
# On a parent whose sweep was resumed at another commit: TRUE, and every commit its runs
# were made at, oldest first, space-separated.
CODE_CHANGED = "sweeplab.code_changed"
COMMITS = "sweeplab.commits"

TRUE, FALSE = "true", "false"
