"""The wall time of each stage of `make demo` (`podium run`), on the bundled data, in one process."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import mlflow

from pipelines.config import Profile
from pipelines.config_files import load_spec
from pipelines.stages import evaluate, features, ingest, promote, score, train, tune
from pipelines.tracking import stage_run


def bench_profile(root: Path) -> Profile:
    """A profile of its own under `root`: DuckDB file, journal studies, SQLite MLflow store."""
    mlflow.set_tracking_uri(f"sqlite:///{root / 'demo.db'}")
    return Profile.model_validate(
        {
            "name": "bench",
            "warehouse": {"backend": "duckdb", "path": root / "demo.duckdb"},
            "optuna_storage": str(root / "demo.journal"),
        }
    )


def measure(root: Path) -> list[dict[str, object]]:
    """One row per stage, in the order `podium run` chains them, plus the total."""
    spec = load_spec("f1_podium")
    profile = bench_profile(root)
    stages: dict[str, Callable[[], Any]] = {
        "ingest": lambda: ingest.main(profile, spec),
        "features": lambda: features.main(profile, spec),
        "tune": lambda: tune.main(profile, spec),
        "train": lambda: train.main(profile, spec),
        "promote": lambda: promote.main(profile, spec, alias="champion", stage="Production"),
        "score": lambda: score.main(profile, spec),
        "evaluate": lambda: evaluate.main(profile, spec),
    }
    rows = []
    with stage_run(profile, spec, "main"):
        for name, run in stages.items():
            started = time.perf_counter()
            run()
            rows.append({"stage": name, "seconds": round(time.perf_counter() - started, 1)})
    rows.append({"stage": "total", "seconds": round(sum(r["seconds"] for r in rows), 1)})
    return rows
