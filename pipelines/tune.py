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
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import mlflow
import numpy as np
import optuna
import pandas as pd
import sqlalchemy
from mlflow.data.pandas_dataset import PandasDataset
from mlflow.tracking import MlflowClient
from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID
from sklearn.base import BaseEstimator, clone

from pipelines import plots
from pipelines.baselines import baselines
from pipelines.config import Profile, Spec, TuningConfig
from pipelines.errors import ConfigError, PodiumError
from pipelines.metrics import METRICS, score
from pipelines.models import FACTORIES, build, read_spaces, suggest
from pipelines.progress import counter
from pipelines.splits import Fold, check_before_holdout, season_folds
from pipelines.tracking import StudyBridge, git_sha, hide_password, log_dataset, log_figures, log_run, stage_run
from pipelines.warehouse import Warehouse, connect
from pipelines.warehouse.dialect import quote

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainingData:
    """The training window, ready for CV: features, class indices and folds."""

    X: pd.DataFrame
    y: np.ndarray
    times: pd.Series
    folds: list[Fold]
    numeric: list[str]
    categorical: list[str]


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
    tuning = require_tuning(spec)
    families = resolve_families(tuning, family)
    spaces = read_spaces(tuning.search_space)
    missing = [f for f in families if f not in spaces]
    if missing:
        raise ConfigError(f"{tuning.search_space} has no search space for {missing}: add one per family.")
    with connect(profile, read_only=True) as warehouse:
        data = load_training_data(warehouse, spec)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    with stage_run(profile, spec, "tune") as top:
        tags = _record_context(spec, data, top.info.run_id)
        standings = [
            _score_baseline(name, est, data, top, tags) for name, est in baselines(_baseline_column(spec)).items()
        ]
        for name in families:
            study = _open_study(
                f"{spec.name}-{name}", storage or profile.optuna_storage, tuning.seed, tuning.pruner_startup_trials
            )
            bridge = StudyBridge.open(study.study_name, name, top.info.experiment_id, top.info.run_id, tags)
            standings.append(_search(study, bridge, name, spaces[name], data, tuning, n_trials, timeout, n_jobs))
        board = pd.DataFrame([s.__dict__ for s in standings])
        mlflow.log_text(board.to_csv(index=False), "leaderboard.csv")
        log_figures({"plots/leaderboard.png": plots.leaderboard_figure(board)})
    return TuneResult(standings)


def require_tuning(spec: Spec) -> TuningConfig:
    if spec.tuning is None:
        raise ConfigError(f"spec {spec.name} has no `tuning` section: add search_space and families.")
    return spec.tuning


def resolve_families(tuning: TuningConfig, family: str) -> list[str]:
    """`all` means the spec's families; otherwise one known family."""
    if family == "all":
        return list(tuning.families)
    if family not in FACTORIES:
        raise PodiumError(f"unknown family {family!r}: choose one of {', '.join(FACTORIES)} or all.")
    return [family]


def load_training_data(warehouse: Warehouse, spec: Spec) -> TrainingData:
    """Read the training window (never the holdout) and cut it into season folds."""
    columns = warehouse.columns(spec.table)
    numeric, categorical = feature_columns(spec, columns)
    time_col, keys = quote(spec.time), ", ".join(quote(k) for k in spec.keys)
    frame = warehouse.query(
        f"SELECT * FROM {quote(spec.table)} WHERE {time_col} >= ? AND {time_col} < ? ORDER BY {time_col}, {keys}",
        [spec.train_start, spec.holdout_start],
    )
    check_before_holdout(frame[spec.time], spec.holdout_start)
    if frame.empty:
        raise PodiumError(
            f"the training window is empty: {spec.table} has no rows with {spec.time} in "
            f"[{spec.train_start}, {spec.holdout_start}). Build the features, or fix train_start / holdout_start."
        )
    X = frame[numeric + categorical].copy()
    X[numeric] = X[numeric].astype("float64")
    return TrainingData(
        X,
        encode_target(frame[spec.target], spec),
        frame[spec.time],
        season_folds(frame[spec.time], spec.cv.folds, spec.cv.gap),
        numeric,
        categorical,
    )


def feature_columns(spec: Spec, columns: dict[str, str]) -> tuple[list[str], list[str]]:
    """(numeric, categorical) features: every column but keys, time, target and excluded ones."""
    named = {"target": [spec.target], "time": [spec.time], "keys": spec.keys,
             "columns.categorical": spec.columns.categorical, "columns.exclude": spec.columns.exclude,
             "baseline.column": [spec.baseline.column] if spec.baseline else []}  # fmt: skip
    for field, names in named.items():
        absent = [n for n in names if n not in columns]
        if absent:
            raise ConfigError(
                f"spec {field} names {absent}, which {spec.table} does not have "
                f"(its columns: {', '.join(columns)}). Fix the spec or rebuild the features."
            )
    reserved = {spec.target, spec.time, *spec.keys, *spec.columns.exclude, *spec.columns.categorical}
    numeric = [c for c in columns if c not in reserved]
    text = [c for c in numeric if any(t in columns[c].upper() for t in ("CHAR", "TEXT", "STRING", "DATE", "TIME"))]
    if text:
        raise ConfigError(
            f"columns {text} of {spec.table} are not numeric: list them in columns.categorical or columns.exclude."
        )
    if spec.baseline and spec.baseline.column not in numeric + spec.columns.categorical:
        raise ConfigError(
            f"baseline.column {spec.baseline.column} is not a feature of {spec.table} (it is a key, the time, the "
            "target or excluded): the heuristic baseline needs a feature column."
        )
    return numeric, list(spec.columns.categorical)


def encode_target(target: pd.Series, spec: Spec) -> np.ndarray:
    """Class labels -> indices in the spec's class order."""
    unknown = sorted(set(target.dropna().unique()) - set(spec.classes))
    if unknown or target.isna().any():
        raise PodiumError(
            f"{spec.target} holds values outside {spec.classes}: {[str(v) for v in unknown] or ['NULL']}. "
            "Fix the data or the spec's classes (classes are text: cast a numeric target to VARCHAR)."
        )
    return target.map({c: i for i, c in enumerate(spec.classes)}).to_numpy(dtype=int)


def cross_validate(
    estimator: BaseEstimator, data: TrainingData, trial: optuna.Trial | None = None
) -> list[dict[str, float]]:
    """Fit a fresh copy on each fold's training part, score its season; report to the pruner."""
    scores: list[dict[str, float]] = []
    for fold in data.folds:
        model = clone(estimator).fit(data.X.iloc[fold.train_rows], data.y[fold.train_rows])
        scores.append(score(data.y[fold.valid_rows], model.predict_proba(data.X.iloc[fold.valid_rows])))
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
    study: optuna.Study, bridge: StudyBridge, family: str, space: dict, data: TrainingData,
    tuning: TuningConfig, n_trials: int | None, timeout: float | None, n_jobs: int,
) -> Standing:  # fmt: skip
    """Run trials of one family's study; each trial is logged once through the bridge."""

    def objective(trial: optuna.Trial) -> float:
        params = suggest(trial, space)
        scores: list[dict[str, float]] = []
        started = time.perf_counter()
        try:
            estimator = build(family, params, data.numeric, data.categorical, tuning.seed)
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

    trials = n_trials or tuning.n_trials
    started = time.perf_counter()
    with counter(f"tune {family}", trials) as advance:
        study.optimize(
            objective, n_trials=trials, timeout=timeout or tuning.timeout, n_jobs=n_jobs,
            catch=(Exception,), callbacks=[lambda *_: advance()],
        )  # fmt: skip
    bridge.finish(study)
    return _standing(family, study, time.perf_counter() - started)


def _fit_time(started: float) -> dict[str, float]:
    return {"fit_seconds": time.perf_counter() - started}


def _standing(name: str, study: optuna.Study, seconds: float) -> Standing:
    """A family's leaderboard row: trial counts and its best trial's CV metrics."""
    states = Counter(t.state.name for t in study.get_trials(deepcopy=False))
    best = study.best_trial.user_attrs.get("metrics", {}) if states["COMPLETE"] else {}
    nan = float("nan")
    return Standing(
        name, states["COMPLETE"], states["PRUNED"], states["FAIL"], best.get("log_loss", nan), best.get("auc", nan),
        round(seconds, 1),
    )  # fmt: skip


def _open_study(name: str, storage: str, seed: int, startup_trials: int) -> optuna.Study:
    """Create or resume a study: seeded TPE, a median pruner over per-fold reports."""
    return optuna.create_study(
        study_name=name,
        storage=open_storage(storage),
        direction="minimize",
        sampler=optuna.samplers.TPESampler(seed=seed),
        pruner=optuna.pruners.MedianPruner(n_startup_trials=startup_trials, n_warmup_steps=1),
        load_if_exists=True,
    )


def open_storage(storage: str) -> optuna.storages.BaseStorage:
    """A database URL as an RDB storage; a plain path is a resumable journal file."""
    try:
        if "://" in storage:
            return _rdb_storage(storage)
        path = Path(storage)
        path.parent.mkdir(parents=True, exist_ok=True)
        return optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(path)))
    except (sqlalchemy.exc.SQLAlchemyError, ImportError, OSError) as exc:  # a bad URL or path, no server, no driver
        detail = (str(exc).strip().splitlines() or [type(exc).__name__])[0].rstrip(".")
        raise PodiumError(
            f"cannot open the Optuna storage {hide_password(storage)}: {detail}. Pass --storage (or set the profile's "
            "optuna_storage) to a journal file path, or to a database URL that is reachable and whose driver is "
            "installed (sqlite:///optuna.db, postgresql://user@host/db)."
        ) from None


def _rdb_storage(url: str, attempts: int = 3) -> optuna.storages.RDBStorage:
    """Open (and on first use create) an Optuna database; workers starting together race to create its schema."""
    for attempt in range(attempts - 1):
        try:
            return optuna.storages.RDBStorage(url)
        except sqlalchemy.exc.ArgumentError:  # a malformed URL or an unknown dialect: retrying cannot help
            raise
        except sqlalchemy.exc.SQLAlchemyError as exc:  # the loser of the race finds the schema half made
            log.debug("creating the Optuna schema at %s raced another worker: %s", url.split("@")[-1], exc)
            time.sleep(0.5 * (attempt + 1))
    return optuna.storages.RDBStorage(url)


def _baseline_column(spec: Spec) -> str | None:
    return spec.baseline.column if spec.baseline else None


def window_dataset(spec: Spec, X: pd.DataFrame, y: np.ndarray, name: str) -> PandasDataset:
    """A window of rows as an `mlflow.data` dataset (features and class labels), digested for lineage."""
    return mlflow.data.from_pandas(
        X.assign(**{spec.target: np.asarray(spec.classes)[y]}), name=name, targets=spec.target
    )


def _record_context(spec: Spec, data: TrainingData, run_id: str) -> dict[str, str]:
    """Log the training window and folds on the top run; return the tags every run carries."""
    dataset = window_dataset(spec, data.X, data.y, f"{spec.table}[{spec.train_start}:{spec.holdout_start})")
    log_dataset(dataset, context="training")
    folds = [f.describe() for f in data.folds]
    mlflow.log_dict(
        {"train_start": str(spec.train_start), "holdout_start": str(spec.holdout_start), "folds": folds}, "splits.json"
    )
    mlflow.log_params({"train_start": spec.train_start, "holdout_start": spec.holdout_start, "cv_folds": len(folds),
                       "seed": spec.tuning.seed if spec.tuning else None, "rows": len(data.X)})  # fmt: skip
    return {
        "podium.spec": spec.name,
        "podium.data_digest": dataset.digest,
        "podium.git_sha": git_sha() or "unknown",
        "podium.seed": str(spec.tuning.seed if spec.tuning else ""),
        "podium.cv": " ".join(f"{f['train']}>{f['valid']}" for f in folds),
        "podium.top_run_id": run_id,
    }


def _score_baseline(
    name: str, estimator: BaseEstimator, data: TrainingData, top: mlflow.ActiveRun, tags: dict[str, str]
) -> Standing:
    """Cross-validate one baseline and log it as a child run with the same metric names."""
    started = time.perf_counter()
    metrics = summarize(cross_validate(estimator, data))
    tags = tags | {MLFLOW_PARENT_RUN_ID: top.info.run_id, "podium.role": "baseline",
                   "podium.family": f"baseline:{name}", "podium.baseline": name}  # fmt: skip
    log_run(MlflowClient(), top.info.experiment_id, f"baseline-{name}", tags, metrics)
    log.info("baseline %s: CV log loss %.4f", name, metrics["cv_log_loss"])
    return Standing(
        f"baseline:{name}", 1, 0, 0, metrics["cv_log_loss"], metrics["cv_auc"], round(time.perf_counter() - started, 1)
    )
