"""MLflow runs of the stages: the tracking store, one run per stage, and what a run logs.

A stage's run nests under an active run (so `podium run` / `-e main` shows one tree),
resumes the run that `mlflow run` created (MLFLOW_RUN_ID), or starts a new run in the
spec's experiment. Every run is tagged with its stage, spec, profile and git sha and
carries the resolved spec as `spec.json`.
"""

from __future__ import annotations

import logging
import os
import re
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from functools import lru_cache
from typing import Any

import mlflow
import sqlalchemy
from mlflow.data.dataset import Dataset
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from pipelines.config import Profile, Spec
from pipelines.errors import PodiumError, TrackingStoreError
from pipelines.processes import PROCESS_TAG, end_stale_runs, of_stage, process_id
from pipelines.runwriter import RunRecord, epoch_ms, write_run
from pipelines.secrets import hide_password
from pipelines.warehouse.base import first_line

log = logging.getLogger(__name__)


# MLflow retries a dead server for minutes by default (7 retries, backoff factor 2); Podium gives up
# within about 15 s unless the user set MLflow's own variables.
# MLflow retries a dead server for minutes by default (7 retries, backoff factor 2); Podium gives up
# within about 15 s unless the user set MLflow's own variables.
HTTP_RETRIES = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "3", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "2"}


def configure(profile: Profile) -> None:
    """Point MLflow at the profile's tracking store unless MLFLOW_TRACKING_URI says otherwise."""
    for name, value in HTTP_RETRIES.items():
        os.environ.setdefault(name, value)
    if profile.tracking_uri and not os.environ.get("MLFLOW_TRACKING_URI"):
        mlflow.set_tracking_uri(profile.tracking_uri)


# What MLflow raises when its store cannot be used: an unsupported or unreachable URI, a missing DB driver.
STORE_ERRORS = (MlflowException, ImportError, sqlalchemy.exc.SQLAlchemyError)


def store_error(exc: Exception) -> PodiumError:
    """A tracking store MLflow cannot use, as one clear error: its URI (password hidden), why, and the fix."""
    uri = hide_password(mlflow.get_tracking_uri())
    return PodiumError(
        f"cannot use the MLflow tracking store {uri}: {store_detail(exc)}. Fix "
        "MLFLOW_TRACKING_URI or "
        "the profile's tracking_uri (e.g. sqlite:///mlflow.db), or start the server it names."
    )


def store_detail(exc: BaseException) -> str:
    """Why a store failed, in one short clause: a refused connection's errno, else its first 200 chars."""
    text = " ".join(str(getattr(exc, "message", exc)).split()) or type(exc).__name__
    refused = re.search(r"\[Errno -?\d+\][^\"')]*", text)  # a server that does not answer: say only that
    detail = refused.group(0) if refused else text if len(text) <= 200 else text[:200].rsplit(". ", 1)[0]
    return hide_password(detail.strip().rstrip("."))


@contextmanager
def stage_run(profile: Profile, spec: Spec, stage: str) -> Iterator[mlflow.ActiveRun]:
    """Open the MLflow run of one stage; it ends FAILED if the block raises."""
    configure(profile)
    resumed = os.environ.get("MLFLOW_RUN_ID")  # read first: start_run unsets it
    try:
        if mlflow.active_run():
            run = nested_run(stage)
        elif resumed:
            check_experiment(resumed, spec)
            run = mlflow.start_run()
        else:
            run = mlflow.start_run(experiment_id=experiment_id(spec.name), run_name=stage)
    except STORE_ERRORS as exc:
        if resumed and getattr(exc, "error_code", "") == "RESOURCE_DOES_NOT_EXIST":
            raise PodiumError(
                f"MLFLOW_RUN_ID {resumed} names no run in the MLflow tracking store "
                f"{hide_password(mlflow.get_tracking_uri())}: unset it, or point MLFLOW_TRACKING_URI at "
                "the store that holds that run."
            ) from None
        raise store_error(exc) from None
    with run:
        mlflow.set_tags(
            {
                "podium.stage": stage,
                "podium.spec": spec.name,
                "podium.profile": profile.name,
                "podium.backend": profile.warehouse.backend,
                "podium.git_sha": git_sha() or "unknown",
                PROCESS_TAG: process_id(),
            }
        )
        mlflow.log_dict(spec.model_dump(mode="json", by_alias=True), "spec.json")
        end_stale_runs(MlflowClient(), run.info.experiment_id, of_stage(stage))
        try:
            yield run
        except Exception as exc:
            _end_failed(run, exc)
            raise


def check_experiment(run_id: str, spec: Spec) -> None:
    """A run that `mlflow run` opened must be in the spec's experiment, or a study would get two parents."""
    try:
        experiment = MlflowClient().get_experiment(MlflowClient().get_run(run_id).info.experiment_id)
    except MlflowException:
        return  # no such run: start_run says so, with the fix
    if experiment.name != spec.name:
        raise PodiumError(
            f"`mlflow run` put this run in experiment {experiment.name!r}, but spec {spec.name} files "
            f"its runs and studies in experiment {spec.name!r}: pass `--experiment-name {spec.name}` to "
            "`mlflow run`."
        )


RETRIES_VARIABLE = "MLFLOW_HTTP_REQUEST_MAX_RETRIES"


def _end_failed(run: mlflow.ActiveRun, exc: Exception) -> None:
    """End `run` FAILED if still active, keeping `exc` the error a user sees even if the store fails here too.

    After a TrackingStoreError the store is known to be down, so it is tried once, without MLflow's retries.
    """
    active = mlflow.active_run()
    if active is None or active.info.run_id != run.info.run_id:
        return
    previous = os.environ.get(RETRIES_VARIABLE)
    if isinstance(exc, TrackingStoreError):
        os.environ[RETRIES_VARIABLE] = "0"
    try:
        mlflow.end_run("FAILED")
    except STORE_ERRORS as failed:
        log.debug("could not end the run FAILED after %s: %s", type(exc).__name__, first_line(failed))
    finally:
        if previous is None:
            os.environ.pop(RETRIES_VARIABLE, None)
        else:
            os.environ[RETRIES_VARIABLE] = previous


def nested_run(name: str) -> mlflow.ActiveRun:
    """A child of the active run, in its experiment (MLflow would otherwise file it under Default)."""
    parent = mlflow.active_run()
    assert parent is not None, "nested_run opens a child of the active run"  # its callers run inside one
    return mlflow.start_run(run_name=name, nested=True, experiment_id=parent.info.experiment_id)


def experiment_id(name: str) -> str:
    """The id of the named experiment, created if missing; safe when workers race to create it."""
    client = MlflowClient()
    found = client.get_experiment_by_name(name)
    if found:
        return found.experiment_id
    try:
        return client.create_experiment(name)
    except MlflowException:
        found = client.get_experiment_by_name(name)
        if not found:
            raise
        return found.experiment_id


@lru_cache(maxsize=1)
def git_sha() -> str | None:
    """The current commit, if the project is a git checkout."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5, check=True
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def store_answers(uri: str, timeout: float = 2.0) -> bool:
    """Whether the store may work now: an HTTP server's /health answers (no retries); other stores: yes."""
    if not uri.startswith(("http://", "https://")):
        return True
    try:
        with urllib.request.urlopen(f"{uri.rstrip('/')}/health", timeout=timeout) as response:
            return response.status == 200
    except (OSError, ValueError):
        return False


def log_figures(figures: dict[str, Any]) -> None:
    """Log matplotlib figures to the active run as PNG artifacts at their paths, then close them."""
    import matplotlib.pyplot as plt

    for path, figure in figures.items():
        mlflow.log_figure(figure, path)
        plt.close(figure)


def log_dataset(dataset: Dataset, context: str, attempts: int = 3) -> None:
    """`mlflow.log_input`, tolerant of another process registering the same dataset first.

    MLflow inserts the dataset row before linking it to the run, so two workers logging the
    same training window race on a unique key; the loser retries and finds the row present.
    """
    for attempt in range(attempts):
        try:
            mlflow.log_input(dataset, context=context)
            return
        except MlflowException:
            if attempt == attempts - 1:
                raise
            time.sleep(0.2 * (attempt + 1))


def log_run(
    client: MlflowClient,
    experiment_id: str,
    name: str,
    tags: dict[str, str],
    metrics: dict[str, float],
    params: dict[str, Any] | None = None,
    status: str = "FINISHED",
    started: datetime | None = None,
) -> str:
    """A finished run in three calls, written now: create it, one `log_batch`, end it with `status`."""
    now = int(time.time() * 1000)
    start_ms = epoch_ms(started) if started else now
    return write_run(
        client, experiment_id, RunRecord(name, tags, metrics, params or {}, status, start_ms, now)
    )
