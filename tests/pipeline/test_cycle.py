"""`podium cycle` rehearsed on the bundled data: three seasons in turn, each as of its first day.

The champion is trained on the seasons before 2018 and held out on 2018, scoring starts in 2019, and
the policy retrains when the champion is three seasons old (its other triggers are set not to fire):

- as of 2020-01-01: it scores 2019 and 2020, judges 2019, and keeps the champion (age 2);
- as of 2021-01-01: age 3 fires: a challenger is tuned and trained (held out on 2020), shadows the
  champion on 2021's rows and goes through the gate;
- as of 2022-01-01: the 2021 pairs are judged, and the policy decides again.
"""

from __future__ import annotations

import json
import logging
from datetime import date
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import yaml
from mlflow.tracking import MlflowClient

from pipelines import attempts, audit, pipeline, registry
from pipelines.alerts import AlertChannel
from pipelines.config import DriftTrigger, Profile, Spec
from pipelines.errors import PodiumError
from pipelines.registry import CHALLENGER, CHAMPION, Target
from pipelines.stages import cycle
from pipelines.warehouse import connect
from tests.cycles import SEASONS, rehearsal_spec
from tests.helpers import Snapshot, restore
from tests.pipeline.test_mlproject import mlflow_run
from tests.servers import Receiver, alert_receiver

pytestmark = pytest.mark.slow

SECRET = "planted-cycle-secret-5d2"  # in the alert channel's URL: never printed or recorded


@pytest.fixture
def rehearsal(
    crowned_2018: Snapshot, tuned: tuple[Profile, Spec], tmp_path: Path, mlflow_store: str
) -> tuple[Profile, Spec]:
    """This test's copy of the crowned warehouse and store; the cycles' studies under tmp_path."""
    profile = restore(crowned_2018, tuned[0], tmp_path, mlflow_store)
    profile = profile.model_copy(update={"optuna_storage": str(tmp_path / "optuna" / "studies.journal")})
    return profile, rehearsal_spec(tuned[1])


def state(profile: Profile, spec: Spec) -> dict[str, Any]:
    """What a cycle changes: table rows, registered versions and holders, MLflow cycle runs."""
    client = MlflowClient()
    with connect(profile, read_only=True) as warehouse:
        count = {
            t: int(warehouse.query(f"SELECT COUNT(*) AS N FROM {t}").N[0]) if warehouse.exists(t) else 0
            for t in (spec.cycle_section.table, spec.scoring_table, spec.registry.audit_table)
        }
    experiment = client.get_experiment_by_name(spec.name)
    runs = client.search_runs([experiment.experiment_id], "tags.`podium.stage` = 'cycle'")
    return {
        "rows": count,
        "versions": len(client.search_model_versions(f"name = '{spec.model_name}'")),
        "champion": _holder(spec, CHAMPION),
        "challenger": _holder(spec, CHALLENGER),
        "cycle_runs": len(runs),
    }


def _holder(spec: Spec, alias: str) -> str | None:
    found = registry.holder(registry.client(), spec.model_name, Target("alias", alias))
    return str(found.version) if found else None


def table(profile: Profile, name: str) -> pd.DataFrame:
    with connect(profile, read_only=True) as warehouse:
        return warehouse.query(f"SELECT * FROM {name}")


def test_three_seasons_keep_retrain_and_refuse_and_every_record_and_alert_agrees(
    rehearsal: tuple[Profile, Spec],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    capfd: pytest.CaptureFixture[str],
) -> None:
    """2020 keeps the champion; 2021 retrains (age 3) and promotes; 2022, under a policy whose drift
    trigger fires and a gate that asks the impossible, retrains and refuses; 2023 fails. A loopback
    receiver, behind a channel whose URL carries a planted secret, gets one alert for each."""
    profile, spec = rehearsal
    caplog.set_level(logging.DEBUG)
    with alert_receiver() as receiver:
        monkeypatch.setenv("PODIUM_ALERT_TEST", receiver.url("hook", f"podium:{SECRET}@"))
        told = profile.model_copy(update={"alerts": [AlertChannel(env="PODIUM_ALERT_TEST")]})
        results = [cycle.main(told, spec, pipeline.LIFECYCLE, as_of=SEASONS[0])]
        _assert_first(profile, spec)
        results.append(cycle.main(told, spec, pipeline.LIFECYCLE, as_of=SEASONS[1]))
        results.append(cycle.main(told, drifting(spec), pipeline.LIFECYCLE, as_of=SEASONS[2]))
        with pytest.raises(PodiumError):  # no feature table: the cycle fails
            cycle.main(
                told,
                spec.model_copy(update={"table": "ML.NO_SUCH_TABLE"}),
                pipeline.LIFECYCLE,
                as_of=date(2023, 1, 1),
            )
        before = state(profile, spec)
        for day in SEASONS:  # a finished period adds nothing: no row, version, score, run or alert
            again = cycle.main(told, spec, pipeline.LIFECYCLE, as_of=day)
            assert again.done and state(profile, spec) == before

    rows = table(profile, spec.cycle_section.table).set_index("PERIOD").sort_index()
    assert list(rows.index) == ["2020", "2021", "2022"] and [r.retrain for r in results] == list(rows.RETRAIN)
    second, third = rows.loc["2021"], rows.loc["2022"]
    assert second.RETRAIN and second.AGE_FIRED and second.AGE_PERIODS == 3
    assert second.ACTIONS == third.ACTIONS == "score,evaluate,tune,train,shadow,gate"
    assert (second.CHALLENGER_VERSION, second.DECISION, second.CHAMPION_AFTER) == ("2", "promoted", "2")
    assert third.DRIFT_FIRED and not third.AGE_FIRED and third.CHAMPION_BEFORE == "2"
    assert (third.CHALLENGER_VERSION, third.DECISION, third.CHAMPION_AFTER) == ("3", "refused", "2")
    _assert_audit_agrees(profile, spec, rows)
    _assert_scores_agree(profile, spec, rows)
    runs = {
        r.data.tags[attempts.PERIOD_TAG]: r
        for r in _all_runs(spec)
        if r.data.tags.get("podium.stage") == "cycle"
    }
    assert {p: r.info.status for p, r in runs.items()} == {
        "2020": "FINISHED",
        "2021": "FINISHED",
        "2022": "FINISHED",
        "2023": "FAILED",
    }
    assert {runs[p].info.run_id for p in rows.index} == set(rows.RUN_ID)
    _assert_alerts(receiver, rows, caplog.text + "".join(capfd.readouterr()), spec)


def drifting(spec: Spec) -> Spec:
    """The rehearsal's spec whose drift trigger fires at 5 features, and whose gate asks the impossible."""
    retrain = spec.cycle_section.retrain
    when = retrain.when_any.model_copy(update={"drift": DriftTrigger(features=5, psi=0.2)})
    config = spec.cycle_section.model_copy(update={"retrain": retrain.model_copy(update={"when_any": when})})
    impossible = spec.promotion.model_copy(update={"min_improvement": 1.0})
    return spec.model_copy(update={"cycle": config, "promotion": impossible})


def _assert_first(profile: Profile, spec: Spec) -> None:
    """2020 scores and keeps the champion, with every trigger's value recorded and measured right."""
    first = table(profile, spec.cycle_section.table).set_index("PERIOD").loc["2020"]
    assert not first.RETRAIN and first.ACTIONS == "score,evaluate" and pd.isna(first.DECISION)
    assert first.CHAMPION_BEFORE == first.CHAMPION_AFTER == "1"
    for column in ("DRIFT_FEATURES", "LIVE_GAP", "AGE_PERIODS", "NEW_ROWS"):
        assert pd.notna(first[column]), f"the first cycle recorded no {column}"
    assert [first.DRIFT_FIRED, first.LIVE_FIRED, first.AGE_FIRED, first.NEW_ROWS_FIRED] == [False] * 4
    _assert_measured(profile, spec, first, trained_before=date(2018, 1, 1), start=date(2020, 1, 1))


def _assert_alerts(receiver: Receiver, rows: pd.DataFrame, printed: str, spec: Spec) -> None:
    """One alert per promotion, drift, refusal and failure, in order; the planted secret nowhere."""
    assert [(p.payload["type"], p.payload["title"]) for p in receiver.posts] == [
        ("success", "f1_podium 2021: v2 promoted as champion"),
        ("warning", "f1_podium 2022: drift fired the retrain policy"),
        ("warning", "f1_podium 2022: v3 refused as champion"),
        ("failure", "f1_podium 2023: the cycle failed"),
    ]
    assert receiver.posts[2].payload["message"] == rows.loc["2022"].REASON
    assert "NO_SUCH_TABLE" in receiver.posts[3].payload["message"]
    recorded = [json.dumps([r.data.params, r.data.tags]) for r in _all_runs(spec)]
    posted = [json.dumps(p.payload) for p in receiver.posts]
    assert not [where for where in [printed, *recorded, *posted, rows.to_csv()] if SECRET in where]


def _assert_measured(profile: Profile, spec: Spec, row: pd.Series, trained_before: date, start: date) -> None:
    """The recorded trigger values are the tables' and the registry's figures."""
    client = registry.client()
    champion = client.get_model_version(spec.model_name, row.CHAMPION_BEFORE)
    with connect(profile, read_only=True) as warehouse:
        labelled = warehouse.query(
            f"SELECT COUNT(*) AS N FROM {spec.table} WHERE RACE_DATE >= ? AND RACE_DATE < ?",
            [trained_before, start],
        )
        monitored = warehouse.query(
            f"SELECT PERIOD, METRIC, VALUE FROM {spec.monitoring_section.table} WHERE MODEL_VERSION = ?",
            [row.CHAMPION_BEFORE],
        )
    assert row.NEW_ROWS == labelled.N[0] and row.AGE_PERIODS == 2
    live = monitored[(monitored.METRIC == "log_loss") & (monitored.PERIOD == "2019")].VALUE.item()
    assert list(monitored.PERIOD[monitored.METRIC == "log_loss"]) == ["2019"], "only 2019 had landed"
    assert row.LIVE_GAP == pytest.approx(live - float(champion.tags["podium.holdout_log_loss"]), abs=1e-9)
    psi = monitored[monitored.METRIC.str.startswith("psi.") & (monitored.PERIOD == "all")].VALUE
    assert len(psi) > 5 and row.DRIFT_FEATURES == (psi > 0.2).sum()


def _assert_audit_agrees(profile: Profile, spec: Spec, rows: pd.DataFrame) -> None:
    """Each gated cycle's decision is the audit's for its challenger, made inside the cycle's run."""
    with connect(profile, read_only=True) as warehouse:
        audited = audit.rows(warehouse, spec)
        assert audit.drift(MlflowClient(), warehouse, spec) == []
    client = MlflowClient()
    for period, row in rows[rows.DECISION.notna()].iterrows():
        mine = audited[
            (audited.MODEL_VERSION == row.CHALLENGER_VERSION) & (audited.TARGET == "alias:champion")
        ]
        parents = {client.get_run(r).data.tags.get("mlflow.parentRunId") for r in mine.RUN_ID}
        assert row.RUN_ID in parents, f"{period}: the gate's audit row is not the cycle's"
        assert (mine.DECISION == row.DECISION).any() and (mine.REASON == row.REASON).any()
    assert _holder(spec, CHAMPION) == rows.CHAMPION_AFTER.iloc[-1]


def _assert_scores_agree(profile: Profile, spec: Spec, rows: pd.DataFrame) -> None:
    """Rows scored once per version, never by a version trained on them; 2021 in whole shadow pairs."""
    scores = table(profile, spec.scoring_table)
    assert not scores.duplicated([*spec.keys, "MODEL_VERSION"]).any()
    client = registry.client()
    for version, scored in scores.groupby("MODEL_VERSION"):
        trained_before = client.get_model_version(spec.model_name, str(version)).tags["podium.trained_before"]
        assert pd.to_datetime(scored.RACE_DATE).min() >= pd.Timestamp(trained_before), f"v{version}"
    seasons = pd.to_datetime(scores.RACE_DATE).dt.year.astype(str)
    assert sorted(seasons[scores.MODEL_VERSION == "1"].unique())[:3] == ["2019", "2020", "2021"]
    pairs = scores[seasons == "2021"].pivot_table(
        index=spec.keys, columns="MODEL_VERSION", values="BATCH_ID", aggfunc="first"
    )
    assert sorted(pairs.columns) == ["1", "2"] and pairs.notna().all().all(), "2021 is scored in whole pairs"
    assert (pairs["1"] == pairs["2"]).all(), "each 2021 pair comes from one batch"
    counts = seasons.value_counts()  # 2020's cycle saw v1's rows of 2020 only: a later champion added its own
    assert rows.PERIOD_SCORES.to_dict() == {
        "2020": ((seasons == "2020") & (scores.MODEL_VERSION == "1")).sum(),
        "2021": counts["2021"],
        "2022": counts["2022"],
    }


def test_plan_changes_nothing_and_says_what_the_cycle_does(rehearsal: tuple[Profile, Spec]) -> None:
    profile, spec = rehearsal
    cycle.main(profile, spec, pipeline.LIFECYCLE, as_of=SEASONS[0])
    before = state(profile, spec)
    planned = cycle.main(profile, spec, pipeline.LIFECYCLE, as_of=SEASONS[1], plan=True)
    assert state(profile, spec) == before
    shown = json.loads(json.dumps(planned.as_dict()))
    assert shown["period"] == "2021" and shown["retrain"] and not shown["done"]
    assert {t["name"]: t["fired"] for t in shown["triggers"]} == {
        "drift": False,
        "live": False,
        "age": True,
        "new_rows": False,
    }
    assert shown["actions"] == ["score", "evaluate", "tune", "train", "shadow", "gate"]
    done = cycle.main(profile, spec, pipeline.LIFECYCLE, as_of=SEASONS[0], plan=True).as_dict()
    assert done["done"] and done["row"]["PERIOD"] == "2020"


def test_the_mlproject_entry_point_runs_one_cycle_in_the_run_mlflow_opened(
    rehearsal: tuple[Profile, Spec], tmp_path: Path, mlflow_store: str
) -> None:
    profile, spec = rehearsal
    (tmp_path / "spec.yaml").write_text(
        yaml.safe_dump(spec.model_dump(mode="json", by_alias=True, exclude_none=True))
    )
    local = tmp_path / "profile.yaml"
    local.write_text(
        yaml.safe_dump({"warehouse": {"backend": "duckdb", "path": str(profile.warehouse.path)}})
    )
    params = {"profile": str(local), "spec": str(tmp_path / "spec.yaml"), "as_of": str(SEASONS[0])}
    mlflow_run("cycle", params, mlflow_store, tmp_path)

    (row,) = table(profile, spec.cycle_section.table).itertuples()
    run = MlflowClient().get_run(row.RUN_ID)
    assert (row.PERIOD, row.ACTIONS, run.info.status) == ("2020", "score,evaluate", "FINISHED")
    assert run.data.tags["podium.stage"] == "cycle" and run.data.tags["mlflow.project.entryPoint"] == "cycle"
    assert run.data.params["as_of"] == "2020-01-01"


def _all_runs(spec: Spec) -> list[Any]:
    client = MlflowClient()
    return client.search_runs([client.get_experiment_by_name(spec.name).experiment_id], max_results=5000)
