"""`score --engine warehouse`: the model as a vectorized UDF inside Snowpark (local testing here)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace

import mlflow
import numpy as np
import pandas as pd
import pytest
from snowflake.snowpark import Session

from pipelines import dataset, registry
from pipelines.config import Profile, Spec
from pipelines.stages import score, train
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
    model = registry.resolve(f"models:/{spec.model_name}/{version}")
    estimator = mlflow.sklearn.load_model(f"models:/{spec.model_name}/{version}")
    batch = score.Batch(model, estimator, "batch-1", full=False, chunk_rows=1000)
    with connect(trained_profile, read_only=True) as duck:
        rows = duck.query(f"SELECT * FROM {spec.table} WHERE {spec.time} >= '2022-10-01'")
    rows[spec.time] = pd.to_datetime(rows[spec.time]).dt.date
    snowpark.write(rows, spec.table, mode="replace")

    incremental = score._job(spec, spec.scoring, batch)
    full = score._job(spec, spec.scoring, replace(batch, full=True))
    assert snowpark.score_in_warehouse(incremental) == (len(rows), len(rows))
    assert snowpark.score_in_warehouse(incremental) == (0, 0)
    assert snowpark.score_in_warehouse(full) == (len(rows), len(rows))

    inside = snowpark.session.table(spec.scoring_table).to_pandas().sort_values(spec.keys, ignore_index=True)
    local = score.predict(rows, spec, batch).sort_values(spec.keys, ignore_index=True)
    assert len(inside) == len(rows) > 20
    probabilities = dataset.probability_columns(spec)
    assert np.allclose(inside[probabilities].to_numpy(float), local[probabilities].to_numpy(float))
    assert inside["PREDICTED_CLASS"].tolist() == local["PREDICTED_CLASS"].tolist()
    assert set(inside["MODEL_VERSION"]) == {version} and set(inside["BATCH_ID"]) == {"batch-1"}

    score.main(trained_profile, spec, model_uri=f"models:/{spec.model_name}/{version}")  # the DuckDB path
    with connect(trained_profile, read_only=True) as duck:
        on_duckdb = duck.query(f"SELECT * FROM {spec.scoring_table}")
    assert list(inside.columns) == list(on_duckdb.columns), "the same columns in the same order"
    same = inside.merge(on_duckdb, on=spec.keys, suffixes=("", "_DUCKDB"))
    assert len(same) == len(rows)
    for column in ["PREDICTED_CLASS", "MODEL_NAME", "MODEL_VERSION", "MODEL_ALIAS"]:
        assert same[column].tolist() == same[f"{column}_DUCKDB"].tolist(), column
    np.testing.assert_allclose(
        same[probabilities].to_numpy(float), same[[f"{p}_DUCKDB" for p in probabilities]].to_numpy(float)
    )


def test_warehouse_engine_needs_a_snowflake_profile(profile: Profile, spec: Spec) -> None:
    with pytest.raises(Exception, match="--engine warehouse runs the model inside Snowflake"):
        score.main(profile, spec, engine="warehouse")
