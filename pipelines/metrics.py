"""Every metric Podium reports: classification figures, their direction, improvements, drift.

Predictions arrive as `y` (class indices 0..K-1, see `dataset.encode_target`) and `proba`
(one column per class, in the spec's class order).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from sklearn.metrics import (
    accuracy_score,
    balanced_accuracy_score,
    log_loss,
    precision_recall_fscore_support,
    roc_auc_score,
)

METRICS = ("log_loss", "auc", "balanced_accuracy")
HIGHER_IS_BETTER = {"log_loss": False, "auc": True, "balanced_accuracy": True, "accuracy": True}
PSI_FLOOR = 1e-4  # an empty bin's share, so that PSI stays finite


def classification_metrics(y: np.ndarray, proba: np.ndarray) -> dict[str, float]:
    """Multi-class log loss, macro one-vs-rest AUC and balanced accuracy."""
    return {
        "log_loss": multi_log_loss(y, proba),
        "auc": macro_auc(y, proba),
        "balanced_accuracy": float(balanced_accuracy_score(y, proba.argmax(axis=1))),
    }


def per_class_metrics(y: np.ndarray, proba: np.ndarray, classes: list[str]) -> dict[str, float]:
    """Precision and recall of each class, named `precision_<class>` and `recall_<class>`."""
    labels = np.arange(len(classes))
    precision, recall, _, _ = precision_recall_fscore_support(
        y, proba.argmax(axis=1), labels=labels, zero_division=0
    )
    out = {f"precision_{c}": float(p) for c, p in zip(classes, precision, strict=True)}
    return out | {f"recall_{c}": float(r) for c, r in zip(classes, recall, strict=True)}


def period_metrics(y: np.ndarray, proba: np.ndarray) -> dict[str, float]:
    """A monitoring period's figures: log loss, macro AUC (NaN unless every class occurs), accuracy, rows."""
    every_class = len(np.unique(y)) == proba.shape[1]
    return {
        "log_loss": multi_log_loss(y, proba),
        "auc": macro_auc(y, proba) if every_class else float("nan"),
        "accuracy": float(accuracy_score(y, proba.argmax(axis=1))),
        "rows": float(len(y)),
    }


def multi_log_loss(y: np.ndarray, proba: np.ndarray) -> float:
    """Log loss over every class of `proba`, present in `y` or not."""
    return float(log_loss(y, proba, labels=np.arange(proba.shape[1])))


def macro_auc(y: np.ndarray, proba: np.ndarray) -> float:
    """Macro one-vs-rest AUC over every class of `proba`."""
    labels = np.arange(proba.shape[1])
    return float(roc_auc_score(y, proba, multi_class="ovr", average="macro", labels=labels))


def improvement(metric: str, candidate: float, incumbent: float) -> float:
    """How much better `candidate` is than `incumbent` on `metric` (positive: better)."""
    return candidate - incumbent if HIGHER_IS_BETTER[metric] else incumbent - candidate


def top_k_hit_rate(
    frame: pd.DataFrame, group: str, ranked_by: str, actual: str, target: str, k: int
) -> float:
    """Share of the top `k` rows by `ranked_by` in each `group` whose `actual` column holds `target`."""
    top = frame.sort_values(ranked_by, ascending=False).groupby(group, sort=False).head(k)
    return float((top[actual] == target).mean())


def psi(expected: pd.Series, actual: pd.Series, bins: int = 10) -> float:
    """Population stability index of `actual` against `expected`: deciles for numbers, levels otherwise."""
    if pd.api.types.is_numeric_dtype(expected):
        edges = np.unique(np.nanquantile(expected.astype(float), np.linspace(0, 1, bins + 1)))
        edges[0], edges[-1] = -np.inf, np.inf
        e = pd.cut(expected.astype(float), edges).value_counts(normalize=True, sort=False, dropna=False)
        a = pd.cut(actual.astype(float), edges).value_counts(normalize=True, sort=False, dropna=False)
    else:
        e = expected.fillna("(missing)").value_counts(normalize=True)
        a = actual.fillna("(missing)").value_counts(normalize=True)
    e, a = e.align(a, fill_value=0.0)
    e, a = np.clip(e.to_numpy(), PSI_FLOOR, None), np.clip(a.to_numpy(), PSI_FLOOR, None)
    return float(np.sum((a - e) * np.log(a / e)))
