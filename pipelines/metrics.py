"""Every metric Podium reports: classification metrics, their direction, improvements, drift.

Predictions arrive as `y` (class indices 0..K-1, see `dataset.encode_target`) and `proba`
(one column per class, in the spec's class order).

A fold, holdout or period may lack a class: AUC (one-vs-rest, macro) and the per-class metrics
cover the classes present in `y`, and `auc_classes` counts them. Only when fewer than two
classes occur is AUC undefined (NaN); `undefined` words that for a comparison.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TypeVar

import numpy as np
import pandas as pd
from sklearn.metrics import (
    log_loss,
    precision_recall_fscore_support,
    roc_auc_score,
)

METRICS = ("log_loss", "auc", "balanced_accuracy")
HIGHER_IS_BETTER = {"log_loss": False, "auc": True, "balanced_accuracy": True, "accuracy": True}
COUNTS = ("auc_classes", "rows")  # period metrics that are whole numbers
PSI_SMOOTHING = 0.5  # rows added to every unordered bin (a level, NULL), so that an empty one stays finite
MISSING = "(missing)"  # the bin of NULL values

Value = TypeVar("Value", float, np.ndarray)  # a figure, or an array of them (shadow's per-row gains)


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


def undefined(metric: str, where: str, values: Mapping[str, float | None]) -> str | None:
    """Why `values` (by side) cannot be compared on `metric`: the sides where it is NaN; None if none is."""
    sides = [side for side, value in values.items() if value is not None and np.isnan(value)]
    if not sides:
        return None
    cause = " (fewer than two classes present)" if metric == "auc" else ""
    return f"{metric} is undefined {where} for the {' and the '.join(sides)}{cause}: cannot compare"


def improvement(metric: str, candidate: Value, incumbent: Value) -> Value:
    """How much better `candidate` is than `incumbent` on `metric` (positive: better)."""
    return candidate - incumbent if HIGHER_IS_BETTER[metric] else incumbent - candidate


def period_metrics(sums: dict[str, float], n_classes: int) -> dict[str, float]:
    """A monitoring period's metrics from its sums (as `evaluate` computes them in the warehouse).

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


def psi_bins(expected: pd.Series, actual: pd.Series, edges: list[float] | None = None) -> pd.DataFrame:
    """Each bin's share of `expected` and of `actual` rows and its PSI term; the terms sum to the PSI.

    The counts are indexed by bin. With `edges` (`inner_edges` of `expected`), numeric bins are
    `"0"` .. `str(len(edges))` in order: one that is empty on either side is merged with its
    neighbour, so a value range that vanished (or appeared) counts by how many rows moved, not
    by a floor under an empty share. Then every bin gets PSI_SMOOTHING more rows on each side,
    so an empty level (or MISSING) stays finite. The index is each bin's label: `<= 3`,
    `(3, 5]`, `> 20`, a level.
    """
    e, a = expected.astype(float).align(actual.astype(float), fill_value=0.0)
    if edges is not None:
        e, a = _merge_empty(e, a, edges)
    e, a = ((counts + PSI_SMOOTHING) / (counts + PSI_SMOOTHING).sum() for counts in (e, a))
    return pd.DataFrame({"EXPECTED": e, "ACTUAL": a, "PSI": (a - e) * np.log(a / e)})


def _merge_empty(e: pd.Series, a: pd.Series, edges: list[float]) -> tuple[pd.Series, pd.Series]:
    """Numeric bins relabelled by their range, each empty one (on either side) merged into a neighbour."""
    spans = [[k, k] for k in range(len(edges) + 1) if str(k) in e.index]
    counts = [[e[str(k)], a[str(k)]] for k, _ in spans]
    while len(spans) > 1 and (i := next((i for i, c in enumerate(counts) if min(c) == 0), None)) is not None:
        j = i - 1 if i > 0 else i + 1  # the lower neighbour; the first bin merges upwards
        lo, hi = min(i, j), max(i, j)
        spans[lo : hi + 1] = [[spans[lo][0], spans[hi][1]]]
        counts[lo : hi + 1] = [[counts[lo][0] + counts[hi][0], counts[lo][1] + counts[hi][1]]]
    labels = [bin_label(edges, first, last) for first, last in spans]
    rest = [b for b in e.index if not b.isdigit()]
    e = pd.concat([pd.Series([c[0] for c in counts], index=labels), e[rest]])
    return e, pd.concat([pd.Series([c[1] for c in counts], index=labels), a[rest]])


def bin_label(edges: list[float], first: int, last: int) -> str:
    """The value range of numeric bins `first`..`last`: bin k is (edges[k-1], edges[k]], open at both ends."""
    low = f"{edges[first - 1]:g}" if first > 0 else None
    high = f"{edges[last]:g}" if last < len(edges) else None
    if low is None and high is None:
        return "all"
    if low is None:
        return f"<= {high}"
    return f"> {low}" if high is None else f"({low}, {high}]"


def psi_of_counts(expected: pd.Series, actual: pd.Series, edges: list[float] | None = None) -> float:
    """Population stability index from rows per bin (see `psi_bins`)."""
    return float(psi_bins(expected, actual, edges).PSI.sum())


def psi(expected: pd.Series, actual: pd.Series, bins: int = 10) -> float:
    """PSI of `actual` against `expected` in memory: `expected`'s deciles for numbers, levels otherwise."""
    if not pd.api.types.is_numeric_dtype(expected):
        return psi_of_counts(*(s.fillna(MISSING).value_counts() for s in (expected, actual)))
    quantiles = np.nanquantile(expected.astype(float), np.linspace(0, 1, bins + 1)).tolist()
    edges = inner_edges(quantiles)

    def counts(values: pd.Series) -> pd.Series:
        cut = pd.cut(values.astype(float), [-np.inf, *edges, np.inf], labels=False)
        return cut.map(lambda k: MISSING if np.isnan(k) else str(int(k))).value_counts()

    return psi_of_counts(counts(expected), counts(actual), edges)
