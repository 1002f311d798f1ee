"""Scoring pushed down into Snowflake (`podium score --engine warehouse`): rows never leave it.

The model travels to Snowflake as a vectorized (pandas) UDF. One Snowpark plan selects the
window's unscored rows, calls the UDF on an array of the model's features, splits the
probabilities into P_<CLASS> columns, picks the predicted class and adds the lineage
columns; the result lands in a temporary staging table and one MERGE by (keys,
MODEL_VERSION) moves it into the scoring table.

Snowpark local testing runs a vectorized UDF one row at a time, so the handler accepts a
whole batch (a Series of arrays, in Snowflake) or a single array (local testing).
"""

from __future__ import annotations

import operator
import uuid
from collections.abc import Callable
from datetime import date
from functools import reduce
from typing import Any

import pandas as pd
from sklearn.base import BaseEstimator
from snowflake.snowpark import Column, DataFrame
from snowflake.snowpark.functions import array_construct, col, lit, pandas_udf, when
from snowflake.snowpark.types import ArrayType, DoubleType, PandasSeriesType

from pipelines.config import Spec
from pipelines.warehouse.dialect import quote
from pipelines.warehouse.snowpark import SnowparkWarehouse

# What a model needs inside Snowflake; Snowflake resolves them from its Anaconda channel.
PACKAGES = ["scikit-learn", "pandas", "numpy", "xgboost", "skops"]


def score(
    warehouse: SnowparkWarehouse, spec: Spec, model: Any, estimator: BaseEstimator, batch_id: str,
    full: bool, start: date, end: date | None,
) -> tuple[int, int]:  # fmt: skip
    """Score the window inside Snowflake and merge it into the scoring table: (rows scored, rows written)."""
    session = warehouse.session
    rows = _selection(warehouse, spec, model.version, full, start, end)
    udf = pandas_udf(
        handler(estimator, model.features, model.numeric),
        return_type=PandasSeriesType(ArrayType(DoubleType())),
        input_types=[PandasSeriesType(ArrayType())],
        packages=PACKAGES,
        session=session,
    )
    scored = rows.select(*spec.id_columns, udf(array_construct(*[col(f) for f in model.features])).alias("P"))
    staged_name = f"PODIUM_SCORES_{uuid.uuid4().hex.upper()}"
    _scores(scored, spec, model, batch_id).write.save_as_table(staged_name, mode="overwrite", table_type="temporary")
    staged = session.table(staged_name)
    count = staged.count()
    written = warehouse.merge_dataframe(staged, spec.scoring_table, [*spec.keys, "MODEL_VERSION"]) if count else 0
    session.table(staged_name).drop_table()
    return count, written


def handler(estimator: BaseEstimator, features: list[str], numeric: list[str]) -> Callable[[pd.Series], pd.Series]:
    """The UDF body: feature arrays in, one probability per class out."""

    def predict(values: pd.Series) -> pd.Series:  # hints Snowpark reads; local testing passes one array
        batch = isinstance(values, pd.Series)
        frame = pd.DataFrame(values.tolist() if batch else [values], columns=features)
        frame[numeric] = frame[numeric].astype("float64")
        proba = estimator.predict_proba(frame)
        return pd.Series(proba.tolist(), index=values.index) if batch else proba[0].tolist()

    return predict


def _selection(
    warehouse: SnowparkWarehouse, spec: Spec, version: str, full: bool, start: date, end: date | None
) -> DataFrame:
    session = warehouse.session
    rows = session.table(quote(spec.table)).filter(col(spec.time) >= lit(start))
    if end:
        rows = rows.filter(col(spec.time) < lit(end))
    if full or not warehouse.exists(spec.scoring_table):
        return rows
    done = session.table(quote(spec.scoring_table)).filter(col("MODEL_VERSION") == lit(version)).select(*spec.keys)
    return rows.join(done, on=spec.keys, how="leftanti")


def _scores(scored: DataFrame, spec: Spec, model: Any, batch_id: str) -> DataFrame:
    """The scoring table's columns from the UDF's probability array."""
    from pipelines.score import probability_column

    probabilities = [scored["P"][i].cast(DoubleType()) for i in range(len(spec.classes))]
    now = pd.Timestamp.now("UTC").tz_localize(None).to_pydatetime()
    return scored.select(
        *spec.id_columns, _argmax(probabilities, spec.classes).alias("PREDICTED_CLASS"),
        *[p.alias(probability_column(c)) for p, c in zip(probabilities, spec.classes, strict=True)],
        lit(model.name).alias("MODEL_NAME"), lit(model.version).alias("MODEL_VERSION"),
        lit(model.alias).alias("MODEL_ALIAS"), lit(model.run_id).alias("RUN_ID"), lit(now).alias("SCORED_AT"),
        lit(batch_id).alias("BATCH_ID"),
    )  # fmt: skip


def _argmax(probabilities: list[Column], classes: list[str]) -> Column:
    """The first class whose probability is at least every later one's: numpy's argmax, in SQL."""
    chosen = None
    for i, p in enumerate(probabilities[:-1]):
        beats_later = reduce(operator.and_, [p >= q for q in probabilities[i + 1 :]])
        chosen = when(beats_later, lit(classes[i])) if chosen is None else chosen.when(beats_later, lit(classes[i]))
    return chosen.otherwise(lit(classes[-1]))
