"""PSI that means something: an emptied value range merges with its neighbour, and bins are named."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from pipelines import metrics


def grids(races: dict[int, int]) -> pd.Series:
    """Grid slots for {cars: races}: every slot 1..cars once per race."""
    return pd.Series(np.concatenate([np.tile(np.arange(1, cars + 1), n) for cars, n in races.items()]))


TRAINING = grids({20: 70, 24: 30})  # as F1's 2010-2020: some seasons had 22 or 24 cars
SCORED = grids({20: 40})  # as 2021-22: 20 cars, so grid slots above 20 are empty


def test_a_top_bin_that_empties_does_not_dominate_the_index() -> None:
    """24-car grids in training, 20-car grids scored: slots 21-24 vanish, the rest are as common as before."""
    training, scored = TRAINING, SCORED
    edges = metrics.inner_edges(np.quantile(training, np.linspace(0, 1, 11)).tolist())
    assert edges[-1] == 20, "the training deciles put slots 21-24 in a top bin of their own"
    top_share = float((training > edges[-1]).mean())
    floored = top_share * np.log(top_share / 1e-4)  # that bin's term under the old epsilon floor
    assert floored > 0.2, "an epsilon floor alone would cross the threshold"

    value = metrics.psi(training, scored)
    assert value < 0.2 * floored and value < 0.1, "the vanished range counts by the rows that moved"


def test_the_bins_that_moved_most_are_named_by_their_value_range() -> None:
    training, scored = TRAINING, SCORED
    edges = metrics.inner_edges(np.quantile(training, np.linspace(0, 1, 11)).tolist())

    def counts(values: pd.Series) -> pd.Series:
        cut = pd.cut(values, [-np.inf, *edges, np.inf], labels=False)
        return cut.astype(int).astype(str).value_counts()

    bins = metrics.psi_bins(counts(training), counts(scored), edges)
    assert f"> {edges[-1]:g}" not in bins.index, "the empty top bin was merged"
    assert f"> {edges[-2]:g}" in bins.index, "into its lower neighbour, named by the merged range"
    assert bins.index[0] == f"<= {edges[0]:g}"
    assert bins.EXPECTED.sum() == pytest.approx(1.0) and bins.ACTUAL.sum() == pytest.approx(1.0)
    assert bins.PSI.sum() == pytest.approx(metrics.psi(training, scored))
    assert bins.PSI.idxmax() == f"> {edges[-2]:g}", "the merged top range moved most"


def test_a_vanished_or_new_level_is_smoothed_not_floored() -> None:
    before = pd.Series({"alpha": 50, "beta": 50})
    after = pd.Series({"alpha": 50, "gamma": 50})
    bins = metrics.psi_bins(before, after)
    assert set(bins.index) == {"alpha", "beta", "gamma"}
    assert np.isfinite(bins.PSI).all() and (bins.PSI >= 0).all()
    assert bins.loc["gamma", "EXPECTED"] == pytest.approx(0.5 / 101.5)
    assert metrics.psi_of_counts(before, before) == pytest.approx(0.0)
