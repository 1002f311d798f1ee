"""Baselines that every searched model must beat, scored with the same CV and metrics.

- `prior`: the training part's class frequencies, for every row.
- `heuristic`: class frequencies per value of one column (for F1, the grid slot), with
  add-one smoothing; unseen or missing values get the prior.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.dummy import DummyClassifier


class GroupFrequencyClassifier(ClassifierMixin, BaseEstimator):
    """Predicts the class distribution observed for the row's value of `column`."""

    def __init__(self, column: str, alpha: float = 1.0) -> None:
        self.column = column
        self.alpha = alpha

    def fit(self, X: pd.DataFrame, y: np.ndarray) -> GroupFrequencyClassifier:
        self.classes_ = np.unique(y)
        counts = pd.crosstab(X[self.column].to_numpy(), y).reindex(columns=self.classes_, fill_value=0)
        smoothed = counts + self.alpha
        self.table_ = smoothed.div(smoothed.sum(axis=1), axis=0)
        self.prior_ = np.bincount(np.searchsorted(self.classes_, y), minlength=len(self.classes_)) / len(y)
        return self

    def predict_proba(self, X: pd.DataFrame) -> np.ndarray:
        looked_up = self.table_.reindex(X[self.column].to_numpy()).to_numpy()
        missing = np.isnan(looked_up).any(axis=1)
        looked_up[missing] = self.prior_
        return looked_up

    def predict(self, X: pd.DataFrame) -> np.ndarray:
        return self.classes_[self.predict_proba(X).argmax(axis=1)]


def baselines(heuristic_column: str | None) -> dict[str, BaseEstimator]:
    """The baseline estimators, by name."""
    found: dict[str, BaseEstimator] = {"prior": DummyClassifier(strategy="prior")}
    if heuristic_column:
        found["heuristic"] = GroupFrequencyClassifier(heuristic_column)
    return found
