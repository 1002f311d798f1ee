"""The embedded warehouse: a DuckDB file, fed Snowflake SQL translated by sqlglot."""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import duckdb
import pandas as pd

from pipelines.errors import WarehouseBusy, WarehouseError
from pipelines.warehouse import types
from pipelines.warehouse.base import (
    ScoringJob,
    TableOps,
    WriteMode,
    check_write,
    first_line,
    rechunk,
    write_failed,
)
from pipelines.warehouse.dialect import quote, split_table, to_duckdb

log = logging.getLogger(__name__)

LOCK_WAIT_SECONDS = 120.0  # how long a command waits for another process's write to end

ConnectConfig = dict[str, str | bool | int | float | list[str]]  # the option values duckdb.connect takes


class DuckDBWarehouse(TableOps):
    """Warehouse seam over one DuckDB database file (or `:memory:`)."""

    backend = "duckdb"

    def __init__(
        self,
        path: Path | str,
        read_only: bool = False,
        wait: float = LOCK_WAIT_SECONDS,
        memory_limit: str | None = None,
        external_access: bool = True,
    ) -> None:
        """Open the file; while another process writes it (DuckDB's file lock), wait up to `wait` seconds.

        `memory_limit` caps DuckDB's buffers (e.g. "1GB"): beyond it, joins and sorts spill to disk.
        `external_access=False` confines statements to this file: no other file, URL, database or
        extension is read or written (read_text, read_csv, COPY, ATTACH, INSTALL/LOAD are refused; DuckDB
        still allows its own .wal and spill files), and the configuration is locked, so no statement can
        SET it back. Read-only opens through `connect` use it.
        """
        config: ConnectConfig = {}
        if not external_access:
            config = {"enable_external_access": False, "lock_configuration": True}
            if memory_limit:  # SET after the lock would be refused
                config["memory_limit"] = memory_limit
        try:
            if str(path) != ":memory:" and not read_only:
                Path(path).parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:  # a file where a folder should be
            raise _cannot_open(path, exc) from None
        self.path = path
        self._con = _open(path, read_only, config, wait)
        if memory_limit and external_access:
            self._con.execute("SET memory_limit = ?", [memory_limit])

    def execute(self, sql: str, params: Sequence[Any] = ()) -> None:
        """Translate and run one or more statements; params bind to the last one."""
        statements = to_duckdb(sql)
        for i, statement in enumerate(statements):
            self._run(statement, params if i == len(statements) - 1 else ())

    def query(self, sql: str, params: Sequence[Any] = ()) -> pd.DataFrame:
        """Translate and run one query, returning a DataFrame."""
        result = self._run(self._single(sql), params)
        try:
            return result.df()
        except duckdb.Error as exc:  # rows are read here: a damaged file shows now
            raise self._failed(exc) from None

    def batches(self, sql: str, rows: int, params: Sequence[Any] = ()) -> Iterator[pd.DataFrame]:
        """Stream a query as Arrow record batches, converted to pandas frames of `rows` rows."""
        if rows <= 0:
            raise WarehouseError(f"batch size must be a positive number of rows, got {rows}.")
        cursor = self._con.cursor()
        try:
            relation = cursor.sql(self._single(sql), params=list(params) or None)
            frames = (batch.to_pandas(date_as_object=False) for batch in relation.to_arrow_reader(rows))
            yield from rechunk(frames, rows)
        except duckdb.Error as exc:
            raise self._failed(exc) from None
        finally:
            cursor.close()

    def write(self, df: pd.DataFrame, table: str, *, mode: WriteMode, keys: Sequence[str] = ()) -> int:
        """Write `df` into `table` in one transaction (a crash leaves the old table intact)."""
        check_write(df, table, mode, keys)
        schema, _ = split_table(table)
        target, staged = quote(table), f"podium_stage_{uuid.uuid4().hex}"
        self._con.register(staged, df)
        try:
            self._con.execute("BEGIN TRANSACTION")
            if schema:
                self._con.execute(f'CREATE SCHEMA IF NOT EXISTS "{schema}"')
            rows = self._typed(staged)
            if mode == "replace":
                self._con.execute(f"CREATE OR REPLACE TABLE {target} AS {rows}")
            else:
                self._con.execute(f"CREATE TABLE IF NOT EXISTS {target} AS {rows} LIMIT 0")
                self._insert(df, table, keys if mode == "merge" else None)
            self._con.execute("COMMIT")
        except duckdb.Error as exc:
            self._con.execute("ROLLBACK")
            raise (self._failed(exc) if _damaged(exc) else write_failed(table, exc)) from None
        finally:
            self._con.unregister(staged)
        return len(df)

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
        """Write a stream of frames into an existing `table`, committing every `commit_rows` rows.

        `new_only`: the frames' keys are not in the table (the caller selected them so, and
        DuckDB lets one process write the file), so each frame is appended; else each is merged
        (DELETE ... USING, then INSERT). A failure rolls back only the uncommitted rows.
        """
        written = pending = 0
        seconds = 0.0
        try:
            for df in frames:
                started = time.perf_counter()
                if not pending:
                    self._con.execute("BEGIN TRANSACTION")
                self._insert(df, table, None if new_only else keys)
                pending += len(df)
                if pending >= commit_rows:
                    self._con.execute("COMMIT")
                    written, pending = written + pending, 0
                seconds += time.perf_counter() - started
                if not pending:
                    committed(written, seconds)
                    seconds = 0.0
            if pending:
                self._con.execute("COMMIT")
                committed(written + pending, seconds)
        except BaseException as exc:
            if pending:
                self._con.execute("ROLLBACK")
            if isinstance(exc, duckdb.Error):
                raise write_failed(table, exc) from None
            raise
        return written + pending

    def _typed(self, staged: str) -> str:
        """SELECT the registered frame, a column of nothing but NULLs as VARCHAR (as Snowpark types it)."""
        described = self._con.execute(f"DESCRIBE SELECT * FROM {staged}").fetchall()
        untyped = [quote(name) for name, kind, *_ in described if kind == '"NULL"' or kind == "NULL"]
        if not untyped:
            return f"SELECT * FROM {staged}"
        casts = ", ".join(f"CAST({name} AS VARCHAR) AS {name}" for name in untyped)
        return f"SELECT * REPLACE ({casts}) FROM {staged}"

    def _insert(self, df: pd.DataFrame, table: str, keys: Sequence[str] | None) -> None:
        """Insert one frame (replacing the rows with its `keys`, if given) inside the open transaction."""
        target, staged = quote(table), f"podium_stage_{uuid.uuid4().hex}"
        self._con.register(staged, df)
        try:
            if keys:
                self._con.execute(f"DELETE FROM {target} AS t USING {staged} AS s WHERE {_match(keys)}")
            self._con.execute(f"INSERT INTO {target} BY NAME SELECT * FROM {staged}")
        finally:
            self._con.unregister(staged)

    def columns(self, table: str) -> dict[str, str]:
        """Column names and their Snowflake types (`types.from_duckdb`) of a table, in order."""
        found = self._columns(table)
        if not found:
            raise WarehouseError(f"table {table} does not exist: build it first (e.g. `podium features`).")
        return found

    def exists(self, table: str) -> bool:
        """Whether the table exists in this database file."""
        return bool(self._columns(table))

    def mirror_model(self, model_name: str, native: Any, alias: str) -> None:
        """DuckDB keeps no models: mirroring needs Snowflake."""
        raise WarehouseError(
            f"DuckDB has no model registry to mirror {model_name} into: registry.snowflake needs a Snowflake "
            "profile."
        )

    def publish(self, staged: Mapping[str, str]) -> None:
        """Move every staged table into place in one transaction: readers see all old or all new."""
        statements = [to_duckdb(s)[0] for s in self.publish_statements(staged)]
        try:
            self._con.execute("BEGIN TRANSACTION")
            for statement in statements:
                self._con.execute(statement)
            self._con.execute("COMMIT")
        except duckdb.Error as exc:
            self._con.execute("ROLLBACK")
            raise WarehouseError(
                f"publishing the rebuilt tables {', '.join(staged)} failed ({first_line(exc)}): every old "
                "table is "
                "unchanged; fix the cause and rerun the stage."
            ) from None

    def score_in_warehouse(self, job: ScoringJob) -> tuple[int, int]:
        """DuckDB has no in-warehouse model runtime: Podium scores its rows itself (`--engine local`)."""
        raise WarehouseError(
            f"scoring inside the warehouse needs Snowflake: score {job.table} with --engine local."
        )

    def close(self) -> None:
        self._con.close()

    def _columns(self, table: str) -> dict[str, str]:
        schema, name = split_table(table)
        rows = self._con.execute(
            "SELECT column_name, data_type FROM information_schema.columns "
            "WHERE upper(table_name) = ? AND (? IS NULL OR upper(table_schema) = ?) "
            "ORDER BY ordinal_position",
            [name, schema, schema],
        ).fetchall()
        return {column.upper(): types.from_duckdb(column.upper(), dtype) for column, dtype in rows}

    def _single(self, sql: str) -> str:
        statements = to_duckdb(sql)
        if len(statements) != 1:
            raise WarehouseError(
                f"expected exactly one query, got {len(statements)} statements: run one at a time."
            )
        return statements[0]

    def _run(
        self, statement: str, params: Sequence[Any], cursor: duckdb.DuckDBPyConnection | None = None
    ) -> duckdb.DuckDBPyConnection:
        try:
            return (cursor or self._con).execute(statement, list(params))
        except duckdb.CatalogException as exc:
            raise WarehouseError(
                f"{first_line(exc)} Check the name, or build it first (`podium ingest`, `podium features`)."
            ) from None
        except duckdb.Error as exc:
            raise self._failed(exc) from None

    def _failed(self, exc: duckdb.Error) -> WarehouseError:
        """A failed statement as one error; a file DuckDB finds truncated or corrupt says so, and the fix."""
        return _damaged_file(self.path, exc) if _damaged(exc) else WarehouseError(first_line(exc))


def _open(path: Path | str, read_only: bool, config: ConnectConfig, wait: float) -> duckdb.DuckDBPyConnection:
    """Connect; while another process writes the file (DuckDB's file lock), wait up to `wait` seconds."""
    deadline, told = time.monotonic() + wait, False
    while True:
        try:
            return duckdb.connect(str(path), read_only=read_only, config=config)
        except duckdb.IOException as exc:
            if _damaged(exc):
                raise _damaged_file(path, exc) from None
            if "lock" not in str(exc).lower():
                raise _cannot_open(path, exc) from None
            if time.monotonic() > deadline:
                raise _cannot_open(path, exc, WarehouseBusy) from None
            if not told:
                log.warning(
                    "waiting up to %.0f s for the DuckDB warehouse %s: another process writes it, and "
                    "this command goes on when that write ends",
                    wait,
                    path,
                )
                told = True
            time.sleep(0.2)
        except (duckdb.Error, OSError) as exc:  # not built yet, or a bad path
            raise _cannot_open(path, exc) from None


DAMAGE = ("could not read enough bytes", "not a valid duckdb database", "corrupt", "checksum")


def _cannot_open(
    path: Path | str, exc: Exception, kind: type[WarehouseError] = WarehouseError
) -> WarehouseError:
    return kind(
        f"cannot open the DuckDB warehouse {path}: {first_line(exc)}. "
        "Wait for the other process, build the warehouse first (`podium ingest`), "
        "or fix warehouse.path in the profile."
    )


def _damaged_file(path: Path | str, exc: Exception) -> WarehouseError:
    return WarehouseError(
        f"the DuckDB warehouse {path} is damaged or not a DuckDB file ({first_line(exc)}): move it aside, "
        "then rebuild it with `podium ingest` and `podium features` (scores and audit rows live only in "
        "the file: restore it from a backup to keep them)."
    )


def _damaged(exc: Exception) -> bool:
    """Whether DuckDB says the file itself is truncated or corrupt (rather than locked or missing)."""
    return any(sign in str(exc).lower() for sign in DAMAGE)


def _match(keys: Sequence[str]) -> str:
    return " AND ".join(f"t.{quote(k)} = s.{quote(k)}" for k in keys)
