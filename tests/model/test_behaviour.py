"""Behavioural checks on a trained model: it responds to its inputs the way the domain says it should."""

from __future__ import annotations

import mlflow
import numpy as np
import pytest

from pipelines import train
from pipelines.config import Profile, Spec
from pipelines.warehouse import connect


@pytest.mark.parametrize("family", ["decision_tree", "logreg"])
def test_a_better_grid_slot_never_lowers_the_podium_probability_much(
    family: str, trained_profile: Profile, tuned: tuple[Profile, Spec]
) -> None:
    _, spec = tuned
    result = train.main(trained_profile, spec, family=family)
    model = mlflow.pyfunc.load_model(f"models:/{spec.model_name}/{result.champion.version}")
    with connect(trained_profile, read_only=True) as warehouse:
        rows = warehouse.query(
            f"SELECT * FROM {spec.table} WHERE {spec.time} >= ? LIMIT 200", [spec.holdout_start]
        )
    podium = spec.classes.index("podium")
    front, back = (
        np.asarray(model.predict(rows.assign(GRID=float(g), QUALI_POSITION=float(g)))) for g in (1, 20)
    )
    assert (front[:, podium] >= back[:, podium] - 0.05).all()
    assert front[:, podium].mean() > back[:, podium].mean() + 0.1
