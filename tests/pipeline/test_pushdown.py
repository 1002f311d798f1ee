"""`score --engine warehouse`: the model as a vectorized UDF inside Snowpark (local testing here)."""

from __future__ import annotations

from collections.abc import Iterator

import mlflow
import numpy as np
import pandas as pd
import pytest
from snowflake.snowpark import Session

from pipelines import pushdown, score, train
from pipelines.config import Profile, Spec
from pipelines.warehouse import connect
from pipelines.warehouse.snowpark import SnowparkWarehouse


@pytest.fixture
def snowpark() -> Iterator[SnowparkWarehouse]:
    warehouse = SnowparkWarehouse(Session.builder.config("local_testing", True).create())
    yield warehouse
    warehouse.close()


def test_pushdown_scores_like_the_local_engine_and_only_once(
    snowpark: SnowparkWarehouse, trained_profile: Profile, tuned: tuple[Profile, Spec]
) -> None:
    _, spec = tuned
    version = train.main(trained_profile, spec).champion.version
    model = score.resolve(f"models:/{spec.model_name}/{version}")
    estimator = mlflow.sklearn.load_model(f"models:/{spec.model_name}/{version}")
    with connect(trained_profile, read_only=True) as duck:
        rows = duck.query(f"SELECT * FROM {spec.table} WHERE {spec.time} >= '2022-10-01'")
    rows[spec.time] = pd.to_datetime(rows[spec.time]).dt.date
    snowpark.write(rows, spec.table, mode="replace")

    run = (spec, model, estimator, "batch-1")
    assert pushdown.score(snowpark, *run, False, spec.scoring.start, None) == (len(rows), len(rows))
    assert pushdown.score(snowpark, *run, False, spec.scoring.start, None) == (0, 0)
    assert pushdown.score(snowpark, *run, True, spec.scoring.start, None) == (len(rows), len(rows))

    inside = snowpark.session.table(spec.scoring_table).to_pandas().sort_values(spec.keys, ignore_index=True)
    local = score.predict(rows, spec, model, estimator, "batch-1").sort_values(spec.keys, ignore_index=True)
    assert len(inside) == len(rows) > 20
    probabilities = [score.probability_column(c) for c in spec.classes]
    assert np.allclose(inside[probabilities].to_numpy(float), local[probabilities].to_numpy(float))
    assert inside["PREDICTED_CLASS"].tolist() == local["PREDICTED_CLASS"].tolist()
    assert set(inside["MODEL_VERSION"]) == {version} and set(inside["BATCH_ID"]) == {"batch-1"}


def test_warehouse_engine_needs_a_snowflake_profile(profile: Profile, spec: Spec) -> None:
    with pytest.raises(Exception, match="--engine warehouse runs the model inside Snowflake"):
        score.main(profile, spec, engine="warehouse")
