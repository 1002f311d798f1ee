"""The pipeline, declared once: the stages in order, each with its function and what it reads and writes.

`podium run` (and the MLproject's `main`) runs them in this order as nested MLflow runs under one
`main` run; `podium status` asks each stage which warehouse tables it writes for a spec.
A new stage is a module with a `main(profile, spec)` and one entry here.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pipelines.config import Profile, Spec
from pipelines.lifecycle import Lifecycle
from pipelines.registry import CHAMPION
from pipelines.stages import cycle, evaluate, features, ingest, promote, score, train, tune
from pipelines.tracking import stage_run


@dataclass(frozen=True)
class Stage:
    """One stage: its name, its function, what it reads and writes, and the warehouse tables it writes."""

    name: str
    run: Callable[[Profile, Spec], Any]
    reads: str
    writes: str
    tables: Callable[[Spec], list[str]]


def _none(spec: Spec) -> list[str]:
    return []


STAGES: tuple[Stage, ...] = (
    Stage(
        "ingest",
        ingest.main,
        "the spec's ingest.source CSVs and tables.yaml",
        "raw tables",
        ingest.tables_written,
    ),
    Stage(
        "features",
        features.main,
        "raw tables, the spec's SQL models",
        "feature tables, checked",
        lambda spec: [*features.tables_written(spec), spec.table],
    ),
    Stage("tune", tune.main, "the training window", "Optuna studies, MLflow runs", _none),
    Stage(
        "train", train.main, "studies, the training window, the holdout once", "registered versions", _none
    ),
    Stage(
        "promote",
        functools.partial(promote.main, alias=CHAMPION, stage="Production"),
        "the challenger, the holder, the policy",
        "alias champion, stage Production, audit rows",
        lambda spec: [spec.registry.audit_table],
    ),
    Stage(
        "score", score.main, "the champion, the scoring window", "scores", lambda spec: [spec.scoring_table]
    ),
    Stage(
        "evaluate",
        evaluate.main,
        "scores, actual classes, the training window",
        "monitoring rows",
        lambda spec: [spec.monitoring.table] if spec.monitoring else [],
    ),
)


# What `podium backtest` replays for each past period and `podium cycle` runs for this one.
LIFECYCLE = Lifecycle(
    tune.main,
    train.main,
    promote.main,
    score.main,
    evaluate.main,
    ingest=ingest.main,
    features=features.main,
    cycle=cycle.main,
)


def run(profile: Profile, spec: Spec, show: Callable[[Any], None]) -> None:
    """Every stage in order under one `main` MLflow run; `show` gets each stage's result as it ends."""
    with stage_run(profile, spec, "main"):
        for stage in STAGES:
            show(stage.run(profile, spec))


def tables_written(spec: Spec) -> list[str]:
    """Every warehouse table the stages write for `spec`, in pipeline order, each once."""
    return list(dict.fromkeys(table for stage in STAGES for table in stage.tables(spec)))
