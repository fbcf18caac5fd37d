import os

# MLflow 3 sends usage telemetry to the internet unless told not to; guide_ray works offline.
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
