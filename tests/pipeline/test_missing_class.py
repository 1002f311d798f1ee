"""A class a fold and the holdout lack: finite AUC everywhere, a gate that says when a metric is undefined,
and a warning when a baseline wins CV.

The table is built here, in a tmp DuckDB file: daily weather per station, five sky classes, 2014-2021.
`snow` occurs only until 2018, so the last CV fold (validating 2019) and the 2020-21 holdout lack it.
The class follows the column HINT almost alone (the grid-like heuristic the `heuristic` baseline
reads), the other features are noise, and the families' spaces overfit: the baseline wins CV.
"""

from __future__ import annotations

import logging
import math
from datetime import date, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from pipelines.config import Profile, Spec
from pipelines.config_files import load_spec
from pipelines.stages import evaluate, promote, score, train, tune
from pipelines.warehouse import connect
from tests.helpers import REPO, mlflow_tree

CLASSES = ["sun", "cloud", "rain", "fog", "snow"]
SNOW_UNTIL = 2018  # the last season with snow: one fold validates 2019, the holdout is 2020-21
TABLE = "WX.DAILY_SKY"
BUDGET = "budget: {trials: 3}"  # three trials per family
SPACE = """decision_tree:  # deep trees on noise: confident and wrong
  max_depth: {type: int, low: 6, high: 10}
  min_samples_leaf: {type: int, low: 1, high: 3}
knn:  # few neighbours: probabilities of 0 for classes that then occur
  n_neighbors: {type: int, low: 3, high: 6}
"""
SPEC = f"""name: weather_sky
description: Tomorrow's sky class per station.
table: {TABLE}
keys: [STATION_ID, DAY]
time: DAY
target: SKY
classes: [{", ".join(CLASSES)}]
train_start: 2014-01-01
holdout_start: 2020-01-01
scoring_table: WX.DAILY_SKY_SCORES
cv: {{folds: 3, gap: 0}}
baseline: {{column: HINT}}
tuning:
  search_space: {{space}}
  families: [decision_tree, knn]
  {BUDGET}
  seed: 11
  pruner_startup_trials: 10
registry: {{model_name: weather_sky, audit_table: WX.PROMOTIONS}}
promotion: {{metric: auc, min_improvement: 0.0, checks: [signature_matches], baseline: heuristic}}
scoring: {{start: 2020-01-01}}
monitoring: {{table: WX.DAILY_SKY_MONITORING, period: year}}
"""


def weather(seed: int = 5) -> pd.DataFrame:
    """Two stations' days, 2014-2021: SKY is CLASSES[HINT] 70% of the time, else any class that year has."""
    rng = np.random.default_rng(seed)
    days = [date(2014, 1, 1) + timedelta(d) for d in range((date(2021, 12, 31) - date(2014, 1, 1)).days + 1)]
    frame = pd.DataFrame(
        [{"STATION_ID": s, "DAY": d} for s in (1, 2) for d in days],
    )
    n = len(frame)
    frame["HINT"] = rng.integers(0, len(CLASSES), n)
    frame["NOISE_A"], frame["NOISE_B"] = rng.normal(size=n), rng.normal(size=n)
    frame["NOISE_C"] = rng.uniform(-5, 5, n)
    label = np.where(rng.uniform(size=n) < 0.7, frame["HINT"], rng.integers(0, len(CLASSES), n))
    late = np.array([d.year > SNOW_UNTIL for d in frame["DAY"]])
    snow = CLASSES.index("snow")
    label[late & (label == snow)] = rng.integers(0, snow, int((late & (label == snow)).sum()))
    frame["SKY"] = np.array(CLASSES)[label]
    return frame


def write_table(profile: Profile, frame: pd.DataFrame) -> None:
    with connect(profile) as warehouse:
        warehouse.write(frame, TABLE, mode="replace")


@pytest.fixture
def setting(tmp_path: Path, profile: Profile) -> tuple[Profile, Spec]:
    """(profile, spec) of the weather table, written to this test's DuckDB file."""
    (tmp_path / "space.yaml").write_text(SPACE)
    (tmp_path / "weather_sky.yaml").write_text(SPEC.replace("{space}", str(tmp_path / "space.yaml")))
    spec = load_spec(str(tmp_path / "weather_sky.yaml"), root=REPO)
    write_table(profile, weather())
    return profile.model_copy(update={"optuna_storage": str(tmp_path / "studies.journal")}), spec


def finite(value: float | str) -> bool:
    return math.isfinite(float(value))


def assert_folds_lack_snow_once(metrics: dict[str, float]) -> None:
    """A run's CV AUC and every fold's are finite; one fold's season (2019) has 4 classes, the others 5."""
    folds = range(3)
    assert finite(metrics["cv_auc"]) and all(finite(metrics[f"fold{i}.auc"]) for i in folds), metrics
    assert sorted(metrics[f"fold{i}.auc_classes"] for i in folds) == [4.0, 5.0, 5.0]


def test_the_table_lacks_snow_where_the_test_needs_it() -> None:
    frame = weather()
    years = pd.to_datetime(frame["DAY"]).dt.year
    snowy = set(years[frame["SKY"] == "snow"])
    assert snowy == set(range(2014, SNOW_UNTIL + 1)), "snow in every training season before 2019, none after"
    assert set(frame.loc[years >= 2019, "SKY"]) == set(CLASSES) - {"snow"}


@pytest.mark.slow
def test_a_class_absent_from_a_fold_and_the_holdout_gets_finite_auc_and_a_warned_baseline_win(
    setting: tuple[Profile, Spec], caplog: pytest.LogCaptureFixture
) -> None:
    profile, spec = setting
    board = {s.name: s for s in tune.main(profile, spec).leaderboard}
    assert all(finite(s.cv_auc) for s in board.values()), board
    assert board["baseline:heuristic"].cv_log_loss < min(board[f].cv_log_loss for f in spec.tuning.families)

    parents, children = mlflow_tree(spec.name)
    trials = [run for runs in children.values() for run in runs]
    assert len(parents) == 2 and len(trials) == 6
    for run in trials:
        assert run.info.status == "FINISHED", run.data.tags.get("podium.error")
        assert_folds_lack_snow_once(run.data.metrics)
    experiment = MlflowClient().get_experiment_by_name(spec.name).experiment_id
    found = MlflowClient().search_runs([experiment], "tags.`podium.role` = 'baseline'")
    assert {r.data.tags["podium.baseline"] for r in found} == {"prior", "heuristic"}
    for run in found:
        assert_folds_lack_snow_once(run.data.metrics)

    with caplog.at_level(logging.WARNING, logger="pipelines.stages.train"):
        trained = train.main(profile, spec)
    warned = [
        r.getMessage()
        for r in caplog.records
        if r.name == "pipelines.stages.train" and r.levelname == "WARNING"
    ]
    assert len(warned) == 1 and warned[0].startswith(
        "baseline heuristic beat every family's best trial in CV"
    )
    assert all(f in warned[0] for f in spec.tuning.families)

    champion = trained.champion
    assert finite(champion.holdout["auc"]) and champion.holdout["auc_classes"] == 4.0
    assert "recall_snow" not in champion.holdout and "recall_fog" in champion.holdout
    assert all(finite(m["auc"]) for m in trained.baselines.values())
    version = MlflowClient().get_model_version(spec.model_name, champion.version)
    auc_tags = {k: v for k, v in version.tags.items() if k.endswith("holdout_auc")}
    assert set(auc_tags) == {
        "podium.holdout_auc",
        "podium.baseline.prior.holdout_auc",
        "podium.baseline.heuristic.holdout_auc",
    }
    assert all(finite(v) for v in auc_tags.values()), auc_tags
    assert version.tags["podium.cv_warning"] == warned[0]
    metrics = MlflowClient().get_run(champion.run_id).data.metrics
    assert finite(metrics["holdout_auc"]) and metrics["holdout_auc_classes"] == 4.0
    card = version.description
    assert "nan" not in card.lower() and "undefined" not in card
    assert "cover the 4 of 5 classes present in the holdout (snow never occurs there)" in card
    assert f"**Warning.** {warned[0]}." in card

    (decision,) = promote.main(profile, spec)
    assert decision.promoted and finite(decision.candidate_value), decision.reason
    score.main(profile, spec)
    evaluate.main(profile, spec)
    with connect(profile, read_only=True) as warehouse:
        monitoring = warehouse.query(f"SELECT * FROM {spec.monitoring.table} WHERE PERIOD <> 'all'")
    by_metric = monitoring.pivot(index="PERIOD", columns="METRIC", values="VALUE")
    assert list(by_metric.index) == ["2020", "2021"]
    assert by_metric["auc"].between(0.5, 1.0).all() and (by_metric["auc_classes"] == 4.0).all()


@pytest.mark.slow
def test_the_gate_names_an_auc_undefined_on_a_one_class_holdout(setting: tuple[Profile, Spec]) -> None:
    profile, spec = setting
    tune.main(profile, spec, family="decision_tree")
    first = train.main(profile, spec, family="decision_tree").champion
    promote.main(profile, spec)  # v1 holds champion, judged on a holdout with four classes
    table = weather()
    table.loc[pd.to_datetime(table["DAY"]) >= pd.Timestamp(spec.holdout_start), "SKY"] = "sun"
    write_table(profile, table)  # the same training window; a holdout of one class

    second = train.main(profile, spec, family="decision_tree").champion
    assert math.isnan(second.holdout["auc"]) and second.holdout["auc_classes"] == 0.0
    assert finite(second.holdout["log_loss"])
    version = MlflowClient().get_model_version(spec.model_name, second.version)
    assert version.tags["podium.holdout_auc"] == "nan"
    assert "Holdout AUC is undefined: fewer than two classes occur in the holdout." in version.description
    assert "| holdout auc | undefined | undefined | undefined |" in version.description

    undefined = (
        "auc is undefined on the holdout for the challenger and the {} (fewer than two classes present)"
    )
    checked = spec.model_copy(
        update={"promotion": spec.promotion.model_copy(update={"checks": ["beats_baseline"]})}
    )
    (refused,) = promote.main(profile, checked, dry_run=True)
    assert refused.decision == "dry-run: would be refused"
    assert refused.reason == (
        f"failed checks: beats_baseline ({undefined.format('baseline heuristic')}: cannot compare)"
    )
    unchecked = spec.model_copy(update={"promotion": spec.promotion.model_copy(update={"checks": []})})
    (compared,) = promote.main(profile, unchecked, dry_run=True)  # v1 is re-judged on the new holdout
    assert compared.decision == "dry-run: would be refused"
    assert compared.reason == f"{undefined.format(f'holder v{first.version}')}: cannot compare"
    assert math.isnan(compared.candidate_value) and math.isnan(compared.incumbent_value)
