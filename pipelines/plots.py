"""Figures for a run: holdout evaluation plots, feature importance and the family leaderboard.

Every function returns matplotlib figures drawn on the Agg backend; the caller logs or saves
them and must close them (`plt.close(fig)`), as pyplot keeps a reference to each until then.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
from sklearn.calibration import calibration_curve
from sklearn.inspection import permutation_importance
from sklearn.metrics import (
    ConfusionMatrixDisplay,
    average_precision_score,
    log_loss,
    make_scorer,
    precision_recall_curve,
    roc_auc_score,
    roc_curve,
)
from sklearn.pipeline import Pipeline

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

BASELINE_COLOR, MODEL_COLOR = "tab:gray", "tab:blue"


def _axes(
    title: str, xlabel: str = "", ylabel: str = "", size: tuple[float, float] = (6, 5)
) -> tuple[Figure, Axes]:
    """A new figure with one titled axes, on the non-interactive Agg backend."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=size)
    ax.set(title=title, xlabel=xlabel, ylabel=ylabel)
    return fig, ax


def _one_vs_rest(y: np.ndarray, classes: list[str]) -> list[tuple[int, str, np.ndarray]]:
    """(index, name, binary target) per class that is both present and absent in `y`; others have no curve."""
    out = [(k, name, y == k) for k, name in enumerate(classes)]
    return [(k, name, pos) for k, name, pos in out if 0 < pos.sum() < len(pos)]


def evaluation_figures(y: np.ndarray, proba: np.ndarray, classes: list[str]) -> dict[str, Figure]:
    """Artifact path -> figure: confusion matrix; one-vs-rest ROC, precision-recall, reliability per class.

    `y` holds class indices 0..K-1 and `proba` one column per class, in the order of `classes`.
    A class never (or always) seen in `y` gets no curve. The caller closes the figures.
    """
    y = np.asarray(y)
    fig_cm, ax = _axes("Confusion matrix")
    ConfusionMatrixDisplay.from_predictions(
        y,
        proba.argmax(axis=1),
        labels=list(range(len(classes))),
        display_labels=classes,
        ax=ax,
        colorbar=False,
    )
    fig_roc, ax_roc = _axes("ROC (one-vs-rest)", "false positive rate", "true positive rate")
    fig_pr, ax_pr = _axes("Precision-recall (one-vs-rest)", "recall", "precision")
    fig_cal, ax_cal = _axes(
        "Calibration (10 quantile bins)", "mean predicted probability", "observed frequency"
    )
    for k, name, pos in _one_vs_rest(y, classes):
        fpr, tpr, _ = roc_curve(pos, proba[:, k])
        ax_roc.plot(fpr, tpr, label=f"{name} (AUC {roc_auc_score(pos, proba[:, k]):.3f})")
        precision, recall, _ = precision_recall_curve(pos, proba[:, k])
        ax_pr.step(
            recall,
            precision,
            where="post",
            label=f"{name} (AP {average_precision_score(pos, proba[:, k]):.3f})",
        )
        observed, predicted = calibration_curve(pos, proba[:, k], n_bins=10, strategy="quantile")
        ax_cal.plot(predicted, observed, marker="o", label=name)
    for ax, reference in ((ax_roc, "chance"), (ax_cal, "perfectly calibrated")):
        ax.plot([0, 1], [0, 1], linestyle="--", color="gray", label=reference)
    for ax in (ax_roc, ax_pr, ax_cal):
        ax.legend(loc="best", fontsize="small")
    return {
        "plots/confusion_matrix.png": fig_cm,
        "plots/roc.png": fig_roc,
        "plots/precision_recall.png": fig_pr,
        "plots/calibration.png": fig_cal,
    }


def importance(model: Pipeline, X: pd.DataFrame, y: np.ndarray, seed: int, max_rows: int = 1000) -> pd.Series:
    """Feature importance of a fitted pipeline, largest first, indexed by feature name.

    Native when the final estimator has `feature_importances_` or `coef_` (mean |coef| over
    classes), named by the preprocessing's output features. Otherwise permutation importance
    of the whole pipeline (log loss, 3 repeats) on at most `max_rows` rows of X sampled with
    `seed`, named by X's columns. The Series' name is the method: "native" or "permutation".
    """
    estimator = model[-1]
    if hasattr(estimator, "feature_importances_") or hasattr(estimator, "coef_"):
        raw = getattr(estimator, "feature_importances_", None)
        values = np.abs(np.atleast_2d(estimator.coef_)).mean(axis=0) if raw is None else raw
        scores = pd.Series(values, index=model[:-1].get_feature_names_out(), name="native")
    else:
        rows = np.random.default_rng(seed).permutation(len(X))[:max_rows]
        scorer = make_scorer(
            log_loss, greater_is_better=False, response_method="predict_proba", labels=model.classes_
        )
        result = permutation_importance(
            model, X.iloc[rows], np.asarray(y)[rows], scoring=scorer, n_repeats=3, random_state=seed
        )
        scores = pd.Series(result.importances_mean, index=X.columns, name="permutation")
    return scores.astype(float).sort_values(ascending=False)


def importance_figure(values: pd.Series, top: int = 20) -> Figure:
    """Bar chart of the `top` features, largest on top; the title names the method. The caller closes it."""
    shown = values.sort_values(ascending=False).head(top)
    fig, ax = _axes(
        f"Feature importance ({values.name or 'unknown'})", "importance", size=(7, 1 + 0.3 * len(shown))
    )
    ax.barh(range(len(shown)), shown.to_numpy(), color=MODEL_COLOR, tick_label=[str(i) for i in shown.index])
    ax.invert_yaxis()
    fig.tight_layout()
    return fig


def leaderboard_figure(board: pd.DataFrame, metric: str = "cv_log_loss") -> Figure:
    """Horizontal bar chart of `board[metric]` by `board["name"]`, best (lowest) on top, with value labels.

    Baselines (names starting with "baseline") are grey. The caller closes the figure.
    """
    ranked = board.sort_values(metric, kind="stable").reset_index(drop=True)
    colors = [BASELINE_COLOR if str(n).startswith("baseline") else MODEL_COLOR for n in ranked["name"]]
    fig, ax = _axes(f"Leaderboard ({metric}, lower is better)", metric, size=(7, 1 + 0.4 * len(ranked)))
    bars = ax.barh(
        range(len(ranked)), ranked[metric].to_numpy(), color=colors, tick_label=ranked["name"].astype(str)
    )
    ax.bar_label(bars, fmt="%.4f", padding=3)
    ax.invert_yaxis()
    ax.margins(x=0.15)
    fig.tight_layout()
    return fig


def monitoring_figure(rows: pd.DataFrame, metrics: tuple[str, ...] = ("log_loss", "accuracy")) -> Figure:
    """Each version's `metrics` over the periods of a monitoring table (long format); the caller closes it."""
    timed = rows[(rows["PERIOD"] != "all") & rows["METRIC"].isin(metrics)]
    fig, ax = _axes("Scored rows against actuals, per period", "period", "value", size=(7, 4))
    for (version, metric), group in timed.groupby(["MODEL_VERSION", "METRIC"]):
        ordered = group.sort_values("PERIOD")
        ax.plot(ordered["PERIOD"], ordered["VALUE"], marker="o", label=f"v{version} {metric}")
    if not timed.empty:
        ax.legend(loc="best")
    fig.tight_layout()
    return fig


def backtest_figure(rows: pd.DataFrame) -> Figure:
    """A backtest's log loss per period, champion and shadow challenger, promotions marked (caller closes)."""
    fig, ax = _axes(
        "Backtest: each period scored by that moment's models",
        "period",
        "log loss (lower is better)",
        size=(8, 4.5),
    )
    styles: dict[str, dict[str, Any]] = {  # matplotlib keyword arguments for Axes.plot
        "champion": {"color": MODEL_COLOR, "marker": "o"},
        "challenger": {"color": "tab:orange", "marker": "D", "linestyle": "none"},  # not every period has one
    }
    periods = sorted(rows["PERIOD"].unique())
    ax.plot(periods, [np.nan] * len(periods), alpha=0)  # every period on the axis, in order
    for role, style in styles.items():
        mine = rows[rows["ROLE"] == role].sort_values("PERIOD")
        label = "challenger, in shadow" if role == "challenger" else "champion (scores the period)"
        ax.plot(mine["PERIOD"], mine["LOG_LOSS"], label=label, **style)
    promoted = rows[(rows["ROLE"] == "champion") & (rows["DECISION"] == "promoted")]
    for row in promoted.itertuples():
        ax.axvline(row.PERIOD, color=BASELINE_COLOR, linestyle=":", linewidth=1)
        ax.annotate(
            f"v{row.MODEL_VERSION} {row.MODEL_FAMILY}",
            (row.PERIOD, row.LOG_LOSS),
            textcoords="offset points",
            xytext=(4, 8),
            fontsize=8,
        )
    ax.plot([], [], color=BASELINE_COLOR, linestyle=":", label="promoted (the new champion scores it)")
    ax.legend(loc="best")
    fig.tight_layout()
    return fig
