"""The walk-forward backtest on the bundled F1 data: a row per (season, model), no leakage."""

from __future__ import annotations

import shutil
from datetime import date
from pathlib import Path
from typing import Any

import mlflow
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from pipelines import backtest, pipeline, promote, score, train
from pipelines.config import BacktestConfig, Profile, Spec
from pipelines.warehouse import connect
from tests.data.test_features import rebuild_after_changing_results
from tests.helpers import duckdb_profile

SEASONS = ["2019", "2020"]


def replayed(spec: Spec) -> Spec:
    """The tuned spec (decision_tree and logreg) with a backtest of 2019 and 2020 at two trials per family."""
    config = BacktestConfig(table="ML.F1_BACKTEST", start=date(2019, 1, 1), end=date(2021, 1, 1), trials=2)
    return spec.model_copy(update={"backtest": config})


def table(profile: Profile, name: str) -> pd.DataFrame:
    with connect(profile, read_only=True) as warehouse:
        return warehouse.query(f"SELECT * FROM {name}")


def real_state(profile: Profile, spec: Spec) -> dict[str, Any]:
    """What the backtest must leave alone: the real model's versions, aliases and stages, its tables."""
    client = MlflowClient()
    versions = client.search_model_versions(f"name = '{spec.model_name}'")
    keys = [*spec.keys, "MODEL_VERSION"]
    return {
        "versions": sorted((v.version, v.current_stage, tuple(sorted(v.aliases))) for v in versions),
        "aliases": client.get_registered_model(spec.model_name).aliases,
        "scores": table(profile, spec.scoring_table).sort_values(keys).reset_index(drop=True),
        "audit": table(profile, spec.registry.audit_table),
    }


def test_a_backtest_writes_a_row_per_season_and_model_and_never_touches_the_real_model(
    trained_profile: Profile, tuned: tuple[Profile, Spec]
) -> None:
    profile, spec = trained_profile, replayed(tuned[1])
    train.main(profile, spec, top_k=2)
    promote.main(profile, spec, version="1", force=True)
    promote.main(profile, spec, version="2", alias=None, stage="Production", force=True)
    score.main(profile, spec)
    before = real_state(profile, spec)

    result = backtest.main(profile, spec, pipeline.LIFECYCLE)

    rows = table(profile, "ML.F1_BACKTEST")
    assert len(rows) == len(result.rows) and not rows.duplicated(["PERIOD", "ROLE"]).any()
    assert sorted(set(rows.PERIOD)) == SEASONS
    first = rows[rows.PERIOD == "2019"].iloc[0]
    assert first.DECISION == "promoted" and "first holder" in first.REASON, "2019 crowns its first champion"
    with connect(profile, read_only=True) as warehouse:
        per_season = warehouse.query(
            f"SELECT CAST(YEAR({spec.time}) AS VARCHAR) AS PERIOD, COUNT(*) AS N FROM {spec.table} "
            f"WHERE {spec.time} >= '2019-01-01' AND {spec.time} < '2021-01-01' GROUP BY 1"
        )
    assert (rows.ROWS == rows.PERIOD.map(dict(zip(per_season.PERIOD, per_season.N, strict=True)))).all()
    assert rows.LOG_LOSS.between(0.3, 1.2).all() and set(rows.MODEL_FAMILY) <= {"decision_tree", "logreg"}
    shadowed = rows[rows.ROLE == "challenger"].dropna(subset=["SHADOW_GAIN"])
    assert (
        (shadowed.SHADOW_GAIN_LOW <= shadowed.SHADOW_GAIN)
        & (shadowed.SHADOW_GAIN <= shadowed.SHADOW_GAIN_HIGH)
    ).all()
    assert (rows.TRAINED_BEFORE.astype(str) == rows.PERIOD.map(lambda p: f"{int(p) - 1}-01-01")).all()

    after = real_state(profile, spec)
    assert after["versions"] == before["versions"] and after["aliases"] == before["aliases"]
    pd.testing.assert_frame_equal(after["scores"], before["scores"])
    pd.testing.assert_frame_equal(after["audit"], before["audit"])

    made = MlflowClient().search_model_versions(f"name = '{spec.model_name}_backtest'")
    assert len(made) == len(SEASONS), "one trained version per season"
    assert {v.tags["podium.backtest"] for v in made} == {result.backtest_id}
    assert sorted(v.tags["podium.backtest_period"] for v in made) == SEASONS
    client = MlflowClient()
    experiment = client.get_experiment_by_name(spec.name).experiment_id
    children = client.search_runs([experiment], f"tags.mlflow.parentRunId = '{result.backtest_id}'")
    assert sorted(c.info.run_name for c in children) == [f"period {s}" for s in SEASONS]
    artifacts = {a.path for a in MlflowClient().list_artifacts(result.backtest_id, "plots")}
    assert "plots/backtest.png" in artifacts


def test_changing_results_from_a_season_on_leaves_every_earlier_backtest_row_unchanged(
    built_profile: Profile, tuned: tuple[Profile, Spec], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two backtests, each in a fresh MLflow store, on the data as it is and with 2020 on scrambled."""
    spec = replayed(tuned[1])
    original = duckdb_profile(tmp_path / "original.duckdb")
    shutil.copyfile(built_profile.warehouse.path, original.warehouse.path)
    changed = rebuild_after_changing_results(built_profile, spec, date(2020, 1, 1), tmp_path)
    found = {}
    for name, profile in (("original", original), ("changed", changed)):
        store = f"sqlite:///{tmp_path / name}.db"
        monkeypatch.setenv("MLFLOW_TRACKING_URI", store)
        mlflow.set_tracking_uri(store)
        found[name] = backtest.main(profile, spec, pipeline.LIFECYCLE).rows.drop(columns="BACKTEST_ID")
    earlier = [found[name][found[name].PERIOD == "2019"].reset_index(drop=True) for name in found]
    assert len(earlier[0]) >= 1
    pd.testing.assert_frame_equal(earlier[0], earlier[1])
    later = [found[name][found[name].PERIOD == "2020"].reset_index(drop=True) for name in found]
    assert not later[0].LOG_LOSS.equals(later[1].LOG_LOSS), "the change reaches 2020's rows"


def test_backtest_options_are_checked(trained_profile: Profile, tuned: tuple[Profile, Spec]) -> None:
    from pipelines.errors import ConfigError, PodiumError

    spec = replayed(tuned[1])
    with pytest.raises(PodiumError, match=r"backtest options: .*end .* must be after start"):
        backtest.main(trained_profile, spec, pipeline.LIFECYCLE, start=date(2021, 1, 1), end=date(2020, 1, 1))
    with pytest.raises(PodiumError, match="leaves no training rows before its first holdout"):
        backtest.main(trained_profile, spec, pipeline.LIFECYCLE, start=date(2011, 1, 1))
    with pytest.raises(ConfigError, match="has no `backtest` section: add backtest.table, start and end"):
        backtest.main(trained_profile, tuned[1].model_copy(update={"backtest": None}), pipeline.LIFECYCLE)
