"""Load or run an Airflow DAG file, in Airflow's own environment; tests/airflow/test_dag.py runs this script.

It imports only Airflow and the standard library (Podium is not installed where it runs) and asserts
nothing: it writes what it saw as one JSON object to the file `--out`, and the test judges it.

    python run_dag.py check DAG_FILE --out graph.json
        the DagBag's import errors, and each DAG's schedule and tasks with their edges and trigger rules
    python run_dag.py run DAG_FILE --dag-id ID --logical-date DATE [DATE ...] --variables V --out runs.json
        `dag.test()` of one run per logical date, in order (V: a JSON file of Airflow Variables): by date,
        the run's state, each task's state and XCom return value, and the tasks each branch followed

AIRFLOW_HOME must hold a migrated metadata database (`airflow db migrate`) for `run`.
"""

from __future__ import annotations

import argparse
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any


def main() -> None:
    """Parse the arguments and write the JSON of `check` or `run` to `--out`."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("mode", choices=["check", "run"])
    parser.add_argument("dag_file", type=Path)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--dag-id")
    parser.add_argument("--logical-date", nargs="+", default=[], help="one run per date, in order")
    parser.add_argument("--variables", type=Path, help="a JSON file of Airflow Variables")
    args = parser.parse_args()
    bag = load(args.dag_file)
    if args.mode == "check":
        result = check(bag)
    else:
        dag = bag.get_dag(args.dag_id)
        result = {
            date: run(dag, datetime.fromisoformat(date).replace(tzinfo=UTC), args.variables)
            for date in args.logical_date
        }
    args.out.write_text(json.dumps(result, indent=2, default=str))


def load(dag_file: Path) -> Any:
    """The DagBag of one file (Airflow 3.3's DagBag reads the files it is given: no example DAGs)."""
    from airflow.dag_processing.dagbag import DagBag

    return DagBag(dag_folder=str(dag_file))


def check(bag: Any) -> dict[str, Any]:
    """What the DAG file declares: import errors, and per DAG its settings and task graph."""
    return {
        "import_errors": dict(bag.import_errors),
        "dags": {dag_id: describe(dag) for dag_id, dag in bag.dags.items()},
    }


def describe(dag: Any) -> dict[str, Any]:
    """A DAG's schedule, catchup, run limit and tasks (kind, upstream, downstream, trigger rule)."""
    return {
        "schedule": dag.schedule,
        "timetable": type(dag.timetable).__name__,
        "catchup": dag.catchup,
        "max_active_runs": dag.max_active_runs,
        "tasks": {
            task.task_id: {
                "kind": type(task).__name__,
                "upstream": sorted(task.upstream_task_ids),
                "downstream": sorted(task.downstream_task_ids),
                "trigger_rule": getattr(task.trigger_rule, "value", task.trigger_rule),
            }
            for task in dag.tasks
        },
    }


def run(dag: Any, logical_date: datetime, variables: Path | None) -> dict[str, Any]:
    """`dag.test()` of one run: its state, each task's state and XCom return value, each branch's choice."""
    dagrun = dag.test(
        logical_date=logical_date,
        variable_file_path=str(variables) if variables else None,
    )
    return {
        "state": str(dagrun.state),
        "tasks": {ti.task_id: str(ti.state) for ti in dagrun.get_task_instances()},
        "xcom": xcoms(dagrun, "return_value"),
        # a branch's return value is no XCom in Airflow 3.3: it records the tasks it followed under this key
        "followed": {task: value["followed"] for task, value in xcoms(dagrun, "skipmixin_key").items()},
    }


def xcoms(dagrun: Any, key: str) -> dict[str, Any]:
    """Each task's XCom `key` in the run (absent for a task that pushed none)."""
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session

    with create_session() as session:
        rows = session.scalars(XComModel.get_many(run_id=dagrun.run_id, key=key, dag_ids=dagrun.dag_id)).all()
        return {row.task_id: XComModel.deserialize_value(row) for row in rows}


if __name__ == "__main__":
    main()
