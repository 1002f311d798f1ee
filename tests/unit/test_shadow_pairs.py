"""The paired comparison of a shadow batch, from per-race sums: gains, bootstrap intervals, periods won."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from pipelines import shadow
from pipelines.config import LiveEvidence, PromotionPolicy


def blocks(losses: dict[str, list[tuple[float, float]]]) -> pd.DataFrame:
    """Per period, races of 10 rows of class 0: (challenger's mean loss, champion's); hits 10 vs 5."""
    rows = []
    for period, races in losses.items():
        for race, (mine, theirs) in enumerate(races):
            sums = {"N": 10, "LOSS_C": 10 * mine, "LOSS_H": 10 * theirs, "POS_0": 10, "POS_1": 0}
            hits = {"HIT_C_0": 10, "HIT_C_1": 0, "HIT_H_0": 5, "HIT_H_1": 0}
            rows.append(
                {"CHALLENGER": "2", "CHAMPION": "1", "PERIOD": period, "BLOCK": str(race)} | sums | hits
            )
    return pd.DataFrame(rows)


def figures(rows: list[tuple[str, str, str, float, int]]) -> dict[tuple[str, str], float]:
    return {(period, metric.removeprefix("shadow.vs_v1.")): value for _, period, metric, value, _ in rows}


def test_the_gain_is_the_champions_loss_minus_the_challengers_with_an_interval_around_it() -> None:
    found = figures(
        shadow.compare(
            blocks({"2021": [(0.5, 0.6), (0.7, 0.6), (0.4, 0.6)], "2022": [(0.9, 0.6), (0.8, 0.6)]}),
            "log_loss",
            2,
        )
    )
    assert found["2021", "log_loss_gain"] == pytest.approx(0.6 - np.mean([0.5, 0.7, 0.4]))
    assert (
        found["2021", "log_loss_gain_low"]
        < found["2021", "log_loss_gain"]
        < found["2021", "log_loss_gain_high"]
    )
    assert found["2021", "log_loss_gain_low"] >= 0.6 - 0.7 - 1e-12, "no resample is worse than the worst race"
    assert found["2022", "log_loss_gain"] == pytest.approx(0.6 - 0.85)
    assert (found["2021", "won"], found["2022", "won"]) == (1.0, 0.0)
    assert found["all", "won_share"] == 0.5


def test_balanced_accuracy_pairs_compare_recall_over_the_classes_present() -> None:
    found = figures(shadow.compare(blocks({"2021": [(0.5, 0.5), (0.5, 0.5)]}), "balanced_accuracy", 2))
    assert found["2021", "balanced_accuracy_gain"] == pytest.approx(1.0 - 0.5), "class 1 is absent, not zero"


def test_a_live_gate_needs_a_metric_that_adds_up_race_by_race() -> None:
    with pytest.raises(ValueError, match="which AUC does not allow"):
        PromotionPolicy(metric="auc", live=LiveEvidence(periods=2))
    assert (
        shadow.paired_metric("auc") == "log_loss"
        and shadow.paired_metric("balanced_accuracy") == "balanced_accuracy"
    )
