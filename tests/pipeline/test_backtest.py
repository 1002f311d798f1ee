"""The walk-forward backtest on the bundled F1 data: a row per (season, model), no leakage."""

from __future__ import annotations

import shutil
import socket
from datetime import date
from pathlib import Path
from typing import Any

import mlflow
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient
from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID, MLFLOW_RUN_NAME

from pipelines import pipeline, status
from pipelines.config import (
    BacktestConfig,
    CycleConfig,
    Profile,
    RetrainPolicy,
    RetrainTriggers,
    Spec,
    TuningBudget,
)
from pipelines.lifecycle import Lifecycle
from pipelines.processes import PROCESS_TAG, process_id
from pipelines.stages import backtest, cycle, promote, score, train
from pipelines.tracking import experiment_id
from pipelines.warehouse import connect
from tests.data.test_features import rebuild_after_changing_results
from tests.helpers import duckdb_profile

SEASONS = ["2019", "2020"]


def replayed(spec: Spec) -> Spec:
    """The tuned spec (decision_tree and logreg) with a backtest of 2019 and 2020 at two trials per family,
    and no retrain policy: every period retrains."""
    config = BacktestConfig(table="ML.F1_BACKTEST", start=date(2019, 1, 1), end=date(2021, 1, 1), trials=2)
    return spec.model_copy(update={"backtest": config, "cycle": None})


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
    challengers, champions = rows[rows.ROLE == "challenger"], rows[rows.ROLE == "champion"]
    held_out = challengers.PERIOD.map(lambda p: f"{int(p) - 1}-01-01")
    assert (challengers.TRAINED_BEFORE.astype(str) == held_out).all(), "trained before the period's holdout"
    assert (
        champions.TRAINED_BEFORE.astype(str) < champions.PERIOD.map(lambda p: f"{int(p) - 1}-01-01")
    ).all()

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


def test_a_backtest_is_the_cycles_replayed_period_by_period_under_the_spec_policy(
    trained_profile: Profile, tuned: tuple[Profile, Spec], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The spec's policy (here: retrain only without a champion) decides each replayed period, and the
    backtest's rows repeat what `podium cycle`, run as of each period on a copy, records."""
    policy = RetrainPolicy(when_any=RetrainTriggers(new_rows=100_000), tune=TuningBudget(trials=2))
    spec = replayed(tuned[1]).model_copy(update={"cycle": CycleConfig(table="ML.F1_CYCLES", retrain=policy)})
    pristine = tmp_path / "pristine.duckdb"
    shutil.copyfile(trained_profile.warehouse.path, pristine)

    backtest.main(trained_profile, spec, pipeline.LIFECYCLE)
    rows = table(trained_profile, "ML.F1_BACKTEST")
    replayed_cycles = table(trained_profile, "ML.F1_BACKTEST_CYCLES")

    assert list(rows.DECISION) == ["promoted", "no retrain"], "2020: the policy holds, nobody retrains"
    assert list(rows.ROLE) == ["challenger", "champion"] and rows.MODEL_VERSION.nunique() == 1
    for row in rows.itertuples():
        recorded = replayed_cycles[replayed_cycles.PERIOD == row.PERIOD].iloc[0]
        assert (row.CHAMPION_VERSION, row.CHALLENGER_VERSION) == (
            recorded.CHAMPION_BEFORE,
            recorded.CHALLENGER_VERSION,
        )

    uri = f"sqlite:///{tmp_path / 'cycles.db'}"  # the same cycles, by hand, on a copy of its own
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    mlflow.set_tracking_uri(uri)
    copy = trained_profile.model_copy(
        update={"warehouse": trained_profile.warehouse.model_copy(update={"path": pristine})}
    )
    copy = copy.model_copy(update={"optuna_storage": str(tmp_path / "cycles" / "studies.journal")})
    by_hand = backtest.replay_spec(spec, spec.backtest_section)
    for season in (date(2019, 1, 1), date(2020, 1, 1)):
        cycle.main(copy, by_hand, pipeline.LIFECYCLE, as_of=season, refresh=False)
    lineage = ["RUN_ID", "STAGE_RUN_IDS", "FINISHED_AT"]
    pd.testing.assert_frame_equal(
        table(copy, "ML.F1_BACKTEST_CYCLES")
        .drop(columns=lineage)
        .sort_values("PERIOD")
        .reset_index(drop=True),
        replayed_cycles.drop(columns=lineage).sort_values("PERIOD").reset_index(drop=True),
    )


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


def _no_stage(*args: Any, **kwargs: Any) -> Any:
    raise AssertionError("a stage ran: the backtest's options and windows must be checked before any tuning")


UNTUNED = Lifecycle(_no_stage, _no_stage, _no_stage, _no_stage, _no_stage, cycle=_no_stage)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (
            {"start": date(2014, 1, 1), "end": date(2016, 1, 1)},
            r"^backtest\.start 2014-01-01 leaves period 2014 too few seasons to tune on: the rows before "
            r"its holdout \(2013-01-01\) hold 3 \(2010, 2011, 2012\), and cv\.folds 4 with cv\.gap 0 need 5: "
            r"start the backtest at 2016-01-01 or later \(backtest\.start or --start\), or lower "
            r"cv\.folds\.$",
        ),
        (
            {"start": date(2021, 1, 1), "end": date(2025, 1, 1)},
            r"^backtest\.end 2025-01-01 runs past the data: the last RACE_DATE in ML\.F1_FEATURES is "
            r"2022-\d\d-\d\d, so periods 2023, 2024 have no rows to replay\. Set backtest\.end \(or --end\) "
            r"to 2023-01-01 or earlier\.$",
        ),
        ({"trials": 0}, r"^backtest --trials / backtest\.trials must be at least 1, not 0: "),
        ({"trials": -3}, r"^backtest --trials / backtest\.trials must be at least 1, not -3: "),
        (
            {"families": ["logreg", "lightgbm"]},
            r"^backtest\.families names unknown families \['lightgbm'\]: the known families are logreg, "
            r"knn, svc, decision_tree, .*xgboost\. Fix backtest\.families, or drop it to replay "
            r"tuning\.families\.$",
        ),
    ],
    ids=["too-few-seasons", "past-the-data", "zero-trials", "negative-trials", "unknown-family"],
)
def test_a_bad_backtest_window_or_option_is_one_clear_error_before_any_tuning(
    built_profile: Profile, spec: Spec, options: dict[str, Any], message: str
) -> None:
    """Each names its input and fix, before any stage (here: stages that must not run) or MLflow run."""
    from pipelines.errors import PodiumError

    config = BacktestConfig(table="ML.F1_BACKTEST", start=date(2019, 1, 1), end=date(2021, 1, 1), trials=1)
    config = config.model_copy(update={"families": options.get("families")})
    bad = spec.model_copy(update={"backtest": config})
    given = {k: v for k, v in options.items() if k != "families"}
    with pytest.raises(PodiumError, match=message):
        backtest.main(built_profile, bad, UNTUNED, **given)
    client = MlflowClient()
    assert not client.search_runs([e.experiment_id for e in client.search_experiments()]), "a run started"


def test_the_next_backtest_ends_every_run_nested_in_a_killed_one_and_removes_its_studies(
    built_profile: Profile, spec: Spec, tmp_path: Path
) -> None:
    """A killed backtest's tree, as a kill leaves it (the slow kill test makes real ones), one run in it
    ended since by another stage: status shows the rest as stale; the next backtest ends them all FAILED
    (innermost first, a live process's runs untouched) and removes the killed one's studies folder."""
    profile = built_profile.model_copy(
        update={"optuna_storage": str(tmp_path / "optuna" / "studies.journal")}
    )
    config = BacktestConfig(table="ML.F1_BACKTEST", start=date(2019, 1, 1), end=date(2020, 1, 1), trials=1)
    replay = spec.model_copy(update={"backtest": config})
    client, gone = MlflowClient(), f"{socket.gethostname()}:999999999:0"  # no such pid: a killed process
    experiment = experiment_id(spec.name)

    def create(name: str, parent: str | None = None, **tags: str) -> str:
        tags |= {MLFLOW_RUN_NAME: name} | ({MLFLOW_PARENT_RUN_ID: parent} if parent else {})
        return client.create_run(experiment, tags=tags).info.run_id

    killed = create("backtest", **{"podium.stage": "backtest", PROCESS_TAG: gone})
    period = create("period 2019", killed)
    tune_run = create("tune", period, **{"podium.stage": "tune", PROCESS_TAG: gone})
    study = create("decision_tree", tune_run)
    trial = create("decision_tree-0000", study)
    client.set_terminated(tune_run, "FAILED")  # as a `podium tune` since would have ended it
    live = create("tune", **{"podium.stage": "tune", PROCESS_TAG: process_id()})
    live_study = create("logreg", live)
    studies = tmp_path / "optuna" / "backtests" / killed  # beside the journal, named by the backtest id
    studies.mkdir(parents=True)
    (studies / "podium.process").write_text(gone)  # the process that ran it

    stale = {r["run_id"]: r["stage"] for r in status.stale_stage_runs(replay)}
    assert stale == {
        killed: "backtest",
        period: "backtest: period 2019",
        study: "backtest: decision_tree",
        trial: "backtest: decision_tree-0000",
    }
    with pytest.raises(AssertionError, match="a stage ran"):
        backtest.main(profile, replay, UNTUNED)
    ended = {
        r: client.get_run(r).info.status for r in (killed, period, tune_run, study, trial, live, live_study)
    }
    assert ended == {r: "FAILED" for r in (killed, period, tune_run, study, trial)} | {
        live: "RUNNING",
        live_study: "RUNNING",
    }
    assert client.get_run(trial).data.tags["podium.stale"] == "its process ended without closing the run"
    ends = [client.get_run(r).info.end_time for r in (trial, study, period, killed)]
    assert ends == sorted(ends), "innermost first: the killed run ends last, so a kill now leaves it found"
    assert not studies.parent.exists(), "the killed backtest's studies, and the failed one's, are removed"
    assert status.stale_stage_runs(replay) == []
