"""sweeplab: Hydra-configured TensorFlow training studies, tracked in MLflow.

TensorFlow's C++ INFO and WARNING lines are hidden (TF_CPP_MIN_LOG_LEVEL=2) unless the user set
the variable: set here, before any module of the package can load TensorFlow, so it holds in
every process that imports sweeplab (the CLI, a launcher's spawned workers, a test) and in the
processes they start. (TensorFlow >= 2.19 prints its oneDNN notice regardless: a bad input is
checked before TensorFlow loads wherever it can be.)
"""
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
