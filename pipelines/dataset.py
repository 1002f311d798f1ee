"""The contract for rows that enter or leave a model.

- The feature schema: which columns of the spec's table are numeric and categorical inputs.
- The feature contract every stage checks the table against: categoricals are text, numbers are not,
  and no input is empty (all NULL) in the training window.
- Windows read through the warehouse seam: training (never the holdout), holdout, and the
  scoring selection.
- Target encoding (class names <-> indices in the spec's order); the model-input cast is `served`'s.
- Lineage datasets (`mlflow.data`) and the names and types of the columns a score is written as.

Stages that feed a model or read its output go through here, so a row means one thing everywhere.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from datetime import date
from typing import Any

import numpy as np
import pandas as pd
from mlflow.data.digest_utils import compute_pandas_digest, get_normalized_md5_digest
from mlflow.data.pandas_dataset import PandasDataset, from_pandas  # mlflow.data.from_pandas, typed

from pipelines import served
from pipelines.config import Spec
from pipelines.errors import ConfigError, DataQualityError, PodiumError
from pipelines.splits import check_before_holdout
from pipelines.warehouse import Warehouse
from pipelines.warehouse.dialect import check_identifier, quote

TEXT_TYPES = ("CHAR", "TEXT", "STRING", "DATE", "TIME")  # types that are not numbers
CATEGORICAL_TYPES = ("CHAR", "TEXT", "STRING")  # the types a categorical input is read as: VARCHAR, ...
LINEAGE = {
    "MODEL_NAME": "VARCHAR",
    "MODEL_VERSION": "VARCHAR",
    "MODEL_ALIAS": "VARCHAR",
    "RUN_ID": "VARCHAR",
    "SCORED_AT": "TIMESTAMP_NTZ",
    "BATCH_ID": "VARCHAR",
}
DBT_BUILD_COLUMNS = ("DBT_INVOCATION_ID", "DBT_SQL_CHECKSUM", "DBT_MODELS")  # a dbt-built table's record


@dataclass(frozen=True)
class FeatureSchema:
    """The model's inputs: numeric columns (fed as float64), then categorical ones."""

    numeric: list[str]
    categorical: list[str]

    @property
    def columns(self) -> list[str]:
        return self.numeric + self.categorical


@dataclass(frozen=True)
class Window:
    """Rows of one time window, ready for a model: inputs, class indices and times."""

    X: pd.DataFrame
    y: np.ndarray
    times: pd.Series
    # the dbt build that made the rows, as lineage tags (none for a table built otherwise)
    source: dict[str, str] = dataclasses.field(default_factory=dict)


def feature_schema(spec: Spec, columns: dict[str, str]) -> FeatureSchema:
    """Every column but keys, time, target and excluded ones is a feature; categoricals are named."""
    _check_named_columns(spec, columns)
    reserved = {spec.target, spec.time, *spec.keys, *spec.columns.exclude, *spec.columns.categorical}
    numeric = [c for c in columns if c not in reserved]
    text = [c for c in numeric if any(t in columns[c].upper() for t in TEXT_TYPES)]
    if text:
        raise ConfigError(
            f"columns {text} of {spec.table} are not numeric: list them in columns.categorical or "
            "columns.exclude."
        )
    if spec.baseline and spec.baseline.column not in numeric + spec.columns.categorical:
        raise ConfigError(
            f"baseline.column {spec.baseline.column} is not a feature of {spec.table} (it is a key, the "
            "time, "
            "the target or excluded): the heuristic baseline needs a feature column."
        )
    return FeatureSchema(numeric, list(spec.columns.categorical))


def _check_named_columns(spec: Spec, columns: dict[str, str]) -> None:
    """Every column the spec names must be a column of its table."""
    named = {
        "target": [spec.target],
        "time": [spec.time],
        "keys": spec.keys,
        "columns.categorical": spec.columns.categorical,
        "columns.exclude": spec.columns.exclude,
        "baseline.column": [spec.baseline.column] if spec.baseline else [],
    }
    for field, names in named.items():
        absent = [n for n in names if n not in columns]
        if absent:
            raise ConfigError(
                f"spec {field} names {absent}, which {spec.table} does not have "
                f"(its columns: {', '.join(columns)}). Fix the spec or rebuild the features."
            )


def read_schema(warehouse: Warehouse, spec: Spec) -> FeatureSchema:
    """The feature schema of the spec's table as it stands in the warehouse."""
    return feature_schema(spec, warehouse.columns(spec.table))


def check_contract(warehouse: Warehouse, spec: Spec, schema: FeatureSchema) -> None:
    """Refuse the spec's table when the schema's inputs break the feature contract (`contract_breaches`)."""
    breaches = contract_breaches(warehouse, spec, schema)
    if breaches:
        raise DataQualityError(f"{spec.table} breaks the feature contract: " + "; ".join(breaches) + ".")


def contract_breaches(
    warehouse: Warehouse, spec: Spec, schema: FeatureSchema, table: str | None = None
) -> list[str]:
    """How `table` (default: the spec's) fails the schema's inputs: one phrase per breach, naming the
    columns and the fix; none when it fits.

    A categorical input must be text (VARCHAR ...), a numeric one must not be (text, a date), and no
    input may be all NULL in the training window: a model learns nothing from it, and its
    signature could not type it. Inputs the table lacks are left to the caller.
    """
    types = warehouse.columns(table or spec.table)
    breaches = []
    if wrong := {c: types[c] for c in schema.categorical if c in types and not _categorical_type(types[c])}:
        breaches.append(
            f"categorical columns {_typed(wrong)} are not text: cast them to VARCHAR in the feature SQL, "
            "or leave them out of columns.categorical"
        )
    if wrong := {c: types[c] for c in schema.numeric if c in types and not _numeric_type(types[c])}:
        breaches.append(
            f"numeric columns {_typed(wrong)} are not numbers: cast them to DOUBLE in the feature SQL, "
            "or list them in columns.categorical"
        )
    if empty := empty_columns(warehouse, spec, [c for c in schema.columns if c in types], table):
        breaches.append(
            f"columns {empty} have no non-null value in the training window ({spec.time} in "
            f"[{spec.train_start}, {spec.holdout_start})): drop them via columns.exclude, or fix the "
            "feature SQL"
        )
    return breaches


def empty_columns(
    warehouse: Warehouse, spec: Spec, columns: list[str], table: str | None = None
) -> list[str]:
    """The columns with no non-null value in the training window, counted in the warehouse in one query.

    None when the window has no rows at all: `load_training` names that problem.
    """
    if not columns:
        return []
    time = quote(spec.time)
    counts = ", ".join(f"COUNT({quote(c)}) AS N_{i}" for i, c in enumerate(columns))
    row = warehouse.query(
        f"SELECT COUNT(*) AS N_ROWS, {counts} FROM {quote(table or spec.table)} "
        f"WHERE {time} >= ? AND {time} < ?",
        [spec.train_start, spec.holdout_start],
    ).iloc[0]
    if not int(row["N_ROWS"]):
        return []
    return [c for i, c in enumerate(columns) if not int(row[f"N_{i}"])]


def _categorical_type(kind: str) -> bool:
    return any(t in kind.upper() for t in CATEGORICAL_TYPES)


def _numeric_type(kind: str) -> bool:
    return not any(t in kind.upper() for t in TEXT_TYPES)


def _typed(columns: dict[str, str]) -> str:
    """`[A VARCHAR, B DATE]`: columns with their warehouse types."""
    return "[" + ", ".join(f"{c} {t}" for c, t in columns.items()) + "]"


def read_training_rows(warehouse: Warehouse, spec: Spec) -> pd.DataFrame:
    """Every column of the rows with train_start <= time < holdout_start, in time and key order."""
    time_col = quote(spec.time)
    frame = warehouse.query(
        f"SELECT * FROM {quote(spec.table)} WHERE {time_col} >= ? AND {time_col} < ? ORDER BY {_order(spec)}",
        [spec.train_start, spec.holdout_start],
    )
    check_before_holdout(frame[spec.time], spec.holdout_start)
    return frame


def load_training(warehouse: Warehouse, spec: Spec, schema: FeatureSchema) -> Window:
    """The training window as model inputs (the holdout is excluded by the query and asserted absent)."""
    frame = read_training_rows(warehouse, spec)
    if frame.empty:
        raise PodiumError(
            f"the training window is empty: {spec.table} has no rows with {spec.time} in "
            f"[{spec.train_start}, {spec.holdout_start}). Build the features, or fix train_start / "
            "holdout_start."
        )
    window = _window(frame, spec, schema)
    absent = [c for i, c in enumerate(spec.classes) if not (window.y == i).any()]
    if absent:
        raise PodiumError(
            f"classes {absent} never occur in the training window ({spec.table}, {spec.time} in "
            f"[{spec.train_start}, {spec.holdout_start})): a model cannot learn them. Remove them from the "
            "spec's classes, or widen the window."
        )
    return dataclasses.replace(window, source=read_dbt_build(warehouse, spec))


def dbt_build_table(spec: Spec) -> str:
    """Where the features stage keeps the lineage of the dbt build behind the spec's table."""
    return f"{spec.table}_DBT_BUILD"


def read_dbt_build(warehouse: Warehouse, spec: Spec) -> dict[str, str]:
    """The dbt build behind the spec's table as lineage tags; none unless dbt builds it."""
    if not (spec.features and spec.features.dbt):
        return {}
    table = dbt_build_table(spec)
    if not warehouse.exists(table):
        raise PodiumError(f"{spec.table} has no dbt build record ({table}): run `podium features` first.")
    row = warehouse.query(f"SELECT {', '.join(DBT_BUILD_COLUMNS)} FROM {quote(table)}").iloc[0]
    return {f"podium.{name.lower()}": str(row[name]) for name in DBT_BUILD_COLUMNS}


def load_holdout(warehouse: Warehouse, spec: Spec, schema: FeatureSchema) -> Window:
    """The labelled rows at or after holdout_start (and before holdout_end, if set): only `train` (and a
    re-judging `promote`) reads them."""
    time = quote(spec.time)
    before = f" AND {time} < ?" if spec.holdout_end else ""
    frame = warehouse.query(
        f"SELECT * FROM {quote(spec.table)} WHERE {time} >= ?{before} AND {quote(spec.target)} IS NOT NULL "
        f"ORDER BY {_order(spec)}",
        [spec.holdout_start, *([spec.holdout_end] if spec.holdout_end else [])],
    )
    if frame.empty:
        raise PodiumError(
            f"the holdout is empty: {spec.table} has no labelled rows with {spec.time} >= "
            f"{spec.holdout_start}. "
            "Move holdout_start earlier, or build the features."
        )
    return _window(frame, spec, schema)


def scoring_selection(
    spec: Spec,
    start: date,
    end: date | None,
    versions: list[str],
    full: bool,
    resumed_batch: str | None = None,
) -> tuple[str, list[Any]]:
    """The WHERE clause (feature table aliased `f`) of the rows to score, and its bound values.

    Incremental unless `full`: rows every one of `versions` has already scored are left out
    (a shadow batch scores two). A resumed `full` rescore leaves out the rows its batch
    (`resumed_batch`) already rewrote.
    """
    time_col = f"f.{quote(spec.time)}"
    clauses = [f"{time_col} >= ?"]
    params: list[Any] = [start]  # the window's dates, then model versions (and the resumed batch)
    if end:
        clauses.append(f"{time_col} < ?")
        params.append(end)
    if not full or resumed_batch:
        match = " AND ".join(f"s.{quote(k)} = f.{quote(k)}" for k in spec.keys)
        same_batch = " AND s.BATCH_ID = ?" if full else ""
        missing = (
            f"NOT EXISTS (SELECT 1 FROM {quote(spec.scoring_table)} AS s WHERE {match} "
            f"AND s.MODEL_VERSION = ?{same_batch})"
        )
        clauses.append("(" + " OR ".join([missing] * len(versions)) + ")")
        for version in versions:
            params += [version, resumed_batch] if full else [version]
    return " AND ".join(clauses), params


def encode_target(target: pd.Series, spec: Spec) -> np.ndarray:
    """Class labels -> indices in the spec's class order."""
    unknown = sorted(set(target.dropna().unique()) - set(spec.classes))
    if unknown or target.isna().any():
        raise PodiumError(
            f"{spec.target} holds values outside {spec.classes}: {[str(v) for v in unknown] or ['NULL']}. "
            "Fix the data or the spec's classes (classes are text: cast a numeric target to VARCHAR)."
        )
    return target.map({c: i for i, c in enumerate(spec.classes)}).to_numpy(dtype=int)


def decode_target(indices: np.ndarray, spec: Spec) -> np.ndarray:
    """Class indices -> the spec's class names."""
    return np.asarray(spec.classes, dtype=object)[indices]


def lineage_dataset(spec: Spec, window: Window, name: str) -> PandasDataset:
    """A window of rows as an `mlflow.data` dataset (inputs and class labels), digested for lineage."""
    labelled = window.X.assign(**{spec.target: decode_target(window.y, spec)})
    digest = None
    if checksum := window.source.get("podium.dbt_sql_checksum"):  # the rows and the SQL that made them
        digest = get_normalized_md5_digest([compute_pandas_digest(labelled).encode(), checksum.encode()])
    return from_pandas(labelled, name=name, targets=spec.target, digest=digest)


def training_name(spec: Spec) -> str:
    return f"{spec.table}[{spec.train_start}:{spec.holdout_start})"


def holdout_name(spec: Spec) -> str:
    return f"{spec.table}[{spec.holdout_start}:{spec.holdout_end or ''}]"


def probability_column(label: str) -> str:
    """The score column of one class: P_<CLASS>."""
    return check_identifier(served.probability_column(label))


def probability_columns(spec: Spec) -> list[str]:
    return [probability_column(c) for c in spec.classes]


def scoring_columns(spec: Spec, source: dict[str, str]) -> dict[str, str]:
    """The scoring table's explicit schema: keys and time typed as in the feature table, then the scores."""
    ids = {name: source.get(name, "VARCHAR") for name in spec.id_columns}
    probabilities = dict.fromkeys(probability_columns(spec), "DOUBLE")
    return ids | {served.PREDICTED: "VARCHAR"} | probabilities | LINEAGE


def _window(frame: pd.DataFrame, spec: Spec, schema: FeatureSchema) -> Window:
    X = served.model_input(frame[schema.columns], schema.numeric)
    return Window(X, encode_target(frame[spec.target], spec), frame[spec.time])


def _order(spec: Spec) -> str:
    return ", ".join(quote(c) for c in [spec.time, *spec.keys])
