"""P1: per-trial overhead of tuning (sampler + storage + tracking) against the fit time.

Runs real studies on the bundled F1 features (DuckDB), with the default journal storage
and an MLflow SQLite store, for a short-fit family and a longer-fit one. A trial's
overhead is the wall time between consecutive trial completions minus the time spent
fitting and scoring its folds; the tracking share is timed around the bridge's calls.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path

import mlflow
import optuna

from benchmarks.generate import tile_window
from pipelines import features, ingest, tune
from pipelines.config import Profile, load_spec
from pipelines.models import read_spaces
from pipelines.tracking import StudyBridge
from pipelines.warehouse import connect

FAMILIES = {"decision_tree": 30, "random_forest": 6}
SCALES = (1, 4)


def measure(
    root: Path, scales: tuple[int, ...] = SCALES, families: dict[str, int] = FAMILIES
) -> list[dict[str, object]]:
    """One row per (scale, family): median fit, median overhead, its tracking share, and the ratio.

    Scale k tiles the training window k times (`benchmarks.generate.tile_window`), so fits grow
    with the rows while the per-trial bookkeeping should not.
    """
    spec = load_spec("f1_podium")
    mlflow.set_tracking_uri(f"sqlite:///{root / 'mlflow.db'}")
    spaces = read_spaces(spec.tuning.search_space)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    rows = []
    for scale in scales:
        path = root / f"scale{scale}.duckdb"
        profile = Profile.model_validate({"name": "bench", "warehouse": {"backend": "duckdb", "path": path}})
        ingest.main(profile, spec)
        features.main(profile, spec)
        with connect(profile) as warehouse:
            if scale > 1:
                tile_window(warehouse, spec, spec.train_start, spec.holdout_start, scale)
            data = tune.load_training_data(warehouse, spec)
        for name, n in families.items():
            row = _measure_family(f"{name}-x{scale}", name, n, spaces[name], data, spec, root)
            rows.append({"scale": scale, "training rows": f"{len(data.window.X):,}"} | row)
    return rows


def _measure_family(
    study_name: str, family: str, n_trials: int, space: dict, data: tune.TrainingData, spec, root: Path
) -> dict[str, object]:
    tracking: list[float] = []
    original = StudyBridge.log_trial

    def timed(self, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003, ANN202
        started = time.perf_counter()
        original(self, *args, **kwargs)
        tracking.append(time.perf_counter() - started)

    StudyBridge.log_trial = timed
    try:
        mlflow.set_experiment("bench")
        with mlflow.start_run(run_name=f"bench-{study_name}") as top:
            tuning = spec.tuning.model_copy(update={"seed": 42, "pruner_startup_trials": n_trials + 1})
            study = tune._open_study(f"bench-{study_name}", str(root / "studies.journal"), tuning)
            bridge = StudyBridge.open(study.study_name, family, top.info.experiment_id, top.info.run_id, {})
            started = time.perf_counter()
            tune._search(study, bridge, family, space, data, 42, tune.Budget(n_trials, None, 1))
            wall = time.perf_counter() - started
    finally:
        StudyBridge.log_trial = original
    trials = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    fits = [_fit_seconds(bridge, t.number) for t in trials]
    overhead = [
        (b.datetime_complete - a.datetime_complete).total_seconds() - fit
        for a, b, fit in zip(trials, trials[1:], fits[1:], strict=False)
    ]
    median_fit, median_overhead = statistics.median(fits), statistics.median(overhead)
    return {
        "family": family,
        "trials": len(trials),
        "median fit (s)": round(median_fit, 3),
        "median overhead (ms)": round(1000 * median_overhead, 1),
        "of which tracking (ms)": round(1000 * statistics.median(tracking), 1),
        "overhead / fit": f"{100 * median_overhead / median_fit:.1f}%",
        "study wall (s)": round(wall, 1),
    }


def _fit_seconds(bridge: StudyBridge, number: int) -> float:
    runs = bridge.client.search_runs(
        [bridge.experiment_id],
        filter_string=f"tags.`podium.trial` = '{number}' "
        f"and tags.`mlflow.parentRunId` = '{bridge.parent_id}'",
    )
    return runs[0].data.metrics["fit_seconds"]


if __name__ == "__main__":
    with tempfile.TemporaryDirectory() as tmp:
        for row in measure(Path(tmp)):
            print(row)
