"""Tune stage: seeded Optuna searches over model families, every trial tracked in MLflow.

Inputs:  the spec's feature table, rows with train_start <= time < holdout_start only (the
         holdout is excluded by the query and asserted absent); the spec's search spaces.
Outputs: one resumable Optuna study per (spec, family), named `<spec>-<family>`, in the
         profile's storage (or `--storage`).
MLflow:  under the `tune` run (or the run `mlflow run` created): a run per baseline, a
         parent run per family study with a child run per trial (FINISHED / KILLED if
         pruned / FAILED), `leaderboard.csv`, `splits.json`, `spec.json`, and the
         training window as an `mlflow.data` input.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

import mlflow
import numpy as np
import optuna
import pandas as pd
from mlflow.tracking import MlflowClient
from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID
from sklearn.base import BaseEstimator, clone

from pipelines import dataset, plots
from pipelines.baselines import baselines
from pipelines.config import Profile, Spec, TuningConfig
from pipelines.dataset import FeatureSchema, Window
from pipelines.errors import ConfigError, PodiumError
from pipelines.metrics import METRICS, classification_metrics
from pipelines.models import FACTORIES, make_estimator, read_spaces, suggest
from pipelines.progress import counter
from pipelines.registry import study_name
from pipelines.splits import Fold, season_folds
from pipelines.tracking import (
    PROCESS_TAG,
    StudyBridge,
    git_sha,
    log_dataset,
    log_figures,
    log_run,
    open_storage,
    process_gone,
    process_id,
    stage_run,
    trial_counts,
)
from pipelines.warehouse import Warehouse, connect

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainingData:
    """The training window cut into season folds, with its feature schema."""

    window: Window
    folds: list[Fold]
    schema: FeatureSchema


@dataclass(frozen=True)
class Standing:
    """One leaderboard row: a family study or a baseline."""

    name: str
    complete: int
    pruned: int
    failed: int
    cv_log_loss: float
    cv_auc: float
    seconds: float


@dataclass(frozen=True)
class TuneResult:
    leaderboard: list[Standing]


@dataclass(frozen=True)
class Budget:
    """How much one call spends per family: trials, seconds and parallel trials."""

    n_trials: int
    timeout: float | None
    n_jobs: int


def main(
    profile: Profile,
    spec: Spec,
    family: str = "all",
    n_trials: int | None = None,
    timeout: float | None = None,
    n_jobs: int = 1,
    storage: str | None = None,
) -> TuneResult:
    """Score the baselines, then run (or resume) one study per family."""
    tuning: TuningConfig = spec.require("tuning")
    families = resolve_families(tuning, family)
    spaces = read_spaces(tuning.search_space)
    missing = [f for f in families if f not in spaces]
    if missing:
        raise ConfigError(f"{tuning.search_space} has no search space for {missing}: add one per family.")
    with connect(profile, read_only=True) as warehouse:
        data = load_training_data(warehouse, spec)
    budget = Budget(n_trials or tuning.n_trials, timeout or tuning.timeout, n_jobs)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    with stage_run(profile, spec, "tune") as top:
        tags = _record_context(spec, data, top.info.run_id)
        column = spec.baseline.column if spec.baseline else None
        standings = [_score_baseline(name, est, data, top, tags) for name, est in baselines(column).items()]
        for name in families:
            where = storage or profile.optuna_storage
            study = _open_study(study_name(spec, name), where, tuning)
            bridge = StudyBridge.open(
                study.study_name, name, top.info.experiment_id, top.info.run_id, tags, where
            )
            standings.append(_search(study, bridge, name, spaces[name], data, tuning.seed, budget))
        board = pd.DataFrame([s.__dict__ for s in standings])
        mlflow.log_text(board.to_csv(index=False), "leaderboard.csv")
        log_figures({"plots/leaderboard.png": plots.leaderboard_figure(board)})
    return TuneResult(standings)


def resolve_families(tuning: TuningConfig, family: str) -> list[str]:
    """`all` means the spec's families; otherwise one known family."""
    if family == "all":
        return list(tuning.families)
    if family not in FACTORIES:
        raise PodiumError(f"unknown family {family!r}: choose one of {', '.join(FACTORIES)} or all.")
    return [family]


def load_training_data(warehouse: Warehouse, spec: Spec) -> TrainingData:
    """Read the training window (never the holdout) and cut it into season folds."""
    schema = dataset.read_schema(warehouse, spec)
    window = dataset.load_training(warehouse, spec, schema)
    return TrainingData(window, season_folds(window.times, spec.cv.folds, spec.cv.gap), schema)


def cross_validate(
    estimator: BaseEstimator, data: TrainingData, trial: optuna.Trial | None = None
) -> list[dict[str, float]]:
    """Fit a fresh copy on each fold's training part, score its season; report to the pruner."""
    X, y = data.window.X, data.window.y
    scores: list[dict[str, float]] = []
    for fold in data.folds:
        model = clone(estimator).fit(X.iloc[fold.train_rows], y[fold.train_rows])
        scores.append(
            classification_metrics(y[fold.valid_rows], model.predict_proba(X.iloc[fold.valid_rows]))
        )
        if trial is not None:
            trial.report(float(np.mean([s["log_loss"] for s in scores])), fold.index)
            if trial.should_prune():
                raise optuna.TrialPruned()
    return scores


def summarize(scores: list[dict[str, float]]) -> dict[str, float]:
    """Per-fold metrics as `fold<i>.<metric>` plus their means as `cv_<metric>`."""
    out = {f"fold{i}.{k}": v for i, s in enumerate(scores) for k, v in s.items()}
    if len(scores):
        out |= {f"cv_{k}": float(np.mean([s[k] for s in scores])) for k in METRICS}
    return out


def _search(
    study: optuna.Study,
    bridge: StudyBridge,
    family: str,
    space: dict,
    data: TrainingData,
    seed: int,
    budget: Budget,
) -> Standing:
    """Run trials of one family's study; each trial is logged once through the bridge."""
    fail_stale_trials(study, bridge)
    started = time.perf_counter()
    with counter(f"tune {family}", budget.n_trials) as advance:
        study.optimize(
            _objective(bridge, family, space, data, seed),
            n_trials=budget.n_trials,
            timeout=budget.timeout,
            n_jobs=budget.n_jobs,
            catch=(Exception,),
            callbacks=[lambda *_: advance()],
        )
    bridge.finish(study)
    return _standing(family, study, time.perf_counter() - started)


def _objective(
    bridge: StudyBridge, family: str, space: dict, data: TrainingData, seed: int
) -> Callable[[optuna.Trial], float]:
    """One trial: sample, cross-validate with pruning, log it once; the mean CV log loss."""

    def objective(trial: optuna.Trial) -> float:
        trial.set_user_attr(PROCESS_TAG, process_id())
        params = suggest(trial, space)
        scores: list[dict[str, float]] = []
        started = time.perf_counter()
        try:
            estimator = make_estimator(family, params, data.schema, seed)
            scores = cross_validate(estimator, data, trial)
        except optuna.TrialPruned:
            bridge.log_trial(trial, "PRUNED", params, summarize(scores) | _fit_time(started))
            raise
        except Exception as exc:
            bridge.log_trial(trial, "FAIL", params, summarize(scores), error=f"{type(exc).__name__}: {exc}")
            raise
        metrics = summarize(scores)
        trial.set_user_attr("metrics", {k: metrics[f"cv_{k}"] for k in METRICS})
        bridge.log_trial(trial, "COMPLETE", params, metrics | _fit_time(started))
        return metrics["cv_log_loss"]

    return objective


def fail_stale_trials(study: optuna.Study, bridge: StudyBridge) -> list[int]:
    """Fail the trials a killed worker left RUNNING, each with a FAILED child run; their numbers."""
    stale = [
        t
        for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,))
        if process_gone(t.user_attrs.get(PROCESS_TAG))
    ]
    for trial in stale:
        study._storage.set_trial_state_values(trial._trial_id, optuna.trial.TrialState.FAIL)
        error = f"its worker {trial.user_attrs[PROCESS_TAG]} was killed while the trial ran"
        bridge.log_trial(trial, "FAIL", dict(trial.params), {}, error=error)
        log.warning("%s trial %d: %s; marked FAIL", study.study_name, trial.number, error)
    return [t.number for t in stale]


def _fit_time(started: float) -> dict[str, float]:
    return {"fit_seconds": time.perf_counter() - started}


def _standing(name: str, study: optuna.Study, seconds: float) -> Standing:
    """A family's leaderboard row: trial counts and its best trial's CV metrics."""
    states = trial_counts(study)
    best = study.best_trial.user_attrs.get("metrics", {}) if states["COMPLETE"] else {}
    nan = float("nan")
    return Standing(
        name,
        states["COMPLETE"],
        states["PRUNED"],
        states["FAIL"],
        best.get("log_loss", nan),
        best.get("auc", nan),
        round(seconds, 1),
    )


def _open_study(name: str, storage: str, tuning: TuningConfig) -> optuna.Study:
    """Create or resume a study: seeded TPE, a median pruner over per-fold reports."""
    return optuna.create_study(
        study_name=name,
        storage=open_storage(storage),
        direction="minimize",
        sampler=optuna.samplers.TPESampler(seed=tuning.seed),
        pruner=optuna.pruners.MedianPruner(n_startup_trials=tuning.pruner_startup_trials, n_warmup_steps=1),
        load_if_exists=True,
    )


def _record_context(spec: Spec, data: TrainingData, run_id: str) -> dict[str, str]:
    """Log the training window and folds on the top run; return the tags every run carries."""
    lineage = dataset.lineage_dataset(spec, data.window, dataset.training_name(spec))
    log_dataset(lineage, context="training")
    folds = [f.describe() for f in data.folds]
    bounds = {"train_start": str(spec.train_start), "holdout_start": str(spec.holdout_start)}
    mlflow.log_dict(bounds | {"folds": folds}, "splits.json")
    seed = spec.tuning.seed if spec.tuning else None
    mlflow.log_params(bounds | {"cv_folds": len(folds), "seed": seed, "rows": len(data.window.X)})
    return {
        "podium.spec": spec.name,
        "podium.data_digest": lineage.digest,
        "podium.git_sha": git_sha() or "unknown",
        "podium.seed": str(seed if seed is not None else ""),
        "podium.cv": " ".join(f"{f['train']}>{f['valid']}" for f in folds),
        "podium.top_run_id": run_id,
    }


def _score_baseline(
    name: str, estimator: BaseEstimator, data: TrainingData, top: mlflow.ActiveRun, tags: dict[str, str]
) -> Standing:
    """Cross-validate one baseline and log it as a child run with the same metric names."""
    started = time.perf_counter()
    metrics = summarize(cross_validate(estimator, data))
    tags = tags | {
        MLFLOW_PARENT_RUN_ID: top.info.run_id,
        "podium.role": "baseline",
        "podium.family": f"baseline:{name}",
        "podium.baseline": name,
    }
    log_run(MlflowClient(), top.info.experiment_id, f"baseline-{name}", tags, metrics)
    log.info("baseline %s: CV log loss %.4f", name, metrics["cv_log_loss"])
    seconds = round(time.perf_counter() - started, 1)
    return Standing(f"baseline:{name}", 1, 0, 0, metrics["cv_log_loss"], metrics["cv_auc"], seconds)
