"""The Snowflake emulator (`tests/snowflake/emulator.py`): each gap it closes, shown with real Snowpark calls.

A real `Session` over the real connector talks to fakesnow's patched server on loopback. Every
test goes through statements fakesnow 0.12.1 alone fails on: the upload of a pandas frame
(`write_pandas`: a temporary stage named by `IDENTIFIER(?)`, `INFER_SCHEMA`, a qualified temporary
table, `COPY INTO ... FROM (SELECT $1:"A" ... FROM '@stage')`), `CREATE TABLE <name> IF NOT EXISTS`,
`Table.merge`'s unaliased source, `session.file.put`, NULL timestamps in results, unhandled errors
and the session's close. DuckDB answers underneath, so the values and types are DuckDB's reading of
the statements, not Snowflake's own.

Tables are named EMU_*: the one in-memory DuckDB is shared with every fakesnow server in the process.
"""

from __future__ import annotations

import datetime as dt
import json
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import pandas as pd
import pytest
import snowflake.connector.pandas_tools
from snowflake.connector.errors import ProgrammingError
from snowflake.snowpark import Row, Session
from snowflake.snowpark.exceptions import SnowparkSQLException
from snowflake.snowpark.functions import when_matched, when_not_matched
from snowflake.snowpark.types import BooleanType, DateType, DoubleType, LongType, StringType, TimestampType

from tests.helpers import REPO
from tests.servers import free_port
from tests.snowflake.emulator import apply_patches, emulator, snowflake_env


def open_session(kwargs: dict) -> Session:
    """A Session on database PODIUM, schema ML, created first if need be."""
    session = Session.builder.configs(
        kwargs | {"database": "PODIUM", "schema": "ML", "login_timeout": 10}
    ).create()
    session.sql("CREATE DATABASE IF NOT EXISTS PODIUM").collect()
    session.sql("CREATE SCHEMA IF NOT EXISTS PODIUM.ML").collect()
    session.sql("USE SCHEMA PODIUM.ML").collect()
    return session


@pytest.fixture(scope="module")
def server() -> Iterator[dict]:
    with emulator() as kwargs:
        yield kwargs


@pytest.fixture(scope="module")
def session(server: dict) -> Iterator[Session]:
    session = open_session(server)
    yield session
    session.close()


def frame(ids: list[int], names: list[str]) -> pd.DataFrame:
    return pd.DataFrame({"ID": ids, "NAME": names})


def test_create_dataframe_uploads_a_pandas_frame(session: Session) -> None:
    """write_pandas to a temporary stage and table: IDENTIFIER(?), INFER_SCHEMA, temp table, COPY."""
    utc = dt.UTC
    pdf = pd.DataFrame(
        {
            "I": [1, 2, 3],
            "F": [1.5, np.nan, -2.25],
            "S": ["a", None, "c"],
            "D": [dt.date(2024, 1, 1), dt.date(2024, 2, 29), dt.date(2025, 12, 31)],
            "B": [True, False, True],
            "T": [pd.Timestamp("2024-01-01 10:00:00"), pd.NaT, pd.Timestamp("2024-06-30 23:59:59.5")],
            "TZ": [pd.NaT, pd.Timestamp("2025-01-02 00:00:01", tz=utc), pd.Timestamp("2025-03-04", tz=utc)],
        }
    )

    df = session.create_dataframe(pdf)

    assert [(f.name, type(f.datatype)) for f in df.schema.fields] == [
        ("I", LongType),
        ("F", DoubleType),
        ("S", StringType),
        ("D", DateType),
        ("B", BooleanType),
        ("T", TimestampType),
        ("TZ", TimestampType),
    ]
    first, second, third = df.sort("I").collect()
    assert first == Row(
        I=1, F=1.5, S="a", D=dt.date(2024, 1, 1), B=True, T=dt.datetime(2024, 1, 1, 10), TZ=None
    )
    assert second == Row(
        I=2,
        F=None,
        S=None,
        D=dt.date(2024, 2, 29),
        B=False,
        T=None,
        TZ=dt.datetime(2025, 1, 2, 0, 0, 1, tzinfo=utc),
    )
    assert third == Row(
        I=3,
        F=-2.25,
        S="c",
        D=dt.date(2025, 12, 31),
        B=True,
        T=dt.datetime(2024, 6, 30, 23, 59, 59, 500000),
        TZ=dt.datetime(2025, 3, 4, tzinfo=utc),
    )


def test_save_as_table_overwrite_then_append_by_name(session: Session) -> None:
    session.create_dataframe(frame([1, 2], ["a", "b"])).write.save_as_table("ML.EMU_T", mode="overwrite")
    assert session.table("ML.EMU_T").sort("ID").collect() == [Row(ID=1, NAME="a"), Row(ID=2, NAME="b")]

    reordered = session.create_dataframe(pd.DataFrame({"NAME": ["c"], "ID": [3]}))
    reordered.write.save_as_table("ML.EMU_T", mode="append", column_order="name")
    assert session.table("PODIUM.ML.EMU_T").sort("ID").collect() == [
        Row(ID=1, NAME="a"),
        Row(ID=2, NAME="b"),
        Row(ID=3, NAME="c"),
    ]

    session.create_dataframe(frame([7], ["z"])).write.save_as_table("ML.EMU_T", mode="overwrite")
    assert session.table("ML.EMU_T").collect() == [Row(ID=7, NAME="z")]


def test_append_creates_a_missing_table(session: Session) -> None:
    """Snowpark's `CREATE TABLE ML.EMU_NEW IF NOT EXISTS (...)`: IF NOT EXISTS after the name."""
    session.sql("DROP TABLE IF EXISTS ML.EMU_NEW").collect()
    for _ in range(2):
        session.create_dataframe(frame([1], ["a"])).write.save_as_table("ML.EMU_NEW", mode="append")
    assert session.table("ML.EMU_NEW").collect() == [Row(ID=1, NAME="a"), Row(ID=1, NAME="a")]


@pytest.mark.parametrize("name", ["EMU_TEMP", "PODIUM.ML.EMU_TEMP_Q"])
def test_temporary_tables_unqualified_and_qualified(server: dict, session: Session, name: str) -> None:
    short = name.rsplit(".", 1)[-1]
    df = session.create_dataframe(frame([1, 2], ["a", "b"]))
    df.write.save_as_table(name, mode="overwrite", table_type="temporary")
    for reference in (short, f"ML.{short}", f"PODIUM.ML.{short}"):
        assert session.table(reference).sort("ID").collect() == [Row(ID=1, NAME="a"), Row(ID=2, NAME="b")]

    # append: CREATE TEMPORARY TABLE <name> IF NOT EXISTS, then an INSERT into it
    df.write.save_as_table(name, mode="append", table_type="temporary")
    assert session.table(name).count() == 4

    # temporary: another session of the same server does not see it
    other = open_session(server)
    try:
        with pytest.raises(SnowparkSQLException, match="does not exist"):
            other.table(f"PODIUM.ML.{short}").collect()
    finally:
        other.close()

    session.sql(f"DROP TABLE {name}").collect()
    with pytest.raises(SnowparkSQLException, match="does not exist"):
        session.table(f"PODIUM.ML.{short}").collect()


def test_merge_updates_and_inserts(session: Session) -> None:
    """Table.merge: `MERGE INTO t USING (SELECT ...) ON ...` with an unaliased source."""
    session.create_dataframe(frame([1, 2, 3], ["a", "b", "c"])).write.save_as_table(
        "ML.EMU_M", mode="overwrite"
    )
    target = session.table("ML.EMU_M")
    source = session.create_dataframe(frame([2, 4], ["B", "D"]))

    result = target.merge(
        source,
        target["ID"] == source["ID"],
        [
            when_matched().update({"NAME": source["NAME"]}),
            when_not_matched().insert({"ID": source["ID"], "NAME": source["NAME"]}),
        ],
    )

    assert (result.rows_inserted, result.rows_updated, result.rows_deleted) == (1, 1, 0)
    assert target.sort("ID").collect() == [
        Row(ID=1, NAME="a"),
        Row(ID=2, NAME="B"),
        Row(ID=3, NAME="c"),
        Row(ID=4, NAME="D"),
    ]


def test_merge_deletes_with_a_condition(session: Session) -> None:
    session.create_dataframe(frame([1, 2, 3], ["a", "b", "c"])).write.save_as_table(
        "ML.EMU_D", mode="overwrite"
    )
    target = session.table("ML.EMU_D")
    source = session.create_dataframe(pd.DataFrame({"ID": [1, 2], "DROP": [True, False]}))

    result = target.merge(source, target["ID"] == source["ID"], [when_matched(source["DROP"]).delete()])

    assert (result.rows_inserted, result.rows_updated, result.rows_deleted) == (0, 0, 1)
    assert target.sort("ID").collect() == [Row(ID=2, NAME="b"), Row(ID=3, NAME="c")]


def test_write_pandas_auto_create_table(session: Session) -> None:
    """The connector's write_pandas types the table it creates with INFER_SCHEMA."""
    pdf = pd.DataFrame({"X": [1, 2], "Y": ["p", None], "Z": [0.5, 1.5]})
    session.sql('DROP TABLE IF EXISTS "EMU_T2"').collect()

    ok, chunks, rows, _ = snowflake.connector.pandas_tools.write_pandas(
        session.connection, pdf, "EMU_T2", auto_create_table=True
    )

    assert (ok, chunks, rows) == (True, 1, 2)
    assert [(f.name, type(f.datatype)) for f in session.table("EMU_T2").schema.fields] == [
        ("X", LongType),
        ("Y", StringType),
        ("Z", DoubleType),
    ]
    assert session.table("EMU_T2").sort("X").collect() == [Row(X=1, Y="p", Z=0.5), Row(X=2, Y=None, Z=1.5)]

    # overwrite: a new table under a temporary name, renamed over the old one
    snowflake.connector.pandas_tools.write_pandas(
        session.connection, pdf.head(1), "EMU_T2", auto_create_table=True, overwrite=True
    )
    assert session.table("EMU_T2").collect() == [Row(X=1, Y="p", Z=0.5)]


def test_infer_schema_reads_staged_parquet(session: Session, tmp_path: Any) -> None:
    path = tmp_path / "part.parquet"
    pd.DataFrame(
        {
            "N": [1],
            "R": [0.5],
            "S": ["x"],
            "B": [True],
            "D": [dt.date(2024, 1, 1)],
            "T": pd.to_datetime(["2024-01-01"]),
        }
    ).to_parquet(path)
    session.sql("CREATE OR REPLACE TEMP STAGE EMU_STAGE").collect()
    session.file.put(str(path), "@EMU_STAGE", auto_compress=False)

    rows = session.sql(
        "SELECT COLUMN_NAME, TYPE, EXPRESSION FROM TABLE(INFER_SCHEMA(LOCATION => '@EMU_STAGE', "
        "FILE_FORMAT => 'ANY')) ORDER BY ORDER_ID"
    ).collect()

    assert [tuple(r) for r in rows] == [
        ("N", "NUMBER(38, 0)", '$1:"N"::NUMBER(38, 0)'),
        ("R", "REAL", '$1:"R"::REAL'),
        ("S", "TEXT", '$1:"S"::TEXT'),
        ("B", "BOOLEAN", '$1:"B"::BOOLEAN'),
        ("D", "DATE", '$1:"D"::DATE'),
        ("T", "TIMESTAMP_NTZ(9)", '$1:"T"::TIMESTAMP_NTZ(9)'),
    ]


def test_unhandled_statement_fails_fast_as_a_sql_error(server: dict) -> None:
    """Without the kwargs' network_timeout, an HTTP 500 would be retried for minutes."""
    kwargs = {k: v for k, v in server.items() if k != "network_timeout"}
    session = open_session(kwargs)
    try:
        start = time.monotonic()
        with pytest.raises(
            SnowparkSQLException, match="000603"
        ):  # fakesnow asserts on VALUES without an alias
            session.sql("MERGE INTO ML.EMU_T USING (VALUES (1)) ON ID = 1 WHEN MATCHED THEN DELETE").collect()
        assert time.monotonic() - start < 5
        assert session.sql("SELECT 1 AS ONE").collect() == [Row(ONE=1)]  # the session still works
    finally:
        session.close()


def test_an_http_500_becomes_a_sql_error() -> None:
    """The query route's backstop, for failures outside the cursor (which the test above reaches)."""
    from starlette.responses import JSONResponse

    from tests.snowflake import emulator as module

    body = {"data": None, "code": "261000", "message": "boom", "success": False}  # fakesnow's 500
    failed = JSONResponse(body, status_code=500)
    answer = module._as_sql_error(failed)  # noqa: SLF001

    assert answer.status_code == 200
    assert json.loads(answer.body) == {
        "data": {"errorCode": "000603", "sqlState": "XX000"},
        "code": "000603",
        "message": "SQL execution internal error: boom",
        "success": False,
    }
    ok = JSONResponse({"data": {}, "success": True})
    assert module._as_sql_error(ok) is ok  # noqa: SLF001


def test_close_logs_out(server: dict) -> None:
    """SYSTEM$CANCEL_ALL_QUERIES answers, and the login's master token lets the connector log out."""
    session = open_session(server)
    assert session.sql("SELECT SYSTEM$CANCEL_ALL_QUERIES(1) AS S").collect() == [
        Row(S="0 queries cancelled.")
    ]
    session.close()
    assert session.connection.is_closed()


def test_shares_the_database_with_the_conftest_fakesnow_server(server: dict, fakesnow_server: dict) -> None:
    """`fakesnow.server()` still works after the patches (the fixture calls it), on the same DuckDB."""
    import fakesnow

    assert callable(fakesnow.server)
    assert fakesnow_server["port"] != server["port"]
    first, second = open_session(server), open_session(fakesnow_server)
    try:
        first.create_dataframe(frame([5], ["e"])).write.save_as_table("ML.EMU_SHARED", mode="overwrite")
        assert second.table("ML.EMU_SHARED").collect() == [Row(ID=5, NAME="e")]
    finally:
        first.close()
        second.close()


def test_apply_patches_is_idempotent(session: Session) -> None:
    apply_patches()
    apply_patches()
    assert session.create_dataframe(frame([1], ["a"])).collect() == [Row(ID=1, NAME="a")]


def test_main_serves_other_processes() -> None:
    """`python -m tests.snowflake.emulator --port N` prints its kwargs; SNOWFLAKE_* variables reach it."""
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "tests.snowflake.emulator", "--port", str(port)],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert process.stdout is not None
        kwargs = json.loads(process.stdout.readline())
        assert kwargs["port"] == port and kwargs["host"] == "127.0.0.1"
        env = snowflake_env(kwargs)
        assert env == {
            "SNOWFLAKE_ACCOUNT": "fakesnow",
            "SNOWFLAKE_USER": "fake",
            "SNOWFLAKE_PASSWORD": "snow",
            "SNOWFLAKE_HOST": "127.0.0.1",
            "SNOWFLAKE_PORT": str(port),
            "SNOWFLAKE_PROTOCOL": "http",
            "SNOWFLAKE_DATABASE": "PODIUM",
            "SNOWFLAKE_SCHEMA": "ML",
        }
        # what a client builds from the variables: no network_timeout, so errors must not be retried
        params = {key.removeprefix("SNOWFLAKE_").lower(): value for key, value in env.items()}
        writer, reader = open_session(params), open_session(params)
        try:
            writer.create_dataframe(frame([1, 2], ["a", "b"])).write.save_as_table(
                "EMU_REMOTE", mode="overwrite"
            )
            assert reader.table("PODIUM.ML.EMU_REMOTE").sort("ID").collect() == [
                Row(ID=1, NAME="a"),
                Row(ID=2, NAME="b"),
            ]
            with pytest.raises(ProgrammingError, match="000603"):
                reader.connection.cursor().execute(
                    "MERGE INTO EMU_REMOTE USING (VALUES (1)) ON ID = 1 WHEN MATCHED THEN DELETE"
                )
        finally:
            writer.close()
            reader.close()
    finally:
        process.terminate()
        assert process.wait(timeout=30) == 0
