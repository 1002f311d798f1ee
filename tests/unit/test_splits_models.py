"""Season folds, search spaces, baselines and metrics, on small frames."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import optuna
import pandas as pd
import pytest

from pipelines.baselines import GroupFrequencyClassifier
from pipelines.dataset import FeatureSchema
from pipelines.errors import ConfigError, PodiumError
from pipelines.metrics import classification_metrics
from pipelines.models import FACTORIES, make_estimator, read_spaces, suggest
from pipelines.splits import check_before_holdout, season_folds
from tests.helpers import REPO


def times(years: list[int], per_year: int = 3) -> pd.Series:
    return pd.Series(pd.to_datetime([f"{y}-0{m}-01" for y in years for m in range(1, per_year + 1)]))


@pytest.mark.parametrize(
    ("n_folds", "gap", "expected"),
    [
        (3, 0, [((2010, 2011), 2012), ((2010, 2011, 2012), 2013), ((2010, 2011, 2012, 2013), 2014)]),
        (2, 1, [((2010, 2011), 2013), ((2010, 2011, 2012), 2014)]),
    ],
)
def test_folds_expand_by_season_and_never_look_ahead(n_folds: int, gap: int, expected: list) -> None:
    t = times([2010, 2011, 2012, 2013, 2014])
    folds = season_folds(t, n_folds, gap)
    assert [(f.train_seasons, f.valid_season) for f in folds] == expected
    for fold in folds:
        assert t.iloc[fold.train_rows].max() < t.iloc[fold.valid_rows].min()
        assert set(t.iloc[fold.valid_rows].dt.year) == {fold.valid_season}


def test_too_few_seasons_is_a_clear_error() -> None:
    with pytest.raises(PodiumError, match="has 3 seasons .* need at least 5"):
        season_folds(times([2010, 2011, 2012]), 4)


def test_holdout_guard_fires_on_a_holdout_row() -> None:
    check_before_holdout(times([2019, 2020]), pd.Timestamp("2021-01-01").date())
    with pytest.raises(AssertionError, match="holdout rows"):
        check_before_holdout(times([2020, 2021]), pd.Timestamp("2021-01-01").date())


def test_bundled_search_spaces_cover_every_family() -> None:
    spaces = read_spaces(REPO / "experiments" / "f1_podium" / "search_space.yaml")
    assert set(spaces) == set(FACTORIES)
    trial = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=1)).ask()
    params = suggest(trial, spaces["xgboost"])
    assert 0.01 <= params["learning_rate"] <= 0.3 and params["n_estimators"] % 50 == 0


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ("knn:\n  n_neighbors: {type: int, low: 50, high: 5}\n", "low .50. must be below high .5."),
        ("svc:\n  C: {type: float, low: 0.0, high: 1.0, log: true}\n", "log-scale range needs low > 0"),
        ("svc:\n  C: {type: uniform, low: 0.1, high: 1.0}\n", "invalid search space"),
        ("lightgbm:\n  n_estimators: {type: int, low: 1, high: 5}\n", "no model factory for .'lightgbm'."),
        (
            "knn:\n  n_neighbors: {type: int, low: 5\n",
            r"malformed YAML at line \d+, column \d+: .*Fix the file",
        ),
    ],
)
def test_invalid_search_space_is_named(tmp_path: Path, entry: str, message: str) -> None:
    path = tmp_path / "space.yaml"
    path.write_text(entry)
    with pytest.raises(ConfigError, match=message):
        read_spaces(path)


@pytest.mark.parametrize("family", sorted(FACTORIES))
def test_every_family_gives_probabilities_in_class_order(family: str) -> None:
    rng = np.random.default_rng(0)
    X = pd.DataFrame({"a": rng.normal(size=90), "b": rng.normal(size=90), "c": rng.choice(["x", "y"], 90)})
    X.loc[::7, "a"] = np.nan
    y = np.repeat([0, 1, 2], 30)
    params = {"n_neighbors": 5} if family == "knn" else {}
    model = make_estimator(family, params, FeatureSchema(["a", "b"], ["c"]), seed=0).fit(X, y)
    proba = model.predict_proba(X.assign(c=["z"] * 90))  # an unseen category is ignored, not an error
    assert proba.shape == (90, 3)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, rtol=1e-6)


def test_group_frequency_baseline_learns_per_value_with_prior_fallback() -> None:
    X = pd.DataFrame({"GRID": [1, 1, 1, 2, 2, np.nan]})
    y = np.array([0, 0, 1, 2, 2, 2])
    model = GroupFrequencyClassifier("GRID", alpha=1.0).fit(X, y)
    proba = model.predict_proba(pd.DataFrame({"GRID": [1, 2, 99, np.nan]}))
    np.testing.assert_allclose(proba[0], [3 / 6, 2 / 6, 1 / 6])
    np.testing.assert_allclose(proba[1], [1 / 5, 1 / 5, 3 / 5])
    np.testing.assert_allclose(proba[2], [2 / 6, 1 / 6, 3 / 6])
    np.testing.assert_allclose(proba[3], proba[2])


def test_metrics_of_a_perfect_and_a_uniform_forecast() -> None:
    y = np.array([0, 1, 2, 0])
    perfect = np.eye(3)[y] * 0.98 + 0.01 / 1.5
    uniform = np.full((4, 3), 1 / 3)
    perfect_scores = classification_metrics(y, perfect)
    assert perfect_scores["auc"] == 1.0 and perfect_scores["balanced_accuracy"] == 1.0
    assert classification_metrics(y, uniform)["log_loss"] == pytest.approx(np.log(3))
