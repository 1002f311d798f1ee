"""Ingest stage: load raw CSV files into the warehouse with explicit column types.

Inputs:  the spec's `ingest.source` folder: `tables.yaml` (table -> column -> type, in
         header order) and one `<table>.csv` or `<table>.csv.gz` per table.
Outputs: `<ingest.schema>.<TABLE>` per table, columns in UPPER_SNAKE_CASE, each replaced
         atomically; empty and `\\N` fields load as NULL.
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
import yaml
from pyarrow import csv

from pipelines.config import Profile, Spec
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
    """Load every table of the spec's manifest into the raw schema."""
    if spec.ingest is None:
        raise ConfigError(f"spec {spec.name} has no `ingest` section: nothing to load.")
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


def read_manifest(source: Path) -> dict[str, dict[str, str]]:
    """Table -> {csv column: type} from `<source>/tables.yaml`, checked."""
    path = source / "tables.yaml"
    if not path.is_file():
        raise ConfigError(f"{path} does not exist: the ingest source needs a tables.yaml manifest.")
    tables = (yaml.safe_load(path.read_text()) or {}).get("tables") or {}
    for table, columns in tables.items():
        check_identifier(table)
        unknown = {t for t in columns.values() if t not in TYPES}
        if unknown:
            raise ConfigError(f"{path}: table {table} uses unknown types {sorted(unknown)}; use {sorted(TYPES)}.")
    if not tables:
        raise ConfigError(f"{path} lists no tables under `tables:`.")
    return tables


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
        raise PodiumError(f"{path}: header {header} does not match the manifest columns {list(columns)}.")
    options = csv.ConvertOptions(
        column_types={c: TYPES[t] for c, t in columns.items()},
        null_values=NULLS,
        strings_can_be_null=True,
    )
    try:
        table = csv.read_csv(path, convert_options=options)
    except pa.ArrowInvalid as exc:
        raise PodiumError(f"{path}: a value does not match its declared type: {exc}") from None
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
    raise PodiumError(f"no {table}.csv or {table}.csv.gz in {source}: add the file or drop it from tables.yaml.")


def _header(path: Path) -> list[str]:
    reader = csv.open_csv(path, read_options=csv.ReadOptions(block_size=1 << 16))
    return reader.schema.names
