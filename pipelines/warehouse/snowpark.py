"""Snowflake through a Snowpark Session: SQL runs as written, so the work stays in Snowflake.

Writes go through a staging table: `create_dataframe` of a pandas frame uploads it with
`write_pandas` into a temporary table, and one statement (CREATE OR REPLACE ... AS,
INSERT ... SELECT or MERGE) moves it into the target, so readers never see half a write.
"""

from __future__ import annotations

import atexit
import logging
import operator
import os
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from functools import reduce
from typing import TYPE_CHECKING, Any

import pandas as pd
from snowflake.connector.errors import Error as ConnectorError
from snowflake.snowpark import DataFrame, Session
from snowflake.snowpark.exceptions import SnowparkClientException, SnowparkSQLException
from snowflake.snowpark.functions import when_matched, when_not_matched

from pipelines.errors import WarehouseError
from pipelines.warehouse import snowpark_scoring, types
from pipelines.warehouse.base import (
    ScoringJob,
    TableOps,
    WriteMode,
    check_write,
    first_line,
    rechunk,
    write_failed,
)
from pipelines.warehouse.dialect import check_identifier, quote

if TYPE_CHECKING:
    from pipelines.config import SnowflakeConfig

log = logging.getLogger(__name__)

# SNOWFLAKE_<KEY> environment variables read into the connection, as Snowflake's own tools do.
ENV_KEYS = (
    "account",
    "user",
    "password",
    "authenticator",
    "private_key_file",
    "private_key_file_pwd",
    "token",
    "role",
    "warehouse",
    "database",
    "schema",
    "host",
    "port",
    "protocol",
)


def connection_parameters(config: SnowflakeConfig, environ: dict[str, str] | None = None) -> dict[str, Any]:
    """Session parameters from connections.toml (by name) or SNOWFLAKE_* variables."""
    environ = dict(os.environ if environ is None else environ)
    params: dict[str, Any] = {
        key: value for key in ("database", "role", "warehouse") if (value := getattr(config, key)) is not None
    }
    params |= timeouts(config)
    params |= {
        key: environ[f"SNOWFLAKE_{key.upper()}"] for key in ENV_KEYS if f"SNOWFLAKE_{key.upper()}" in environ
    }
    name = config.connection_name or environ.get("SNOWFLAKE_DEFAULT_CONNECTION_NAME")
    if name:
        params["connection_name"] = name
    elif "account" not in params:
        raise WarehouseError(
            "no Snowflake connection: set connection_name in the profile (an entry of "
            "~/.snowflake/connections.toml) or export SNOWFLAKE_ACCOUNT, SNOWFLAKE_USER and "
            "SNOWFLAKE_PASSWORD (or SNOWFLAKE_AUTHENTICATOR / SNOWFLAKE_PRIVATE_KEY_FILE)."
        )
    return params


# What Snowpark and the connector raise for a refused statement, a lost connection or a timeout.
SNOWPARK_ERRORS = (SnowparkSQLException, SnowparkClientException, ConnectorError)


@contextmanager
def _guard(step: str) -> Iterator[None]:
    """Snowpark's and the connector's failures as one WarehouseError line naming the step."""
    try:
        yield
    except SnowparkSQLException as exc:
        raise WarehouseError(first_line(exc)) from None
    except SNOWPARK_ERRORS as exc:  # the connection, not the SQL: a timeout, a dropped session
        raise WarehouseError(
            f"{step} in Snowflake failed: {first_line(exc)}. Check the network and the profile's "
            "network_timeout / statement_timeout, then rerun."
        ) from None


def timeouts(config: SnowflakeConfig) -> dict[str, Any]:
    """The connector's timeouts from the profile, so a dead or hanging endpoint ends in an error.

    The socket timeout is the login timeout: no single request waits longer for a first answer
    (Snowflake answers a long query's request within 45 s; the client then polls).
    """
    return {
        "login_timeout": config.login_timeout,
        "socket_timeout": config.login_timeout,
        "network_timeout": config.network_timeout,
        "session_parameters": {"STATEMENT_TIMEOUT_IN_SECONDS": config.statement_timeout},
    }


class SnowparkWarehouse(TableOps):
    """Warehouse seam over a Snowpark Session (a real account, fakesnow, or local testing)."""

    backend = "snowflake"

    def __init__(self, session: Session) -> None:
        self.session = session

    @classmethod
    def connect(cls, config: SnowflakeConfig) -> SnowparkWarehouse:
        """Open a Session from the profile plus the user's connection settings."""
        params = connection_parameters(config)
        try:
            return cls(Session.builder.configs(params).create())
        except Exception as exc:  # the connector raises many kinds on a failed login
            raise WarehouseError(
                f"could not connect to Snowflake: {first_line(exc)}. Check the profile's connection_name "
                "(or the SNOWFLAKE_* variables), the credentials and the network."
            ) from None

    def execute(self, sql: str, params: Sequence[Any] = ()) -> None:
        """Run a statement in Snowflake."""
        with _guard("a statement"):
            self._sql(sql, params).collect()

    def query(self, sql: str, params: Sequence[Any] = ()) -> pd.DataFrame:
        """Run a query in Snowflake and fetch its rows."""
        with _guard("a query"):
            return self._sql(sql, params).to_pandas()

    def batches(self, sql: str, rows: int, params: Sequence[Any] = ()) -> Iterator[pd.DataFrame]:
        """Stream a query's result in frames of `rows` rows."""
        with _guard("a query"):
            frames = self._sql(sql, params).to_pandas_batches()
            yield from rechunk(frames, rows)

    def write(self, df: pd.DataFrame, table: str, *, mode: WriteMode, keys: Sequence[str] = ()) -> int:
        """Upload `df` to a temporary table, then move it into `table` in one statement."""
        check_write(df, table, mode, keys)
        target = quote(table)
        staged = self.upload(df, table)
        try:
            if mode == "replace":
                staged.write.save_as_table(target, mode="overwrite")
            elif mode == "append":
                staged.write.save_as_table(target, mode="append", column_order="name")
            else:
                self.merge_dataframe(staged, table, keys)
        except SNOWPARK_ERRORS as exc:
            raise write_failed(table, exc) from None
        return len(df)

    def upload(self, df: pd.DataFrame, table: str) -> DataFrame:
        """The frame as a temporary Snowflake table (`write_pandas`: a temporary stage, PUT, COPY)."""
        try:
            return self.session.create_dataframe(_plain(df))
        except Exception as exc:  # the connector's file transfer fails in many kinds (KeyError among them)
            raise WarehouseError(
                f"uploading rows for {table} to Snowflake failed: {first_line(exc)}. The upload PUTs a file "
                "to a temporary stage in the session's schema: set a schema (SNOWFLAKE_SCHEMA or the "
                "connection's schema) where the role may create stages (setup/snowflake.sql)."
            ) from None

    def columns(self, table: str) -> dict[str, str]:
        """Column names and their Snowflake types (`types.from_snowpark`) of a table, in order."""
        try:
            fields = self.session.table(quote(table)).schema.fields
        except SNOWPARK_ERRORS as exc:
            raise WarehouseError(
                f"table {table} does not exist or is not readable: build it first (e.g. `podium features`). "
                f"({first_line(exc)})"
            ) from None
        names = [f.name.strip('"').upper() for f in fields]
        return {name: types.from_snowpark(name, f.datatype) for name, f in zip(names, fields, strict=True)}

    def close(self) -> None:
        """End the session, and drop the exit hook Snowpark registers for it (a closed session needs none)."""
        try:
            self.session.close()
        except SnowparkClientException as exc:  # emulators lack SYSTEM$CANCEL_ALL_QUERIES
            log.debug("closing the Snowpark session: %s", exc)
        atexit.unregister(getattr(self.session, "_close_at_exit", lambda: None))

    def _sql(self, sql: str, params: Sequence[Any]) -> DataFrame:
        return self.session.sql(sql, params=list(params) or None)

    def exists(self, table: str) -> bool:
        """Whether the table resolves in this session."""
        try:
            self.session.table(quote(table)).schema  # noqa: B018 (resolves the table)
        except SnowparkSQLException:
            return False
        except SNOWPARK_ERRORS as exc:
            raise WarehouseError(f"looking up table {table} in Snowflake failed: {first_line(exc)}") from None
        return True

    def publish(self, staged: Mapping[str, str]) -> None:
        """Move every staged table into place inside one BEGIN ... COMMIT.

        Snowflake commits each DDL statement on its own, so each table is replaced atomically and
        the set is replaced in one short run of statements, after every check has passed.
        """
        self.execute("BEGIN")
        try:
            for statement in self.publish_statements(staged):
                self.execute(statement)
        except WarehouseError:
            self.execute("ROLLBACK")
            raise
        self.execute("COMMIT")

    def mirror_model(self, model_name: str, native: Any, alias: str) -> None:
        """Log the native model in Snowflake's model registry, and move `alias` to it."""
        native.mirror(self.session, model_name, alias)

    def score_in_warehouse(self, job: ScoringJob) -> tuple[int, int]:
        """Score inside Snowflake with the model as a vectorized UDF (see `snowpark_scoring`), then merge the
        scores into the job's table: (rows scored, rows written)."""
        incremental = not job.full and self.exists(job.table)
        staged_name = f"PODIUM_SCORES_{uuid.uuid4().hex.upper()}"
        scores = snowpark_scoring.scores(self.session, job, incremental)
        scores.write.save_as_table(staged_name, mode="overwrite", table_type="temporary")
        staged = self.session.table(staged_name)
        count = staged.count()
        written = self.merge_dataframe(staged, job.table, [*job.keys, "MODEL_VERSION"]) if count else 0
        staged.drop_table()
        return count, written

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
        """Stage the frames in a temporary table; MERGE it into `table` by `keys` every `commit_rows` rows.

        One MERGE per interval, never one per row. `new_only` changes nothing
        here: other sessions may score the same rows, and the MERGE keeps one row per key.
        """
        staging = f"PODIUM_CHUNKS_{uuid.uuid4().hex.upper()}"
        written = pending = 0
        started = time.perf_counter()
        try:
            for df in frames:
                uploaded = self.upload(df, table).write
                uploaded.save_as_table(staging, mode="append", table_type="temporary", column_order="name")
                pending += len(df)
                if pending >= commit_rows:
                    written, pending = written + self._merge_staged(staging, table, keys), 0
                    committed(written, time.perf_counter() - started)
                    started = time.perf_counter()
            if pending:
                written += self._merge_staged(staging, table, keys)
                committed(written, time.perf_counter() - started)
        except SNOWPARK_ERRORS as exc:
            raise write_failed(table, exc) from None
        finally:
            if pending and self.exists(staging):  # an interval a failure left staged
                self.session.table(staging).drop_table()
        return written

    def _merge_staged(self, staging: str, table: str, keys: Sequence[str]) -> int:
        """MERGE the staging table into `table`, then drop it: the next interval stages afresh."""
        merged = self.merge_dataframe(self.session.table(staging), table, keys)
        self.session.table(staging).drop_table()
        return merged

    def merge_dataframe(self, staged: DataFrame, table: str, keys: Sequence[str]) -> int:
        """MERGE a Snowpark DataFrame into `table` by `keys` (created if absent); the rows written."""
        target, keys = quote(table), [check_identifier(k) for k in keys]
        if not self.exists(table):
            staged.write.save_as_table(target, mode="overwrite")
            return staged.count()
        existing = self.session.table(target)
        on = reduce(operator.and_, [existing[k] == staged[k] for k in keys])
        values = {c: staged[c] for c in staged.columns}
        result = existing.merge(
            staged,
            on,
            [
                when_matched().update({c: v for c, v in values.items() if c not in keys}),
                when_not_matched().insert(values),
            ],
        )
        return int(result.rows_inserted + result.rows_updated)


def _plain(df: pd.DataFrame) -> pd.DataFrame:
    """Nullable / Arrow-backed columns as plain objects with None, which every Snowpark path accepts.

    Floats become float64 with NaN instead: an object column of floats is typed VARCHAR by local
    testing, while NaN is written as NULL by both `write_pandas` and local testing.
    """
    extension = [c for c in df.columns if isinstance(df[c].dtype, pd.api.extensions.ExtensionDtype)]
    if not extension:
        return df
    out = df.copy()
    for c in extension:
        if pd.api.types.is_float_dtype(df[c].dtype):
            out[c] = df[c].to_numpy(dtype="float64", na_value=float("nan"))
        else:
            out[c] = df[c].astype(object).where(df[c].notna(), None)
    return out
