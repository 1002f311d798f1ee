"""Podium: MLflow-tracked experiments and a model registry over Snowflake (a DuckDB file offline).

Stages, one module each, declared in order in `pipelines.pipeline`: ingest, features, tune,
train, promote, score, evaluate (and status, which only reads). A stage never imports another:
what stages share lives in `dataset`, `registry`, `served`, `tracking`, `metrics`, `models`,
`splits`.
The warehouse seam (`pipelines.warehouse`) is the only code that knows which warehouse runs.
"""

__version__ = "0.1.0"
