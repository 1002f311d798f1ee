"""Shadow scoring and the live gate: the challenger scored beside the champion, compared, then judged."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient
from sklearn.metrics import log_loss

from pipelines import dataset, status
from pipelines.config import LiveEvidence, Profile, Spec
from pipelines.errors import PodiumError
from pipelines.registry import CHALLENGER, CHAMPION
from pipelines.stages import evaluate, promote, score, train
from pipelines.warehouse import connect
from tests.helpers import Snapshot, restore


@pytest.fixture
def pair(
    two_versions: Snapshot, tuned: tuple[Profile, Spec], tmp_path: Path, mlflow_store: str
) -> tuple[Profile, Spec, str, str]:
    """(profile, spec, better, worse): the worse of two versions on the holdout is champion, the better
    challenger."""
    _, spec = tuned
    profile = restore(two_versions, tuned[0], tmp_path, mlflow_store)  # `train --top-k 2`
    trained = sorted(two_versions.value.trained, key=lambda t: t.holdout["log_loss"])
    better, worse = trained[0].version, trained[1].version
    promote.main(profile, spec, version=worse, force=True)
    MlflowClient().set_registered_model_alias(spec.model_name, CHALLENGER, better)
    return profile, spec, better, worse


def table(profile: Profile, name: str) -> pd.DataFrame:
    with connect(profile, read_only=True) as warehouse:
        return warehouse.query(f"SELECT * FROM {name}")


def window(profile: Profile, spec: Spec) -> pd.DataFrame:
    """The scoring window's rows of the feature table: keys, time and actual class."""
    with connect(profile, read_only=True) as warehouse:
        return warehouse.query(
            f"SELECT {', '.join(spec.id_columns)}, {spec.target} FROM {spec.table} WHERE {spec.time} >= ?",
            [spec.scoring.start],
        )


def test_shadow_scores_both_versions_on_the_same_rows_in_one_batch_and_evaluate_pairs_them(
    pair: tuple[Profile, Spec, str, str],
) -> None:
    profile, spec, better, worse = pair
    score.main(profile, spec)  # the champion alone, as `make demo` leaves it
    result = score.main(profile, spec, shadow=True)
    rows, expected = table(profile, spec.scoring_table), len(window(profile, spec))
    batch = rows[rows.BATCH_ID == result.batch_id]
    assert result.shadow is not None and result.shadow.version == better
    assert batch.groupby("MODEL_VERSION").size().to_dict() == {better: expected, worse: expected}
    assert batch.groupby("MODEL_VERSION").MODEL_ALIAS.unique().map(list).to_dict() == {
        better: [CHALLENGER],
        worse: [CHAMPION],
    }
    keys = [
        sorted(map(tuple, batch[batch.MODEL_VERSION == v][spec.keys].to_numpy())) for v in (better, worse)
    ]
    assert keys[0] == keys[1], "both versions scored the same rows"
    assert len(rows) == 2 * expected and not rows.duplicated([*spec.keys, "MODEL_VERSION"]).any()
    shown = status.main(profile, spec).latest_batch
    assert shown is not None and shown["batch_id"] == result.batch_id and shown["rows"] == 2 * expected
    assert shown["versions"] == [
        {"version": better, "alias": CHALLENGER, "rows": expected},
        {"version": worse, "alias": CHAMPION, "rows": expected},
    ], "status shows the shadow batch whole, each version with its rows"

    again = score.main(profile, spec, shadow=True)
    assert (again.batch_id, again.rows_written) == ("", 0)
    assert len(table(profile, spec.scoring_table)) == 2 * expected, "a rerun adds none"

    evaluated = evaluate.main(profile, spec)
    paired = evaluated.rows[evaluated.rows.METRIC.str.startswith(f"shadow.vs_v{worse}.")]
    assert set(paired.MODEL_VERSION) == {better}
    wide = paired[paired.PERIOD != "all"].pivot_table(index="PERIOD", columns="METRIC", values="VALUE")
    wide.columns = [c.removeprefix(f"shadow.vs_v{worse}.") for c in wide.columns]
    assert list(wide.index) == ["2021", "2022"]
    assert (wide.log_loss_gain_low <= wide.log_loss_gain).all()
    assert (wide.log_loss_gain <= wide.log_loss_gain_high).all()
    assert (wide.log_loss_gain_low < wide.log_loss_gain_high).all(), "an interval, not a point"
    pd.testing.assert_series_equal(
        wide.log_loss_gain, gains_in_memory(profile, spec, better, worse), check_names=False, rtol=1e-9
    )
    assert wide.won.tolist() == (wide.log_loss_gain > 0).astype(float).tolist()
    share = paired[(paired.PERIOD == "all") & paired.METRIC.str.endswith("won_share")].VALUE
    assert share.tolist() == [wide.won.mean()]
    stored = table(profile, spec.monitoring.table)
    assert stored.METRIC.str.startswith("shadow.").sum() == len(paired), "written to the monitoring table"


def gains_in_memory(profile: Profile, spec: Spec, better: str, worse: str) -> pd.Series:
    """Per season, the champion's log loss minus the challenger's on the same rows, by sklearn."""
    scored = table(profile, spec.scoring_table).merge(window(profile, spec), on=spec.id_columns)
    probabilities = dataset.probability_columns(spec)
    out = {}
    for season, rows in scored.groupby(scored[spec.time].dt.year):
        losses = {
            v: log_loss(dataset.encode_target(g[spec.target], spec), g[probabilities], labels=[0, 1, 2])
            for v, g in ((v, rows[rows.MODEL_VERSION == v].sort_values(spec.keys)) for v in (better, worse))
        }
        out[str(season)] = losses[worse] - losses[better]
    return pd.Series(out)


def live(spec: Spec, periods: int = 2) -> Spec:
    """The spec with a live gate over `periods` shadow periods, judged on log loss alone."""
    policy = spec.promotion.model_copy(
        update={
            "min_improvement": 0.0,
            "checks": ["signature_matches"],
            "live": LiveEvidence(periods=periods, min_improvement=0.0),
        }
    )
    return spec.model_copy(update={"promotion": policy})


def against_the_challenger(profile: Profile, spec: Spec, better: str, worse: str, tmp: Path) -> Profile:
    """A copy of the warehouse whose actual classes in the window favour the champion on every row."""
    path = tmp / "lost.duckdb"
    shutil.copyfile(profile.warehouse.path, path)
    lost = profile.model_copy(update={"warehouse": profile.warehouse.model_copy(update={"path": path})})
    scored = table(lost, spec.scoring_table)
    probabilities = dataset.probability_columns(spec)
    sides = [scored[scored.MODEL_VERSION == v].set_index(spec.keys)[probabilities] for v in (worse, better)]
    logs = [np.log(np.clip(side, 1e-15, None)) for side in sides]
    ratio = logs[0] - logs[1].loc[logs[0].index]
    truth = pd.DataFrame({"CLASS": [spec.classes[k] for k in ratio.to_numpy().argmax(axis=1)]}, ratio.index)
    with connect(lost) as warehouse:
        warehouse.write(truth.reset_index(), "ML.LOST_TRUTH", mode="replace")
        match = " AND ".join(f"f.{k} = t.{k}" for k in spec.keys)
        warehouse.execute(
            f"UPDATE {spec.table} AS f SET {spec.target} = t.CLASS FROM ML.LOST_TRUTH AS t WHERE {match}"
        )
    return lost


def test_the_live_gate_refuses_a_challenger_that_lost_in_shadow_and_promotes_one_that_won(
    pair: tuple[Profile, Spec, str, str], tmp_path: Path
) -> None:
    profile, spec, better, worse = pair
    gated = live(spec)
    before = promote.main(profile, gated, version=better, dry_run=True)[0]
    assert before.decision == "dry-run: would be refused", "without evidence the challenger waits in shadow"
    assert (
        "not enough live evidence: 0 of 2 shadow periods" in before.reason
        and before.live["verdict"] == "waiting"
    )

    score.main(profile, spec, shadow=True)
    lost = against_the_challenger(profile, spec, better, worse, tmp_path)
    evaluate.main(lost, spec)
    refused = promote.main(lost, gated, version=better)[0]
    assert refused.decision == "refused" and refused.live["verdict"] == "lost"
    assert all(e["GAIN"] < 0 for e in refused.live["evidence"])
    patient = promote.main(lost, live(spec, periods=100), version=better, dry_run=True)[0]
    assert patient.decision == "dry-run: would be refused" and patient.live["verdict"] == "lost", (
        "asking for more periods than were evaluated never ignores the ones it lost"
    )
    audit = table(lost, spec.registry.audit_table).iloc[-1]
    assert audit.DECISION == "refused" and "live log_loss gain vs v" + worse in audit.REASON
    assert "2021 -" in audit.REASON and "2022 -" in audit.REASON, "the audit row cites the live figures"
    assert str(MlflowClient().get_model_version_by_alias(spec.model_name, CHAMPION).version) == worse

    evaluate.main(profile, spec)
    promoted = promote.main(profile, gated, version=better)[0]
    assert promoted.decision == "promoted" and promoted.live["verdict"] == "won"
    audit = table(profile, spec.registry.audit_table).iloc[-1]
    assert audit.DECISION == "promoted" and "2021 +" in audit.REASON and "2022 +" in audit.REASON
    assert str(MlflowClient().get_model_version_by_alias(spec.model_name, CHAMPION).version) == better


def test_shadow_user_errors(trained_profile: Profile, tuned: tuple[Profile, Spec]) -> None:
    _, spec = tuned
    train.main(trained_profile, spec)
    promote.main(trained_profile, spec, version="1", force=True)
    MlflowClient().delete_registered_model_alias(spec.model_name, CHALLENGER)
    with pytest.raises(PodiumError, match="has no 'challenger' alias: train one"):
        score.main(trained_profile, spec, shadow=True)
    with pytest.raises(PodiumError, match="shadow scoring runs with --engine local"):
        score.main(trained_profile, spec, engine="warehouse", shadow=True)
