"""MLflow plumbing shared by the stages: where runs go and what every run records.

A stage's run nests under an active run (so `podium run` / `-e main` shows one tree),
resumes the run that `mlflow run` created (MLFLOW_RUN_ID), or starts a new run in the
spec's experiment. Every run is tagged with its stage, spec, profile and git sha and
carries the resolved spec as `spec.json`.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from functools import lru_cache

import mlflow

from pipelines.config import Profile, Spec


def configure(profile: Profile) -> None:
    """Point MLflow at the profile's tracking store unless MLFLOW_TRACKING_URI says otherwise."""
    if profile.tracking_uri and not os.environ.get("MLFLOW_TRACKING_URI"):
        mlflow.set_tracking_uri(profile.tracking_uri)


@contextmanager
def stage_run(profile: Profile, spec: Spec, stage: str) -> Iterator[mlflow.ActiveRun]:
    """Open the MLflow run of one stage; it ends FAILED if the block raises."""
    configure(profile)
    if mlflow.active_run():
        run = mlflow.start_run(run_name=stage, nested=True)
    elif os.environ.get("MLFLOW_RUN_ID"):
        run = mlflow.start_run()
    else:
        mlflow.set_experiment(spec.name)
        run = mlflow.start_run(run_name=stage)
    with run:
        mlflow.set_tags(
            {
                "podium.stage": stage,
                "podium.spec": spec.name,
                "podium.profile": profile.name,
                "podium.backend": profile.warehouse.backend,
                "podium.git_sha": git_sha() or "unknown",
            }
        )
        mlflow.log_dict(spec.model_dump(mode="json", by_alias=True), "spec.json")
        yield run


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
