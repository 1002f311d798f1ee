"""The Airflow example (examples/airflow/dags/podium_cycle.py), loaded and run by Airflow in its own venv.

Airflow lives in a virtualenv of its own (examples/airflow/requirements.txt), never in Podium's. The tests
find its python in PODIUM_AIRFLOW_PYTHON, which .ci/run sets, and are skipped when it is unset. Each runs
tests/airflow/run_dag.py with that python, on an AIRFLOW_HOME of its own (holding a copy of a metadata
database migrated once per module), against a Podium project in a tmp folder. The DAG's Variables point
PODIUM_BIN at this repository's `podium` (a wrapper around this interpreter), or at tests/airflow/stand_in.py
where a test fixes the plan that `podium cycle --plan` answers.

The test that runs the real `podium cycle` (`test_a_period_that_retrains_*`) runs one retraining period;
the stand-in's plans take the DAG down its other paths (steady, a done period, a plan that fails), which the
real cycle's own tests (tests/pipeline/test_cycle.py) cover on Podium's side.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import duckdb
import pytest
import yaml

from pipelines.config import Profile, Spec
from pipelines.stages import promote
from tests.helpers import REPO, Snapshot, restore

AIRFLOW_PYTHON = os.environ.get("PODIUM_AIRFLOW_PYTHON", "")
DAG_FILE = REPO / "examples" / "airflow" / "dags" / "podium_cycle.py"
RUNNER = Path(__file__).with_name("run_dag.py")
STAND_IN = Path(__file__).with_name("stand_in.py")
REFRESH = ["refresh.ingest", "refresh.features"]
TASKS = [*REFRESH, "plan", "decide", "retrain", "steady", "report"]
CYCLE_TABLE = "ML.F1_CYCLES"

pytestmark = pytest.mark.skipif(
    not AIRFLOW_PYTHON,
    reason="PODIUM_AIRFLOW_PYTHON is unset: point it at the python of Airflow's own venv "
    "(python3 -m venv .venv-airflow && .venv-airflow/bin/pip install -r examples/airflow/requirements.txt; "
    ".ci/run does this)",
)


@dataclass(frozen=True)
class Runs:
    """What run_dag.py saw of one or more DAG runs: by logical date, the run's and tasks' states and XComs."""

    by_date: dict[str, dict[str, Any]]
    log: str  # Airflow's output while it ran them: the tasks' logs, podium's included

    def states(self, date: str) -> tuple[str, dict[str, str]]:
        """(the run's state, each task's state) of the run at `date`."""
        return self.by_date[date]["state"], self.by_date[date]["tasks"]

    def xcom(self, date: str) -> dict[str, Any]:
        """Each task's XCom return value in the run at `date`."""
        return dict(self.by_date[date]["xcom"])

    def path(self, date: str) -> list[str]:
        """The tasks the branch `decide` followed in the run at `date`."""
        return list(self.by_date[date]["followed"]["decide"])

    def errors(self) -> str:
        """The log's lines that say what failed, for an assertion's message."""
        lines = self.log.splitlines()
        return "\n".join(line for line in lines if "error" in line.lower() or "Traceback" in line)[-6000:]


def airflow_env(home: Path) -> dict[str, str]:
    """An Airflow process's environment: its own home and database, no example DAGs, no Podium or MLflow."""
    keep = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "PODIUM_", "AIRFLOW"))}
    for leftover in ("PYTHONPATH", "VIRTUAL_ENV"):
        keep.pop(leftover, None)
    return keep | {
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home / 'airflow.db'}",
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__DAGS_FOLDER": str(DAG_FILE.parent),
        "MLFLOW_DISABLE_TELEMETRY": "true",
    }


def airflow(home: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run `python <args>` with Airflow's python and home; fail the test with its output if it fails."""
    done = subprocess.run(
        [AIRFLOW_PYTHON, *args],
        env=airflow_env(home) | (env or {}),
        capture_output=True,
        text=True,
        timeout=900,
    )
    output = f"{done.stdout[-4000:]}\n{done.stderr[-4000:]}"
    assert done.returncode == 0, f"{args} exited {done.returncode}:\n{output}"
    return done


@pytest.fixture(scope="module")
def migrated(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A metadata database that `airflow db migrate` built, once per module."""
    home = tmp_path_factory.mktemp("airflow_home")
    airflow(home, "-m", "airflow", "db", "migrate")
    return home / "airflow.db"


@pytest.fixture
def home(migrated: Path, tmp_path: Path) -> Path:
    """This test's AIRFLOW_HOME, holding a copy of the migrated database (airflow.cfg names no other)."""
    home = tmp_path / "airflow_home"
    home.mkdir()
    shutil.copyfile(migrated, home / "airflow.db")
    return home


def check(home: Path, tmp_path: Path, env: dict[str, str] | None = None) -> dict[str, Any]:
    """What Airflow's DagBag reads from the DAG file (run_dag.py check)."""
    out = tmp_path / f"check_{len(list(tmp_path.glob('check_*')))}.json"
    airflow(home, str(RUNNER), "check", str(DAG_FILE), "--out", str(out), env=env)
    return dict(json.loads(out.read_text()))


def run(home: Path, variables: Path, *dates: str, env: dict[str, str] | None = None) -> Runs:
    """`dag.test()` of podium_cycle at each logical date, in order, with these Variables (run_dag.py run)."""
    out = variables.with_name(f"runs_{dates[0]}.json")
    command = ["run", str(DAG_FILE), "--dag-id", "podium_cycle", "--variables", str(variables)]
    done = airflow(home, str(RUNNER), *command, "--logical-date", *dates, "--out", str(out), env=env)
    return Runs(json.loads(out.read_text()), done.stdout + done.stderr)


def podium_bin(tmp_path: Path) -> str:
    """An executable running this repository's `podium` with this interpreter (what PODIUM_BIN names)."""
    path = tmp_path / "podium"
    path.write_text(f'#!/bin/sh\nPYTHONPATH={REPO} exec {sys.executable} -m pipelines.cli "$@"\n')
    path.chmod(0o755)
    return str(path)


def project(
    tmp_path: Path, profile: dict[str, Any], spec: dict[str, Any], podium: str = "", named: bool = True
) -> Path:
    """A Podium project in tmp (conf/demo.yaml, experiments/f1_podium/spec.yaml), and its Variables file.

    The Variables: PODIUM_BIN (`podium`, else this repository's), PODIUM_PROJECT and, if `named`,
    PODIUM_PROFILE and PODIUM_SPEC.
    """
    root = tmp_path / "project"
    (root / "conf").mkdir(parents=True)
    (root / "experiments" / "f1_podium").mkdir(parents=True)
    (root / "conf" / "demo.yaml").write_text(yaml.safe_dump(profile))
    (root / "experiments" / "f1_podium" / "spec.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
    variables = tmp_path / "variables.json"
    settings = {"PODIUM_BIN": podium or podium_bin(tmp_path), "PODIUM_PROJECT": str(root)}
    names = {"PODIUM_PROFILE": "demo", "PODIUM_SPEC": "f1_podium"} if named else {}
    variables.write_text(json.dumps(settings | names))
    return variables


def bundled_spec() -> dict[str, Any]:
    """The F1 spec as a mapping, its folders made absolute (the project in tmp has no data or SQL)."""
    spec: dict[str, Any] = yaml.safe_load((REPO / "experiments" / "f1_podium" / "spec.yaml").read_text())
    spec["ingest"]["source"] = str(REPO / spec["ingest"]["source"])
    spec["features"]["sql"] = str(REPO / spec["features"]["sql"])
    spec["tuning"]["search_space"] = str(REPO / spec["tuning"]["search_space"])
    return spec


def versions(status: dict[str, Any]) -> list[str]:
    """The registered versions `podium status --format json` reported."""
    return sorted(v["version"] for v in status["versions"])


def test_the_dag_file_loads_in_airflow_with_its_graph(home: Path, tmp_path: Path) -> None:
    graph = check(home, tmp_path)

    assert graph["import_errors"] == {}
    assert list(graph["dags"]) == ["podium_cycle"]
    dag = graph["dags"]["podium_cycle"]
    assert (dag["schedule"], dag["timetable"]) == (
        "@daily",
        "CronTriggerTimetable",
    )  # logical date = due time
    assert dag["catchup"] is False and dag["max_active_runs"] == 1
    tasks = dag["tasks"]
    assert sorted(tasks) == sorted(TASKS)
    edges = {(name, after) for name, task in tasks.items() for after in task["downstream"]}
    assert edges == {
        ("refresh.ingest", "refresh.features"),
        ("refresh.features", "plan"),
        ("plan", "decide"),
        ("decide", "retrain"),
        ("decide", "steady"),
        ("retrain", "report"),
        ("steady", "report"),
    }
    assert tasks["decide"]["kind"] == "_BranchPythonDecoratedOperator"
    assert {tasks[name]["kind"] for name in [*REFRESH, "retrain", "steady"]} == {"_BashDecoratedOperator"}
    assert {tasks[name]["kind"] for name in ["plan", "report"]} == {"_PythonDecoratedOperator"}
    assert tasks["report"]["trigger_rule"] == "none_failed_min_one_success"
    assert {task["trigger_rule"] for name, task in tasks.items() if name != "report"} == {"all_success"}

    other = check(home, tmp_path, env={"PODIUM_SCHEDULE": "0 6 * * *"})
    assert other["dags"]["podium_cycle"]["schedule"] == "0 6 * * *"


def plan_of(as_of: str, done: bool, retrain: bool) -> dict[str, Any]:
    """A plan as `podium cycle --plan --format json` prints it."""
    trigger = {"name": "new_rows", "value": 440 if retrain else 10, "threshold": 400, "fired": retrain}
    actions = ["refresh", "evaluate", *(["tune", "train"] if retrain else []), "score", "gate"]
    return {
        "period": as_of[:4],
        "as_of": as_of,
        "done": done,
        "retrain": retrain,
        "triggers": [trigger],
        "actions": actions,
    }


@pytest.mark.slow
def test_the_branch_follows_the_plan_and_every_call_is_as_of_the_logical_date(
    home: Path, tmp_path: Path
) -> None:
    """A stand-in `podium` with fixed plans: retrain, steady, a done period, and a plan that fails.

    Settings from all three places: PODIUM_BIN (a command line) and PODIUM_PROJECT from Airflow Variables,
    PODIUM_SPEC from the worker's environment, and no PODIUM_PROFILE (so no --profile: podium's default).
    """
    plans = {
        "2021-06-01": plan_of("2021-06-01", done=False, retrain=True),
        "2022-06-01": plan_of("2022-06-01", done=False, retrain=False),
        "2022-06-02": plan_of("2022-06-02", done=True, retrain=True),  # done: nothing to retrain
    }
    (tmp_path / "plans.json").write_text(json.dumps(plans))
    stand_in = f"{sys.executable} {STAND_IN} {tmp_path}"
    variables = project(tmp_path, {}, {}, podium=stand_in, named=False)

    runs = run(home, variables, *plans, "2023-06-01", env={"PODIUM_SPEC": "f1_podium"})

    took = {"2021-06-01": "retrain", "2022-06-01": "steady", "2022-06-02": "steady"}
    for date, path in took.items():
        other = "steady" if path == "retrain" else "retrain"
        expected = dict.fromkeys([*REFRESH, "plan", "decide", path, "report"], "success") | {other: "skipped"}
        assert runs.states(date) == ("success", expected), runs.errors()
        assert runs.xcom(date) == {"plan": plans[date], "report": {"stand_in": True}}
        assert runs.path(date) == [path]
    failed = dict.fromkeys(["decide", "retrain", "steady", "report"], "upstream_failed")
    assert runs.states("2023-06-01") == (
        "failed",
        dict.fromkeys(REFRESH, "success") | {"plan": "failed"} | failed,
    )
    assert "no plan for 2023-06-01" in runs.log

    calls = [json.loads(line) for line in (tmp_path / "calls.jsonl").read_text().splitlines()]
    assert {call["cwd"] for call in calls} == {str(tmp_path / "project")}
    where = ["--spec", "f1_podium"]
    expected_calls = []
    for date in [*took, "2023-06-01"]:
        cycle = [["cycle", "--as-of", date, "--no-refresh", "--plan", "--format", "json", *where]]
        if date in took:
            cycle += [
                ["cycle", "--as-of", date, "--no-refresh", *where],
                ["status", "--format", "json", *where],
            ]
        expected_calls += [["ingest", *where], ["features", *where], *cycle]
    assert [call["args"] for call in calls] == expected_calls


@pytest.fixture
def champion_project(
    two_versions: Snapshot, tuned: tuple[Profile, Spec], tmp_path: Path, mlflow_store: str
) -> tuple[dict[str, Any], dict[str, Any], Path]:
    """(profile, spec, warehouse file) of a project with a built warehouse and a champion in its registry.

    The `two_versions` state (two families registered from small studies) with the better one promoted;
    the spec tunes those two families only, on their small search space.
    """
    profile, spec = tuned
    restored = restore(two_versions, profile, tmp_path, mlflow_store)  # tmp_path/warehouse.duckdb
    best = min(two_versions.value.trained, key=lambda t: t.holdout["log_loss"])
    promote.main(restored, spec, version=best.version, force=True)
    studies = shutil.copyfile(profile.optuna_storage, tmp_path / "studies.journal")
    warehouse = tmp_path / "warehouse.duckdb"
    settings = {
        "warehouse": {"backend": "duckdb", "path": str(warehouse)},
        "tracking_uri": mlflow_store,
        "optuna_storage": str(studies),
    }
    experiment = bundled_spec()
    experiment["tuning"]["search_space"] = str(spec.tuning_section.search_space)
    experiment["tuning"]["families"] = list(spec.tuning_section.families)
    return settings, experiment, warehouse


def with_cycle(spec: dict[str, Any], when_any: dict[str, Any]) -> dict[str, Any]:
    """The spec with a `cycle` section: its table, and a retrain policy firing on `when_any`."""
    retrain = {"when_any": when_any, "tune": {"trials": 1}}
    return spec | {"cycle": {"table": CYCLE_TABLE, "retrain": retrain}}


def cycle_rows(warehouse: Path) -> list[dict[str, Any]]:
    """The rows of the cycles table, one per period whose cycle finished."""
    with duckdb.connect(str(warehouse), read_only=True) as con:
        return list(con.execute(f"SELECT * FROM {CYCLE_TABLE}").df().to_dict("records"))


@pytest.mark.slow
def test_a_period_that_retrains_takes_the_retrain_path(
    champion_project: tuple[dict[str, Any], dict[str, Any], Path], home: Path, tmp_path: Path
) -> None:
    """The real cycle, with a policy firing on any new labelled row: 2021's landed after the champion's
    training window (it ends at 2021) and before 2022-06-01's period (a cycle judges as of its start)."""
    profile, spec, warehouse = champion_project
    variables = project(tmp_path, profile, with_cycle(spec, {"new_rows": 1}))

    runs = run(home, variables, "2022-06-01")

    expected = dict.fromkeys([*REFRESH, "plan", "decide", "retrain", "report"], "success")
    assert runs.states("2022-06-01") == ("success", expected | {"steady": "skipped"}), runs.errors()
    xcom = runs.xcom("2022-06-01")
    plan = xcom["plan"]
    assert (plan["period"], plan["as_of"], plan["done"], plan["retrain"]) == (
        "2022",
        "2022-06-01",
        False,
        True,
    )
    assert {t["name"]: t["fired"] for t in plan["triggers"]}["new_rows"] is True
    assert plan["actions"] == ["score", "evaluate", "tune", "train", "shadow", "gate"], (
        "refresh: a task of its own"
    )
    assert runs.path("2022-06-01") == ["retrain"]
    assert versions(xcom["report"]) == ["1", "2", "3"], "the cycle registered no challenger"
    (row,) = cycle_rows(warehouse)
    assert row["PERIOD"] == "2022" and row["RETRAIN"] and row["NEW_ROWS_FIRED"]
    assert row["ACTIONS"] == ",".join(plan["actions"]), "it did what its plan said"
    assert row["CHALLENGER_VERSION"] == "3" and row["DECISION"] in {"promoted", "refused"}
