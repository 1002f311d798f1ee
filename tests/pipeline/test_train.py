"""Train end to end: the champion refitted, judged once on the holdout, registered with its lineage."""

from __future__ import annotations

from typing import Any, ClassVar

import mlflow
import numpy as np
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from pipelines import dataset
from pipelines.config import Profile, Spec
from pipelines.errors import PodiumError
from pipelines.stages import train
from pipelines.warehouse import connect
from pipelines.warehouse.duckdb import DuckDBWarehouse
from tests.helpers import connect_with


def test_train_registers_the_best_family_as_challenger(
    trained_profile: Profile, tuned: tuple[Profile, Spec]
) -> None:
    _, spec = tuned
    result = train.main(trained_profile, spec, top_k=2)

    client = MlflowClient()
    assert [t.version for t in result.trained] == ["1", "2"]
    cv = [t.candidate.cv["log_loss"] for t in result.trained]
    assert cv == sorted(cv), "the champion family is the one with the best CV log loss"
    assert (
        str(client.get_model_version_by_alias(spec.model_name, "challenger").version)
        == result.champion.version
    )

    version = client.get_model_version(spec.model_name, result.champion.version)
    tags = (
        "family",
        "study",
        "trial",
        "cv_log_loss",
        "holdout_log_loss",
        "holdout_auc",
        "data_digest",
        "spec",
        "holdout_digest",
        "git_sha",
        "run_id",
        "train_run_id",
        "baseline.heuristic.holdout_log_loss",
    )
    for tag in tags:
        assert version.tags.get(f"podium.{tag}"), tag
    assert version.tags["podium.family"] == result.champion.candidate.family
    experiment = client.get_experiment(client.get_run(version.run_id).info.experiment_id)
    assert experiment.name == spec.name, "the model's run sits in the spec's experiment, under its train run"
    assert float(version.tags["podium.holdout_log_loss"]) == pytest.approx(
        result.champion.holdout["log_loss"], 1e-5
    )
    for words in ("Intended use", "evaluated once", "baseline: heuristic", str(spec.holdout_start)):
        assert words in version.description


def test_registered_model_predicts_on_feature_table_rows(
    trained_profile: Profile, tuned: tuple[Profile, Spec]
) -> None:
    _, spec = tuned
    result = train.main(trained_profile, spec)
    model = mlflow.pyfunc.load_model(f"models:/{spec.model_name}@challenger")
    with connect(trained_profile, read_only=True) as warehouse:
        rows = warehouse.query(f"SELECT * FROM {spec.table} WHERE {spec.time} >= '2022-01-01' LIMIT 40")
    scores = model.predict(rows)
    probabilities = dataset.probability_columns(spec)
    assert list(scores.columns) == ["PREDICTED_CLASS", *probabilities] and len(scores) == 40
    assert np.allclose(scores[probabilities].sum(axis=1), 1.0)
    assert set(scores.PREDICTED_CLASS) <= set(spec.classes)
    outputs = model.metadata.get_output_schema()
    assert outputs.input_names() == ["PREDICTED_CLASS", *probabilities]
    assert [t.name for t in outputs.input_types()] == ["string", *["double"] * len(probabilities)]

    native = mlflow.sklearn.load_model(f"models:/{spec.model_name}@challenger")
    assert list(native.classes_) == spec.classes
    assert native.predict(rows).tolist() == scores.PREDICTED_CLASS.tolist()
    assert np.allclose(native.predict_proba(rows), scores[probabilities].to_numpy())

    run = MlflowClient().get_run(result.champion.run_id)
    assert run.data.metrics["holdout_log_loss"] == pytest.approx(result.champion.holdout["log_loss"])
    for name in spec.classes:
        assert (
            f"holdout_precision_{name}" in run.data.metrics and f"holdout_recall_{name}" in run.data.metrics
        )
    artifacts = {a.path for a in MlflowClient().list_artifacts(result.champion.run_id, "plots")}
    assert artifacts == {
        f"plots/{n}.png"
        for n in ("confusion_matrix", "roc", "precision_recall", "calibration", "feature_importance")
    }
    requirements = mlflow.pyfunc.get_model_dependencies(f"models:/{spec.model_name}/1")
    pinned = open(requirements).read().split()
    assert all("==" in line for line in pinned if line and not line.startswith("-"))


class CountingWarehouse(DuckDBWarehouse):
    """The real DuckDB backend, counting queries that return holdout rows."""

    holdout_reads: ClassVar[int] = 0
    holdout_start: ClassVar[pd.Timestamp]

    def query(self, sql: str, params: Any = ()) -> pd.DataFrame:
        frame = super().query(sql, params)
        if "RACE_DATE" in frame and (frame["RACE_DATE"] >= CountingWarehouse.holdout_start).any():
            CountingWarehouse.holdout_reads += 1
        return frame


def test_train_reads_the_holdout_exactly_once(
    trained_profile: Profile, tuned: tuple[Profile, Spec], monkeypatch: pytest.MonkeyPatch
) -> None:
    _, spec = tuned

    monkeypatch.setattr(train, "connect", connect_with(CountingWarehouse))
    CountingWarehouse.holdout_reads, CountingWarehouse.holdout_start = 0, pd.Timestamp(spec.holdout_start)
    train.main(trained_profile, spec, top_k=2)
    assert CountingWarehouse.holdout_reads == 1


def test_train_forces_a_family(trained_profile: Profile, tuned: tuple[Profile, Spec]) -> None:
    _, spec = tuned
    result = train.main(trained_profile, spec, family="logreg")
    assert [t.candidate.family for t in result.trained] == ["logreg"]


def test_train_without_a_study_says_to_tune_first(
    trained_profile: Profile, tuned: tuple[Profile, Spec]
) -> None:
    _, spec = tuned
    with pytest.raises(
        PodiumError, match=r"no completed trials for family xgboost .* run `podium tune --family"
    ):
        train.main(trained_profile, spec, family="xgboost")
