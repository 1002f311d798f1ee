"""The DuckDB backend of the warehouse seam: bulk writes, atomicity, streaming reads."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from pipelines.errors import WarehouseError
from pipelines.warehouse.duckdb import DuckDBWarehouse


@pytest.fixture
def warehouse(tmp_path: Path) -> DuckDBWarehouse:
    wh = DuckDBWarehouse(tmp_path / "sub" / "w.duckdb")
    yield wh
    wh.close()


def frame(keys: list[int], value: str) -> pd.DataFrame:
    return pd.DataFrame({"K": keys, "V": [f"{value}{k}" for k in keys]})


def rows(wh: DuckDBWarehouse, table: str = "ML.T") -> list[tuple]:
    return [tuple(r) for r in wh.query(f"SELECT K, V FROM {table} ORDER BY K").itertuples(index=False)]


def test_replace_creates_schema_and_table(warehouse: DuckDBWarehouse) -> None:
    assert warehouse.write(frame([1, 2], "a"), "ml.t", mode="replace") == 2
    warehouse.write(frame([3], "b"), "ML.T", mode="replace")
    assert rows(warehouse) == [(3, "b3")]


def test_append_adds_rows(warehouse: DuckDBWarehouse) -> None:
    warehouse.write(frame([1], "a"), "ML.T", mode="append")
    warehouse.write(frame([2], "b"), "ML.T", mode="append")
    assert rows(warehouse) == [(1, "a1"), (2, "b2")]


def test_merge_updates_matching_keys_and_inserts_new_ones(warehouse: DuckDBWarehouse) -> None:
    warehouse.write(frame([1, 2], "a"), "ML.T", mode="merge", keys=["K"])
    warehouse.write(frame([2, 3], "b"), "ML.T", mode="merge", keys=["K"])
    assert rows(warehouse) == [(1, "a1"), (2, "b2"), (3, "b3")]


def test_append_matches_columns_by_name(warehouse: DuckDBWarehouse) -> None:
    warehouse.write(frame([1], "a"), "ML.T", mode="append")
    warehouse.write(frame([2], "b")[["V", "K"]], "ML.T", mode="append")
    assert rows(warehouse) == [(1, "a1"), (2, "b2")]


def test_failed_write_leaves_the_table_intact(warehouse: DuckDBWarehouse) -> None:
    warehouse.write(frame([1, 2], "a"), "ML.T", mode="replace")
    bad = pd.DataFrame({"K": [5], "V": ["x"], "EXTRA": [1.0]})
    with pytest.raises(WarehouseError, match="writing ML.T failed"):
        warehouse.write(bad, "ML.T", mode="merge", keys=["K"])
    assert rows(warehouse) == [(1, "a1"), (2, "a2")]


@pytest.mark.parametrize(
    ("mode", "keys", "message"),
    [
        ("upsert", [], "unknown write mode"),
        ("merge", [], "needs key columns"),
        ("merge", ["NOPE"], "not columns"),
    ],
)
def test_bad_write_arguments(warehouse: DuckDBWarehouse, mode: str, keys: list[str], message: str) -> None:
    with pytest.raises(WarehouseError, match=message):
        warehouse.write(frame([1], "a"), "ML.T", mode=mode, keys=keys)  # type: ignore[arg-type]


def test_injected_table_name_is_refused(warehouse: DuckDBWarehouse) -> None:
    with pytest.raises(WarehouseError, match="not a valid table name"):
        warehouse.write(frame([1], "a"), 'ML.T"; DROP TABLE X; --', mode="replace")


def test_query_binds_values(warehouse: DuckDBWarehouse) -> None:
    warehouse.write(frame([1, 2, 3], "a"), "ML.T", mode="replace")
    hostile = "a1' OR '1'='1"
    assert warehouse.query("SELECT COUNT(*) AS N FROM ML.T WHERE V = ?", [hostile]).N[0] == 0
    assert warehouse.query("SELECT COUNT(*) AS N FROM ML.T WHERE K >= ?", [2]).N[0] == 2


def test_batches_stream_in_chunks(warehouse: DuckDBWarehouse) -> None:
    warehouse.write(pd.DataFrame({"K": range(10_000)}), "ML.BIG", mode="replace")
    sizes = [len(b) for b in warehouse.batches("SELECT K FROM ML.BIG ORDER BY K", rows=4096)]
    assert sizes == [4096, 4096, 1808]
    with pytest.raises(WarehouseError, match="positive"):
        next(warehouse.batches("SELECT 1", rows=0))


def test_columns_and_missing_table(warehouse: DuckDBWarehouse) -> None:
    warehouse.write(frame([1], "a"), "ML.T", mode="replace")
    assert warehouse.columns("ml.t") == {"K": "BIGINT", "V": "VARCHAR"}
    with pytest.raises(WarehouseError, match="does not exist"):
        warehouse.columns("ML.MISSING")
    with pytest.raises(WarehouseError, match="does not exist"):
        warehouse.query("SELECT * FROM ML.MISSING")


def test_execute_runs_snowflake_sql(warehouse: DuckDBWarehouse) -> None:
    warehouse.execute(
        "CREATE SCHEMA IF NOT EXISTS ML; CREATE OR REPLACE TABLE ML.X AS SELECT IFF(TRUE, 1, 2) AS A"
    )
    assert warehouse.query("SELECT A FROM ML.X").A.tolist() == [1]


@pytest.mark.parametrize("where", ["a-file/podium.duckdb", "a-folder"])
def test_an_unusable_warehouse_path_is_one_clear_error(tmp_path: Path, where: str) -> None:
    (tmp_path / "a-file").write_text("")
    (tmp_path / "a-folder").mkdir()
    with pytest.raises(
        WarehouseError, match="cannot open the DuckDB warehouse .*or fix warehouse.path in the profile"
    ):
        DuckDBWarehouse(tmp_path / where)


def test_a_locked_warehouse_names_the_wait(tmp_path: Path) -> None:
    path = tmp_path / "locked.duckdb"
    DuckDBWarehouse(path).close()
    hold = (
        f"import duckdb, time; c = duckdb.connect({str(path)!r}); print('held', flush=True); time.sleep(30)"
    )
    holder = subprocess.Popen([sys.executable, "-c", hold], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(WarehouseError, match="lock.*Wait for the other process") as caught:
            DuckDBWarehouse(path, wait=1)  # a bounded wait, then the message
        assert "\n" not in str(caught.value)
    finally:
        holder.kill()
        holder.wait()


def test_a_command_waits_for_the_writer_to_finish(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Finding 12: a second process waits (saying for what) instead of failing at once on the lock."""
    path = tmp_path / "busy.duckdb"
    DuckDBWarehouse(path).close()
    hold = f"import duckdb, time; c = duckdb.connect({str(path)!r}); print('held', flush=True); time.sleep(2)"
    holder = subprocess.Popen([sys.executable, "-c", hold], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with caplog.at_level("WARNING"):
            DuckDBWarehouse(path, read_only=True, wait=60).close()
        assert holder.poll() is not None, "it opened only after the writer ended"
        assert "another process writes it" in caplog.text
    finally:
        holder.kill()
        holder.wait()


def test_write_chunks_appends_or_merges_and_commits_per_interval(warehouse: DuckDBWarehouse) -> None:
    warehouse.write(frame([1, 2], "a"), "ML.T", mode="replace")
    commits: list[int] = []
    stream = iter([frame([3], "b"), frame([4], "b"), frame([5], "b")])
    done = warehouse.write_chunks(
        stream, "ML.T", keys=["K"], new_only=True, commit_rows=2, committed=lambda n, s: commits.append(n)
    )
    assert done == 3 and commits == [2, 3]
    merged = warehouse.write_chunks(
        iter([frame([1, 6], "c")]), "ML.T", keys=["K"], new_only=False, commit_rows=9
    )
    assert merged == 2
    assert rows(warehouse) == [(1, "c1"), (2, "a2"), (3, "b3"), (4, "b4"), (5, "b5"), (6, "c6")]


def test_write_chunks_keeps_committed_intervals_when_the_stream_fails(warehouse: DuckDBWarehouse) -> None:
    warehouse.write(frame([1], "a"), "ML.T", mode="replace")

    def stream():
        yield frame([2], "b")
        yield frame([3], "b")  # the first interval, committed
        yield frame([4], "b")
        raise RuntimeError("the model failed on the next chunk")

    with pytest.raises(RuntimeError, match="model failed"):
        warehouse.write_chunks(stream(), "ML.T", keys=["K"], new_only=True, commit_rows=2)
    assert rows(warehouse) == [(1, "a1"), (2, "b2"), (3, "b3")]  # row 4 was rolled back
