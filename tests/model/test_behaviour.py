"""Behavioural checks on a trained model: it responds to its inputs the way the domain says it should."""

from __future__ import annotations

import mlflow
import pytest

from pipelines import dataset
from pipelines.config import Profile, Spec
from pipelines.stages import train
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
    podium = dataset.probability_column("podium")
    front, back = (
        model.predict(rows.assign(GRID=float(g), QUALI_POSITION=float(g)))[podium].to_numpy() for g in (1, 20)
    )
    assert (front >= back - 0.05).all()
    assert front.mean() > back.mean() + 0.1
