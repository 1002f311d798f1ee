"""Podium: MLflow-tracked experiments and a model registry over Snowflake.

Stages (one module each): ingest, features; later tune, train, promote, score, evaluate.
The warehouse seam (`pipelines.warehouse`) is the only code that knows which warehouse runs.
"""

__version__ = "0.1.0"
