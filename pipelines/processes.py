"""Process records: which process runs a stage or a trial, and the runs a killed process left RUNNING.

Every stage run and every trial records its process as host:pid:start-time (`PROCESS_TAG`). A run still
RUNNING whose process has ended was killed: the next run of that stage ends it FAILED, with the runs
nested in it.
"""

from __future__ import annotations

import logging
import os
import socket
from pathlib import Path
from typing import Any

from mlflow.entities import Run
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID

from pipelines.config import Spec

log = logging.getLogger(__name__)


PROCESS_TAG = "podium.process"  # host:pid:start of the process that runs a stage or a trial


def process_id(pid: int | None = None) -> str:
    """This process (or `pid`) as host:pid:start-time, so a reused pid is not mistaken for it."""
    pid = pid or os.getpid()
    return f"{socket.gethostname()}:{pid}:{_start_time(pid)}"


def process_gone(ident: str | None) -> bool:
    """Whether the process `ident` names ran on this host and has ended (unknown hosts: False)."""
    if not ident or ident.count(":") < 2:
        return False
    host, pid, started = ident.rsplit(":", 2)
    return host == socket.gethostname() and (not pid.isdigit() or _start_time(int(pid)) != started)


def _start_time(pid: int) -> str:
    """The process's start time in clock ticks since boot (Linux), or "" when it does not exist."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        try:
            os.kill(pid, 0)
        except OSError:
            return ""
        return "?"  # alive, start time unknown (no /proc)


def stale_runs(client: MlflowClient, experiment_id: str, where: str) -> list[Any]:
    """RUNNING runs matching `where` whose process has ended."""
    runs = client.search_runs(
        [experiment_id], filter_string=f"attributes.status = 'RUNNING' and {where}", max_results=1000
    )
    return [r for r in runs if process_gone(r.data.tags.get(PROCESS_TAG))]


def end_stale_runs(client: MlflowClient, experiment_id: str, where: str) -> list[str]:
    """End FAILED every RUNNING run matching `where` whose process was killed; their ids."""
    ended = []
    for run in stale_runs(client, experiment_id, where):
        client.set_tag(run.info.run_id, "podium.stale", "its process ended without closing the run")
        client.set_terminated(run.info.run_id, status="FAILED")
        log.warning(
            "ended stale run %s (%s) FAILED: its process was killed", run.info.run_id, run.info.run_name
        )
        ended.append(run.info.run_id)
    return ended


def end_stale_stage_runs(spec: Spec, stage: str) -> list[str]:
    """End FAILED the spec's `stage` runs whose process was killed, for a stage with nothing to do."""
    client = MlflowClient()
    found = client.get_experiment_by_name(spec.name)
    return end_stale_runs(client, found.experiment_id, of_stage(stage)) if found else []


def stale_run_trees(client: MlflowClient, experiment_id: str, where: str) -> list[Any]:
    """`stale_runs(where)` and the RUNNING runs nested in them at any depth, innermost first.

    A nested run (a backtest's period, a study's parent and trials, a model run) records no process
    of its own: it is stale with the run it nests in, unless a run between them records a live process.
    Runs between may have ended already (another stage ends its own stale runs). Ending them in this
    order leaves a top run RUNNING, so found again, until everything nested in it has ended.
    """
    roots = {r.info.run_id for r in stale_runs(client, experiment_id, where)}
    if not roots:
        return []
    running = client.search_runs(
        [experiment_id], filter_string="attributes.status = 'RUNNING'", max_results=50000
    )
    known: dict[str, Run | None] = {r.info.run_id: r for r in running}  # None: a run no store holds

    def read(run_id: str) -> Any:
        if run_id not in known:
            try:
                known[run_id] = client.get_run(run_id)
            except MlflowException:  # deleted, or in no store we see
                known[run_id] = None
        return known[run_id]

    def depth(run: Any) -> int | None:
        """How deep `run` nests in a stale root (0: a root), or None."""
        for level in range(100):
            owner = run.data.tags.get(PROCESS_TAG)
            if run.info.run_id in roots:
                return level
            parent = run.data.tags.get(MLFLOW_PARENT_RUN_ID)
            if (owner and not process_gone(owner)) or not parent or (run := read(parent)) is None:
                return None
        return None

    found = [(level, run) for run in running if (level := depth(run)) is not None]
    return [run for _, run in sorted(found, key=lambda pair: -pair[0])]


def end_stale_stage_trees(spec: Spec, stage: str) -> list[str]:
    """End FAILED the spec's `stage` runs whose process was killed and every RUNNING run nested in them."""
    client = MlflowClient()
    experiment = client.get_experiment_by_name(spec.name)
    stale = stale_run_trees(client, experiment.experiment_id, of_stage(stage)) if experiment else []
    for run in stale:
        client.set_tag(run.info.run_id, "podium.stale", "its process ended without closing the run")
        client.set_terminated(run.info.run_id, status="FAILED")
    for run in stale:
        if run.data.tags.get("podium.stage") == stage:
            log.warning(
                "ended stale run %s (%s) FAILED, and the runs left RUNNING in it: its process was killed",
                run.info.run_id,
                run.info.run_name,
            )
    return [r.info.run_id for r in stale]


def of_stage(stage: str) -> str:
    """The MLflow filter for the runs of one stage."""
    return f"tags.`podium.stage` = '{stage}'"
