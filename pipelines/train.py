"""Train stage: refit the best family on the whole training window, judge it once on the holdout, register it.

Inputs:  the spec's studies (`<spec>-<family>`) in the Optuna storage; the spec's feature
         table, read twice: the training window, then the holdout (time >= holdout_start),
         once, for every model and baseline of the run.
Outputs: a registered model version per trained family, tagged with its lineage and
         metrics and described by a model card; the alias `challenger` on the best one.
MLflow:  the `train` run holds the baselines' holdout metrics and `holdout.json`; each
         trained family gets a nested run with the model (signature, input example, pinned
         pip requirements, `predict_proba` as its pyfunc), holdout metrics including
         per-class precision and recall, and plots/*.png.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from importlib.metadata import version as installed
from typing import Any

import mlflow
import numpy as np
import optuna
import pandas as pd
from mlflow.models import infer_signature
from mlflow.tracking import MlflowClient
from sklearn.base import BaseEstimator, clone
from sklearn.metrics import precision_recall_fscore_support

from pipelines import plots
from pipelines.baselines import baselines
from pipelines.config import Profile, Spec
from pipelines.errors import PodiumError
from pipelines.metrics import METRICS, score
from pipelines.models import build
from pipelines.progress import progress
from pipelines.tracking import git_sha, log_dataset, log_figures, nested_run, stage_run
from pipelines.tune import (
    TrainingData,
    encode_target,
    load_training_data,
    open_storage,
    require_tuning,
    window_dataset,
)
from pipelines.warehouse import Warehouse, connect
from pipelines.warehouse.dialect import quote

log = logging.getLogger(__name__)

CHALLENGER = "challenger"
REQUIREMENTS = ("mlflow", "scikit-learn", "pandas", "numpy", "skops")


@dataclass(frozen=True)
class Candidate:
    """A family's best trial, as its study recorded it."""

    family: str
    study: str
    trial: int
    params: dict[str, Any]
    cv: dict[str, float]


@dataclass(frozen=True)
class Holdout:
    """The holdout rows, read once: features and class indices."""

    X: pd.DataFrame
    y: np.ndarray


@dataclass(frozen=True)
class Trained:
    """A refitted, registered candidate and its holdout metrics."""

    candidate: Candidate
    version: str
    run_id: str
    holdout: dict[str, float]


@dataclass(frozen=True)
class TrainResult:
    model_name: str
    trained: list[Trained]
    baselines: dict[str, dict[str, float]] = field(default_factory=dict)

    @property
    def champion(self) -> Trained:
        return self.trained[0]


def main(
    profile: Profile, spec: Spec, family: str | None = None, top_k: int = 1, storage: str | None = None
) -> TrainResult:
    """Refit the best `top_k` families (or `family`), evaluate each once on the holdout, register them."""
    if top_k < 1:
        raise PodiumError(f"--top-k must be at least 1, got {top_k}.")
    candidates = best_trials(spec, storage or profile.optuna_storage, family)[:top_k]
    with connect(profile, read_only=True) as warehouse:
        data = load_training_data(warehouse, spec)
        holdout = load_holdout(warehouse, spec, data)
    with stage_run(profile, spec, "train"):
        lineage = _record_windows(spec, data, holdout)
        reference = _score_baselines(spec, data, holdout)
        trained = [_train_one(spec, c, data, holdout, reference, lineage) for c in progress(candidates, "train")]
        MlflowClient().set_registered_model_alias(spec.model_name, CHALLENGER, trained[0].version)
        mlflow.set_tags({"podium.model": spec.model_name, "podium.challenger": trained[0].version})
    log.info("registered %s version %s as %s", spec.model_name, trained[0].version, CHALLENGER)
    return TrainResult(spec.model_name, trained, reference)


def best_trials(spec: Spec, storage: str, family: str | None = None) -> list[Candidate]:
    """Each family's best completed trial, best CV log loss first."""
    tuning = require_tuning(spec)
    families = [family] if family else list(tuning.families)
    found = [c for c in (_best_trial(spec, f, storage) for f in families) if c is not None]
    if not found:
        which = f"family {family}" if family else f"any family of {spec.name}"
        raise PodiumError(
            f"no completed trials for {which} in the Optuna storage {storage}: "
            f"run `podium tune{' --family ' + family if family else ''}` first, or pass the study's --storage."
        )
    return sorted(found, key=lambda c: c.cv["log_loss"])


def load_holdout(warehouse: Warehouse, spec: Spec, data: TrainingData) -> Holdout:
    """The rows at or after holdout_start: the one read of the holdout in a train run."""
    time_col, keys = quote(spec.time), ", ".join(quote(k) for k in spec.keys)
    frame = warehouse.query(
        f"SELECT * FROM {quote(spec.table)} WHERE {time_col} >= ? AND {quote(spec.target)} IS NOT NULL "
        f"ORDER BY {time_col}, {keys}",
        [spec.holdout_start],
    )
    if frame.empty:
        raise PodiumError(
            f"the holdout is empty: {spec.table} has no labelled rows with {spec.time} >= {spec.holdout_start}. "
            "Move holdout_start earlier, or build the features."
        )
    X = frame[data.numeric + data.categorical].copy()
    X[data.numeric] = X[data.numeric].astype("float64")
    return Holdout(X, encode_target(frame[spec.target], spec))


def holdout_metrics(y: np.ndarray, proba: np.ndarray, classes: list[str]) -> dict[str, float]:
    """The shared metrics plus per-class precision and recall."""
    labels = np.arange(len(classes))
    precision, recall, _, _ = precision_recall_fscore_support(y, proba.argmax(axis=1), labels=labels, zero_division=0)
    per_class = {f"precision_{c}": float(p) for c, p in zip(classes, precision, strict=True)}
    per_class |= {f"recall_{c}": float(r) for c, r in zip(classes, recall, strict=True)}
    return score(y, proba) | per_class


def pip_requirements(family: str) -> list[str]:
    """Pinned requirements of the logged model: what loading and predicting need, at this run's versions."""
    names = [*REQUIREMENTS, "xgboost"] if family == "xgboost" else list(REQUIREMENTS)
    return [f"{name}=={_version(name)}" for name in names]


def _trusted_types(model: BaseEstimator) -> list[str]:
    """The types inside a pipeline this run just fitted: skops (MLflow's format) loads only listed ones."""
    from skops.io import dumps, get_untrusted_types

    return get_untrusted_types(data=dumps(model))


def _version(name: str) -> str:
    try:
        return installed(name)
    except Exception:  # xgboost may be installed as xgboost-cpu
        return installed(f"{name}-cpu")


def _best_trial(spec: Spec, family: str, storage: str) -> Candidate | None:
    name = f"{spec.name}-{family}"
    try:
        study = optuna.load_study(study_name=name, storage=open_storage(storage))
    except KeyError:
        return None
    complete = [t for t in study.get_trials(deepcopy=False) if t.state == optuna.trial.TrialState.COMPLETE]
    if not complete:
        return None
    best = study.best_trial
    return Candidate(family, name, best.number, dict(best.params), dict(best.user_attrs.get("metrics", {})))


def _fit(estimator: BaseEstimator, data: TrainingData) -> BaseEstimator:
    return clone(estimator).fit(data.X, data.y)


def _record_windows(spec: Spec, data: TrainingData, holdout: Holdout) -> dict[str, str]:
    """Log both windows as datasets; return the lineage tags of every version of this run."""
    training = window_dataset(spec, data.X, data.y, f"{spec.table}[{spec.train_start}:{spec.holdout_start})")
    evaluation = window_dataset(spec, holdout.X, holdout.y, f"{spec.table}[{spec.holdout_start}:]")
    log_dataset(training, context="training")
    log_dataset(evaluation, context="holdout")
    windows = {"train_start": str(spec.train_start), "holdout_start": str(spec.holdout_start),
               "train_rows": len(data.X), "holdout_rows": len(holdout.X)}  # fmt: skip
    mlflow.log_dict(windows, "holdout.json")
    mlflow.log_params(windows)
    return {
        "podium.spec": spec.name,
        "podium.data_digest": training.digest,
        "podium.holdout_digest": evaluation.digest,
        "podium.git_sha": git_sha() or "unknown",
        "podium.train_run_id": mlflow.active_run().info.run_id,
    }


def _score_baselines(spec: Spec, data: TrainingData, holdout: Holdout) -> dict[str, dict[str, float]]:
    """Fit each baseline on the training window and score it on the (already read) holdout."""
    column = spec.baseline.column if spec.baseline else None
    found = {
        name: score(holdout.y, _fit(est, data).predict_proba(holdout.X)) for name, est in baselines(column).items()
    }
    mlflow.log_metrics({f"baseline.{name}.holdout_{k}": v for name, m in found.items() for k, v in m.items()})
    return found


def _train_one(
    spec: Spec, candidate: Candidate, data: TrainingData, holdout: Holdout,
    reference: dict[str, dict[str, float]], lineage: dict[str, str],
) -> Trained:  # fmt: skip
    """Refit one family on the whole training window, evaluate once, log, register."""
    seed = require_tuning(spec).seed
    with nested_run(f"model-{candidate.family}") as run:
        model = _fit(build(candidate.family, candidate.params, data.numeric, data.categorical, seed), data)
        proba = model.predict_proba(holdout.X)
        metrics = holdout_metrics(holdout.y, proba, spec.classes)
        mlflow.log_params(candidate.params | {"family": candidate.family, "study": candidate.study})
        mlflow.log_metrics(
            {f"holdout_{k}": v for k, v in metrics.items()} | {f"cv_{k}": v for k, v in candidate.cv.items()}
        )
        _log_plots(model, data, holdout, proba, spec.classes, seed)
        info = mlflow.sklearn.log_model(
            model,
            name="model",
            signature=infer_signature(data.X.head(100), proba[:100]),
            input_example=data.X.head(5),
            pip_requirements=pip_requirements(candidate.family),
            pyfunc_predict_fn="predict_proba",
            skops_trusted_types=_trusted_types(model),
            metadata={"classes": spec.classes, "features": data.numeric + data.categorical},
        )
        tags = lineage | _version_tags(spec, candidate, metrics, reference) | {"podium.run_id": run.info.run_id}
        registered = mlflow.register_model(info.model_uri, spec.model_name, tags=tags)
    card = model_card(spec, candidate, data, holdout, metrics, reference, tags)
    MlflowClient().update_model_version(spec.model_name, registered.version, description=card)
    return Trained(candidate, str(registered.version), run.info.run_id, metrics)


def _log_plots(
    model: BaseEstimator, data: TrainingData, holdout: Holdout, proba: np.ndarray, classes: list[str], seed: int
) -> None:
    """Evaluation plots on the holdout; importances on the training window (no second look at the holdout)."""
    figures = plots.evaluation_figures(holdout.y, proba, classes)
    values = plots.importance(model, data.X, data.y, seed)
    figures["plots/feature_importance.png"] = plots.importance_figure(values)
    mlflow.log_text(values.to_csv(header=["importance"]), "feature_importance.csv")
    log_figures(figures)


def _version_tags(
    spec: Spec, candidate: Candidate, metrics: dict[str, float], reference: dict[str, dict[str, float]]
) -> dict[str, str]:
    tags = {"podium.family": candidate.family, "podium.study": candidate.study, "podium.trial": str(candidate.trial),
            "podium.classes": json.dumps(spec.classes)}  # fmt: skip
    tags |= {f"podium.cv_{k}": f"{v:.6f}" for k, v in candidate.cv.items()}
    tags |= {f"podium.holdout_{k}": f"{metrics[k]:.6f}" for k in METRICS}
    tags |= {f"podium.baseline.{name}.holdout_{k}": f"{m[k]:.6f}" for name, m in reference.items() for k in METRICS}
    return tags


def model_card(
    spec: Spec, candidate: Candidate, data: TrainingData, holdout: Holdout, metrics: dict[str, float],
    reference: dict[str, dict[str, float]], tags: dict[str, str],
) -> str:  # fmt: skip
    """A short markdown model card for the registry's version description."""
    header = "| metric | this model | " + " | ".join(f"baseline: {n}" for n in reference) + " |"
    rule = "|---" * (2 + len(reference)) + "|"
    rows = [f"| holdout {k} | {metrics[k]:.4f} | " + " | ".join(f"{m[k]:.4f}" for m in reference.values()) + " |"
            for k in METRICS]  # fmt: skip
    features = ", ".join(data.numeric + data.categorical)
    return "\n".join(
        [
            f"**{spec.model_name}**: {candidate.family}, best trial {candidate.trial} of study `{candidate.study}`.",
            "",
            f"**Intended use.** {spec.description or spec.name} Predicts a probability for each of "
            f"{', '.join(spec.classes)}; `pyfunc.predict` returns them in that order.",
            "",
            f"**Data.** `{spec.table}`: trained on {spec.time} in [{spec.train_start}, {spec.holdout_start}) "
            f"({len(data.X):,} rows); evaluated once on {spec.time} >= {spec.holdout_start} ({len(holdout.X):,} rows).",
            "",
            f"**Features ({len(data.numeric) + len(data.categorical)}).** {features}. Numeric inputs are float64.",
            "",
            f"**Metrics.** CV log loss {candidate.cv.get('log_loss', float('nan')):.4f}.",
            "",
            header,
            rule,
            *rows,
            "",
            f"**Lineage.** run `{tags['podium.run_id']}`, data digest `{tags['podium.data_digest']}`, "
            f"holdout digest `{tags['podium.holdout_digest']}`, git `{tags['podium.git_sha']}`.",
        ]
    )
