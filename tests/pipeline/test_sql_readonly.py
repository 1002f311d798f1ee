"""`podium sql` without --write reads, and only reads: hostile statements change and reveal nothing.

On DuckDB the file is opened read-only with external access disabled (and the configuration locked), so
no table, the registry's audit tables or a local file can be changed or read whatever the SQL text says;
the parsed-tree check refuses writes before anything opens. On Snowflake that tree check is Podium's guard,
tested here as a pure function. `--write` runs exactly one statement.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import duckdb
import pandas as pd
import pytest

from pipelines.config import Profile
from pipelines.errors import WarehouseError
from pipelines.warehouse import connect, dialect
from pipelines.warehouse.duckdb import DuckDBWarehouse
from tests.helpers import duckdb_profile, podium

SECRET = "TOPSECRET-podium-7f3a"  # in every local file a statement tries to read
PASSWD = "root:"  # the first line of /etc/passwd

# Statements that change the warehouse, the session or the files next to it: each must be refused.
# {tmp} is the test's own folder.
WRITES = {
    "insert": "INSERT INTO ML.T VALUES (9, 'z')",
    "update": "UPDATE ML.T SET NAME = 'z'",
    "delete": "DELETE FROM ML.T",
    "merge": "MERGE INTO ML.T t USING (SELECT 1 AS K) s ON t.K = s.K WHEN MATCHED THEN DELETE",
    "create-table": "CREATE TABLE ML.X (A INT)",
    "create-table-as": "CREATE TABLE ML.X AS SELECT * FROM ML.T",
    "create-view": "CREATE VIEW ML.V AS SELECT * FROM ML.T",
    "create-schema": "CREATE SCHEMA EVIL",
    "drop": "DROP TABLE ML.MODEL_PROMOTIONS",
    "alter": "ALTER TABLE ML.T ADD COLUMN EVIL INT",
    "truncate": "TRUNCATE TABLE ML.T",
    "cte-update": (
        "WITH u AS (UPDATE ML.MODEL_PROMOTIONS SET MODEL_VERSION = '2' RETURNING *) SELECT count(*) FROM u"
    ),
    "cte-delete": "WITH d AS (DELETE FROM ML.T RETURNING *) SELECT count(*) FROM d",
    "cte-insert": "WITH i AS (INSERT INTO ML.T VALUES (9, 'z') RETURNING *) SELECT count(*) FROM i",
    "select-into": "SELECT * INTO ML.X FROM ML.T",
    "copy-to": "COPY ML.T TO '{tmp}/out.csv'",
    "copy-from": "COPY ML.T FROM '{tmp}/in.csv'",
    "copy-to-wal": "COPY ML.T TO '{tmp}/warehouse.duckdb.wal'",  # DuckDB's own file: the tree check
    "attach": "ATTACH '{tmp}/other.duckdb' AS other",
    "install": "INSTALL httpfs",
    "load": "LOAD httpfs",
    "pragma": "PRAGMA enable_profiling",
    "set": "SET enable_external_access = true",
    "set-variable": "SET x = 1",
    "call": "CALL pragma_version()",
    "checkpoint": "CHECKPOINT",
    "begin": "BEGIN",
    "multi-statement": "SELECT 1; DROP TABLE ML.T",
    "multi-statement-reads": "SELECT 1; SELECT 2",
}

# Statements that read local files: each must be refused and print none of the file.
FILE_READS = {
    "read_text-passwd": ("SELECT * FROM read_text('/etc/passwd')", PASSWD),
    "read_text": ("SELECT content FROM read_text('{tmp}/secret.txt')", SECRET),
    "read_blob": ("SELECT * FROM read_blob('{tmp}/mlflow.db')", SECRET),
    "read_csv": ("SELECT * FROM read_csv('{tmp}/in.csv')", SECRET),
    "read_csv-passwd": ("SELECT * FROM read_csv('/etc/passwd', sep = ':')", PASSWD),
    "file-as-table-passwd": ("SELECT * FROM '/etc/passwd'", PASSWD),
    "file-as-table": ("SELECT * FROM '{tmp}/in.csv'", SECRET),
    "read_csv_auto": ("SELECT * FROM read_csv_auto('{tmp}/secret.txt')", SECRET),
    "read_json": ("SELECT * FROM read_json_objects('{tmp}/secret.txt')", SECRET),
}

# Reads that must run on the read-only warehouse: (statement, what the CSV output holds).
READS = {
    "values": ("VALUES (1, 2)", "1,2"),
    "pivot": ("PIVOT ML.T ON NAME USING COUNT(*)", "a,b\n1,1"),
    "pivot-clause": ("SELECT * FROM ML.T PIVOT (COUNT(K) FOR NAME IN ('a', 'b'))", "1,1"),
    "cte": ("WITH c AS (SELECT * FROM ML.T WHERE K > 1) SELECT count(*) AS N FROM c", "N\n1"),
    "union": ("SELECT K FROM ML.T UNION ALL SELECT 9 ORDER BY K", "K\n1\n2\n9"),
    "describe": ("DESCRIBE ML.T", "NAME"),
    "show": ("SHOW TABLES", "name"),
    "promotions": ("SELECT MODEL_VERSION FROM ML.MODEL_PROMOTIONS", "MODEL_VERSION\n1"),
}


@pytest.fixture
def small(tmp_path: Path) -> Profile:
    """A DuckDB warehouse with ML.T, an ML.MODEL_PROMOTIONS-like audit table, and secret files beside it."""
    path = tmp_path / "warehouse.duckdb"
    warehouse = DuckDBWarehouse(path)
    try:
        warehouse.write(pd.DataFrame({"K": [1, 2], "NAME": ["a", "b"]}), "ML.T", mode="replace")
        promotions = pd.DataFrame(
            {
                "MODEL_NAME": ["f1_podium"],
                "MODEL_VERSION": ["1"],
                "ALIAS": ["champion"],
                "ACTION": ["promote"],
            }
        )
        warehouse.write(promotions, "ML.MODEL_PROMOTIONS", mode="replace")
    finally:
        warehouse.close()
    (tmp_path / "secret.txt").write_text(f"{SECRET}\n")
    (tmp_path / "mlflow.db").write_bytes(f"SQLite format 3\0{SECRET}".encode())
    (tmp_path / "in.csv").write_text(f"K,NAME\n7,{SECRET}\n")
    (tmp_path / "profile.yaml").write_text(f"warehouse:\n  backend: duckdb\n  path: {path}\n")
    return duckdb_profile(path)


def state(profile: Profile) -> dict:
    """Everything a statement could change: the file's bytes, its schemas, tables and rows, the folder."""
    path = Path(profile.warehouse.path)
    with duckdb.connect(str(path), read_only=True) as con:
        schemata = con.execute("SELECT schema_name FROM information_schema.schemata ORDER BY 1").fetchall()
        tables = con.execute(
            "SELECT table_schema, table_name, table_type FROM information_schema.tables ORDER BY 1, 2"
        ).fetchall()
        columns = con.execute(
            "SELECT table_schema, table_name, column_name, data_type FROM information_schema.columns "
            "ORDER BY 1, 2, ordinal_position"
        ).fetchall()
        rows = {
            f"{schema}.{name}": con.execute(f'SELECT * FROM "{schema}"."{name}" ORDER BY ALL').fetchall()
            for schema, name, _ in tables
        }
    return {
        "sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
        "schemata": schemata,
        "tables": tables,
        "columns": columns,
        "rows": rows,
        "files": sorted(p.name for p in path.parent.iterdir()),
    }


def sql(args: list[str], profile: Profile, capsys, monkeypatch) -> tuple[int, str, str]:
    profile_path = str(Path(profile.warehouse.path).parent / "profile.yaml")
    return podium(["sql", *args, "-p", profile_path], capsys, monkeypatch)


def one_error_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), err
    assert "Traceback" not in err
    return lines[0]


@pytest.mark.parametrize("statement", WRITES.values(), ids=WRITES.keys())
def test_a_write_is_refused_without_write_and_changes_nothing(
    statement: str, small: Profile, tmp_path: Path, capsys, monkeypatch
) -> None:
    before = state(small)
    code, out, err = sql([statement.format(tmp=tmp_path)], small, capsys, monkeypatch)
    assert code == 1, f"ran: {out}"
    line = one_error_line(err)
    assert "--write" in line or "Fix the SQL's syntax" in line, line
    assert state(small) == before


@pytest.mark.parametrize(("statement", "secret"), FILE_READS.values(), ids=FILE_READS.keys())
def test_a_local_file_cannot_be_read(
    statement: str, secret: str, small: Profile, tmp_path: Path, capsys, monkeypatch
) -> None:
    before = state(small)
    code, out, err = sql([statement.format(tmp=tmp_path)], small, capsys, monkeypatch)
    assert code == 1, f"ran: {out}"
    line = one_error_line(err)
    assert secret not in out + err
    assert "read-only" in line or "does not exist" in line, line
    assert state(small) == before


@pytest.mark.parametrize(("statement", "expected"), READS.values(), ids=READS.keys())
def test_a_read_runs_on_the_read_only_warehouse(
    statement: str, expected: str, small: Profile, capsys, monkeypatch
) -> None:
    before = state(small)
    code, out, err = sql([statement, "--format", "csv"], small, capsys, monkeypatch)
    assert code == 0, err
    assert expected in out, out
    assert state(small) == before


def test_a_read_sees_external_access_disabled_and_the_configuration_locked(
    small: Profile, capsys, monkeypatch
) -> None:
    query = (
        "SELECT current_setting('enable_external_access') AS E, current_setting('lock_configuration') AS L, "
        "current_setting('access_mode') AS M"
    )
    code, out, err = sql([query, "--format", "json"], small, capsys, monkeypatch)
    assert code == 0, err
    assert json.loads(out) == [{"E": False, "L": True, "M": "read_only"}]


def test_a_read_shares_the_file_with_another_reader_in_this_process(
    small: Profile, capsys, monkeypatch
) -> None:
    """A plain read takes no write lock: it opens alongside a reader already holding the file."""
    with connect(small, read_only=True) as reader:
        code, out, err = sql(["SELECT count(*) AS N FROM ML.T", "-f", "csv"], small, capsys, monkeypatch)
        assert code == 0, err
        assert out.split() == ["N", "2"]
        assert int(reader.query("SELECT count(*) AS N FROM ML.T").N[0]) == 2


def test_a_read_does_not_wait_for_another_process_that_only_reads(
    small: Profile, capsys, monkeypatch
) -> None:
    path = small.warehouse.path
    hold = (
        f"import duckdb, time; c = duckdb.connect({str(path)!r}, read_only=True); print('held', flush=True); "
    )
    hold += "time.sleep(30)"
    holder = subprocess.Popen([sys.executable, "-c", hold], stdout=subprocess.PIPE, text=True)

    def no_wait(seconds: float) -> None:
        raise AssertionError("podium sql waited for a lock although the other process only reads")

    monkeypatch.setattr(
        "pipelines.warehouse.duckdb.time", SimpleNamespace(monotonic=time.monotonic, sleep=no_wait)
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        code, out, err = sql(["SELECT count(*) AS N FROM ML.T", "-f", "csv"], small, capsys, monkeypatch)
        assert code == 0, err
        assert out.split() == ["N", "2"]
    finally:
        holder.kill()
        holder.wait()


def test_a_read_waits_for_another_process_s_write_and_says_so(
    small: Profile, capsys, monkeypatch, caplog: pytest.LogCaptureFixture
) -> None:
    path = small.warehouse.path
    hold = f"import duckdb, time; c = duckdb.connect({str(path)!r}); print('held', flush=True); time.sleep(2)"
    holder = subprocess.Popen([sys.executable, "-c", hold], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        started = time.monotonic()
        with caplog.at_level("WARNING"):
            code, out, err = sql(["SELECT count(*) AS N FROM ML.T", "-f", "csv"], small, capsys, monkeypatch)
        assert code == 0, err
        assert out.split() == ["N", "2"]
        assert "another process writes it" in caplog.text + err
        assert time.monotonic() - started > 1, "it read while the writer still held the file"
    finally:
        holder.kill()
        holder.wait()


def test_write_refuses_more_than_one_statement(small: Profile, capsys, monkeypatch) -> None:
    before = state(small)
    code, out, err = sql(
        ["--write", "INSERT INTO ML.T VALUES (9, 'z'); DROP TABLE ML.MODEL_PROMOTIONS"],
        small,
        capsys,
        monkeypatch,
    )
    assert code == 1, out
    line = one_error_line(err)
    assert "exactly one statement" in line and "holds 2" in line and "one at a time" in line
    assert state(small) == before


def test_write_runs_one_statement(small: Profile, capsys, monkeypatch) -> None:
    code, _, err = sql(["--write", "DELETE FROM ML.T WHERE K = 1"], small, capsys, monkeypatch)
    assert code == 0, err
    assert state(small)["rows"]["ML.T"] == [(2, "b")]


# DuckDB's own SQL, run on the connection past both the tree check and the Snowflake translation. (The
# connection still allows COPY ... TO DuckDB's own sidecar files, `<file>.wal` and the spill folder: the tree
# check refuses every COPY, as the `copy-to-wal` case above shows.)
RAW_DUCKDB = [
    "WITH u AS (UPDATE ML.MODEL_PROMOTIONS SET MODEL_VERSION = '2' RETURNING *) SELECT count(*) FROM u",
    "CREATE TABLE ML.X AS SELECT 1 AS A",
    "SELECT * FROM read_text('{tmp}/secret.txt')",
    "SELECT * FROM read_blob('{tmp}/mlflow.db')",
    "SELECT * FROM read_csv('{tmp}/in.csv')",
    "SELECT * FROM '{tmp}/in.csv'",
    "SELECT * FROM glob('{tmp}/*')",
    "COPY ML.T TO '{tmp}/out.csv'",
    "COPY ML.T FROM '{tmp}/in.csv'",
    "EXPORT DATABASE '{tmp}/export'",
    "ATTACH '{tmp}/other.duckdb' AS other",
    "INSTALL httpfs",
    "LOAD httpfs",
    "SET enable_external_access = true",
    "RESET enable_external_access",
    "SET lock_configuration = false",
    "SET memory_limit = '64GB'",
]


@pytest.mark.parametrize("statement", RAW_DUCKDB)
def test_the_read_only_connection_refuses_on_its_own(statement: str, small: Profile, tmp_path: Path) -> None:
    """On DuckDB the guarantee is the connection, not the SQL check: what the check would let by fails too."""
    before = state(small)
    with connect(small, read_only=True) as warehouse:
        assert isinstance(warehouse, DuckDBWarehouse)
        with pytest.raises(duckdb.Error) as refused:
            warehouse._con.execute(statement.format(tmp=tmp_path)).fetchall()
        assert SECRET not in str(refused.value)
        assert warehouse.query("SELECT count(*) AS N FROM ML.T").N[0] == 2  # the connection still reads
    assert state(small) == before


# --- the tree check on Snowflake SQL: a pure function ------------------------------------------------

SNOWFLAKE_WRITES = [
    statement.format(tmp="/tmp") for statement in WRITES.values() if not statement.startswith("ATTACH")
] + [
    "INSERT OVERWRITE INTO ML.T SELECT * FROM ML.T",
    "COPY INTO ML.T FROM @stage",
    "COPY INTO @stage FROM ML.T",
    "PUT file:///tmp/x.csv @stage",
    "GET @stage file:///tmp/",
    "REMOVE @stage",
    "USE ROLE ACCOUNTADMIN",
    "USE SCHEMA ML",
    "GRANT SELECT ON ML.T TO ROLE PUBLIC",
    "UNDROP TABLE ML.T",
    "COMMENT ON TABLE ML.T IS 'x'",
    "COMMIT",
    "ROLLBACK",
    "CALL SYSTEM$WAIT(1)",
    "EXECUTE IMMEDIATE 'DROP TABLE ML.T'",
    "SELECT SYSTEM$CANCEL_ALL_QUERIES(1)",
    "SELECT 1 FOR UPDATE",
    "SELECT * FROM (WITH d AS (DELETE FROM ML.T RETURNING *) SELECT * FROM d)",
    "SELECT K FROM ML.T UNION SELECT K FROM (WITH u AS (UPDATE ML.T SET K = 0 RETURNING K) SELECT K FROM u)",
    "SHOW GRANTS",  # sqlglot cannot parse it: unparsed text is never taken for a read
]

SNOWFLAKE_READS = [
    "SELECT 1",
    "select * from ML.T where K > 1",
    "VALUES (1, 2)",
    "SELECT * FROM (VALUES (1), (2)) v(a)",
    "PIVOT ML.T ON NAME USING SUM(K)",
    "SELECT * FROM ML.T PIVOT (SUM(K) FOR NAME IN ('a', 'b'))",
    "SELECT * FROM ML.T UNPIVOT (V FOR C IN (A, B))",
    "WITH c AS (SELECT * FROM ML.T) SELECT count(*) FROM c",
    "SELECT 1 UNION ALL SELECT 2",
    "(SELECT 1)",
    "DESCRIBE ML.T",
    "DESC TABLE ML.T",
    "SHOW TABLES",
    "SHOW TABLES IN SCHEMA ML",
    "SELECT * FROM TABLE(RESULT_SCAN(LAST_QUERY_ID()))",
    "SELECT 1;",
]


@pytest.mark.parametrize("statement", SNOWFLAKE_WRITES)
def test_snowflake_tree_check_refuses_every_write(statement: str) -> None:
    assert not dialect.reads_only(statement) or ";" in statement  # several reads: refused for their number
    with pytest.raises(WarehouseError) as refused:
        dialect.check_read(statement)
    message = str(refused.value)
    assert "\n" not in message
    assert "--write" in message and dialect.shown(statement) in message


@pytest.mark.parametrize("statement", ["ATTACH 'x.duckdb' AS x", "SELECT FROM WHERE ("])
def test_snowflake_tree_check_refuses_what_it_cannot_parse(statement: str) -> None:
    with pytest.raises(WarehouseError, match="could not parse"):
        dialect.check_read(statement)


@pytest.mark.parametrize("statement", SNOWFLAKE_READS)
def test_snowflake_tree_check_lets_reads_through(statement: str) -> None:
    assert dialect.reads_only(statement)
    dialect.check_read(statement)


def test_snowflake_check_one_counts_statements() -> None:
    dialect.check_one("DELETE FROM ML.T")
    for several in ("SELECT 1; SELECT 2", "DELETE FROM ML.T; DROP TABLE ML.T", ""):
        with pytest.raises(WarehouseError, match="exactly one statement per call"):
            dialect.check_one(several)


def test_a_long_statement_is_quoted_on_one_short_line() -> None:
    statement = "DELETE FROM ML.T\nWHERE K IN (" + ", ".join(map(str, range(200))) + ")"
    with pytest.raises(WarehouseError) as refused:
        dialect.check_read(statement)
    message = str(refused.value)
    assert "\n" not in message and "DELETE FROM ML.T WHERE K IN (0, 1" in message and len(message) < 250


def test_a_read_of_a_missing_warehouse_creates_no_file(tmp_path: Path, capsys, monkeypatch) -> None:
    missing = duckdb_profile(tmp_path / "nowhere" / "warehouse.duckdb")
    (tmp_path / "profile.yaml").write_text(
        f"warehouse:\n  backend: duckdb\n  path: {missing.warehouse.path}\n"
    )
    code, _, err = podium(
        ["sql", "select count(*) from ML.F1_FEATURES", "-p", str(tmp_path / "profile.yaml")],
        capsys,
        monkeypatch,
    )
    assert code == 1
    line = one_error_line(err)
    assert "F1_FEATURES` has nothing to read" in line and "does not exist" in line and "podium ingest" in line
    assert not (tmp_path / "nowhere").exists()
