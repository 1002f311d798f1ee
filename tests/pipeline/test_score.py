"""Score and evaluate end to end: exactly-once rows per (keys, version), crash safety, URIs, errors."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from datetime import date
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient
from sklearn.metrics import accuracy_score, log_loss, roc_auc_score

from pipelines import dataset, metrics
from pipelines.config import Profile, Spec
from pipelines.errors import PodiumError
from pipelines.processes import PROCESS_TAG, process_id
from pipelines.stages import evaluate, promote, score
from pipelines.warehouse import connect
from tests.helpers import REPO, Snapshot, bad_spec, podium, profile_file, restore


@pytest.fixture
def champion(
    two_versions: Snapshot, tuned: tuple[Profile, Spec], tmp_path: Path, mlflow_store: str
) -> tuple[Profile, Spec]:
    """Two registered versions: v1 champion and challenger, v2 forced into Production."""
    _, spec = tuned
    profile = restore(two_versions, tuned[0], tmp_path, mlflow_store)  # `train --top-k 2`
    promote.main(profile, spec, version="1", force=True)
    promote.main(profile, spec, version="2", alias=None, stage="Production", force=True)
    return profile, spec


def window_rows(profile: Profile, spec: Spec) -> int:
    with connect(profile, read_only=True) as warehouse:
        sql = f"SELECT COUNT(*) AS N FROM {spec.table} WHERE {spec.time} >= ?"
        return int(warehouse.query(sql, [spec.scoring.start]).N[0])


def scores(profile: Profile, spec: Spec) -> pd.DataFrame:
    with connect(profile, read_only=True) as warehouse:
        return warehouse.query(f"SELECT * FROM {spec.scoring_table}")


def assert_one_row_per_key_and_version(frame: pd.DataFrame, spec: Spec) -> None:
    assert not frame.duplicated([*spec.keys, "MODEL_VERSION"]).any()
    probabilities = frame[[dataset.probability_column(c) for c in spec.classes]]
    assert probabilities.notna().all().all() and np.allclose(probabilities.sum(axis=1), 1.0)


def test_score_writes_each_window_row_once_and_reruns_add_nothing(champion: tuple[Profile, Spec]) -> None:
    profile, spec = champion
    first = score.main(profile, spec)
    assert first.model.version == "1" and first.model.alias == "champion"
    assert first.rows_written == window_rows(profile, spec) > 500
    left = _run_of_a_killed_process(spec)  # as if a kill landed between the last write and the close
    again = score.main(profile, spec)
    assert (again.rows_written, again.batch_id) == (0, "")  # nothing to score: no batch, no run
    assert MlflowClient().get_run(left).info.status == "FAILED", "yet the killed run is ended"
    assert score.main(profile, spec, full=True, chunk_rows=100).rows_written == first.rows_written
    written = scores(profile, spec)
    assert len(written) == first.rows_written
    assert_one_row_per_key_and_version(written, spec)
    assert list(written.columns) == list(dataset.scoring_columns(spec, {}))
    run = MlflowClient().search_runs(
        [MlflowClient().get_experiment_by_name(spec.name).experiment_id],
        "tags.`podium.stage` = 'score' and attributes.status = 'FINISHED'",
    )
    assert [r.data.metrics["rows_written"] for r in run] == [first.rows_written, first.rows_written]
    assert {r.data.params["model_version"] for r in run} == {"1"}


def _run_of_a_killed_process(spec: Spec) -> str:
    """A RUNNING score run whose process (a real one, started here) was killed; its id."""
    killed = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    client = MlflowClient()
    experiment = client.get_experiment_by_name(spec.name).experiment_id
    tags = {"podium.stage": "score", PROCESS_TAG: process_id(killed.pid)}
    run = client.create_run(experiment, tags=tags, run_name="score").info.run_id
    killed.kill()
    killed.wait()
    return run


def test_each_model_uri_kind_writes_rows_tagged_with_its_version(champion: tuple[Profile, Spec]) -> None:
    profile, spec = champion
    score.main(profile, spec, "models:/f1_podium/2")
    score.main(profile, spec, "models:/f1_podium@challenger")
    score.main(profile, spec, "models:/f1_podium/Production", full=True)
    tagged = scores(profile, spec).groupby(["MODEL_VERSION", "MODEL_ALIAS"]).size().to_dict()
    assert tagged == {
        ("1", "challenger"): window_rows(profile, spec),
        ("2", "Production"): window_rows(profile, spec),
    }


def test_an_empty_window_creates_the_table_with_zero_rows(champion: tuple[Profile, Spec]) -> None:
    profile, spec = champion
    empty = spec.model_copy(update={"scoring": spec.scoring.model_copy(update={"start": date(2031, 1, 1)})})
    result = score.main(profile, empty)
    assert (result.rows_read, result.rows_written, result.batch_id) == (0, 0, "")
    with connect(profile, read_only=True) as warehouse:
        assert list(warehouse.columns(spec.scoring_table)) == list(dataset.scoring_columns(spec, {}))
    assert scores(profile, spec).empty


@pytest.mark.slow
def test_kill_9_mid_write_keeps_earlier_chunks_and_a_rerun_completes(
    champion: tuple[Profile, Spec], tmp_path: Path
) -> None:
    profile, spec = champion
    env = os.environ | {"PODIUM_LOG_LEVEL": "DEBUG"}
    command = [
        sys.executable,
        "-m",
        "pipelines.cli",
        "score",
        "--chunk-rows",
        "10",
        "--profile",
        profile_file(tmp_path, profile),
    ]
    worker = subprocess.Popen(command, cwd=REPO, env=env, stderr=subprocess.PIPE, text=True)
    committed = 0
    for line in worker.stderr:
        committed += "rows committed" in line
        if committed == 5:
            os.kill(worker.pid, signal.SIGKILL)
            break
    worker.wait(timeout=60)
    assert worker.returncode == -signal.SIGKILL

    survived = scores(profile, spec)
    total = window_rows(profile, spec)
    assert 50 <= len(survived) < total and len(survived) % 10 == 0, "whole chunks only"
    assert_one_row_per_key_and_version(survived, spec)

    rerun = score.main(profile, spec)
    assert rerun.rows_written == total - len(survived)
    complete = scores(profile, spec)
    assert len(complete) == total
    assert_one_row_per_key_and_version(complete, spec)
    kept = complete.merge(survived, on=[*spec.keys, "MODEL_VERSION"], suffixes=("", "_before"))
    assert (kept["BATCH_ID"] == kept["BATCH_ID_before"]).all(), "earlier scores are untouched"


def test_evaluate_reports_each_version_and_period_and_reruns_replace(champion: tuple[Profile, Spec]) -> None:
    profile, spec = champion
    score.main(profile, spec)
    score.main(profile, spec, "models:/f1_podium/Production")
    first = evaluate.main(profile, spec)
    timed = first.rows[first.rows.PERIOD != "all"].pivot_table(
        index=["MODEL_VERSION", "PERIOD"], columns="METRIC", values="VALUE"
    )
    assert list(timed.index) == [("1", "2021"), ("1", "2022"), ("2", "2021"), ("2", "2022")]
    assert timed["rows"].groupby("MODEL_VERSION").sum().tolist() == [window_rows(profile, spec)] * 2
    assert timed["log_loss"].between(0.3, 1.0).all() and timed["auc"].between(0.6, 1.0).all()
    assert timed["hit_rate_top3_podium"].between(0.3, 1.0).all()
    assert set(first.rows.METRIC[first.rows.PERIOD == "all"]) >= {"psi.GRID", "psi.CONSTRUCTOR_REF"}
    assert "CONSTRUCTOR_REF" in first.drifting_features, "2021-22 has constructors training never saw"
    assert "GRID" not in first.drifting_features, "grid slots above 20 emptied; the rest barely moved"
    named = {d.feature: d.moved() for d in first.drifting}
    assert "aston_martin 0.0% -> " in named["CONSTRUCTOR_REF"], "each drifting feature names its bins"

    evaluate.main(profile, spec)
    with connect(profile, read_only=True) as warehouse:
        stored = warehouse.query(f"SELECT * FROM {spec.monitoring.table}")
    assert len(stored) == len(first.rows)
    assert not stored.duplicated(evaluate.KEYS).any()


def test_evaluate_in_the_warehouse_matches_the_figures_computed_in_memory(
    champion: tuple[Profile, Spec],
) -> None:
    profile, spec = champion
    score.main(profile, spec)
    score.main(profile, spec, "models:/f1_podium/Production")
    written = evaluate.main(profile, spec).rows.set_index(["MODEL_VERSION", "PERIOD", "METRIC"]).VALUE
    joined, reference = _scored_with_actuals(profile, spec)
    probabilities = dataset.probability_columns(spec)
    for (version, year), group in joined.groupby(
        ["MODEL_VERSION", pd.to_datetime(joined[spec.time]).dt.year]
    ):
        y, proba = dataset.encode_target(group[spec.target], spec), group[probabilities].to_numpy()
        expected = {
            "rows": len(group),
            "accuracy": accuracy_score(y, proba.argmax(axis=1)),
            "log_loss": log_loss(y, proba, labels=range(len(spec.classes))),
            "auc": np.mean([roc_auc_score(y == k, proba[:, k]) for k in np.unique(y)]),
            "auc_classes": len(np.unique(y)),
            "hit_rate_top3_podium": _top3_podium(group, spec),
        }
        for metric, value in expected.items():
            assert written[(version, str(year), metric)] == pytest.approx(value, rel=1e-9), metric
    for version, group in joined.groupby("MODEL_VERSION"):
        for feature in _features(profile, spec):
            value = metrics.psi(reference[feature], group[feature])
            assert written[(version, "all", f"psi.{feature}")] == pytest.approx(value, rel=1e-9), feature


def _scored_with_actuals(profile: Profile, spec: Spec) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The scores joined with the feature rows whose actual class is known, and the training window."""
    match = " AND ".join(f"s.{k} = f.{k}" for k in spec.keys)
    with connect(profile, read_only=True) as warehouse:
        scores = ", ".join(f"s.{c}" for c in dataset.probability_columns(spec))
        joined = warehouse.query(
            f"SELECT s.MODEL_VERSION, s.PREDICTED_CLASS, {scores}, f.* FROM {spec.scoring_table} AS s "
            f"JOIN {spec.table} AS f ON {match} WHERE f.{spec.target} IS NOT NULL"
        )
        return joined, dataset.read_training_rows(warehouse, spec)


def _features(profile: Profile, spec: Spec) -> list[str]:
    with connect(profile, read_only=True) as warehouse:
        return dataset.read_schema(warehouse, spec).columns


def _top3_podium(group: pd.DataFrame, spec: Spec) -> float:
    """Per race, the share of the three highest-P_PODIUM drivers (ties by key) who finished on the podium."""
    ranked = group.sort_values(["P_PODIUM", *spec.keys], ascending=[False, *[True] * len(spec.keys)])
    return float((ranked.groupby("RACE_ID").head(3)[spec.target] == "podium").mean())


def test_psi_is_zero_for_the_same_distribution_and_large_for_a_shift() -> None:
    rng = np.random.default_rng(0)
    base = pd.Series(rng.normal(size=5000))
    assert metrics.psi(base, pd.Series(rng.normal(size=5000))) < 0.02
    assert metrics.psi(base, pd.Series(rng.normal(1.0, size=5000))) > 0.2
    letters = pd.Series(list("aabbc" * 200))
    assert metrics.psi(letters, letters) == pytest.approx(0.0)
    assert metrics.psi(letters, pd.Series(list("ccccd" * 200))) > 1.0


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("unresolvable model uri", r"model URI models:/f1_podium@nobody does not resolve"),
        ("missing feature column", r"lacks columns \['GRID'\] that f1_podium v1's signature needs"),
        ("chunk size zero", r"--chunk-rows must be a number from 1 to 1e\+07, got 0"),
        ("incompatible scoring table", r"exists with an incompatible schema .* will not drop it"),
    ],
)
def test_scoring_user_errors(
    case: str, message: str, champion: tuple[Profile, Spec], tmp_path: Path, capsys, monkeypatch
) -> None:
    profile, spec = champion
    args = ["score", "--profile", profile_file(tmp_path, profile)]
    if case == "unresolvable model uri":
        args += ["--model", "models:/f1_podium@nobody"]
    elif case == "chunk size zero":
        args += ["--chunk-rows", "0"]
    else:
        with connect(profile) as warehouse:
            if case == "missing feature column":
                warehouse.execute(f"ALTER TABLE {spec.table} DROP COLUMN GRID")
            else:
                warehouse.execute("CREATE TABLE ML.F1_SCORES (RACE_ID INTEGER, SCORE DOUBLE)")
                warehouse.execute("INSERT INTO ML.F1_SCORES VALUES (1, 0.5)")
    code, _, err = podium(args, capsys, monkeypatch)
    assert code == 1 and "Traceback" not in err
    assert re.search(message, " ".join(err.split())), err
    if case == "incompatible scoring table":
        assert len(scores(profile, spec)) == 1, "the user's table is left as it was"


def test_scoring_needs_a_scoring_section(tmp_path: Path, profile: Profile, capsys, monkeypatch) -> None:
    spec = bad_spec(tmp_path, "scoring:", "unscored:")
    code, _, err = podium(
        ["score", "--spec", spec, "--profile", profile_file(tmp_path, profile)], capsys, monkeypatch
    )
    assert code == 1 and "unknown key 'unscored'" in err


def test_evaluate_before_score_names_the_stage_to_run(profile: Profile, spec: Spec) -> None:
    with pytest.raises(
        PodiumError, match=r"scoring table ML.F1_SCORES does not exist yet: run `podium score` first"
    ):
        evaluate.main(profile, spec)
