"""Classification metrics shared by tuning, baselines and the holdout evaluation."""

from __future__ import annotations

import numpy as np
from sklearn.metrics import balanced_accuracy_score, log_loss, roc_auc_score

METRICS = ("log_loss", "auc", "balanced_accuracy")


def score(y: np.ndarray, proba: np.ndarray) -> dict[str, float]:
    """Multi-class log loss, macro one-vs-rest AUC and balanced accuracy.

    `y` holds class indices 0..K-1 and `proba` one column per class, in that order.
    """
    labels = np.arange(proba.shape[1])
    return {
        "log_loss": float(log_loss(y, proba, labels=labels)),
        "auc": float(roc_auc_score(y, proba, multi_class="ovr", average="macro", labels=labels)),
        "balanced_accuracy": float(balanced_accuracy_score(y, proba.argmax(axis=1))),
    }
