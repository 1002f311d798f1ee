"""The Snowpark backend of the warehouse seam, tested without a Snowflake account.

Two emulators each show part of it:

- fakesnow's HTTP server, with its gaps closed by tests/snowflake/emulator.py, serves a real
  Snowpark Session over the real Snowflake connector on loopback. It shows the SQL path:
  `execute`, `query` with `?` bound values, `batches` streamed through `to_pandas_batches`,
  `columns`, one-line WarehouseErrors, Snowflake-dialect SQL passed through as written, and
  `SnowparkWarehouse.connect` logging in from SNOWFLAKE_* variables. Uploads (`write`) run
  through it in tests/snowflake/. It answers the SQL by translating it to DuckDB, so it shows
  that the backend passes the dialect through untouched, not what Snowflake itself returns.
- Snowpark local testing (`local_testing=True`) has no `session.sql`, but runs the DataFrame
  calls `write` is made of: `create_dataframe` of a pandas frame, `save_as_table` and
  `Table.merge`. It shows replace / append / merge and that ingest's Arrow-backed frames with NA
  go in. It cannot show the real upload (`write_pandas` to a temporary stage and table),
  Snowflake's type inference for the uploaded frame, or that a failed write leaves the target
  intact (its MERGE accepts and adds a column that Snowflake would refuse).

What neither shows is listed in the README as unproven without an account.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from datetime import date

import pandas as pd
import pyarrow as pa
import pytest
from snowflake.snowpark import Session

from pipelines.config import SnowflakeConfig
from pipelines.errors import WarehouseError
from pipelines.warehouse.snowpark import ENV_KEYS, SnowparkWarehouse, connection_parameters, timeouts

SECRET = "hunter2-not-a-real-password"


@pytest.fixture(scope="module")
def sql_wh(fakesnow_server: dict) -> Iterator[SnowparkWarehouse]:
    """The backend over a real Snowpark Session talking to fakesnow, with database PODIUM, schema ML."""
    session = Session.builder.configs(fakesnow_server | {"database": "PODIUM", "schema": "PUBLIC"}).create()
    wh = SnowparkWarehouse(session)
    wh.execute("CREATE DATABASE IF NOT EXISTS PODIUM")
    wh.execute("CREATE SCHEMA IF NOT EXISTS PODIUM.ML")
    yield wh
    wh.close()


@pytest.fixture
def local_wh() -> Iterator[SnowparkWarehouse]:
    """The backend over a fresh Snowpark local-testing Session (no SQL, DataFrame API only)."""
    wh = SnowparkWarehouse(Session.builder.config("local_testing", True).create())
    yield wh
    wh.close()


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """No SNOWFLAKE_* variable from the machine running the tests leaks in."""
    for key in (*ENV_KEYS, "default_connection_name"):
        monkeypatch.delenv(f"SNOWFLAKE_{key.upper()}", raising=False)
    return monkeypatch


def frame(keys: list[int], value: str) -> pd.DataFrame:
    return pd.DataFrame({"K": keys, "V": [f"{value}{k}" for k in keys]})


def rows(wh: SnowparkWarehouse, table: str = "ML.T") -> list[tuple]:
    """A local-testing table's rows ordered by K (local testing has no `query`)."""
    return [tuple(r) for r in wh.session.table(table).sort("K").collect()]


def records(df: pd.DataFrame) -> list[tuple]:
    """A query result as tuples, with NULL as None whatever pandas made of it."""
    return [tuple(r) for r in df.astype(object).where(df.notna(), None).itertuples(index=False)]


def ingest_frame() -> pd.DataFrame:
    """A frame as ingest makes it: Arrow-backed columns with nulls, plus a nullable Int64."""
    table = pa.table(
        {
            "K": pa.array([1, 2, 3], pa.int64()),
            "N": pa.array([10, None, 30], pa.int64()),
            "F": pa.array([1.5, None, 2.5], pa.float64()),
            "S": pa.array(["x", None, "z"], pa.string()),
            "D": pa.array([date(2024, 1, 1), None, date(2024, 1, 3)], pa.date32()),
            "B": pa.array([True, None, False], pa.bool_()),
        }
    )
    df = table.to_pandas(types_mapper=pd.ArrowDtype)
    df["I"] = pd.array([7, None, 9], dtype="Int64")
    return df


# --- SQL against fakesnow's server -----------------------------------------------------


def test_execute_creates_and_inserts_with_bound_values(sql_wh: SnowparkWarehouse) -> None:
    sql_wh.execute("CREATE OR REPLACE TABLE ML.E (K INT, V VARCHAR)")
    sql_wh.execute("INSERT INTO ML.E (K, V) VALUES (?, ?), (?, ?)", [1, "a", 2, "b"])
    assert records(sql_wh.query("SELECT K, V FROM ML.E ORDER BY K")) == [(1, "a"), (2, "b")]


def test_query_binds_values(sql_wh: SnowparkWarehouse) -> None:
    hostile = "a1' OR '1'='1"
    sql_wh.execute("CREATE OR REPLACE TABLE ML.Q (K INT, V VARCHAR)")
    sql_wh.execute("INSERT INTO ML.Q VALUES (1, 'a1'), (2, 'a2'), (3, 'a3')")
    assert sql_wh.query("SELECT COUNT(*) AS N FROM ML.Q WHERE V = ?", [hostile]).N[0] == 0
    assert sql_wh.query("SELECT COUNT(*) AS N FROM ML.Q WHERE K >= ?", [2]).N[0] == 2
    sql_wh.execute("INSERT INTO ML.Q VALUES (?, ?)", [4, hostile])
    assert records(sql_wh.query("SELECT K, V FROM ML.Q WHERE V = ?", [hostile])) == [(4, hostile)]


def test_batches_are_rechunked_to_exact_sizes(sql_wh: SnowparkWarehouse) -> None:
    sql_wh.execute(
        "CREATE OR REPLACE TABLE ML.BIG AS SELECT SEQ4() AS K FROM TABLE(GENERATOR(ROWCOUNT => 10000))"
    )
    frames = list(sql_wh.batches("SELECT K FROM ML.BIG WHERE K >= ? ORDER BY K", rows=4096, params=[0]))
    assert [len(f) for f in frames] == [4096, 4096, 1808]
    assert pd.concat(frames, ignore_index=True).K.tolist() == list(range(10_000))
    with pytest.raises(WarehouseError, match="positive"):
        next(sql_wh.batches("SELECT 1", rows=0))


def test_columns_are_upper_cased(sql_wh: SnowparkWarehouse) -> None:
    sql_wh.execute("CREATE OR REPLACE TABLE ML.C (race_id INT, driver VARCHAR)")
    columns = sql_wh.columns("ml.c")
    assert list(columns) == ["RACE_ID", "DRIVER"]
    assert columns == {"RACE_ID": "BIGINT", "DRIVER": "VARCHAR"}


def test_missing_table_is_a_warehouse_error(sql_wh: SnowparkWarehouse) -> None:
    with pytest.raises(WarehouseError, match=r"ML\.MISSING does not exist"):
        sql_wh.columns("ML.MISSING")
    with pytest.raises(WarehouseError, match="does not exist"):
        sql_wh.query("SELECT * FROM ML.MISSING")


@pytest.mark.parametrize("method", ["execute", "query", "batches"])
def test_bad_sql_is_a_one_line_warehouse_error(sql_wh: SnowparkWarehouse, method: str) -> None:
    run = {
        "execute": sql_wh.execute,
        "query": sql_wh.query,
        "batches": lambda sql: next(sql_wh.batches(sql, rows=10)),
    }[method]
    with pytest.raises(WarehouseError) as caught:
        run("SELEC 1 FROM ML.Q")
    message = str(caught.value)
    assert message and "\n" not in message and "Traceback" not in message


def test_snowflake_dialect_runs_as_written(sql_wh: SnowparkWarehouse) -> None:
    sql_wh.execute(
        "CREATE OR REPLACE TABLE ML.RACES AS SELECT * FROM VALUES "
        "('a', '2024-01-01'::DATE, 1, NULL), ('a', '2024-01-11'::DATE, 3, 10), "
        "('a', '2024-02-01'::DATE, NULL, 5), ('b', '2024-01-05'::DATE, 2, NULL) "
        "AS v(DRIVER, RACE_DATE, POS, PTS)"
    )
    result = sql_wh.query(
        """
        SELECT DRIVER,
               IFF(POS <= 2, 1, 0) AS PODIUM,
               ZEROIFNULL(PTS) AS PTS,
               COUNT_IF(POS <= 2) OVER (PARTITION BY DRIVER) AS PODIUMS,
               DATEDIFF('day', LAG(RACE_DATE) OVER (PARTITION BY DRIVER ORDER BY RACE_DATE), RACE_DATE)
                   AS GAP,
               AVG(POS) OVER (PARTITION BY DRIVER ORDER BY RACE_DATE
                              ROWS BETWEEN 5 PRECEDING AND 1 PRECEDING) AS PRIOR_POS
        FROM ML.RACES
        QUALIFY ROW_NUMBER() OVER (PARTITION BY DRIVER ORDER BY RACE_DATE DESC) <= 2
        ORDER BY DRIVER, RACE_DATE
        """
    )
    assert records(result) == [
        ("a", 0, 10, 1, 10, 1.0),
        ("a", 0, 5, 1, 21, 2.0),
        ("b", 1, 0, 1, None, None),
    ]


# --- writes against Snowpark local testing -------------------------------------------------


def test_replace_creates_then_replaces(local_wh: SnowparkWarehouse) -> None:
    assert local_wh.write(frame([1, 2], "a"), "ml.t", mode="replace") == 2
    assert rows(local_wh) == [(1, "a1"), (2, "a2")]
    local_wh.write(frame([3], "b"), "ML.T", mode="replace")
    assert rows(local_wh) == [(3, "b3")]


def test_append_matches_columns_by_name(local_wh: SnowparkWarehouse) -> None:
    local_wh.write(frame([1], "a"), "ML.T", mode="append")
    assert local_wh.write(frame([2], "b")[["V", "K"]], "ML.T", mode="append") == 1
    assert rows(local_wh) == [(1, "a1"), (2, "b2")]


def test_merge_updates_matching_keys_and_inserts_new_ones(local_wh: SnowparkWarehouse) -> None:
    local_wh.write(frame([1, 2], "a"), "ML.T", mode="merge", keys=["K"])  # creates the table
    assert local_wh.write(frame([2, 3], "b"), "ML.T", mode="merge", keys=["K"]) == 2
    assert rows(local_wh) == [(1, "a1"), (2, "b2"), (3, "b3")]


@pytest.mark.parametrize("table", ["ML.T", "PODIUM.ML.T", "T"])
def test_one_two_and_three_part_names(local_wh: SnowparkWarehouse, table: str) -> None:
    local_wh.write(frame([1], "a"), table.lower(), mode="replace")
    local_wh.write(frame([1, 2], "b"), table, mode="merge", keys=["K"])
    assert rows(local_wh, table) == [(1, "b1"), (2, "b2")]
    assert local_wh.columns(table) == {"K": "BIGINT", "V": "VARCHAR"}


def test_arrow_frame_with_nulls_is_written_with_its_types(local_wh: SnowparkWarehouse) -> None:
    df = ingest_frame()
    assert local_wh.write(df, "RAW.R", mode="replace") == 3
    assert local_wh.columns("RAW.R") == {
        "K": "BIGINT",
        "N": "BIGINT",
        "F": "DOUBLE",
        "S": "VARCHAR",
        "D": "DATE",
        "B": "BOOLEAN",
        "I": "BIGINT",
    }
    assert rows(local_wh, "RAW.R")[1] == (2, None, None, None, None, None, None)
    assert rows(local_wh, "RAW.R")[0] == (1, 10, 1.5, "x", date(2024, 1, 1), True, 7)


def test_arrow_frame_with_nulls_merges_and_appends(local_wh: SnowparkWarehouse) -> None:
    df = ingest_frame()
    local_wh.write(df, "RAW.R", mode="replace")
    update = df.iloc[[1]].copy()
    update["F"] = pd.array([9.5], dtype=df["F"].dtype)
    assert local_wh.write(update, "RAW.R", mode="merge", keys=["K"]) == 1
    assert [(r[0], r[2]) for r in rows(local_wh, "RAW.R")] == [(1, 1.5), (2, 9.5), (3, 2.5)]
    local_wh.write(df, "RAW.R", mode="append")
    assert len(rows(local_wh, "RAW.R")) == 6


@pytest.mark.parametrize(
    ("mode", "keys", "message"),
    [
        ("upsert", [], "unknown write mode"),
        ("merge", [], "needs key columns"),
        ("merge", ["NOPE"], "not columns"),
    ],
)
def test_bad_write_arguments(local_wh: SnowparkWarehouse, mode: str, keys: list[str], message: str) -> None:
    with pytest.raises(WarehouseError, match=message):
        local_wh.write(frame([1], "a"), "ML.T", mode=mode, keys=keys)  # type: ignore[arg-type]


@pytest.mark.parametrize("table", ['ML.T"; DROP TABLE X; --', "ML.T;", "ML.'T'", "ML T", "A.B.C.D"])
def test_injected_table_name_is_refused(local_wh: SnowparkWarehouse, table: str) -> None:
    with pytest.raises(WarehouseError, match="not a valid table name"):
        local_wh.write(frame([1], "a"), table, mode="replace")


# --- connection parameters ---------------------------------------------------------------------


def test_parameters_from_environment_override_profile_defaults() -> None:
    config = SnowflakeConfig(
        backend="snowflake", database="PODIUM", role="PODIUM_ROLE", warehouse="PODIUM_WH"
    )
    environ = {
        "SNOWFLAKE_ACCOUNT": "xy12345",
        "SNOWFLAKE_USER": "ANALYST",
        "SNOWFLAKE_PASSWORD": SECRET,
        "SNOWFLAKE_HOST": "xy12345.example.com",
        "SNOWFLAKE_PORT": "8443",
        "SNOWFLAKE_PROTOCOL": "https",
        "SNOWFLAKE_DATABASE": "SANDBOX",
        "SNOWFLAKE_UNRELATED": "ignored",
        "PATH": "/usr/bin",
    }
    assert connection_parameters(config, environ) == {
        "account": "xy12345",
        "user": "ANALYST",
        "password": SECRET,
        "host": "xy12345.example.com",
        "port": "8443",
        "protocol": "https",
        "database": "SANDBOX",
        "role": "PODIUM_ROLE",
        "warehouse": "PODIUM_WH",
    } | timeouts(config)


def test_the_profile_bounds_every_wait() -> None:
    config = SnowflakeConfig(backend="snowflake", login_timeout=5, network_timeout=30, statement_timeout=90)
    assert timeouts(config) == {
        "login_timeout": 5,
        "socket_timeout": 5,
        "network_timeout": 30,
        "session_parameters": {"STATEMENT_TIMEOUT_IN_SECONDS": 90},
    }


def test_connection_name_is_passed_through() -> None:
    config = SnowflakeConfig(backend="snowflake", connection_name="podium", database="PODIUM")
    assert connection_parameters(config, {}) == {
        "connection_name": "podium",
        "database": "PODIUM",
    } | timeouts(config)
    default = SnowflakeConfig(backend="snowflake")
    environ = {"SNOWFLAKE_DEFAULT_CONNECTION_NAME": "dev"}
    assert connection_parameters(default, environ) == {"connection_name": "dev"} | timeouts(default)
    assert connection_parameters(config, environ)["connection_name"] == "podium"


def test_no_connection_is_a_clear_error_without_secrets(caplog: pytest.LogCaptureFixture) -> None:
    environ = {"SNOWFLAKE_USER": "ANALYST", "SNOWFLAKE_PASSWORD": SECRET}
    with caplog.at_level(logging.DEBUG), pytest.raises(WarehouseError) as caught:
        connection_parameters(SnowflakeConfig(backend="snowflake"), environ)
    assert "connection_name" in str(caught.value) and "SNOWFLAKE_ACCOUNT" in str(caught.value)
    assert SECRET not in str(caught.value) and SECRET not in repr(caught.value.args)
    assert SECRET not in caplog.text
    assert environ == {"SNOWFLAKE_USER": "ANALYST", "SNOWFLAKE_PASSWORD": SECRET}


def test_failed_connect_is_a_warehouse_error_without_secrets(
    clean_env: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    clean_env.setenv("SNOWFLAKE_PASSWORD", SECRET)
    config = SnowflakeConfig(backend="snowflake", connection_name="no_such_connection")
    with caplog.at_level(logging.DEBUG), pytest.raises(WarehouseError, match="could not connect") as caught:
        SnowparkWarehouse.connect(config)
    assert "no_such_connection" in str(caught.value)
    assert SECRET not in str(caught.value) and SECRET not in caplog.text


# --- end to end: connect() from SNOWFLAKE_* variables to fakesnow -------------------------------


def test_connect_from_environment(
    fakesnow_server: dict, clean_env: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    env = {
        "SNOWFLAKE_ACCOUNT": "fakesnow",
        "SNOWFLAKE_USER": fakesnow_server["user"],
        "SNOWFLAKE_PASSWORD": SECRET,  # fakesnow takes any password
        "SNOWFLAKE_HOST": "127.0.0.1",
        "SNOWFLAKE_PORT": str(fakesnow_server["port"]),  # variables are strings; the connector takes them
        "SNOWFLAKE_PROTOCOL": "http",
        "SNOWFLAKE_SCHEMA": "PUBLIC",
    }
    for key, value in env.items():
        clean_env.setenv(key, value)
    with caplog.at_level(logging.DEBUG):
        wh = SnowparkWarehouse.connect(SnowflakeConfig(backend="snowflake", database="PODIUM"))
    try:
        assert wh.query("SELECT CURRENT_DATABASE() AS D, CURRENT_SCHEMA() AS S").iloc[0].tolist() == [
            "PODIUM",
            "PUBLIC",
        ]
        wh.execute("CREATE DATABASE IF NOT EXISTS PODIUM")
        wh.execute("CREATE OR REPLACE TABLE PODIUM.PUBLIC.CONNECTED (A INT)")
        assert list(wh.columns("PODIUM.PUBLIC.CONNECTED")) == ["A"]
        assert SECRET not in caplog.text
    finally:
        wh.close()


def test_write_chunks_merges_once_per_interval(local_wh: SnowparkWarehouse) -> None:
    local_wh.write(frame([1, 2], "a"), "ML.T", mode="merge", keys=["K"])
    commits: list[int] = []
    stream = iter([frame([2, 3], "b"), frame([4], "b"), frame([5], "b")])
    written = local_wh.write_chunks(
        stream, "ML.T", keys=["K"], new_only=True, commit_rows=3, committed=lambda n, s: commits.append(n)
    )
    assert written == 4 and commits == [3, 4]  # two MERGEs for three chunks
    assert rows(local_wh) == [(1, "a1"), (2, "b2"), (3, "b3"), (4, "b4"), (5, "b5")]
