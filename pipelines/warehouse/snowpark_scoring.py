"""Scoring inside Snowflake (`podium score --engine warehouse`): rows never leave it.

The model travels to Snowflake as a vectorized (pandas) UDF. One Snowpark plan selects the
window's unscored rows, calls the UDF on an array of the model's features (the model's own
`predict_frame`, as in local scoring, returned as one array per row: the predicted class,
then a probability per class), splits it into the scoring columns and adds the lineage
columns. The warehouse (`SnowparkWarehouse.score_in_warehouse`) lands the result in a temporary
staging table, and one MERGE by (keys, MODEL_VERSION) moves it into the scoring table.

Snowpark local testing runs a vectorized UDF one row at a time, so the handler accepts a
whole batch (a Series of arrays, in Snowflake) or a single array (local testing).
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import cloudpickle
import pandas as pd
from snowflake.snowpark import DataFrame, Session
from snowflake.snowpark.functions import array_construct, col, lit, pandas_udf
from snowflake.snowpark.types import ArrayType, DoubleType, PandasSeriesType, StringType
from snowflake.snowpark.udf import UserDefinedFunction

from pipelines.errors import WarehouseError
from pipelines.warehouse.base import ScoringJob, first_line
from pipelines.warehouse.dialect import quote

# What a model needs inside Snowflake; Snowflake resolves them from its Anaconda channel.
PACKAGES = ["scikit-learn", "pandas", "numpy", "xgboost", "skops"]


def scores(session: Session, job: ScoringJob, incremental: bool) -> DataFrame:
    """The job's rows (incremental: those this version has not scored) scored by the model as a temporary
    vectorized UDF, in the scoring table's columns."""
    udf = _register(session, job)
    rows = _selection(session, job, incremental)
    scored = rows.select(*job.id_columns, udf(array_construct(*[col(f) for f in job.features])).alias("P"))
    return _scores(scored, job)


def _register(session: Session, job: ScoringJob) -> UserDefinedFunction:
    """The model as a temporary vectorized UDF; a refusal is one error naming what Snowflake needs."""
    try:
        with _pickled_by_value(job.predict):
            # Snowpark annotates a UDF or a partial (the latter only without a function) and an invariant
            # List[str | ModuleType] for packages: its typing gaps, not this call's
            return pandas_udf(  # type: ignore[return-value]
                handler(job.predict, job.features),
                return_type=PandasSeriesType(ArrayType()),
                input_types=[PandasSeriesType(ArrayType())],
                packages=PACKAGES,  # type: ignore[arg-type]
                session=session,
            )
    except Exception as exc:  # Snowpark and the connector refuse a UDF in many kinds
        raise WarehouseError(
            f"registering the scoring UDF in Snowflake failed: {first_line(exc)}. It needs CREATE FUNCTION "
            f"on the session's schema, the Anaconda packages {', '.join(PACKAGES)} (an ORGADMIN accepts "
            "their terms once) and a Python UDF runtime; or score with --engine local."
        ) from None


def handler(
    predict: Callable[[pd.DataFrame], pd.DataFrame], features: list[str]
) -> Callable[[pd.Series], pd.Series]:
    """The UDF body: feature arrays in, [predicted class, probability per class] out."""

    def body(values: pd.Series) -> pd.Series:  # hints Snowpark reads; local testing passes one array
        batch = isinstance(values, pd.Series)
        scores = predict(pd.DataFrame(values.tolist() if batch else [values], columns=features))
        rows = scores.astype(object).to_numpy().tolist()
        return pd.Series(rows, index=values.index) if batch else rows[0]

    return body


@contextmanager
def _pickled_by_value(function: Callable) -> Iterator[None]:
    """Ship the module that defines `function` inside the UDF: Snowflake cannot import Podium itself."""
    module = sys.modules[function.__module__]  # a bound method: its class's module
    cloudpickle.register_pickle_by_value(module)
    try:
        yield
    finally:
        cloudpickle.unregister_pickle_by_value(module)


def _selection(session: Session, job: ScoringJob, incremental: bool) -> DataFrame:
    rows = session.table(quote(job.source)).filter(col(job.time) >= lit(job.start))
    if job.end:
        rows = rows.filter(col(job.time) < lit(job.end))
    if not incremental:
        return rows
    done = session.table(quote(job.table)).filter(col("MODEL_VERSION") == lit(job.version)).select(*job.keys)
    return rows.join(done, on=job.keys, how="leftanti")


def _scores(scored: DataFrame, job: ScoringJob) -> DataFrame:
    """The scoring table's columns from the UDF's array: the predicted class, then the probabilities."""
    predicted, *probabilities = job.columns
    named = [scored["P"][i + 1].cast(DoubleType()).alias(name) for i, name in enumerate(probabilities)]
    lineage = [lit(value).alias(name) for name, value in job.lineage.items()]
    label = scored["P"][0].cast(StringType()).alias(predicted)
    return scored.select(*job.id_columns, label, *named, *lineage)
