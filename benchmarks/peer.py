"""Podium against an AutoML peer, FLAML, at the same time budget, in one run.

Both see the same rows: the spec's training window (2010-2020 for F1) with its season folds
for the search, then the 2021-22 holdout, scored once. Podium is `podium tune --seconds S`
then `podium train` (the registered challenger's holdout figures); FLAML is
`AutoML.fit(time_budget=S)` with the same folds as a splitter and log loss as its metric,
then `predict_proba` on the holdout. Both get every core. FLAML is a benchmark-only extra
(`pip install -e '.[bench]'`).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd

from benchmarks.demo_stages import bench_profile
from pipelines import dataset
from pipelines.config import Profile, Spec
from pipelines.config_files import load_spec
from pipelines.crossval import available_cores
from pipelines.metrics import classification_metrics
from pipelines.splits import Fold
from pipelines.stages import features, ingest, train, tune
from pipelines.warehouse import connect

FLAML_ESTIMATORS = ["lgbm", "rf", "extra_tree", "xgboost", "xgb_limitdepth", "lrl1"]


class SeasonSplitter:
    """The spec's season folds as a scikit-learn splitter, for FLAML's `split_type`."""

    def __init__(self, folds: list[Fold]) -> None:
        self.folds = folds

    def get_n_splits(self, *args: object, **kwargs: object) -> int:
        return len(self.folds)

    def split(self, *args: object, **kwargs: object) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        for fold in self.folds:
            yield fold.train_rows, fold.valid_rows


def measure(root: Path, seconds: float) -> list[dict[str, object]]:
    """One row per system: budget, wall seconds, cores, holdout log loss and macro AUC."""
    spec = load_spec("f1_podium")
    profile = bench_profile(root)
    ingest.main(profile, spec)
    features.main(profile, spec)
    return [_podium(profile, spec, seconds), _flaml(profile, spec, seconds)]


def _podium(profile: Profile, spec: Spec, seconds: float) -> dict[str, object]:
    started = time.perf_counter()
    tune.main(profile, spec, seconds=seconds)
    (trained,) = train.main(profile, spec).trained
    wall = time.perf_counter() - started
    return _row("Podium (tune + train)", seconds, wall, trained.candidate.family, trained.holdout)


def _flaml(profile: Profile, spec: Spec, seconds: float) -> dict[str, object]:
    from flaml import AutoML

    with connect(profile, read_only=True) as warehouse:
        data = tune.load_training_data(warehouse, spec)
        holdout = dataset.load_holdout(warehouse, spec, data.schema)
    started = time.perf_counter()
    automl = AutoML()
    automl.fit(
        _categories(data.window.X, data.schema.categorical),
        data.window.y,
        task="classification",
        metric="log_loss",
        time_budget=seconds,
        eval_method="cv",
        split_type=SeasonSplitter(data.folds),
        estimator_list=FLAML_ESTIMATORS,
        n_jobs=available_cores(),
        seed=spec.tuning.seed if spec.tuning else 0,
        verbose=0,
    )
    proba = automl.predict_proba(_categories(holdout.X, data.schema.categorical))
    wall = time.perf_counter() - started
    holdout_figures = classification_metrics(holdout.y, proba)
    return _row("FLAML 2.8 (fit)", seconds, wall, automl.best_estimator, holdout_figures)


def _categories(X: pd.DataFrame, categorical: list[str]) -> pd.DataFrame:
    """FLAML's own encoding of text columns: pandas categories."""
    return X.astype({c: "category" for c in categorical})


def _row(system: str, budget: float, wall: float, best: str, holdout: dict[str, float]) -> dict[str, object]:
    return {
        "system": system,
        "budget (s)": round(budget),
        "wall (s)": round(wall, 1),
        "cores": available_cores(),
        "best": best,
        "holdout log loss": f"{holdout['log_loss']:.4f}",
        "holdout macro AUC": f"{holdout['auc']:.4f}",
    }
