"""The options the `podium` commands share: where (`--profile`), what (`--spec`), budgets and formats.

Each refuses a bad value as one clear error (a `PodiumError`) before any stage starts.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from datetime import datetime
from enum import StrEnum
from typing import Annotated

import typer
from mlflow.tracking import MlflowClient

from pipelines.config import MIN_TUNE_SECONDS, WEEK
from pipelines.errors import ConfigError, PodiumError
from pipelines.secrets import refuse_password

ProfileOption = Annotated[
    str,
    typer.Option("--profile", "-p", envvar="PODIUM_PROFILE", help="Profile name (conf/<name>.yaml) or path."),
]
SpecOption = Annotated[
    str,
    typer.Option(
        "--spec",
        "-s",
        envvar="PODIUM_SPEC",
        help="Spec name (experiments/<name>/spec.yaml), folder or path; default: the only one.",
    ),
]


def bounded(option: str, low: float, high: float, hint: str = "") -> Callable[[float | None], float | None]:
    """A callback refusing NaN, infinity and values outside [low, high] for `option`, as one clear error."""

    def check(value: float | None) -> float | None:
        if value is not None and not (math.isfinite(value) and low <= value <= high):
            raise PodiumError(f"{option} must be a number from {low:g} to {high:g}, got {value}{hint}.")
        return value

    return check


def no_secret(storage: str) -> str:
    """A storage URL carrying a password is refused; under `mlflow run`, which logged it as a parameter
    before Podium started, the run holding it is deleted too (`mlflow gc` purges it)."""
    try:
        return refuse_password(storage, "--storage")
    except ConfigError as exc:
        run_id = os.environ.get("MLFLOW_RUN_ID")
        if not run_id:
            raise
        MlflowClient().delete_run(run_id)
        raise ConfigError(
            f"{exc} `mlflow run` logged it as a parameter of run {run_id}, which Podium deleted: purge it "
            f"with `mlflow gc --run-ids {run_id}`."
        ) from None


StorageOption = Annotated[
    str,
    typer.Option(
        callback=no_secret, help="Optuna storage URL (no password) or journal path (default: the profile's)."
    ),
]


JobsOption = Annotated[
    int,
    typer.Option(
        "--n-jobs", "-j", callback=bounded("--n-jobs", 0, 1024), help="Cores for cross-validation (0: all)."
    ),
]
HostOption = Annotated[str, typer.Option(help="The address to serve on (loopback by default).")]
PortOption = Annotated[int, typer.Option(min=1, max=65535, help="The port to serve on.")]


class Format(StrEnum):
    """How a command prints its rows: a table for people, csv or json for machines."""

    table = "table"
    csv = "csv"
    json = "json"


SPEC_BUDGET = ": leave it out for the spec's budget"
TrialsOption = Annotated[
    int | None,
    typer.Option(
        "--n-trials",
        "-n",
        callback=bounded("--n-trials", 1, 100_000, SPEC_BUDGET),
        help="At most this many new trials per family.",
    ),
]
SecondsOption = Annotated[
    float | None,
    typer.Option(
        "--seconds",
        "--timeout",
        callback=bounded(
            "--seconds", MIN_TUNE_SECONDS, WEEK, " (the stage keeps 2 s to close)" + SPEC_BUDGET
        ),
        help="Seconds for the whole stage.",
    ),
]


AsOfOption = Annotated[
    datetime | None,
    typer.Option(
        "--as-of",
        formats=["%Y-%m-%d"],
        help="Treat the world as of this date: rows after it have not landed (default: today).",
    ),
]
