"""Every MLflow tag sweeplab writes: the users' filter language, in one place.

Plain names, no imports: any module (and the UI docs) can use them without loading anything.
A search in the MLflow UI reads e.g. tags.`sweeplab.role` = 'sweep'.
"""

# ---------------------------------------------------------------- every run
OUTCOME = "outcome"  # finished | diverged | collapsed | killed | error | lost | running
OVERRIDES = "sweeplab.overrides"  # the job's command-line overrides (credentials redacted)
TASK = "sweeplab.task"  # image_classification | language_model
CONFIG_HASH = "sweeplab.config_hash"  # the resolved config's hash: what resume matches on
HEARTBEAT = "sweeplab.heartbeat"  # unix seconds, refreshed while the run's process lives
ERROR = "sweeplab.error"  # one line: why a run FAILED
DATASET_SOURCE = "dataset.source"  # what was actually read

# ---------------------------------------------------------------- a sweep's child runs
SWEEP_ID = "sweeplab.sweep_id"  # the parent run's id
LAUNCHER = "sweeplab.launcher"  # the launcher that trained the job
STACKED = "sweeplab.stacked"  # how many jobs trained in this job's graph
REPLICATE = "sweeplab.replicate"  # hash of the config minus `seed`: runs that repeat a config

# ---------------------------------------------------------------- a sweep's parent run
ROLE, ROLE_SWEEP = "sweeplab.role", "sweep"
SWEEP_DIR = "sweeplab.sweep_dir"  # the parent's absolute sweep dir
SWEEP_KEY = "sweeplab.sweep_key"  # the command line's overrides, hashed: finds a sweep again
SUMMARY = "sweeplab.summary"
RESUMES = "sweeplab.resumes"
JOBS = "sweeplab.jobs"
REPORT_METRIC = "sweeplab.report_metric"

# ---------------------------------------------------------------- code version (MLflow's own)
GIT_COMMIT = "mlflow.source.git.commit"
GIT_DIRTY = "sweeplab.git_dirty"  # "true" when the checkout had uncommitted changes
