"""The whole lifecycle through a real Snowpark session on the emulated Snowflake, table for table with DuckDB.

Two projects run the same `podium` commands as real processes, from empty warehouses:

- `snow`: a Snowflake profile whose connection comes from SNOWFLAKE_* variables pointing at
  the emulator (fakesnow's server with the gaps closed in `tests/snowflake/emulator.py`),
  started here on loopback in its own process: an account with one empty database, as
  `setup/snowflake.sql` leaves it, and no table.
- `duck`: the embedded default, a DuckDB file.

Each has its own MLflow store and Optuna journal. Tuning spends trials, not seconds, so both
register the same versions (checked: same family, same holdout figures), and every output
table must be the same: the same columns in the same order, the same types, the same values
but for lineage (run ids, timestamps, batch ids, who promoted).

What this proves, and what it does not: every statement Podium sends runs through the real
connector and Snowpark (uploads by PUT, MERGE, temporary tables), parsed as Snowflake SQL
and answered by DuckDB underneath. Snowflake's own planner, its types' edge cases, roles and
grants, and Python UDFs are not emulated (docs/snowflake.md lists what needs an account).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import mlflow
import pandas as pd
import pytest
import yaml

from pipelines.config_files import load_profile, load_spec
from pipelines.warehouse import connect
from tests.helpers import REPO
from tests.snowflake.emulator import snowflake_env

pytestmark = pytest.mark.snowflake

DATABASE = "PODIUM"
SPACE = """logreg:
  C: {type: float, low: 0.01, high: 10.0, log: true}
decision_tree:
  max_depth: {type: int, low: 2, high: 8}
  min_samples_leaf: {type: int, low: 5, high: 100, log: true}
"""
# Columns whose values name a run, a time, a batch or a person: equal only in kind across the two paths.
LINEAGE = {
    "RUN_ID",
    "SCORED_AT",
    "BATCH_ID",
    "BACKTEST_ID",
    "AUDIT_ID",
    "DECIDED_AT",
    "ACTOR",
    "EVALUATED_AT",
    "STAGE_RUN_IDS",
    "FINISHED_AT",
}
# The same integer is NUMBER(38, 0) in Snowflake whatever its declared width; DuckDB keeps the width.
INTEGERS = {"TINYINT", "SMALLINT", "INTEGER", "BIGINT", "NUMBER(38, 0)"}
SECRET = "emulated-account-password-7c1e"


@pytest.fixture(scope="module")
def account() -> Iterator[dict[str, Any]]:
    """The emulator in its own process on loopback: one empty database, as setup/snowflake.sql leaves it."""
    server = subprocess.Popen(
        [sys.executable, "-m", "tests.snowflake.emulator"],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        kwargs = json.loads(server.stdout.readline())
        from snowflake.snowpark import Session

        admin = Session.builder.configs(kwargs).create()
        admin.sql(f"CREATE DATABASE {DATABASE}").collect()
        admin.close()
        yield kwargs
    finally:
        server.terminate()
        server.wait(timeout=30)


def project(root: Path, warehouse: dict[str, Any]) -> Path:
    """A project folder: conf/p.yaml for `warehouse`, and the F1 spec made small (trials, two families)."""
    (root / "conf").mkdir(parents=True)
    (root / "experiments").mkdir()
    (root / "conf" / "p.yaml").write_text(yaml.safe_dump({"warehouse": warehouse}))
    (root / "space.yaml").write_text(SPACE)
    spec = yaml.safe_load((REPO / "experiments" / "f1_podium" / "spec.yaml").read_text())
    spec["ingest"]["source"] = str(REPO / spec["ingest"]["source"])
    spec["features"]["sql"] = str(REPO / spec["features"]["sql"])
    spec["tuning"] |= {"search_space": str(root / "space.yaml"), "families": ["logreg", "decision_tree"]}
    spec["tuning"]["budget"] = {"trials": 2}
    spec["backtest"] |= {"start": "2022-01-01", "end": "2023-01-01", "families": ["logreg"], "trials": 1}
    (root / "experiments" / "f1_podium.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
    return root


LIFECYCLE: list[list[str]] = [
    ["ingest"],
    ["features"],
    ["tune"],
    ["train", "--top-k", "2"],  # v1 and v2: the two families' best
    ["promote", "--version", "1", "--force"],  # v1 champion (forced: the lifecycle, not the gate, is tested)
    ["score"],
    ["promote", "--version", "2", "--alias", "challenger", "--force"],
    ["score", "--shadow"],  # v2 beside v1 on the same rows
    ["evaluate"],
    ["backtest"],
    ["promote", "--version", "2"],  # the gate decides, on the same figures on both paths
    ["promote", "--version", "2", "--force"],  # v2 champion, whatever the gate said
    ["promote", "--rollback"],  # v1 champion again
    ["status", "--format", "json"],
]


def run_lifecycle(root: Path, env: dict[str, str]) -> list[subprocess.CompletedProcess[str]]:
    """Every command of the lifecycle as a `podium` process in `root`; stops at the first failure."""
    done = []
    for args in LIFECYCLE:
        command = [sys.executable, "-m", "pipelines.cli", *args, "--profile", "p"]
        result = subprocess.run(command, cwd=root, env=env, capture_output=True, text=True, timeout=600)
        done.append(result)
        if result.returncode:
            break
    return done


def environment(root: Path, extra: dict[str, str]) -> dict[str, str]:
    keep = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "SNOWFLAKE_", "PODIUM_"))}
    return (
        keep
        | extra
        | {
            "MLFLOW_TRACKING_URI": f"sqlite:///{root / 'mlflow.db'}",
            "MLFLOW_DISABLE_TELEMETRY": "true",
            "PYTHONPATH": str(REPO),
        }
    )


@pytest.fixture(scope="module")
def paths(account: dict[str, Any], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The lifecycle run on both paths: each project's root, environment and finished commands."""
    snow = project(tmp_path_factory.mktemp("snow"), {"backend": "snowflake", "database": DATABASE})
    duck = project(tmp_path_factory.mktemp("duck"), {"backend": "duckdb", "path": "warehouse.duckdb"})
    snow_env = environment(snow, snowflake_env(account, DATABASE, "ML") | {"SNOWFLAKE_PASSWORD": SECRET})
    duck_env = environment(duck, {})
    with ThreadPoolExecutor(2) as pool:  # the two paths side by side: one core each
        runs = {
            name: pool.submit(run_lifecycle, root, env)
            for name, root, env in [("snow", snow, snow_env), ("duck", duck, duck_env)]
        }
    return {
        "snow": (snow, snow_env, runs["snow"].result()),
        "duck": (duck, duck_env, runs["duck"].result()),
    }


def tables(root: Path, env: dict[str, str], only: str = "%") -> dict[str, pd.DataFrame]:
    """Every table of the project's RAW and ML schemas (whose name is LIKE `only`), read through the seam."""
    saved = {k: os.environ.get(k) for k in env if k.startswith("SNOWFLAKE_")}
    os.environ.update({k: v for k, v in env.items() if k.startswith("SNOWFLAKE_")})
    try:
        profile = load_profile(str(root / "conf" / "p.yaml"))
        with connect(profile) as warehouse:
            names = warehouse.query(
                "SELECT TABLE_SCHEMA, TABLE_NAME FROM INFORMATION_SCHEMA.TABLES "
                "WHERE TABLE_SCHEMA IN ('RAW', 'ML') AND TABLE_TYPE = 'BASE TABLE' AND TABLE_NAME LIKE ?",
                [only],
            )
            found = sorted(f"{s}.{t}".upper() for s, t in names.itertuples(index=False))
            return {
                name: typed(warehouse.query(f"SELECT * FROM {name}"), warehouse.columns(name))
                for name in found
            }
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def typed(frame: pd.DataFrame, columns: dict[str, str]) -> pd.DataFrame:
    """The frame with its Snowflake column types as `attrs`, integers as one kind."""
    frame.attrs["types"] = {c: ("INTEGER" if t in INTEGERS else t) for c, t in columns.items()}
    return frame


def comparable(frame: pd.DataFrame) -> pd.DataFrame:
    """Lineage dropped, values in one representation per kind, rows in one order."""
    out = frame.drop(columns=[c for c in frame.columns if c in LINEAGE])
    for column in out.columns:
        kind = frame.attrs["types"][column]
        if kind.startswith(("DATE", "TIMESTAMP")):
            out[column] = pd.to_datetime(out[column]).astype("datetime64[ns]")
        elif kind == "INTEGER" or kind.startswith(("NUMBER", "DOUBLE", "FLOAT")):
            out[column] = pd.to_numeric(out[column]).astype("float64")
        elif kind == "BOOLEAN":
            out[column] = out[column].astype("boolean")
        else:
            out[column] = out[column].astype(object).where(out[column].notna(), None)
    return out.sort_values(list(out.columns), na_position="first").reset_index(drop=True)


def test_every_command_exits_0_on_both_paths(paths: dict[str, Any]) -> None:
    for name, (_, _, done) in paths.items():
        failed = [(r.args[3:-2], r.stderr[-2000:]) for r in done if r.returncode]
        assert not failed, f"{name}: {failed}"
        assert len(done) == len(LIFECYCLE), name
        assert not any("Traceback" in r.stderr for r in done), name


def test_both_paths_registered_the_same_versions(paths: dict[str, Any]) -> None:
    status = {name: json.loads(done[-1].stdout) for name, (_, _, done) in paths.items()}
    versions = {
        name: [(v["version"], v["family"], round(v["holdout_log_loss"], 9)) for v in s["versions"]]
        for name, s in status.items()
    }
    assert len(versions["snow"]) == 2 and versions["snow"] == versions["duck"]
    assert status["snow"]["backend"] == "snowflake" and status["duck"]["backend"] == "duckdb"
    shadow = status["snow"]["latest_batch"]["versions"]
    assert sorted(v["version"] for v in shadow) == ["1", "2"], "status shows the shadow batch whole"


def test_every_output_table_equals_the_duckdb_paths(paths: dict[str, Any]) -> None:
    snow, duck = (tables(root, env) for root, env, _ in paths.values())
    spec = load_spec(str(paths["duck"][0] / "experiments" / "f1_podium.yaml"))
    expected = {spec.table, spec.scoring_table, spec.monitoring.table, spec.registry.audit_table}
    assert expected | {spec.backtest.table} <= set(duck) and len(duck) > 20
    assert sorted(snow) == sorted(duck), "the same tables, no scratch or staged table left behind"
    for name in duck:
        left, right = snow[name], duck[name]
        assert list(left.columns) == list(right.columns), name
        assert left.attrs["types"] == right.attrs["types"], name
        assert len(left) == len(right), name
        pd.testing.assert_frame_equal(comparable(left), comparable(right), rtol=1e-9, obj=name)
    for name in (spec.scoring_table, spec.registry.audit_table):
        lineage = [c for c in snow[name].columns if c in LINEAGE]
        assert lineage and snow[name][lineage].notna().all().all(), f"{name} carries its lineage"


def test_no_secret_in_any_output(paths: dict[str, Any]) -> None:
    root, _, done = paths["snow"]
    for result in done:
        assert SECRET not in result.stdout + result.stderr
    for path in root.rglob("*"):
        if path.is_file() and path.stat().st_size < 50_000_000:
            assert SECRET.encode() not in path.read_bytes(), path


# --- after the lifecycle: failures on the Snowflake path, each one `error:` line -------------------


def podium_in(
    root: Path, env: dict[str, str], *args: str, timeout: float = 300
) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "pipelines.cli", *args]
    return subprocess.run(command, cwd=root, env=env, capture_output=True, text=True, timeout=timeout)


def one_error_line(result: subprocess.CompletedProcess[str]) -> str:
    """The one `error:` line a failed command printed (no traceback, nothing else on stderr but logs)."""
    assert result.returncode == 1, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, result.stderr[-3000:]
    return errors[0]


def test_scoring_inside_the_emulator_fails_with_one_line_naming_the_udf(paths: dict[str, Any]) -> None:
    root, env, _ = paths["snow"]
    error = one_error_line(podium_in(root, env, "score", "--engine", "warehouse", "--full", "--profile", "p"))
    assert "registering the scoring UDF in Snowflake failed" in error and "--engine local" in error


def test_a_failed_mirror_leaves_the_promotion_and_audit_in_place_and_the_next_promote_retries(
    paths: dict[str, Any],
) -> None:
    root, env, _ = paths["snow"]
    spec = yaml.safe_load((root / "experiments" / "f1_podium.yaml").read_text())
    spec["registry"] |= {"audit_table": "ML.MIRRORED_PROMOTIONS", "snowflake": {}}
    (root / "mirrored.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
    promote = ["promote", "--version", "2", "--force", "--spec", "mirrored.yaml", "--profile", "p"]
    error = one_error_line(podium_in(root, env, *promote))
    assert (
        "promoted v2 -> alias:champion" in error
        and "mirroring v2 into Snowflake's model registry failed" in error
    )
    again = one_error_line(
        podium_in(root, env, *promote)
    )  # v2 holds champion already: only the mirror is due
    assert "mirroring v2" in again

    from mlflow.tracking import MlflowClient

    client = MlflowClient(env["MLFLOW_TRACKING_URI"])
    assert str(client.get_model_version_by_alias("f1_podium", "champion").version) == "2"
    audit = tables(root, env, only="MIRRORED_PROMOTIONS")["ML.MIRRORED_PROMOTIONS"].sort_values("DECIDED_AT")
    rows = list(audit[["TARGET", "ACTION", "DECISION", "MODEL_VERSION"]].itertuples(index=False, name=None))
    assert rows == [
        ("alias:champion", "promote", "promoted", "2"),
        ("snowflake:champion", "mirror", "failed", "2"),
        ("alias:champion", "promote", "refused", "2"),  # already holds it
        ("snowflake:champion", "mirror", "failed", "2"),  # retried
    ]
    podium_in(root, env, "promote", "--rollback", "--spec", "mirrored.yaml", "--profile", "p")


@pytest.fixture
def silent_endpoint() -> Iterator[int]:
    """A loopback port that accepts connections and never answers."""
    import socket
    import threading

    listener = socket.create_server(("127.0.0.1", 0))
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        listener.settimeout(0.2)
        while not stop.is_set():
            try:
                held.append(listener.accept()[0])
            except TimeoutError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield listener.getsockname()[1]
    stop.set()
    thread.join()
    for connection in held:
        connection.close()
    listener.close()


@pytest.mark.parametrize("command", [["status"], ["score"]])
def test_an_endpoint_that_never_answers_fails_within_the_login_timeout(
    paths: dict[str, Any], silent_endpoint: int, command: list[str]
) -> None:
    import time

    root, env, _ = paths["snow"]
    (root / "conf" / "silent.yaml").write_text(
        yaml.safe_dump({"warehouse": {"backend": "snowflake", "database": DATABASE, "login_timeout": 5}})
    )
    silent = env | {"SNOWFLAKE_PORT": str(silent_endpoint)}
    started = time.monotonic()
    error = one_error_line(podium_in(root, silent, *command, "--profile", "silent", timeout=120))
    took = time.monotonic() - started
    assert "could not connect to Snowflake" in error and SECRET not in error
    # 5 s of login_timeout plus the process's start (imports: several seconds on a loaded machine); the
    # connector's defaults waited 60 s per request, retried for minutes
    assert took < 5 + 40, took


def test_the_app_shows_the_same_pages_on_both_paths(
    paths: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every page of `podium app` (Streamlit's AppTest) draws the same figures from the emulated
    Snowflake as from the DuckDB file: the same queries through the seam, in its Snowflake dialect."""
    pages = {name: app_pages(root, env, monkeypatch) for name, (root, env, _) in paths.items()}
    assert pages["snow"].keys() == pages["duck"].keys()
    for slug, (metrics, frames) in pages["duck"].items():
        snow_metrics, snow_frames = pages["snow"][slug]
        assert snow_metrics == metrics, slug
        assert len(snow_frames) == len(frames), slug
        for left, right in zip(snow_frames, frames, strict=True):
            pd.testing.assert_frame_equal(left, right, rtol=1e-9, obj=slug)
    assert pages["duck"]["predictions"][1] and pages["duck"]["challenger"][1], "pages with rows to compare"


def app_pages(
    root: Path, env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> dict[str, tuple[dict[str, str], list[pd.DataFrame]]]:
    """By page: the metrics and tables the app shows for this path's project (times and actors aside)."""
    from streamlit.testing.v1 import AppTest

    from pipelines.app.pages import PAGES

    for key, value in env.items():
        if key.startswith(("SNOWFLAKE_", "MLFLOW_TRACKING_URI")):
            monkeypatch.setenv(key, value)
    monkeypatch.setenv("PODIUM_PROFILE", str(root / "conf" / "p.yaml"))
    monkeypatch.setenv("PODIUM_SPEC", str(root / "experiments" / "f1_podium.yaml"))
    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(env["MLFLOW_TRACKING_URI"])
    try:
        shown = {}
        for page in PAGES:
            app = AppTest.from_file(str(REPO / "pipelines" / "app" / "main.py"), default_timeout=300)
            app.query_params["page"] = page.slug
            app.run()
            assert not app.exception and not app.error, (page.slug, [e.value for e in app.exception])
            metrics = {m.label: m.value for m in app.metric if m.label != "Scored at"}
            shown[page.slug] = (metrics, [_same_kinds(d.value) for d in app.dataframe])
        return shown
    finally:
        mlflow.set_tracking_uri(previous)


def _same_kinds(frame: pd.DataFrame) -> pd.DataFrame:
    """A shown table with times dropped, numbers as floats and the rest as text (both paths alike)."""
    times = [c for c in frame.columns if c in {"DECIDED_AT", "ACTOR"}]
    out = frame.drop(columns=times).reset_index(drop=True)
    for column in out.columns:
        numbers = pd.to_numeric(out[column], errors="coerce")
        if numbers.notna().sum() == out[column].notna().sum() and out[column].notna().any():
            out[column] = numbers.astype("float64")
        else:
            out[column] = out[column].astype(object).where(out[column].notna(), None).map(_text)
    return out


def _text(value: object) -> object:
    return None if value is None else str(value)
