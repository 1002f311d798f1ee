"""Train stage: refit the best family on the whole training window, judge it once on the holdout, register it.

Inputs:  the spec's studies (`<spec>-<family>`) in the Optuna storage; the spec's feature
         table, read twice: the training window, then the holdout (time >= holdout_start),
         once, for every model and baseline of the run.
Outputs: a registered model version per trained family, tagged with its lineage and
         metrics and described by a model card; the alias `challenger` on the best one.
MLflow:  the `train` run holds the baselines' holdout metrics and `holdout.json`; each
         trained family gets a nested run with the model (a `served.NamedClassifier`: signature,
         input example, pinned pip requirements; pyfunc returns PREDICTED_CLASS and P_<CLASS>),
         holdout metrics including per-class precision and recall, and plots/*.png.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from importlib.metadata import version as installed

import mlflow
import numpy as np
from sklearn.base import BaseEstimator, clone

from pipelines import dataset, plots, served
from pipelines.baselines import baselines
from pipelines.config import Profile, Spec
from pipelines.dataset import FeatureSchema, Window
from pipelines.errors import PodiumError
from pipelines.metrics import METRICS, auc_classes, classification_metrics, per_class_metrics
from pipelines.models import make_estimator
from pipelines.progress import progress
from pipelines.registry import CHALLENGER, Candidate, best_trials, client
from pipelines.served import NamedClassifier
from pipelines.tracking import git_sha, log_dataset, log_figures, nested_run, stage_run
from pipelines.warehouse import connect

log = logging.getLogger(__name__)

REQUIREMENTS = ("mlflow", "scikit-learn", "pandas", "numpy", "skops")


@dataclass(frozen=True)
class Windows:
    """Both windows of one train run, read once each, and the schema they were read with."""

    schema: FeatureSchema
    training: Window
    holdout: Window


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
    families = best_trials(spec, storage or profile.optuna_storage, family)
    candidates = families[:top_k]
    with connect(profile, read_only=True) as warehouse:
        schema = dataset.read_schema(warehouse, spec)
        dataset.check_contract(warehouse, spec, schema)
        data = Windows(
            schema,
            dataset.load_training(warehouse, spec, schema),
            dataset.load_holdout(warehouse, spec, schema),
        )
    with stage_run(profile, spec, "train"):
        lineage = _record_windows(spec, data)
        reference = _score_baselines(spec, data)
        if warning := baseline_won_cv(families, cv_baselines(lineage["podium.data_digest"])):
            log.warning("%s", warning)
            mlflow.set_tag("podium.cv_warning", warning)
            lineage["podium.cv_warning"] = warning  # on every version, and in its model card
        trained = [_train_one(spec, c, data, reference, lineage) for c in progress(candidates, "train")]
        client().set_registered_model_alias(spec.model_name, CHALLENGER, trained[0].version)
        mlflow.set_tags({"podium.model": spec.model_name, "podium.challenger": trained[0].version})
    log.info("registered %s version %s as %s", spec.model_name, trained[0].version, CHALLENGER)
    return TrainResult(spec.model_name, trained, reference)


def holdout_metrics(y: np.ndarray, proba: np.ndarray, classes: list[str]) -> dict[str, float]:
    """The shared metrics plus per-class precision and recall."""
    return classification_metrics(y, proba) | per_class_metrics(y, proba, classes)


def cv_baselines(data_digest: str) -> dict[str, float]:
    """Each baseline's CV log loss as tune last logged it, in this run's experiment, on this training data."""
    store, active = client(), mlflow.active_run()
    assert active is not None, "cv_baselines runs inside train's stage run"  # train calls it in stage_run
    runs = store.search_runs(
        [active.info.experiment_id],
        filter_string=f"tags.`podium.role` = 'baseline' and tags.`podium.data_digest` = '{data_digest}'",
        order_by=["attributes.start_time DESC"],
    )
    found: dict[str, float] = {}
    for run in runs:
        if "cv_log_loss" in run.data.metrics and "podium.baseline" in run.data.tags:
            found.setdefault(run.data.tags["podium.baseline"], run.data.metrics["cv_log_loss"])
    return found


def baseline_won_cv(families: list[Candidate], baselines_cv: dict[str, float]) -> str | None:
    """One line when a baseline's CV log loss beat every family's best trial; None otherwise."""
    if not families or not baselines_cv:
        return None
    name, loss = min(baselines_cv.items(), key=lambda item: item[1])
    if any(c.cv.get("log_loss", np.inf) <= loss for c in families):
        return None
    best = "; ".join(
        f"{c.family} {c.cv['log_loss']:.4f} at trial {c.trial}, AUC {c.cv.get('auc', np.nan):.4f}"
        for c in families
    )
    return (
        f"baseline {name} beat every family's best trial in CV (log loss {loss:.4f} vs {best}): "
        "the registered model is no better than that baseline; check the features and the search space"
    )


def pip_requirements(family: str) -> list[str]:
    """Pinned requirements of the logged model: what loading and predicting need, at this run's versions."""
    names = [*REQUIREMENTS, "xgboost"] if family == "xgboost" else list(REQUIREMENTS)
    return [f"{name}=={package_version(name)}" for name in names]


def package_version(name: str) -> str:
    """The installed version of a pip package (xgboost may be installed as xgboost-cpu)."""
    try:
        return installed(name)
    except Exception:
        return installed(f"{name}-cpu")


def _fit(estimator: BaseEstimator, window: Window) -> BaseEstimator:
    return clone(estimator).fit(window.X, window.y)


def _record_windows(spec: Spec, data: Windows) -> dict[str, str]:
    """Log both windows as datasets; return the lineage tags of every version of this run."""
    training = dataset.lineage_dataset(spec, data.training, dataset.training_name(spec))
    evaluation = dataset.lineage_dataset(spec, data.holdout, dataset.holdout_name(spec))
    log_dataset(training, context="training")
    log_dataset(evaluation, context="holdout")
    windows = {
        "train_start": str(spec.train_start),
        "holdout_start": str(spec.holdout_start),
        "holdout_end": str(spec.holdout_end or ""),
        "train_rows": len(data.training.X),
        "holdout_rows": len(data.holdout.X),
    }
    mlflow.log_dict(windows, "holdout.json")
    mlflow.log_params(windows)
    active = mlflow.active_run()
    assert active is not None, "train records its windows inside its stage run"  # called in stage_run
    return {
        "podium.spec": spec.name,
        "podium.data_digest": training.digest,
        "podium.holdout_digest": evaluation.digest,
        "podium.git_sha": git_sha() or "unknown",
        "podium.train_run_id": active.info.run_id,
        "podium.trained_before": str(spec.holdout_start),  # the training window's end: a cycle ages it
    } | data.training.source


def _score_baselines(spec: Spec, data: Windows) -> dict[str, dict[str, float]]:
    """Fit each baseline on the training window and score it on the (already read) holdout."""
    column = spec.baseline.column if spec.baseline else None
    found = {
        name: classification_metrics(data.holdout.y, _fit(est, data.training).predict_proba(data.holdout.X))
        for name, est in baselines(column).items()
    }
    mlflow.log_metrics({f"baseline.{name}.holdout_{k}": v for name, m in found.items() for k, v in m.items()})
    return found


def _train_one(
    spec: Spec,
    candidate: Candidate,
    data: Windows,
    reference: dict[str, dict[str, float]],
    lineage: dict[str, str],
) -> Trained:
    """Refit one family on the whole training window, evaluate once, log, register."""
    seed = spec.tuning_section.seed
    with nested_run(f"model-{candidate.family}") as run:
        model = _fit(make_estimator(candidate.family, candidate.params, data.schema, seed), data.training)
        proba = model.predict_proba(data.holdout.X)
        metrics = holdout_metrics(data.holdout.y, proba, spec.classes)
        mlflow.log_params(candidate.params | {"family": candidate.family, "study": candidate.study})
        cv = {f"cv_{k}": v for k, v in candidate.cv.items()}
        mlflow.log_metrics({f"holdout_{k}": v for k, v in metrics.items()} | cv)
        _log_plots(model, data, proba, spec.classes, seed)
        info = _log_model(model, data, candidate.family, spec.classes)
        tags = (
            lineage | _version_tags(spec, candidate, metrics, reference) | {"podium.run_id": run.info.run_id}
        )
        registered = mlflow.register_model(info.model_uri, spec.model_name, tags=tags)
    card = model_card(spec, candidate, data, metrics, reference, tags)
    client().update_model_version(spec.model_name, registered.version, description=card)
    return Trained(candidate, str(registered.version), run.info.run_id, metrics)


def _log_model(
    model: BaseEstimator, data: Windows, family: str, classes: list[str]
) -> mlflow.models.model.ModelInfo:
    """Log the fitted pipeline as a NamedClassifier: signature, input example, pinned requirements."""
    named = NamedClassifier.of(model, classes, data.schema.numeric)
    metadata = {"classes": classes, "features": data.schema.columns}
    return served.log_model(named, data.training.X, pip_requirements(family), metadata)


def _log_plots(model: BaseEstimator, data: Windows, proba: np.ndarray, classes: list[str], seed: int) -> None:
    """Evaluation plots on the holdout; importances on the training window (no second look at the holdout)."""
    figures = plots.evaluation_figures(data.holdout.y, proba, classes)
    values = plots.importance(model, data.training.X, data.training.y, seed)
    figures["plots/feature_importance.png"] = plots.importance_figure(values)
    mlflow.log_text(values.to_csv(header=["importance"]), "feature_importance.csv")
    log_figures(figures)


def _version_tags(
    spec: Spec, candidate: Candidate, metrics: dict[str, float], reference: dict[str, dict[str, float]]
) -> dict[str, str]:
    tags = {
        "podium.family": candidate.family,
        "podium.study": candidate.study,
        "podium.trial": str(candidate.trial),
        "podium.classes": json.dumps(spec.classes),
    }
    tags |= {f"podium.cv_{k}": f"{v:.6f}" for k, v in candidate.cv.items()}
    tags |= {f"podium.holdout_{k}": f"{metrics[k]:.6f}" for k in METRICS}
    tags |= {
        f"podium.baseline.{name}.holdout_{k}": f"{m[k]:.6f}" for name, m in reference.items() for k in METRICS
    }
    return tags


def model_card(
    spec: Spec,
    candidate: Candidate,
    data: Windows,
    metrics: dict[str, float],
    reference: dict[str, dict[str, float]],
    tags: dict[str, str],
) -> str:
    """A short markdown model card for the registry's version description."""
    features = data.schema.columns
    training, holdout = len(data.training.X), len(data.holdout.X)
    return "\n".join(
        [
            f"**{spec.model_name}**: {candidate.family}, best trial {candidate.trial} of study "
            f"`{candidate.study}`.",
            "",
            f"**Intended use.** {spec.description or spec.name} Predicts a probability for each of "
            f"{', '.join(spec.classes)}: `pyfunc.predict` returns PREDICTED_CLASS and "
            f"{', '.join(dataset.probability_columns(spec))}; the sklearn flavor predicts class names.",
            "",
            f"**Data.** `{spec.table}`: trained on {spec.time} in [{spec.train_start}, {spec.holdout_start}) "
            f"({training:,} rows); evaluated once on {spec.time} >= {spec.holdout_start}"
            + (f" and < {spec.holdout_end}" if spec.holdout_end else "")
            + f" ({holdout:,} rows).",
            "",
            f"**Features ({len(features)}).** {', '.join(features)}. Numeric inputs are float64.",
            "",
            f"**Metrics.** CV log loss {candidate.cv.get('log_loss', float('nan')):.4f}. "
            + _auc_coverage(spec.classes, data.holdout.y),
            "",
            *_metrics_table(metrics, reference),
            *(["", f"**Warning.** {tags['podium.cv_warning']}."] if "podium.cv_warning" in tags else []),
            "",
            f"**Lineage.** run `{tags['podium.run_id']}`, data digest `{tags['podium.data_digest']}`, "
            f"holdout digest `{tags['podium.holdout_digest']}`, git `{tags['podium.git_sha']}`.",
        ]
    )


def _metrics_table(metrics: dict[str, float], reference: dict[str, dict[str, float]]) -> list[str]:
    """The card's markdown table: this model's holdout metrics beside each baseline's."""
    header = "| metric | this model | " + " | ".join(f"baseline: {n}" for n in reference) + " |"
    rule = "|---" * (2 + len(reference)) + "|"
    rows = [
        f"| holdout {k} | {_figure(metrics[k])} | "
        + " | ".join(_figure(m[k]) for m in reference.values())
        + " |"
        for k in METRICS
    ]
    return [header, rule, *rows]


def _auc_coverage(classes: list[str], y: np.ndarray) -> str:
    """Which classes the holdout AUC covers: every one, those present, or too few to define it."""
    used = auc_classes(y)
    if not len(used):
        return "Holdout AUC is undefined: fewer than two classes occur in the holdout."
    absent = [c for k, c in enumerate(classes) if k not in used]
    if not absent:
        return f"Holdout AUC is macro one-vs-rest over all {len(classes)} classes."
    return (
        f"Holdout AUC and per-class figures cover the {len(used)} of {len(classes)} classes present in the "
        f"holdout ({', '.join(absent)} never occurs there)."
    )


def _figure(value: float) -> str:
    """A card figure: four decimals, or `undefined` for NaN."""
    return "undefined" if np.isnan(value) else f"{value:.4f}"
