"""The DAG `podium_cycle`: one Podium cycle per run, as of the run's logical date.

```
refresh.ingest >> refresh.features >> plan >> decide >> retrain ─┐
                                                   └──> steady ──┴──> report
```

- `refresh`: `podium ingest`, then `podium features`: the new rows, so that the plan sees them.
- `plan`: `podium cycle --no-refresh --plan --format json --as-of <date>` changes nothing and returns its JSON
  (period, done, retrain, triggers, actions) as the task's XCom.
- `decide` branches: `retrain` when the plan retrains a period not yet done, else `steady`.
- `retrain` and `steady` both run `podium cycle --as-of <date> --no-refresh` (refresh ran already): the
  cycle itself tunes, trains, scores the challenger in shadow and gates it, or scores and records the period
  without retraining. Two tasks, so the graph shows which path a period took and the long one has its own
  timeout. A period already done takes `steady`, where the cycle does nothing.
- `report`: `podium status --format json`, after whichever path ran; its XCom is that JSON.

The as-of date is the run's logical date (`{{ ds }}`), so a backfill replays past periods. The period is
the spec's monitoring period (`monitoring.period`); the schedule only says how often to look, and a run in a
period whose cycle finished refreshes, plans and reports, and changes nothing else.

Podium runs in its own environment, never in Airflow's: the tasks start its executable as a child process
in its project folder. Each setting is an Airflow Variable of that name, or else an environment variable
of the worker:

- `PODIUM_BIN` (required): Podium's executable, e.g. `/srv/podium/.venv/bin/podium`, or a command line
  that runs it, e.g. `/srv/podium/.venv/bin/python -m pipelines.cli`;
- `PODIUM_PROJECT` (required): the project folder, which holds `conf/` and `experiments/`; tasks run there;
- `PODIUM_PROFILE`: `--profile`, a name in the project's `conf/` or a path (default: Podium's, `local`);
- `PODIUM_SPEC`: `--spec`, a name in the project's `experiments/` or a path (default: the only spec).

`PODIUM_SCHEDULE` (an environment variable of the scheduler and the DAG processor, read when this file is
parsed) sets the schedule: a cron expression or a preset, default `@daily`.

No credential is read or passed here: on Snowflake, `podium` reads its connection as it always does, from
`connections.toml` or the worker's `SNOWFLAKE_*` variables. This file imports only Airflow and the standard
library, so it loads in Airflow's environment, and importing it only declares the DAG.
"""

from __future__ import annotations

import json
import logging
import os
import shlex
import subprocess
from datetime import UTC, datetime, timedelta
from typing import Any

from airflow.sdk import TriggerRule, Variable, dag, task, task_group

log = logging.getLogger(__name__)

SCHEDULE = os.environ.get("PODIUM_SCHEDULE", "@daily")
START = datetime(2000, 1, 1, tzinfo=UTC)  # the earliest logical date a backfill can replay
SETTINGS_HINT = "an Airflow Variable, or an environment variable of the worker"


def setting(name: str, required: bool = False) -> str:
    """The Airflow Variable `name`, else the worker's environment variable `name`; "" when neither is set."""
    value = Variable.get(name, default=None) or os.environ.get(name, "")
    if required and not value:
        raise ValueError(f"{name} is not set: set it as {SETTINGS_HINT} (see the DAG's documentation).")
    return value


def podium_command(*args: str) -> list[str]:
    """`podium <args>` with the profile and spec of the settings, as Podium's own executable runs it."""
    command = [*shlex.split(setting("PODIUM_BIN", required=True)), *args]
    for option, name in (("--profile", "PODIUM_PROFILE"), ("--spec", "PODIUM_SPEC")):
        if value := setting(name):
            command += [option, value]
    return command


def podium_shell(*args: str) -> str:
    """The bash command running `podium <args>` in the project folder (for `@task.bash`)."""
    project = setting("PODIUM_PROJECT", required=True)
    return f"cd {shlex.quote(project)} && exec {shlex.join(podium_command(*args))}"


def podium_json(*args: str) -> Any:
    """Run `podium <args>` in the project folder and parse what it printed; its stderr goes to the log."""
    command = podium_command(*args)
    done = subprocess.run(
        command, cwd=setting("PODIUM_PROJECT", required=True), capture_output=True, text=True, check=False
    )
    for line in done.stderr.splitlines():
        log.info("%s", line)
    if done.returncode != 0:
        errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
        raise RuntimeError(
            f"{shlex.join(command)} exited {done.returncode}: {' '.join(errors) or 'see the log'}"
        )
    return json.loads(done.stdout)


def as_of(context: dict[str, Any]) -> str:
    """The run's logical date, YYYY-MM-DD (`{{ ds }}`); for a run triggered without one, its run-after day."""
    moment = context.get("logical_date") or context["dag_run"].run_after
    return moment.date().isoformat()


@task_group
def refresh() -> None:
    """The new rows: `podium ingest`, then `podium features` (each builds, checks, then publishes)."""

    @task.bash(execution_timeout=timedelta(hours=1), do_xcom_push=False)
    def ingest() -> str:
        """`podium ingest`: the raw tables, all replaced or none."""
        return podium_shell("ingest")

    @task.bash(execution_timeout=timedelta(hours=1), do_xcom_push=False)
    def features() -> str:
        """`podium features`: the feature table, rebuilt, checked and swapped in."""
        return podium_shell("features")

    ingest() >> features()


@task(execution_timeout=timedelta(minutes=30))
def plan(**context: Any) -> dict[str, Any]:
    """`podium cycle --plan`: what the cycle of the run's period would do, as JSON; changes nothing."""
    decision: dict[str, Any] = podium_json(
        "cycle", "--as-of", as_of(context), "--no-refresh", "--plan", "--format", "json"
    )
    for trigger in decision.get("triggers", []):
        log.info("trigger %s", trigger)
    return decision


@task.branch
def decide(decision: dict[str, Any]) -> str:
    """`retrain` when the plan retrains a period not yet done; else `steady` (a done period: a no-op)."""
    path = "retrain" if decision["retrain"] and not decision["done"] else "steady"
    log.info(
        "period %s (done: %s, retrain: %s): %s",
        decision.get("period"),
        decision["done"],
        decision["retrain"],
        path,
    )
    return path


@task.bash(execution_timeout=timedelta(hours=6), do_xcom_push=False)
def retrain(**context: Any) -> str:
    """`podium cycle`, which here tunes and trains a challenger, scores it in shadow and gates it."""
    return podium_shell("cycle", "--as-of", as_of(context), "--no-refresh")


@task.bash(execution_timeout=timedelta(hours=2), do_xcom_push=False)
def steady(**context: Any) -> str:
    """`podium cycle`, which here scores and records the period without retraining (or does nothing)."""
    return podium_shell("cycle", "--as-of", as_of(context), "--no-refresh")


@task(trigger_rule=TriggerRule.NONE_FAILED_MIN_ONE_SUCCESS, execution_timeout=timedelta(minutes=30))
def report() -> dict[str, Any]:
    """`podium status --format json`, after whichever path ran: tables, studies, versions, scores."""
    status: dict[str, Any] = podium_json("status", "--format", "json")
    return status


@dag(
    dag_id="podium_cycle",
    schedule=SCHEDULE,
    start_date=START,
    catchup=False,  # the first run is the latest period's; `airflow backfill create` replays earlier ones
    max_active_runs=1,  # one period after the other: a cycle reads what the previous one left
    doc_md=__doc__,
    tags=["podium"],
)
def podium_cycle() -> None:
    """Declare the graph: refresh, plan, decide, then retrain or steady, then report."""
    decision = plan()
    refresh() >> decision
    decide(decision) >> [retrain(), steady()] >> report()


podium_cycle()
