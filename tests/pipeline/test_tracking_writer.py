"""Trial runs are written off the trial's path: a writer thread, flushed and checked when the study ends.

A tracking server killed in the middle of a study leaves every trial intact in Optuna, one clear error
naming the trials whose runs are missing, and a rerun that writes those runs from the study.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import mlflow
import optuna
import pytest
import yaml
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from pipelines import runwriter
from pipelines.config import Profile, Spec
from pipelines.errors import TrackingStoreError
from pipelines.processes import PROCESS_TAG, process_id
from pipelines.runwriter import WRITER_THREAD, number_ranges
from pipelines.stages import tune
from pipelines.studies import open_storage
from pipelines.study_bridge import StudyBridge
from pipelines.tracking import experiment_id
from tests.helpers import (
    FAST_SPACE,
    REPO,
    assert_children_mirror_trials,
    mlflow_tree,
    tune_command,
    worker_env,
)
from tests.servers import free_port, http_service

STUDY = "f1_podium-decision_tree"
LIVE_WORKER = "podium-test-host:1:0"  # a worker on another host: never taken for ended, so never mended


class Recording(MlflowClient):
    """An MlflowClient recording the runs it is asked to create (and by which thread), failing on demand."""

    def __init__(self, fail: Callable[[str], bool] = lambda name: False) -> None:
        super().__init__()
        self.fail, self.created, self.threads = fail, [], set()

    def create_run(self, experiment_id: str, *args: Any, **kwargs: Any) -> Any:
        name = kwargs["tags"]["mlflow.runName"]
        self.created.append(name)
        self.threads.add(threading.current_thread().name)
        if self.fail(name):
            raise MlflowException(
                f"API request to {self.tracking_uri} failed: [Errno 111] Connection refused"
            )
        return super().create_run(experiment_id, *args, **kwargs)


def bridge_on(client: MlflowClient, name: str = "writer") -> StudyBridge:
    bridge = StudyBridge.open(name, "tree", experiment_id("writer"), None, {"podium.spec": "writer"})
    bridge.client = client
    return bridge


def study_with(bridge: StudyBridge | None, n: int, owner: str | None = None) -> optuna.Study:
    """`n` cheap trials of a real study; each logged through `bridge` (if any) as tune's objective does."""

    def objective(trial: optuna.Trial) -> float:
        trial.set_user_attr(PROCESS_TAG, owner or process_id())
        x = trial.suggest_float("x", 0.0, 1.0)
        trial.set_user_attr("metrics", {"log_loss": x})
        if bridge:
            bridge.log_trial(trial, "COMPLETE", {"x": x}, {"cv_log_loss": x, "fold0.log_loss": x})
        return x

    study = optuna.create_study(study_name="writer", sampler=optuna.samplers.TPESampler(seed=1))
    study.optimize(objective, n_trials=n)
    return study


def children(bridge: StudyBridge) -> list[Any]:
    _, tree = mlflow_tree("writer")
    return sorted(tree[bridge.parent_id], key=lambda r: int(r.data.tags["podium.trial"]))


def writer_threads() -> int:
    return sum(t.name == WRITER_THREAD for t in threading.enumerate())


def test_the_writer_writes_every_run_in_order_off_the_trials_thread() -> None:
    before, client = writer_threads(), Recording()
    bridge = bridge_on(client)
    study = study_with(bridge, 8)
    bridge.finish(study)
    assert client.created == [f"tree-{n:04d}" for n in range(8)]
    assert client.threads == {WRITER_THREAD}, "a run was written on the trial's thread"
    runs = children(bridge)
    assert [int(r.data.tags["podium.trial"]) for r in runs] == list(range(8))
    for run, trial in zip(runs, study.trials, strict=True):
        assert run.info.status == "FINISHED" and run.info.run_name == f"tree-{trial.number:04d}"
        assert run.info.start_time == int(trial.datetime_start.timestamp() * 1000)
        assert run.data.params == {"x": str(trial.params["x"])}
        assert run.data.metrics == {"cv_log_loss": trial.value, "fold0.log_loss": trial.value}
        assert run.data.tags["podium.state"] == "COMPLETE" and "podium.mended" not in run.data.tags
    assert writer_threads() == before, "the writer outlived finish"


def test_a_store_that_fails_is_tried_once_and_reported_once() -> None:
    client = Recording(fail=lambda name: name >= "tree-0003")
    bridge = bridge_on(client)
    study = study_with(bridge, 8)
    with pytest.raises(TrackingStoreError) as caught:
        bridge.finish(study)
    # trial 3 failed in the writer, 4-7 were never tried; the flush tried 3 once more (a sqlite store answers)
    assert client.created == [*(f"tree-{n:04d}" for n in range(4)), "tree-0003"]
    message = str(caught.value)
    assert "failed while study writer ran ([Errno 111] Connection refused)" in message
    assert "every trial is intact in the Optuna study" in message and "trials 3-7 are missing" in message
    assert "\n" not in message
    assert [t.state.name for t in study.trials] == ["COMPLETE"] * 8
    assert [r.info.run_name for r in children(bridge)] == [f"tree-{n:04d}" for n in range(3)]


def test_a_store_that_fails_once_loses_nothing() -> None:
    failures = iter([True])
    client = Recording(fail=lambda name: name == "tree-0002" and next(failures, False))
    bridge = bridge_on(client)
    bridge.finish(study_with(bridge, 5))
    assert [r.info.run_name for r in children(bridge)] == [f"tree-{n:04d}" for n in range(5)]


def test_finish_writes_the_runs_a_killed_worker_left_out(monkeypatch: pytest.MonkeyPatch) -> None:
    """Trials of an ended worker without a run, or with one it never ended, are mended from the study."""
    gone = "podium-test-gone:1:0"
    monkeypatch.setattr("pipelines.study_bridge.process_gone", lambda ident: ident == gone)
    bridge = bridge_on(MlflowClient())
    study = study_with(None, 4, owner=gone)
    run_id = bridge.client.create_run(bridge.experiment_id, tags={"mlflow.runName": "tree-0001"}).info.run_id
    bridge.client.set_tag(run_id, "mlflow.parentRunId", bridge.parent_id)
    bridge.client.set_tag(run_id, "podium.trial", "1")  # killed before it ended the run
    bridge.finish(study)
    runs = children(bridge)
    assert [(r.data.tags["podium.trial"], r.info.status) for r in runs] == [
        (str(n), "FINISHED") for n in range(4)
    ]
    mended = [r for r in runs if "podium.mended" in r.data.tags]
    assert [r.data.tags["podium.trial"] for r in mended] == ["0", "2", "3"]
    assert mended[0].data.metrics == {"cv_log_loss": study.trials[0].value}


def test_a_live_workers_trials_are_left_to_it() -> None:
    bridge = bridge_on(MlflowClient())
    bridge.finish(study_with(None, 2, owner=LIVE_WORKER))
    assert children(bridge) == []


def test_runs_still_queued_at_exit_are_written(caplog: pytest.LogCaptureFixture) -> None:
    """A stage that raised before its flush: the interpreter's exit hook writes what the writer holds."""
    bridge = bridge_on(MlflowClient())
    study_with(bridge, 3)
    runwriter._close_at_exit()
    assert [r.info.run_name for r in children(bridge)] == [f"tree-{n:04d}" for n in range(3)]
    assert "not written before exit" not in caplog.text


def test_number_ranges() -> None:
    assert number_ranges([9, 1, 3, 4, 5, 12, 13]) == "1, 3-5, 9, 12-13"


# --- a real tracking server killed in the middle of `podium tune` ---------------------


@contextmanager
def killable_server(root: Path) -> Iterator[tuple[str, Callable[[], None]]]:
    """`mlflow server` on loopback (SQLite backend in `root`, proxied artifacts): its URL and a SIGKILL."""
    root.mkdir(parents=True, exist_ok=True)
    port, pidfile = free_port(), root / f"server-{time.monotonic_ns()}.pid"
    mlflow_server = [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port)]
    mlflow_server += ["--workers", "1", "--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}"]
    mlflow_server += ["--artifacts-destination", str(root / "artifacts")]
    command = ["sh", "-c", 'echo $$ > "$0"; exec "$@"', str(pidfile), *mlflow_server]
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    env |= {"MLFLOW_DISABLE_TELEMETRY": "true", "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    url = f"http://127.0.0.1:{port}"

    def kill() -> None:  # the shell exec'd the server in a session of its own: kill all of it
        os.killpg(int(pidfile.read_text()), signal.SIGKILL)

    with http_service(command, f"{url}/health", root, env):
        yield url, kill


def trial_runs(client: MlflowClient, experiment: str) -> dict[int, Any]:
    found = client.get_experiment_by_name(experiment)
    runs = (
        client.search_runs([found.experiment_id], "tags.`podium.trial` != ''", max_results=1000)
        if found
        else []
    )
    return {int(r.data.tags["podium.trial"]): r for r in runs}


def use_store(url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", url)
    mlflow.set_tracking_uri(url)


@pytest.mark.slow
def test_a_server_killed_mid_study_is_one_error_naming_the_missing_runs_and_a_rerun_writes_them(
    built_profile: Profile, spec: Spec, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "space.yaml").write_text(FAST_SPACE)
    tuning = spec.tuning.model_copy(
        update={"search_space": tmp_path / "space.yaml", "pruner_startup_trials": 100}
    )
    small = spec.model_copy(update={"tuning": tuning})
    (tmp_path / "spec.yaml").write_text(
        yaml.safe_dump(small.model_dump(mode="json", by_alias=True, exclude_none=True))
    )
    storage = str(tmp_path / "studies.journal")
    (tmp_path / "profile.yaml").write_text(
        f"warehouse: {{backend: duckdb, path: {built_profile.warehouse.path}}}\n"
    )
    command = tune_command(tmp_path / "spec.yaml", tmp_path / "profile.yaml", 16, storage)
    root = tmp_path / "server"
    with killable_server(root) as (url, kill):
        use_store(url, monkeypatch)
        env = worker_env() | {"PODIUM_LOG_LEVEL": "WARNING", "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1"}
        env["MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR"] = "0"  # one real retry, at once
        worker = subprocess.Popen(command, cwd=REPO, env=env, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 120
        while not any(r.info.status == "FINISHED" for r in trial_runs(MlflowClient(url), spec.name).values()):
            if worker.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"no trial run was written: {worker.communicate(timeout=60)[1][-6000:]}")
            time.sleep(0.05)
        kill()  # the store dies in the middle of the study
        _, stderr = worker.communicate(timeout=180)
    assert worker.returncode == 1 and "Traceback" not in stderr, stderr[-3000:]
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr[-3000:]  # no retry warnings, no second error: one line

    trials = optuna.load_study(study_name=STUDY, storage=open_storage(storage)).trials
    assert [t.state.name for t in trials] == ["COMPLETE"] * 16, "a trial was lost or failed in Optuna"
    written = trial_runs(MlflowClient(f"sqlite:///{root / 'mlflow.db'}"), spec.name)
    missing = sorted(set(range(16)) - {n for n, r in written.items() if r.info.status == "FINISHED"})
    half_written = {n for n, r in written.items() if r.info.status == "RUNNING"}  # killed between two calls
    assert missing and missing[-1] == 15
    assert lines[0].startswith(f"error: the MLflow tracking store {url} failed while study {STUDY} ran (")
    assert "every trial is intact in the Optuna study" in lines[0]
    assert f"the MLflow runs of trials {number_ranges(missing)} are missing" in lines[0]
    assert "rerun the same `podium tune` command (e.g. `podium tune --family decision_tree`)" in lines[0]

    with killable_server(root) as (url, _):  # the store is back: the rerun writes the missing runs
        use_store(url, monkeypatch)
        profile = built_profile.model_copy(update={"optuna_storage": storage})
        tune.main(profile, small, family="decision_tree", n_trials=1)
        assert_children_mirror_trials(storage)
        runs = trial_runs(MlflowClient(), spec.name)
        mended = sorted(n for n, r in runs.items() if "podium.mended" in r.data.tags)
        assert mended == sorted(set(missing) - half_written)
        assert all(runs[n].data.metrics["cv_log_loss"] == trials[n].value for n in mended)
