"""The champion inside the dbt DAG: each week of the feature model scored by models:/<model>@champion.

A dbt Python model (dbt-duckdb runs it in dbt's own process). It loads the version that holds the
alias from Podium's MLflow registry (MLFLOW_TRACKING_URI must point at it) and predicts with the same
`predict_frame` as `podium score`: PREDICTED_CLASS and one P_<CLASS> per class.

It is not `podium score`: the table is rebuilt whole on every run (no idempotent merge by key and
version, no shadow challenger), and it carries only MODEL_VERSION as lineage (no run, batch or time).

    dbt run --select store_demand_scored   # after `podium run` has crowned a champion
"""

import mlflow
import pandas as pd
from mlflow import MlflowClient


def model(dbt, session):
    dbt.config(materialized="table")
    settings = dbt.config.get("meta") or {}
    name, alias = settings["podium_model"], settings.get("podium_alias", "champion")
    version = str(MlflowClient().get_model_version_by_alias(name, alias).version)
    uri = f"models:/{name}/{version}"
    champion = mlflow.sklearn.load_model(uri)  # a NamedClassifier: predict_frame speaks in class names
    inputs = mlflow.models.get_model_info(uri).signature.inputs.input_names()

    rows = dbt.ref("store_demand_features").df()
    rows.columns = [c.upper() for c in rows.columns]  # the names the model was trained on
    rows = rows[rows["WEEK_START"] >= pd.Timestamp(settings["score_from"])].reset_index(drop=True)
    scores = champion.predict_frame(rows[inputs])
    scores["PREDICTED_CLASS"] = scores["PREDICTED_CLASS"].astype(str)
    return pd.concat([rows[["STORE_ID", "WEEK_START"]], scores], axis=1).assign(MODEL_VERSION=version)
