"""Ingest stage: load raw CSV files into the warehouse with explicit column types.

Inputs:  the spec's `ingest.source` folder: `tables.yaml` (table -> column -> type, in
         header order) and one `<table>.csv` or `<table>.csv.gz` per table.
Outputs: `<ingest.schema>.<TABLE>` per table, columns in UPPER_SNAKE_CASE, each replaced
         atomically; empty and `\\N` fields load as NULL. A spec without an `ingest` section
         reads a table that is already in the warehouse: nothing is loaded.
MLflow:  a run `ingest` with `rows.<TABLE>` metrics.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path

import mlflow
import pandas as pd
import pyarrow as pa
from pyarrow import csv

from pipelines.config import Profile, Spec, load_yaml
from pipelines.errors import ConfigError, PodiumError
from pipelines.progress import progress
from pipelines.tracking import stage_run
from pipelines.warehouse import Warehouse, connect
from pipelines.warehouse.dialect import check_identifier

log = logging.getLogger(__name__)

TYPES: dict[str, pa.DataType] = {
    "INTEGER": pa.int64(),
    "FLOAT": pa.float64(),
    "VARCHAR": pa.string(),
    "DATE": pa.date32(),
    "BOOLEAN": pa.bool_(),
}
NULLS = ["", "\\N"]


@dataclass(frozen=True)
class IngestResult:
    rows: dict[str, int]


def main(profile: Profile, spec: Spec) -> IngestResult:
    """Load every table of the spec's manifest into the raw schema (nothing without an `ingest` section)."""
    if spec.ingest is None:
        log.info(
            "spec %s has no `ingest` section: nothing to load, %s is read as it is", spec.name, spec.table
        )
        return IngestResult({})
    source, schema = spec.ingest.source, spec.ingest.db_schema
    manifest = read_manifest(source)
    with connect(profile) as warehouse, stage_run(profile, spec, "ingest"):
        rows = {
            f"{schema}.{table.upper()}": load_table(warehouse, source, table, columns, schema)
            for table, columns in progress(manifest.items(), "ingest", total=len(manifest))
        }
        mlflow.log_params({"source": str(source), "schema": schema})
        mlflow.log_metrics({f"rows.{name}": n for name, n in rows.items()})
    return IngestResult(rows)


def tables_written(spec: Spec) -> list[str]:
    """The raw tables this stage loads for the spec (none without an `ingest` section or a manifest yet)."""
    if spec.ingest is None or not (spec.ingest.source / "tables.yaml").is_file():
        return []
    return [f"{spec.ingest.db_schema}.{table.upper()}" for table in read_manifest(spec.ingest.source)]


def read_manifest(source: Path) -> dict[str, dict[str, str]]:
    """Table -> {csv column: type} from `<source>/tables.yaml`, checked."""
    path = source / "tables.yaml"
    if not path.is_file():
        raise ConfigError(f"{path} does not exist: the ingest source needs a tables.yaml manifest.")
    data = load_yaml(path) or {}
    tables = (data.get("tables") if isinstance(data, dict) else None) or {}
    if not isinstance(tables, dict) or not all(isinstance(columns, dict) for columns in tables.values()):
        raise ConfigError(
            f"{path}: `tables:` must map each table to its columns and their types, "
            "e.g. `races: {raceId: INTEGER, name: VARCHAR}`."
        )
    for table, columns in tables.items():
        try:
            check_identifier(table)
        except PodiumError as exc:
            raise ConfigError(f"{path}: {exc}") from None
        _check_columns(path, table, columns)
        unknown = {t for t in columns.values() if t not in TYPES}
        if unknown:
            raise ConfigError(
                f"{path}: table {table} uses unknown types {sorted(unknown)}; use {sorted(TYPES)}."
            )
    if not tables:
        raise ConfigError(
            f"{path} lists no tables under `tables:`: add each table with its columns and their types."
        )
    return tables


def _check_columns(path: Path, table: str, columns: dict[str, str]) -> None:
    """Every CSV column must become a plain SQL identifier (RACE_ID), never a quoted one."""
    for column in columns:
        try:
            check_identifier(snake_upper(str(column)))
        except PodiumError as exc:
            raise ConfigError(
                f"{path}: table {table}, column {column!r} cannot name a column: {exc}"
            ) from None


def load_table(warehouse: Warehouse, source: Path, table: str, columns: dict[str, str], schema: str) -> int:
    """Read one CSV with its declared types and replace its warehouse table."""
    frame = read_csv(_find_file(source, table), columns)
    name = f"{schema}.{table.upper()}"
    written = warehouse.write(frame, name, mode="replace")
    log.info("loaded %s rows into %s", f"{written:,}", name)
    return written


def read_csv(path: Path, columns: dict[str, str]) -> pd.DataFrame:
    """Parse a CSV with explicit types; column names become UPPER_SNAKE_CASE."""
    header = _header(path)
    if header != list(columns):
        raise PodiumError(
            f"{path}: header {header} does not match the manifest columns {list(columns)}: "
            "list the CSV's columns in tables.yaml in header order."
        )
    options = csv.ConvertOptions(
        column_types={c: TYPES[t] for c, t in columns.items()},
        null_values=NULLS,
        strings_can_be_null=True,
    )
    try:
        table = csv.read_csv(path, convert_options=options)
    except pa.ArrowInvalid as exc:
        if "CSV parse error" in str(exc):
            raise _unreadable(path, exc) from None
        raise PodiumError(
            f"{path}: a value does not match its declared type: {exc}. Fix the value, or its type in "
            "tables.yaml."
        ) from None
    except OSError as exc:  # a .csv.gz that is corrupt past its first block
        raise _unreadable(path, exc) from None
    frame = table.to_pandas(types_mapper=pd.ArrowDtype)
    frame.columns = [snake_upper(c) for c in frame.columns]
    return frame


def snake_upper(name: str) -> str:
    """raceId -> RACE_ID, fp1_date -> FP1_DATE."""
    return re.sub(r"(?<=[a-z0-9])(?=[A-Z])", "_", name).upper()


def _find_file(source: Path, table: str) -> Path:
    for candidate in (source / f"{table}.csv", source / f"{table}.csv.gz"):
        if candidate.is_file():
            return candidate
    raise PodiumError(
        f"no {table}.csv or {table}.csv.gz in {source}: add the file or drop it from tables.yaml."
    )


def _header(path: Path) -> list[str]:
    try:
        reader = csv.open_csv(path, read_options=csv.ReadOptions(block_size=1 << 16))
    except (pa.ArrowInvalid, OSError) as exc:  # empty, ragged, or not really gzip
        raise _unreadable(path, exc) from None
    return reader.schema.names


def _unreadable(path: Path, exc: Exception) -> PodiumError:
    return PodiumError(
        f"{path} is not a readable CSV: {str(exc).strip().splitlines()[0]}. Fix or re-export it: a header "
        "line, "
        "then one line per row with as many fields (gzip-compressed if named .csv.gz)."
    )
