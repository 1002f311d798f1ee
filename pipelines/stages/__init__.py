"""The lifecycle's stages, one module each, named by its verb; `pipelines.pipeline` declares their order.

Each stage has a `main(profile, spec)` and returns a small result; no stage imports another. What stages
share lives one level up: the dataset and its contract, the registry and its audit, MLflow runs, metrics,
models, splits, and the warehouse seam.
"""
