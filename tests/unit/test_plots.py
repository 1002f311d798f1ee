"""Evaluation, importance and leaderboard figures, on a small synthetic 3-class problem."""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
from matplotlib.colors import to_rgba
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle
from sklearn.datasets import make_classification

from pipelines.dataset import FeatureSchema
from pipelines.models import make_estimator
from pipelines.plots import (
    BASELINE_COLOR,
    evaluation_figures,
    importance,
    importance_figure,
    leaderboard_figure,
)

CLASSES = ["first", "second", "third"]
NUMERIC, CATEGORICAL = ["x0", "x1", "signal", "noise"], ["group"]


@pytest.fixture(scope="module")
def data() -> tuple[pd.DataFrame, np.ndarray]:
    """600 rows: `signal` determines the label, `noise` and `group` are independent of it."""
    features, y = make_classification(
        n_samples=600,
        n_features=2,
        n_informative=2,
        n_redundant=0,
        n_classes=3,
        n_clusters_per_class=1,
        random_state=0,
    )
    rng = np.random.default_rng(0)
    X = pd.DataFrame(features, columns=["x0", "x1"])
    X["signal"] = y + rng.normal(0, 0.1, len(y))
    X["noise"] = rng.normal(0, 1, len(y))
    X["group"] = rng.choice(["a", "b", "c"], len(y))
    return X, y


def fitted(family: str, data: tuple[pd.DataFrame, np.ndarray], params: dict | None = None):
    X, y = data
    return make_estimator(family, params or {}, FeatureSchema(NUMERIC, CATEGORICAL), seed=0).fit(X, y)


def save(fig: Figure, path: Path) -> None:
    fig.savefig(path)
    plt.close(fig)
    assert path.stat().st_size > 1000
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_evaluation_figures_draw_one_curve_per_class(data, tmp_path: Path) -> None:
    X, y = data
    model = make_estimator("logreg", {}, FeatureSchema(["x0", "x1", "noise"], CATEGORICAL), seed=0).fit(
        X, y
    )  # imperfect: no `signal`
    proba = model.predict_proba(X)
    figures = evaluation_figures(y, proba, CLASSES)
    assert list(figures) == [
        "plots/confusion_matrix.png",
        "plots/roc.png",
        "plots/precision_recall.png",
        "plots/calibration.png",
    ]
    (cm,) = figures["plots/confusion_matrix.png"].axes
    assert cm.images[0].get_array().sum() == len(y)
    assert [t.get_text() for t in cm.get_xticklabels()] == CLASSES
    per_class = {
        "plots/roc.png": 1,
        "plots/precision_recall.png": 0,
        "plots/calibration.png": 1,
    }  # + reference line
    for path, references in per_class.items():
        (ax,) = figures[path].axes
        legend = [t.get_text() for t in ax.get_legend().get_texts()]
        assert len(ax.get_lines()) == len(legend) == len(CLASSES) + references
        assert [text.split(" ")[0] for text in legend[: len(CLASSES)]] == CLASSES
    roc_legend = [t.get_text() for t in figures["plots/roc.png"].axes[0].get_legend().get_texts()]
    assert all(0.5 < float(text.split("AUC ")[1].rstrip(")")) <= 1 for text in roc_legend[:3])
    (cal,) = figures["plots/calibration.png"].axes
    assert all(len(line.get_xdata()) <= 10 for line in cal.get_lines()[:3])
    for path, fig in figures.items():
        save(fig, tmp_path / Path(path).name)


def test_a_class_absent_from_the_labels_gets_no_curve(data) -> None:
    X, y = data
    keep = y != 2
    proba = fitted("decision_tree", data, {"max_depth": 3}).predict_proba(X[keep])
    figures = evaluation_figures(y[keep], proba, CLASSES)
    legend = [t.get_text() for t in figures["plots/roc.png"].axes[0].get_legend().get_texts()]
    assert [text.split(" ")[0] for text in legend] == ["first", "second", "chance"]
    for fig in figures.values():
        plt.close(fig)


@pytest.mark.parametrize(
    ("family", "method", "signal", "noise"),
    [
        ("decision_tree", "native", "numeric__signal", "numeric__noise"),
        ("logreg", "native", "numeric__signal", "numeric__noise"),
        ("knn", "permutation", "signal", "noise"),
    ],
)
def test_importance_ranks_the_determining_feature_above_noise(data, family, method, signal, noise) -> None:
    X, y = data
    model = fitted(family, data)
    scores = importance(model, X, y, seed=0, max_rows=200)
    assert scores.name == method
    assert scores.index[0] == signal
    assert scores[signal] > scores[noise]
    assert scores.is_monotonic_decreasing
    if method == "native":
        assert set(model[:-1].get_feature_names_out()) == set(scores.index)
    else:
        assert list(scores.sort_index().index) == sorted(X.columns)
        assert scores.equals(importance(model, X, y, seed=0, max_rows=200))  # seeded sample


def bars_top_down(ax) -> list[tuple[str, Rectangle]]:
    """(tick label, bar) in the order the bars appear on screen, top first."""
    ax.figure.canvas.draw()
    labels = {
        round(tick): label.get_text()
        for tick, label in zip(ax.get_yticks(), ax.get_yticklabels(), strict=True)
    }
    centre = lambda bar: bar.get_y() + bar.get_height() / 2
    bars = sorted(ax.patches, key=lambda bar: -ax.transData.transform((0, centre(bar)))[1])
    return [(labels[round(centre(bar))], bar) for bar in bars]


def test_importance_figure_shows_the_top_features_largest_first(data, tmp_path: Path) -> None:
    X, y = data
    scores = importance(fitted("decision_tree", data), X, y, seed=0)
    fig = importance_figure(scores, top=3)
    (ax,) = fig.axes
    assert "native" in ax.get_title()
    shown = bars_top_down(ax)
    assert [label for label, _ in shown] == list(scores.index[:3])
    assert [bar.get_width() for _, bar in shown] == pytest.approx(list(scores.iloc[:3]))
    save(fig, tmp_path / "importance.png")


def test_leaderboard_puts_the_lowest_value_on_top_and_greys_baselines(tmp_path: Path) -> None:
    board = pd.DataFrame(
        {
            "name": ["random_forest", "baseline_prior", "logreg", "baseline_grid", "knn"],
            "cv_log_loss": [0.61, 0.95, 0.58, 0.72, 0.66],
        }
    )
    fig = leaderboard_figure(board)
    (ax,) = fig.axes
    shown = bars_top_down(ax)
    assert [label for label, _ in shown] == [
        "logreg",
        "random_forest",
        "knn",
        "baseline_grid",
        "baseline_prior",
    ]
    assert {label: bar.get_width() for label, bar in shown} == pytest.approx(
        dict(zip(board["name"], board["cv_log_loss"], strict=True))
    )
    grey = {label for label, bar in shown if bar.get_facecolor() == to_rgba(BASELINE_COLOR)}
    assert grey == {"baseline_grid", "baseline_prior"}
    assert [t.get_text() for t in ax.texts] == ["0.5800", "0.6100", "0.6600", "0.7200", "0.9500"]
    save(fig, tmp_path / "leaderboard.png")
