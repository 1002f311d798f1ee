"""Ingest stage: load raw CSV files into the warehouse with explicit column types.

Inputs:  the spec's `ingest.source` folder: `tables.yaml` (table -> column -> type, in
         header order, and optional `contracts:` of keys and min_rows per table) and one
         `<table>.csv` or `<table>.csv.gz` per table.
Outputs: `<ingest.schema>.<TABLE>` per table, columns in UPPER_SNAKE_CASE; empty and `\\N`
         fields load as NULL. Build, check, then publish: every table is written under a
         staged name and checked against its contract (unique, non-null keys; at least
         min_rows rows, default 1), and all are published in one transaction, or none.
         A spec without an `ingest` section reads a table already in the warehouse.
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
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from pipelines.config import Profile, Spec
from pipelines.config_files import load_yaml
from pipelines.errors import ConfigError, DataQualityError, PodiumError
from pipelines.progress import progress
from pipelines.tracking import stage_run
from pipelines.warehouse import Warehouse, connect
from pipelines.warehouse.base import staged_name
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
    contracts = read_contracts(source, manifest)
    targets = {table: f"{schema}.{table.upper()}" for table in manifest}
    staged = {target: staged_name(target) for target in targets.values()}
    with connect(profile) as warehouse, stage_run(profile, spec, "ingest"):
        warehouse.ensure_schema(schema)
        warehouse.drop(list(staged.values()))  # what a killed run left
        try:
            rows = {
                targets[t]: load_table(warehouse, source, t, columns, contracts[t], staged[targets[t]])
                for t, columns in progress(manifest.items(), "ingest", total=len(manifest))
            }
            warehouse.publish(staged)
        except BaseException:
            warehouse.drop(list(staged.values()))
            raise
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


class Contract(BaseModel):
    """What a raw table must hold before it is published: unique, non-null keys and enough rows."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    keys: list[str] = []
    min_rows: int = Field(1, ge=0)


def read_contracts(source: Path, manifest: dict[str, dict[str, str]]) -> dict[str, Contract]:
    """Each table's contract from the manifest's `contracts:` section (default: at least one row)."""
    path = source / "tables.yaml"
    declared = (load_yaml(path) or {}).get("contracts") or {}
    unknown = sorted(set(declared) - set(manifest)) if isinstance(declared, dict) else ["(not a mapping)"]
    if unknown:
        raise ConfigError(
            f"{path}: `contracts:` names {unknown}, which `tables:` does not list: fix the names."
        )
    return {table: _contract(path, table, declared.get(table) or {}, manifest[table]) for table in manifest}


def _contract(path: Path, table: str, declared: object, columns: dict[str, str]) -> Contract:
    try:
        contract = Contract.model_validate(declared)
    except ValidationError as exc:
        problem = exc.errors()[0]
        where = ".".join(str(p) for p in problem["loc"])
        raise ConfigError(
            f"{path}: contracts.{table}.{where}: {problem['msg']} (write `keys: [column, ...]` and "
            "`min_rows: N`)."
        ) from None
    absent = [k for k in contract.keys if k not in columns]
    if absent:
        raise ConfigError(f"{path}: contracts.{table}.keys names {absent}, which are not columns of {table}.")
    return contract


def load_table(
    warehouse: Warehouse, source: Path, table: str, columns: dict[str, str], contract: Contract, staged: str
) -> int:
    """Read one CSV with its declared types, check its contract, and write it to its staged table."""
    path = _find_file(source, table)
    frame = read_csv(path, columns)
    check_contract(frame, contract, path)
    written = warehouse.write(frame, staged, mode="replace")
    log.info("read %s rows of %s", f"{written:,}", path.name)
    return written


def check_contract(frame: pd.DataFrame, contract: Contract, path: Path) -> None:
    """Refuse a file that breaks its table's contract, before anything is published."""
    if len(frame) < contract.min_rows:
        raise DataQualityError(
            f"{path} holds {len(frame)} rows, fewer than its contract's min_rows ({contract.min_rows}): "
            "nothing was published. Fix or re-export the file, or lower min_rows in tables.yaml."
        )
    keys = [snake_upper(k) for k in contract.keys]
    if not keys:
        return
    nulls = int(frame[keys].isna().any(axis=1).sum())
    repeats = int(frame.duplicated(keys).sum())
    if nulls or repeats:
        raise DataQualityError(
            f"{path} breaks its key {contract.keys}: {repeats} repeated and {nulls} null key values, "
            "so nothing was published. Remove the duplicate or keyless rows, or fix the contract's keys."
        )


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
