"""The warehouse seam: the one protocol every stage talks to.

SQL passed to `execute`, `query` and `batches` is Snowflake dialect with `?` placeholders
for bound values. Table names are checked and quoted by the backend. Frames move in
bulk (Arrow / pandas), never row by row.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import date
from typing import TYPE_CHECKING, Any, Literal, Protocol

import pandas as pd

from pipelines.errors import WarehouseError
from pipelines.warehouse.dialect import check_identifier, quote, split_table

WriteMode = Literal["append", "replace", "merge"]
WRITE_MODES: tuple[str, ...] = ("append", "replace", "merge")


@dataclass(frozen=True)
class ScoringJob:
    """Scoring done inside the warehouse: which rows, which model, and where the scores go.

    The backend selects the rows of `source` with `start <= time < end` (without those
    `version` has already scored in `table`, unless `full`), calls `predict` on their
    `features` (a frame of `columns` back: PREDICTED_CLASS, then one probability per class),
    and merges keys, those columns and the constant `lineage` columns into `table` by (keys,
    MODEL_VERSION).
    """

    source: str
    time: str
    start: date
    end: date | None
    full: bool
    version: str
    keys: list[str]
    id_columns: list[str]
    features: list[str]
    predict: Callable[[pd.DataFrame], pd.DataFrame]
    columns: list[str]
    lineage: dict[str, Any]
    table: str


class Warehouse(Protocol):
    """A SQL warehouse that Podium reads features from and writes results to."""

    backend: str

    def execute(self, sql: str, params: Sequence[Any] = ()) -> None:
        """Run a statement (or several) for its effect."""

    def query(self, sql: str, params: Sequence[Any] = ()) -> pd.DataFrame:
        """Run one query and return its rows."""

    def batches(self, sql: str, rows: int, params: Sequence[Any] = ()) -> Iterator[pd.DataFrame]:
        """Stream a query's rows in frames of at most `rows` rows."""

    def write(self, df: pd.DataFrame, table: str, *, mode: WriteMode, keys: Sequence[str] = ()) -> int:
        """Write a frame atomically: append, replace the table, or merge by `keys`."""

    def write_chunks(
        self,
        frames: Iterable[pd.DataFrame],
        table: str,
        *,
        keys: Sequence[str],
        new_only: bool,
        commit_rows: int,
        committed: Callable[[int, float], None] = lambda rows, seconds: None,
    ) -> int:
        """Write a stream of frames into existing `table`, one row per `keys`, committed every `commit_rows`.

        `new_only`: the caller selected rows whose keys the table lacks (a backend may append
        them). A crash keeps every committed interval; after each commit, `committed` hears the
        rows written so far and the seconds this interval spent writing. Returns the rows written.
        """

    def columns(self, table: str) -> dict[str, str]:
        """Column names (upper case) and types of an existing table."""

    def exists(self, table: str) -> bool:
        """Whether the table exists."""

    def ensure_schema(self, schema: str) -> None:
        """Create the schema unless it exists."""

    def ensure_table(self, table: str, columns: Mapping[str, str]) -> dict[str, str]:
        """Create the table (and its schema) with these column types unless it exists; its columns."""

    def score_in_warehouse(self, job: ScoringJob) -> tuple[int, int]:
        """Run a scoring job where the rows live: (rows scored, rows written)."""

    def mirror_model(self, model_name: str, native: Any, alias: str) -> None:
        """Log a native model (a `snowflake_registry.NativeModel`) in the model registry; move `alias`."""

    def publish(self, staged: Mapping[str, str]) -> None:
        """Replace each target table with its staged table (target -> staged), all in one transaction."""

    def drop(self, tables: Sequence[str]) -> None:
        """Drop these tables if they exist (staged tables a failed build leaves)."""

    def close(self) -> None:
        """Release the connection."""


STAGED_SUFFIX = "_PODIUM_STAGED"


def staged_name(table: str) -> str:
    """Where a rebuilt table is built and checked before it is published under `table`."""
    return f"{table}{STAGED_SUFFIX}"


class TableOps:
    """What both backends do alike on top of `execute`, `exists` and `columns`."""

    if TYPE_CHECKING:  # each backend defines these (the Warehouse protocol's); declared for the type checker

        def execute(self, sql: str, params: Sequence[Any] = ()) -> None: ...
        def query(self, sql: str, params: Sequence[Any] = ()) -> pd.DataFrame: ...
        def columns(self, table: str) -> dict[str, str]: ...
        def exists(self, table: str) -> bool: ...

    def drop(self, tables: Sequence[str]) -> None:
        """Drop these tables if they exist."""
        for table in tables:
            self.execute(f"DROP TABLE IF EXISTS {quote(table)}")

    def publish_statements(self, staged: Mapping[str, str]) -> list[str]:
        """The statements that move each staged table into place (run inside one transaction)."""
        statements = []
        for target, source in staged.items():  # a staged table lives in its target's schema
            statements.append(f"CREATE OR REPLACE TABLE {quote(target)} AS SELECT * FROM {quote(source)}")
            statements.append(f"DROP TABLE {quote(source)}")
        return statements

    def ensure_schema(self, schema: str) -> None:
        """Create the schema unless it exists (looked up first: creating one needs a grant, using it not)."""
        found = self.query(
            "SELECT COUNT(*) AS N FROM INFORMATION_SCHEMA.SCHEMATA WHERE UPPER(SCHEMA_NAME) = ?",
            [check_identifier(schema)],
        )
        if not int(found.N[0]):
            self.execute(f"CREATE SCHEMA IF NOT EXISTS {quote(schema)}")

    def ensure_table(self, table: str, columns: Mapping[str, str]) -> dict[str, str]:
        """Create the table (and its schema) with explicit column types unless it exists; its columns."""
        if not self.exists(table):
            schema, _ = split_table(table)
            if schema:
                self.ensure_schema(schema)
            ddl = ", ".join(f"{quote(name)} {kind}" for name, kind in columns.items())
            self.execute(f"CREATE TABLE IF NOT EXISTS {quote(table)} ({ddl})")
        return self.columns(table)


def check_write(df: pd.DataFrame, table: str, mode: str, keys: Sequence[str]) -> None:
    """Validate `write` arguments the same way for every backend."""
    if mode not in WRITE_MODES:
        raise WarehouseError(f"unknown write mode {mode!r} for {table}: use one of {', '.join(WRITE_MODES)}.")
    if mode == "merge" and not keys:
        raise WarehouseError(f"merge into {table} needs key columns.")
    missing = [k for k in keys if k not in df.columns]
    if missing:
        raise WarehouseError(f"merge keys {missing} are not columns of the frame written to {table}.")


def rechunk(frames: Iterator[pd.DataFrame], rows: int) -> Iterator[pd.DataFrame]:
    """Re-cut a stream of frames into frames of exactly `rows` rows (the last may be short)."""
    if rows <= 0:
        raise WarehouseError(f"batch size must be a positive number of rows, got {rows}.")
    buffer: list[pd.DataFrame] = []
    held = 0
    for frame in frames:
        buffer.append(frame)
        held += len(frame)
        while held >= rows:
            merged = pd.concat(buffer, ignore_index=True)
            yield merged.iloc[:rows].reset_index(drop=True)
            rest = merged.iloc[rows:].reset_index(drop=True)
            buffer, held = [rest], len(rest)
    if held:
        yield pd.concat(buffer, ignore_index=True)


def first_line(exc: Exception) -> str:
    """The first line of a driver's error without its full stop (or the error's type when it says nothing)."""
    text = str(exc).strip()
    return text.splitlines()[0].rstrip(".") if text else type(exc).__name__


def write_failed(table: str, exc: Exception) -> WarehouseError:
    """A refused write, named with its table and the likely fix."""
    return WarehouseError(
        f"writing {table} failed: {first_line(exc)}. If {table} exists with other columns, "
        "rename or drop it, or point the spec at another table."
    )
