"""sweeplab: Hydra-configured TensorFlow training studies, tracked in MLflow."""
