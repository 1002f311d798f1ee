"""Every metric Podium reports: classification figures, their direction, improvements, drift.

Predictions arrive as `y` (class indices 0..K-1, see `dataset.encode_target`) and `proba`
(one column per class, in the spec's class order).

A fold, holdout or period may lack a class: AUC (one-vs-rest, macro) and the per-class figures
cover the classes present in `y`, and `auc_classes` counts them. Only when fewer than two
classes occur is AUC undefined (NaN); `undefined` words that for a comparison.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from sklearn.metrics import (
    log_loss,
    precision_recall_fscore_support,
    roc_auc_score,
)

METRICS = ("log_loss", "auc", "balanced_accuracy")
HIGHER_IS_BETTER = {"log_loss": False, "auc": True, "balanced_accuracy": True, "accuracy": True}
COUNTS = ("auc_classes", "rows")  # period figures that are whole numbers
PSI_FLOOR = 1e-4  # an empty bin's share, so that PSI stays finite


def classification_metrics(y: np.ndarray, proba: np.ndarray) -> dict[str, float]:
    """Multi-class log loss, macro AUC over the classes present (and their count), balanced accuracy."""
    return {
        "log_loss": multi_log_loss(y, proba),
        "auc": macro_auc(y, proba),
        "auc_classes": float(len(auc_classes(y))),  # 0: AUC is undefined (one class in the period)
        "balanced_accuracy": balanced_accuracy(y, proba.argmax(axis=1)),
    }


def per_class_metrics(y: np.ndarray, proba: np.ndarray, classes: list[str]) -> dict[str, float]:
    """Precision and recall (`precision_<class>`, `recall_<class>`) of each class present in `y`."""
    labels = np.unique(y)
    precision, recall, _, _ = precision_recall_fscore_support(
        y, proba.argmax(axis=1), labels=labels, zero_division=0
    )
    names = [classes[k] for k in labels]
    out = {f"precision_{c}": float(p) for c, p in zip(names, precision, strict=True)}
    return out | {f"recall_{c}": float(r) for c, r in zip(names, recall, strict=True)}


def multi_log_loss(y: np.ndarray, proba: np.ndarray) -> float:
    """Log loss over every class of `proba`, present in `y` or not."""
    return float(log_loss(y, proba, labels=np.arange(proba.shape[1])))


def balanced_accuracy(y: np.ndarray, predicted: np.ndarray) -> float:
    """Mean recall over the classes present in `y` (as sklearn's, without its absent-class warning)."""
    return float(np.mean([np.mean(predicted[y == k] == k) for k in np.unique(y)]))


def auc_classes(y: np.ndarray) -> np.ndarray:
    """The classes a one-vs-rest AUC is defined for: those present in `y`, if at least two are."""
    present = np.unique(y)
    return present if len(present) >= 2 else present[:0]


def macro_auc(y: np.ndarray, proba: np.ndarray) -> float:
    """Macro one-vs-rest AUC over the classes present in `y`; NaN (undefined) if fewer than two are."""
    used = auc_classes(y)
    if not len(used):
        return float("nan")
    return float(np.mean([roc_auc_score(y == k, proba[:, k]) for k in used]))


def undefined(metric: str, where: str, values: dict[str, float | None]) -> str | None:
    """Why `values` (by side) cannot be compared on `metric`: the sides where it is NaN; None if none is."""
    sides = [side for side, value in values.items() if value is not None and np.isnan(value)]
    if not sides:
        return None
    cause = " (fewer than two classes present)" if metric == "auc" else ""
    return f"{metric} is undefined {where} for the {' and the '.join(sides)}{cause}: cannot compare"


def improvement(metric: str, candidate: float, incumbent: float) -> float:
    """How much better `candidate` is than `incumbent` on `metric` (positive: better)."""
    return candidate - incumbent if HIGHER_IS_BETTER[metric] else incumbent - candidate


def period_figures(sums: dict[str, float], n_classes: int) -> dict[str, float]:
    """A monitoring period's figures from its sums (as `evaluate` computes them in the warehouse).

    `sums`: N rows, HITS (argmax = actual), LOSS (summed -ln p(actual)), and per class i POS_i
    (rows of that class) and RANKS_i (the sum of their average ranks by P(class i)). AUC is
    Mann-Whitney's: (RANKS_i - POS_i (POS_i + 1) / 2) / (POS_i (N - POS_i)), macro over the
    classes present; undefined (NaN) when fewer than two are.
    """
    n = float(sums["N"])
    positives = {i: float(sums[f"POS_{i}"]) for i in range(n_classes) if sums[f"POS_{i}"] > 0}
    defined = len(positives) >= 2
    aucs = [(sums[f"RANKS_{i}"] - p * (p + 1) / 2) / (p * (n - p)) for i, p in positives.items() if defined]
    return {
        "log_loss": float(sums["LOSS"]) / n,
        "auc": float(np.mean(aucs)) if defined else float("nan"),
        "auc_classes": float(len(positives)) if defined else 0.0,
        "accuracy": float(sums["HITS"]) / n,
        "rows": n,
    }


def inner_edges(quantiles: list[float]) -> list[float]:
    """Bin edges between a sample's quantiles (min ... max): the distinct values, the outer two dropped.

    Bins are then (-inf, e1], (e1, e2], ..., (en, inf), as `pd.cut` over [-inf, e1..en, inf].
    """
    known = [q for q in quantiles if q is not None and not np.isnan(q)]
    distinct = np.unique(np.asarray(known, dtype=float))
    return distinct[1:-1].tolist()


def psi_of_counts(expected: pd.Series, actual: pd.Series) -> float:
    """Population stability index from rows per bin (indexed by bin), each empty share floored."""
    e, a = (counts / counts.sum() for counts in (expected.astype(float), actual.astype(float)))
    e, a = e.align(a, fill_value=0.0)
    e, a = np.clip(e.to_numpy(), PSI_FLOOR, None), np.clip(a.to_numpy(), PSI_FLOOR, None)
    return float(np.sum((a - e) * np.log(a / e)))


def psi(expected: pd.Series, actual: pd.Series, bins: int = 10) -> float:
    """PSI of `actual` against `expected` in memory: `expected`'s deciles for numbers, levels otherwise."""
    if pd.api.types.is_numeric_dtype(expected):
        quantiles = np.nanquantile(expected.astype(float), np.linspace(0, 1, bins + 1)).tolist()
        edges = [-np.inf, *inner_edges(quantiles), np.inf]
        e = pd.cut(expected.astype(float), edges).value_counts(sort=False, dropna=False)
        a = pd.cut(actual.astype(float), edges).value_counts(sort=False, dropna=False)
    else:
        e = expected.fillna("(missing)").value_counts()
        a = actual.fillna("(missing)").value_counts()
    return psi_of_counts(e, a)
