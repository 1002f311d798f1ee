"""P1: per-trial overhead on tuning's critical path (sampler + storage + tracking) against the fit time.

Two measurements, both at the demo's stores (the Optuna journal file, an MLflow SQLite store):

* `measure`: real studies through `tune.main` on the bundled F1 features (DuckDB), for a short-fit
  family and a longer-fit one, the training window tiled to grow the fits.
* `measure_critical_path`: one study per way of tracking a trial (none; the background writer; the
  synchronous writes the bridge made before it) with an objective that does no work (the worst case:
  the writer runs behind and competes for the interpreter) or that waits like a short fit does.

A trial's overhead is the time from its start to the next trial's start, minus its fit (for `tune`:
the `fit_seconds` it logs; here: the objective's own wait). `python -m benchmarks.tune_overhead`
prints both tables.
"""

from __future__ import annotations

import random
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlflow
import optuna
from mlflow.tracking import MlflowClient

from benchmarks.generate import tile_window
from pipelines.config import Profile, Spec
from pipelines.config_files import load_spec
from pipelines.metrics import METRICS
from pipelines.models import read_spaces, suggest
from pipelines.processes import PROCESS_TAG, process_id
from pipelines.registry import study_name
from pipelines.runwriter import write_run
from pipelines.stages import features, ingest, tune
from pipelines.studies import open_storage
from pipelines.study_bridge import StudyBridge
from pipelines.tracking import experiment_id
from pipelines.warehouse import connect

FAMILIES = {"decision_tree": 30, "random_forest": 6}
SCALES = (1, 4)
CRITICAL_PATH_TRIALS = 40  # a demo-sized study (TPE's own cost grows with the trials)
REPEATS = 3
FITS = (0.0, 0.05)  # seconds an objective waits: none, and a short fit (decision trees fit in ~0.15 s)


def measure(
    root: Path, scales: tuple[int, ...] = SCALES, families: dict[str, int] = FAMILIES
) -> list[dict[str, object]]:
    """One row per (scale, family): median fit, median overhead, its tracking share, and the ratio.

    Scale k tiles the training window k times (`benchmarks.generate.tile_window`), so fits grow
    with the rows while the per-trial bookkeeping should not.
    """
    spec = load_spec("f1_podium")
    mlflow.set_tracking_uri(f"sqlite:///{root / 'mlflow.db'}")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    rows = []
    for scale in scales:
        path = root / f"scale{scale}.duckdb"
        storage = str(root / f"scale{scale}.journal")
        profile = Profile.model_validate(
            {"name": "bench", "warehouse": {"backend": "duckdb", "path": path}, "optuna_storage": storage}
        )
        ingest.main(profile, spec)
        features.main(profile, spec)
        with connect(profile) as warehouse:
            if scale > 1:
                tile_window(warehouse, spec, spec.train_start, spec.holdout_start, scale)
            training_rows = len(tune.load_training_data(warehouse, spec).window.X)
        scaled = spec.model_copy(update={"name": f"{spec.name}-x{scale}"})  # an MLflow experiment per scale
        for name, n in families.items():
            row = _measure_family(profile, scaled, name, n)
            rows.append({"scale": scale, "training rows": f"{training_rows:,}"} | row)
    return rows


def _measure_family(profile: Profile, spec: Spec, family: str, n_trials: int) -> dict[str, object]:
    """`podium tune --family FAMILY -n N` (pruning off), timed per trial from the study and its runs."""
    tracking: list[float] = []
    original = StudyBridge.log_trial

    def timed(self: StudyBridge, *args: Any, **kwargs: Any) -> None:
        started = time.perf_counter()
        original(self, *args, **kwargs)
        tracking.append(time.perf_counter() - started)

    tuning = spec.tuning.model_copy(update={"pruner_startup_trials": n_trials + 1})
    StudyBridge.log_trial = timed  # type: ignore[method-assign]
    try:
        started = time.perf_counter()
        tune.main(profile, spec.model_copy(update={"tuning": tuning}), family=family, n_trials=n_trials)
        wall = time.perf_counter() - started
    finally:
        StudyBridge.log_trial = original  # type: ignore[method-assign]
    study = optuna.load_study(
        study_name=study_name(spec, family), storage=open_storage(profile.optuna_storage)
    )
    trials = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    fits = _fit_seconds(spec.name, study.study_name)
    overhead = [
        (b.datetime_start - a.datetime_start).total_seconds() - fits[a.number]
        for a, b in zip(trials, trials[1:], strict=False)
    ]
    median_fit, median_overhead = statistics.median(fits.values()), statistics.median(overhead)
    return {
        "family": family,
        "trials": len(trials),
        "median fit (s)": round(median_fit, 3),
        "median overhead (ms)": round(1000 * median_overhead, 1),
        "of which tracking (ms)": round(1000 * statistics.median(tracking), 2),
        "overhead / fit": f"{100 * median_overhead / median_fit:.1f}%",
        "tune wall (s)": round(wall, 1),
    }


def _fit_seconds(experiment: str, study: str) -> dict[int, float]:
    """Each trial's `fit_seconds`, read from its child run."""
    client = MlflowClient()
    runs = client.search_runs(
        [client.get_experiment_by_name(experiment).experiment_id],
        filter_string=f"tags.`podium.study` = '{study}' and attributes.status = 'FINISHED'",
        max_results=5000,
    )
    return {
        int(r.data.tags["podium.trial"]): r.data.metrics["fit_seconds"]
        for r in runs
        if "podium.trial" in r.data.tags
    }


# --- the critical path by way of tracking, with an objective that does no work ------------------


class SynchronousBridge(StudyBridge):
    """The bridge as it was before the background writer: each run written on the trial's own thread."""

    def log_trial(
        self, trial: Any, state: str, params: dict, metrics: dict, error: str | None = None
    ) -> None:
        write_run(self.client, self.experiment_id, self._record(trial, state, params, metrics, error))


NO_TRACKING = "none (Optuna only)"
BRIDGES: dict[str, type[StudyBridge] | None] = {
    NO_TRACKING: None,
    "background writer": StudyBridge,
    "synchronous writes (before)": SynchronousBridge,
}


def measure_critical_path(
    root: Path, trials: int = CRITICAL_PATH_TRIALS, fits: tuple[float, ...] = FITS, repeats: int = REPEATS
) -> list[dict[str, object]]:
    """One row per (objective, tracking): overhead per trial, the part tracking adds, the call, the flush.

    The demo's stores (the Optuna journal file, an MLflow SQLite store) and the decision_tree space;
    studies of `trials` trials, the ways of tracking interleaved `repeats` times so that load from
    other processes falls on all of them alike.
    """
    spec = load_spec("f1_podium")
    mlflow.set_tracking_uri(f"sqlite:///{root / 'mlflow.db'}")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    space = read_spaces(spec.tuning.search_space)["decision_tree"]
    experiment = experiment_id("bench-critical-path")
    storage = open_storage(str(root / "critical_path.journal"))
    timings: dict[tuple[float, str], list[Timing]] = {(f, label): [] for f in fits for label in BRIDGES}
    for repeat in range(repeats):
        for (fit, label), runs in timings.items():
            name = f"critical-path-{fit}-{label}-{repeat}"
            opened = BRIDGES[label]
            bridge = opened.open(name, "decision_tree", experiment, None, {}) if opened else None
            runs.append(_critical_path(storage, name, space, bridge, fit, trials))
    rows = []
    for (fit, label), runs in timings.items():
        baseline = statistics.median(o for t in timings[fit, NO_TRACKING] for o in t.overhead)
        rows.append(_row(fit, label, runs, baseline))
    return rows


@dataclass
class Timing:
    """One study's per-trial overheads and tracking calls (s), and how long its final flush took."""

    overhead: list[float]
    calls: list[float]
    flush: float
    wall: float


def _row(fit: float, label: str, runs: list[Timing], baseline: float) -> dict[str, object]:
    overhead = sorted(o for t in runs for o in t.overhead)
    calls = [c for t in runs for c in t.calls]
    median = statistics.median(overhead)
    return {
        "objective": f"waits {1000 * fit:.0f} ms" if fit else "no work",
        "tracking": label,
        "trials": f"{len(runs)} x {len(runs[0].overhead) + 1}",
        "median overhead (ms)": round(1000 * median, 1),
        "p90 (ms)": round(1000 * overhead[int(0.9 * len(overhead))], 1),
        "added by tracking (ms)": round(1000 * (median - baseline), 1) if label != NO_TRACKING else "-",
        "tracking call (ms)": round(1000 * statistics.median(calls), 2) if calls else "-",
        "flush at the end (s)": round(max(t.flush for t in runs), 2),
        "study wall (s)": round(statistics.median(t.wall for t in runs), 2),
    }


def _critical_path(
    storage: optuna.storages.BaseStorage,
    name: str,
    space: dict,
    bridge: StudyBridge | None,
    fit: float,
    n_trials: int,
) -> Timing:
    """Run `n_trials` of an objective shaped like tune's (tag, sample, fit, log); time its critical path."""
    starts: list[float] = []
    waits: list[float] = []
    calls: list[float] = []
    fold_metrics = {f"fold{i}.{k}": 0.5 for i in range(4) for k in METRICS}

    def objective(trial: optuna.Trial) -> float:
        starts.append(time.perf_counter())
        trial.set_user_attr(PROCESS_TAG, process_id())
        params = suggest(trial, space)
        began = time.perf_counter()
        if fit:
            time.sleep(fit)
        waits.append(time.perf_counter() - began)
        value = random.Random(trial.number).random()
        metrics = fold_metrics | {f"cv_{k}": value for k in METRICS} | {"fit_seconds": waits[-1]}
        trial.set_user_attr("metrics", {k: value for k in METRICS})
        if bridge is not None:
            began = time.perf_counter()
            bridge.log_trial(trial, "COMPLETE", params, metrics)
            calls.append(time.perf_counter() - began)
        return value

    study = optuna.create_study(study_name=name, storage=storage, sampler=optuna.samplers.TPESampler(seed=42))
    started = time.perf_counter()
    study.optimize(objective, n_trials=n_trials)
    ended = time.perf_counter()
    if bridge is not None:
        bridge.flush()
    flushed = time.perf_counter()
    overhead = [b - a - w for a, b, w in zip(starts, starts[1:], waits, strict=False)]
    return Timing(overhead, calls, flushed - ended, flushed - started)


def _print(rows: list[dict[str, object]]) -> None:
    header = list(rows[0])
    print("| " + " | ".join(header) + " |\n|" + "---|" * len(header))
    for row in rows:
        print("| " + " | ".join(str(row[h]) for h in header) + " |")


if __name__ == "__main__":
    with tempfile.TemporaryDirectory() as tmp:
        _print(measure_critical_path(Path(tmp)))
    with tempfile.TemporaryDirectory() as tmp:
        _print(measure(Path(tmp)))
