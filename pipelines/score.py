"""Score stage: a registered model's class probabilities, written back to the warehouse.

Inputs:  a model URI (`models:/name@alias`, `models:/name/Stage` or `models:/name/3`;
         default the spec's champion) and the feature rows of the spec's scoring window
         that this model version has not scored yet (all of them with `full`).
Outputs: the spec's scoring table: keys, time, PREDICTED_CLASS, P_<CLASS> per class,
         MODEL_NAME, MODEL_VERSION, MODEL_ALIAS, RUN_ID, SCORED_AT, BATCH_ID; at most one
         row per (keys, MODEL_VERSION).
MLflow:  one `score` run per batch: model URI, version, batch id, rescore_all and
         rows_per_chunk as params; rows read, rows written and seconds as metrics.

Rows stream through the warehouse seam in chunks of `chunk_rows`; each chunk is merged
by (keys, MODEL_VERSION) in its own transaction. A crash leaves every committed chunk
intact, and a rerun (incremental by default) scores only what is missing.
"""

from __future__ import annotations

import logging
import re
import time
import uuid
import warnings
from dataclasses import dataclass
from datetime import UTC, datetime

import mlflow
import numpy as np
import pandas as pd
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import RESOURCE_DOES_NOT_EXIST
from mlflow.tracking import MlflowClient
from sklearn.base import BaseEstimator

from pipelines.config import Profile, ScoringConfig, Spec
from pipelines.errors import ConfigError, PodiumError, WarehouseError
from pipelines.progress import counter
from pipelines.tracking import STORE_ERRORS, configure, stage_run, store_error
from pipelines.warehouse import Warehouse, connect
from pipelines.warehouse.dialect import check_identifier, quote, split_table

log = logging.getLogger(__name__)

URI = re.compile(r"^models:/(?P<name>[^/@]+)(?:@(?P<alias>[\w-]+)|/(?P<ref>[\w-]+))$")
ENGINES = ("local", "warehouse")
NUMERIC_TYPES = {"double", "float", "long", "integer"}
LINEAGE = {"MODEL_NAME": "VARCHAR", "MODEL_VERSION": "VARCHAR", "MODEL_ALIAS": "VARCHAR", "RUN_ID": "VARCHAR",
           "SCORED_AT": "TIMESTAMP_NTZ", "BATCH_ID": "VARCHAR"}  # fmt: skip


@dataclass(frozen=True)
class ResolvedModel:
    """A model URI pinned to one registered version."""

    uri: str
    name: str
    version: str
    alias: str  # the alias or stage the URI named; "" for a version URI
    run_id: str
    features: list[str]  # the signature's inputs, in order
    numeric: list[str]  # those the signature types as numbers


@dataclass(frozen=True)
class ScoreResult:
    table: str
    model: ResolvedModel
    batch_id: str
    rows_read: int
    rows_written: int


def main(
    profile: Profile, spec: Spec, model_uri: str | None = None, full: bool = False, chunk_rows: int | None = None,
    engine: str = "local",
) -> ScoreResult:  # fmt: skip
    """Score the window's unscored rows (or all with `full`) with one model version.

    `engine="local"` streams chunks through this process; `"warehouse"` (Snowflake only) runs
    the model inside Snowflake as a vectorized UDF.
    """
    scoring = require_scoring(spec)
    rows = chunk_rows if chunk_rows is not None else scoring.chunk_rows
    if rows <= 0:
        raise PodiumError(f"--chunk-rows must be a positive number of rows, got {rows}.")
    if engine not in ENGINES:
        raise PodiumError(f"unknown engine {engine!r}: use one of {', '.join(ENGINES)}.")
    if engine == "warehouse" and profile.warehouse.backend != "snowflake":
        raise PodiumError(
            f"--engine warehouse runs the model inside Snowflake, but profile {profile.name} is "
            f"{profile.warehouse.backend}: use a Snowflake profile, or --engine local."
        )
    configure(profile)  # the registry the URI names is the profile's
    model = resolve(model_uri or f"models:/{spec.model_name}@champion")
    estimator = mlflow.sklearn.load_model(f"models:/{model.name}/{model.version}")
    batch_id = uuid.uuid4().hex
    with connect(profile) as warehouse, stage_run(profile, spec, "score"):
        check_features(warehouse, spec, model)
        ensure_table(warehouse, spec)
        mlflow.log_params({"model_uri": model.uri, "model_version": model.version, "batch_id": batch_id,
                           "rescore_all": full, "rows_per_chunk": rows, "engine": engine})  # fmt: skip
        started = time.perf_counter()
        if engine == "warehouse":
            from pipelines import pushdown

            read, written = pushdown.score(
                warehouse, spec, model, estimator, batch_id, full, scoring.start, scoring.end
            )
        else:
            read, written = _stream(warehouse, spec, scoring, model, estimator, batch_id, full, rows)
        seconds = time.perf_counter() - started
        mlflow.log_metrics({"rows_read": read, "rows_written": written, "seconds": seconds})
        mlflow.set_tags({"podium.model_version": model.version, "podium.batch_id": batch_id})
    log.info("scored %s rows into %s with %s v%s (batch %s)", f"{written:,}", spec.scoring_table, model.name,
             model.version, batch_id)  # fmt: skip
    return ScoreResult(spec.scoring_table, model, batch_id, read, written)


def require_scoring(spec: Spec) -> ScoringConfig:
    if spec.scoring is None:
        raise ConfigError(f"spec {spec.name} has no `scoring` section: add scoring.start (and optionally end).")
    return spec.scoring


def resolve(uri: str) -> ResolvedModel:
    """Pin `models:/name@alias`, `models:/name/Stage` or `models:/name/N` to a registered version."""
    match = URI.match(uri)
    if not match:
        raise PodiumError(
            f"model URI {uri!r} is not a registry URI: use models:/NAME@ALIAS, models:/NAME/STAGE or models:/NAME/N."
        )
    name, alias, ref = match["name"], match["alias"], match["ref"]
    try:
        client = MlflowClient()
    except STORE_ERRORS as exc:
        raise store_error(exc) from None
    try:
        if alias:
            version = client.get_model_version_by_alias(name, alias)
        elif ref.isdigit():
            version = client.get_model_version(name, ref)
        else:
            version = _latest_in_stage(client, name, ref)
    except MlflowException as exc:
        if exc.error_code not in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
            raise store_error(exc) from None
        raise PodiumError(
            f"model URI {uri} does not resolve ({exc.message.splitlines()[0]}): check the name, alias, stage or "
            "version in the registry (`mlflow ui`), or train and promote first."
        ) from None
    except STORE_ERRORS as exc:
        raise store_error(exc) from None
    info = mlflow.models.get_model_info(f"models:/{name}/{version.version}")
    inputs = info.signature.inputs.inputs if info.signature else []
    numeric = [c.name for c in inputs if c.type.name in NUMERIC_TYPES]
    return ResolvedModel(uri, name, str(version.version), alias or ("" if ref.isdigit() else ref), version.run_id or "",
                         [c.name for c in inputs], numeric)  # fmt: skip


def columns(spec: Spec, source: dict[str, str]) -> dict[str, str]:
    """The scoring table's explicit schema: keys and time typed as in the feature table, then the scores."""
    probabilities = {probability_column(c): "DOUBLE" for c in spec.classes}
    ids = {name: source.get(name, "VARCHAR") for name in spec.id_columns}
    return ids | {"PREDICTED_CLASS": "VARCHAR"} | probabilities | LINEAGE


def probability_column(label: str) -> str:
    return check_identifier(f"P_{label}")


def check_features(warehouse: Warehouse, spec: Spec, model: ResolvedModel) -> None:
    """The feature table must have every input the model's signature names."""
    available = warehouse.columns(spec.table)
    missing = [c for c in model.features if c not in available]
    if missing:
        raise PodiumError(
            f"{spec.table} lacks columns {missing} that {model.name} v{model.version}'s signature needs: "
            "rebuild the features (`podium features`), or score with a model trained on this table."
        )


def ensure_table(warehouse: Warehouse, spec: Spec) -> None:
    """Create the scoring table with its explicit schema, or check an existing one; never drop it."""
    wanted = columns(spec, warehouse.columns(spec.table))
    try:
        existing = warehouse.columns(spec.scoring_table)
    except WarehouseError:
        schema, _ = split_table(spec.scoring_table)
        if schema:
            warehouse.execute(f"CREATE SCHEMA IF NOT EXISTS {quote(schema)}")
        ddl = ", ".join(f"{quote(name)} {kind}" for name, kind in wanted.items())
        warehouse.execute(f"CREATE TABLE IF NOT EXISTS {quote(spec.scoring_table)} ({ddl})")
        return
    missing = [name for name in wanted if name not in existing]
    if missing:
        raise PodiumError(
            f"the scoring table {spec.scoring_table} exists with an incompatible schema (no {', '.join(missing)}): "
            "Podium will not drop it. Rename or drop it yourself, or set scoring_table to another table."
        )


def _stream(
    warehouse: Warehouse, spec: Spec, scoring: ScoringConfig, model: ResolvedModel, estimator: BaseEstimator,
    batch_id: str, full: bool, rows: int,
) -> tuple[int, int]:  # fmt: skip
    """Read, predict and merge chunk by chunk; return (rows read, rows written)."""
    where, params = _selection(spec, scoring, model, full)
    total = int(warehouse.query(f"SELECT COUNT(*) AS N FROM {quote(spec.table)} AS f WHERE {where}", params).N[0])
    read = written = 0
    sql = f"SELECT f.* FROM {quote(spec.table)} AS f WHERE {where}"  # any order: each chunk merges on its own
    with counter(f"score {model.name} v{model.version}", total) as advance:
        for chunk in warehouse.batches(sql, rows, params):
            scored = predict(chunk, spec, model, estimator, batch_id)
            written += warehouse.write(scored, spec.scoring_table, mode="merge", keys=[*spec.keys, "MODEL_VERSION"])
            read += len(chunk)
            log.debug("chunk of %d rows merged (%d of %d)", len(chunk), read, total)
            advance(len(chunk))
    return read, written


def _selection(spec: Spec, scoring: ScoringConfig, model: ResolvedModel, full: bool) -> tuple[str, list]:
    """The WHERE clause (alias f) of the rows to score, and its bound values."""
    time_col = f"f.{quote(spec.time)}"
    clauses, params = [f"{time_col} >= ?"], [scoring.start]
    if scoring.end:
        clauses.append(f"{time_col} < ?")
        params.append(scoring.end)
    if not full:
        match = " AND ".join(f"s.{quote(k)} = f.{quote(k)}" for k in spec.keys)
        clauses.append(
            f"NOT EXISTS (SELECT 1 FROM {quote(spec.scoring_table)} AS s WHERE {match} AND s.MODEL_VERSION = ?)"
        )
        params.append(model.version)
    return " AND ".join(clauses), params


def predict(
    chunk: pd.DataFrame, spec: Spec, model: ResolvedModel, estimator: BaseEstimator, batch_id: str
) -> pd.DataFrame:
    """One chunk's scores, in the scoring table's column order."""
    features = chunk[model.features] if model.features else chunk
    proba = estimator.predict_proba(_as_signature(features))
    out = chunk[spec.id_columns].reset_index(drop=True)
    out["PREDICTED_CLASS"] = np.asarray(spec.classes, dtype=object)[proba.argmax(axis=1)]
    for i, label in enumerate(spec.classes):
        out[probability_column(label)] = proba[:, i]
    now = datetime.now(UTC).replace(tzinfo=None)
    return out.assign(MODEL_NAME=model.name, MODEL_VERSION=model.version, MODEL_ALIAS=model.alias,
                      RUN_ID=model.run_id, SCORED_AT=now, BATCH_ID=batch_id)  # fmt: skip


def _as_signature(features: pd.DataFrame) -> pd.DataFrame:
    """Numeric columns as float64, as the models were trained."""
    numeric = features.select_dtypes(include="number").columns
    return features.astype({c: "float64" for c in numeric})


def _latest_in_stage(client: MlflowClient, name: str, stage: str) -> ModelVersion:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        found = client.get_latest_versions(name, stages=[stage])
    if not found:
        raise MlflowException(f"no version of {name} is in stage {stage}", error_code=RESOURCE_DOES_NOT_EXIST)
    return found[0]
