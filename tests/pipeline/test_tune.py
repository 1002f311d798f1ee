"""Tune end to end on the bundled F1 features: studies, the MLflow tree, resumption, the holdout."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient
from sklearn.base import BaseEstimator, ClassifierMixin

from pipelines.config import Profile, Spec
from pipelines.crossval import FoldRunner, fold_order
from pipelines.errors import PodiumError
from pipelines.models import make_estimator
from pipelines.stages import tune
from pipelines.studies import open_storage
from pipelines.warehouse import connect
from pipelines.warehouse.duckdb import DuckDBWarehouse
from tests.helpers import (
    FAST_SPACE,
    REPO,
    assert_children_mirror_trials,
    connect_with,
    mlflow_tree,
    podium,
    profile_file,
    studies,
    tune_command,
    worker_env,
)


def fast_spec(spec: Spec, tmp_path: Path, families: list[str]) -> Spec:
    """The F1 spec searching cheap spaces, so a test runs in seconds."""
    space = tmp_path / "space.yaml"
    space.write_text(FAST_SPACE)
    tuning = spec.tuning.model_copy(
        update={"search_space": space, "families": families, "pruner_startup_trials": 1}
    )
    return spec.model_copy(update={"tuning": tuning})


def test_one_parent_per_family_and_children_mirror_trial_states(
    built_profile: Profile, spec: Spec, tmp_path: Path
) -> None:
    storage = str(tmp_path / "studies.journal")
    tune.main(built_profile, fast_spec(spec, tmp_path, ["decision_tree", "knn"]), n_trials=6, storage=storage)
    parents, children = mlflow_tree()
    assert sorted(p.data.tags["podium.family"] for p in parents) == ["decision_tree", "knn"]
    assert_children_mirror_trials(storage)
    states = {t.state.name for s in studies(storage).values() for t in s.trials}
    assert {"COMPLETE", "FAIL"} <= states
    knn = next(p for p in parents if p.data.tags["podium.family"] == "knn")
    failed = children[knn.info.run_id][0]
    assert "n_neighbors" in failed.data.tags["podium.error"] and failed.data.params["n_neighbors"]
    tree = next(p for p in parents if p.data.tags["podium.family"] == "decision_tree")
    assert tree.data.metrics["cv_log_loss"] == pytest.approx(
        studies(storage)["f1_podium-decision_tree"].best_value
    )
    assert {"best.max_depth", "best.min_samples_leaf"} <= set(tree.data.tags)
    artifacts = {a.path for a in MlflowClient().list_artifacts(tree.info.run_id, "plots")}
    assert "plots/optimization_history.png" in artifacts


def test_every_run_records_spec_split_digest_git_and_seed(
    built_profile: Profile, spec: Spec, tmp_path: Path
) -> None:
    tune.main(
        built_profile,
        fast_spec(spec, tmp_path, ["decision_tree"]),
        n_trials=2,
        storage=str(tmp_path / "s.journal"),
    )
    parents, children = mlflow_tree()
    for run in [*parents, *children[parents[0].info.run_id]]:
        tags = run.data.tags
        assert tags["podium.spec"] == "f1_podium" and tags["podium.seed"] == "42"
        assert tags["podium.cv"].startswith("2010-2016>2017") and len(tags["podium.data_digest"]) >= 8
        assert "podium.git_sha" in tags
    top = MlflowClient().get_run(parents[0].data.tags["mlflow.parentRunId"])
    assert {a.path for a in MlflowClient().list_artifacts(top.info.run_id)} >= {
        "spec.json",
        "splits.json",
        "leaderboard.csv",
        "plots",
    }
    assert [a.path for a in MlflowClient().list_artifacts(top.info.run_id, "plots")] == [
        "plots/leaderboard.png"
    ]
    assert top.inputs.dataset_inputs[0].dataset.digest == parents[0].data.tags["podium.data_digest"]


def test_rerun_resumes_the_study_without_losing_or_duplicating_trials(
    built_profile: Profile, spec: Spec, tmp_path: Path
) -> None:
    storage, small = str(tmp_path / "studies.journal"), fast_spec(spec, tmp_path, ["decision_tree"])
    tune.main(built_profile, small, n_trials=3, storage=storage)
    tune.main(built_profile, small, n_trials=4, storage=storage)
    (study,) = studies(storage).values()
    assert [t.number for t in study.trials] == list(range(7))
    parents, _ = mlflow_tree()
    assert len(parents) == 1
    assert_children_mirror_trials(storage)


def test_a_moved_project_resumes_its_studies_under_the_same_parents(
    built_profile: Profile, spec: Spec, tmp_path: Path
) -> None:
    small = fast_spec(spec, tmp_path, ["decision_tree"])
    (tmp_path / "before").mkdir()
    before = tmp_path / "before" / "studies.journal"
    tune.main(built_profile, small, n_trials=2, storage=str(before))
    after = tmp_path / "after"
    (tmp_path / "before").rename(after)  # the project folder moved: its journal has another absolute path
    tune.main(built_profile, small, n_trials=2, storage=str(after / "studies.journal"))
    (study,) = studies(str(after / "studies.journal")).values()
    assert [t.number for t in study.trials] == list(range(4))
    parents, children = mlflow_tree()
    assert len(parents) == 1, "one study, one parent run, wherever its journal lives"
    assert len(children[parents[0].info.run_id]) == 4, "no trial's run duplicated"
    assert_children_mirror_trials(str(after / "studies.journal"))


def test_baselines_are_logged_with_the_trials_metric_names(
    built_profile: Profile, spec: Spec, tmp_path: Path
) -> None:
    result = tune.main(
        built_profile,
        fast_spec(spec, tmp_path, ["decision_tree"]),
        n_trials=2,
        storage=str(tmp_path / "s.journal"),
    )
    client = MlflowClient()
    runs = client.search_runs([client.get_experiment_by_name("f1_podium").experiment_id])
    baselines = {
        r.data.tags["podium.baseline"]: r for r in runs if r.data.tags.get("podium.role") == "baseline"
    }
    trial = next(r for r in runs if r.data.tags.get("podium.state") == "COMPLETE")
    assert set(baselines) == {"prior", "heuristic"}
    for run in baselines.values():
        assert set(run.data.metrics) == set(trial.data.metrics) - {"fit_seconds"}
    assert baselines["heuristic"].data.metrics["cv_log_loss"] < baselines["prior"].data.metrics["cv_log_loss"]
    assert {s.name for s in result.leaderboard} == {"baseline:prior", "baseline:heuristic", "decision_tree"}


class RecordingWarehouse(DuckDBWarehouse):
    """The real DuckDB backend, keeping every frame it hands out."""

    frames: ClassVar[list[pd.DataFrame]] = []

    def query(self, sql: str, params: Any = ()) -> pd.DataFrame:
        frame = super().query(sql, params)
        RecordingWarehouse.frames.append(frame)
        return frame


def test_tune_never_reads_the_holdout(
    built_profile: Profile, spec: Spec, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(tune, "connect", connect_with(RecordingWarehouse))
    RecordingWarehouse.frames.clear()
    tune.main(
        built_profile,
        fast_spec(spec, tmp_path, ["decision_tree"]),
        n_trials=1,
        storage=str(tmp_path / "s.journal"),
    )
    read = pd.concat(RecordingWarehouse.frames)
    assert len(read) > 4000
    assert read[spec.time].max() < pd.Timestamp(spec.holdout_start)
    with connect(built_profile) as warehouse:
        holdout = warehouse.query(
            f"SELECT COUNT(*) AS N FROM {spec.table} WHERE {spec.time} >= ?", [spec.holdout_start]
        ).N[0]
    assert holdout > 0, "the feature table does hold holdout rows; tune just never reads them"


class FitRecorder(ClassifierMixin, BaseEstimator):
    """An estimator that remembers which rows each of its clones was fitted on."""

    fitted_on: ClassVar[list[pd.Index]] = []

    def fit(self, X: pd.DataFrame, y: np.ndarray) -> FitRecorder:
        FitRecorder.fitted_on.append(X.index)
        self.classes_ = np.unique(y)
        return self

    def predict_proba(self, X: pd.DataFrame) -> np.ndarray:
        return np.full((len(X), 3), 1 / 3)


def test_each_fold_fits_on_its_training_part_only(built_profile: Profile, spec: Spec) -> None:
    with connect(built_profile) as warehouse:
        data = tune.load_training_data(warehouse, spec)
    FitRecorder.fitted_on.clear()
    window = data.window
    with FoldRunner(window.X, window.y, data.folds, n_jobs=1) as runner:
        runner.run(FitRecorder())
    assert len(FitRecorder.fitted_on) == len(data.folds) == 4
    for fold, index in zip(fold_order(data.folds), FitRecorder.fitted_on, strict=True):
        assert list(index) == list(window.X.index[fold.train_rows])
        assert window.times.iloc[fold.train_rows].max() < window.times.iloc[fold.valid_rows].min()

    fold = data.folds[0]
    train = window.X.iloc[fold.train_rows]
    model = make_estimator("logreg", {}, data.schema, seed=0).fit(train, window.y[fold.train_rows])
    prep = model.named_steps["prep"]
    scaler = prep.named_transformers_["numeric"].named_steps["standardscaler"]
    numeric = data.schema.numeric
    imputed_means = train[numeric].fillna(train[numeric].median()).mean().to_numpy()
    np.testing.assert_allclose(scaler.mean_[: len(numeric)], imputed_means)
    seen = set(prep.named_transformers_["categorical"].named_steps["onehotencoder"].categories_[0])
    assert seen == set(train["CONSTRUCTOR_REF"]) and not seen >= set(window.X["CONSTRUCTOR_REF"])


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("unknown family", "unknown family 'lightgbm'"),
        ("empty training window", "the training window is empty"),
        (
            "target column missing",
            r"spec target names \['PODIUM_CLASS'\], which ML.F1_FEATURES does not have",
        ),
        ("invalid search-space range", r"low \(9\) must be below high \(2\)"),
    ],
)
def test_tune_user_errors(case: str, message: str, built_profile: Profile, tmp_path: Path) -> None:
    text = (REPO / "experiments" / "f1_podium" / "spec.yaml").read_text()
    args = ["tune", "--family", "decision_tree", "-n", "1"]
    if case == "unknown family":
        args[2] = "lightgbm"
    elif case == "empty training window":
        text = text.replace("train_start: 2010-01-01", "train_start: 1990-01-01").replace(
            "holdout_start: 2021-01-01", "holdout_start: 2000-01-01"
        )
    elif case == "target column missing":
        text = text.replace("target: FINISH_CLASS", "target: PODIUM_CLASS")
    else:
        (tmp_path / "space.yaml").write_text("decision_tree:\n  max_depth: {type: int, low: 9, high: 2}\n")
        text = text.replace("experiments/f1_podium/search_space.yaml", str(tmp_path / "space.yaml"))
    (tmp_path / "spec.yaml").write_text(text)
    (tmp_path / "profile.yaml").write_text(
        f"warehouse: {{backend: duckdb, path: {built_profile.warehouse.path}}}\noptuna_storage: "
        f"{tmp_path / 'j.log'}\n"
    )
    env = os.environ | {"MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}"}
    command = [sys.executable, "-m", "pipelines.cli", *args]
    command += ["--spec", str(tmp_path / "spec.yaml"), "--profile", str(tmp_path / "profile.yaml")]
    done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 1
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("error:") and re.search(message, last), done.stderr[-800:]
    assert "Traceback" not in done.stderr


@pytest.mark.slow
def test_two_worker_processes_share_one_study_and_one_parent(
    built_profile: Profile, spec: Spec, tmp_path: Path
) -> None:
    text = (REPO / "experiments" / "f1_podium" / "spec.yaml").read_text()
    (tmp_path / "space.yaml").write_text(FAST_SPACE)
    (tmp_path / "spec.yaml").write_text(
        text.replace("experiments/f1_podium/search_space.yaml", str(tmp_path / "space.yaml"))
    )
    storage = tmp_path / "studies.journal"
    (tmp_path / "profile.yaml").write_text(
        f"warehouse: {{backend: duckdb, path: {built_profile.warehouse.path}}}\noptuna_storage: {storage}\n"
    )
    env = worker_env()
    command = tune_command(tmp_path / "spec.yaml", tmp_path / "profile.yaml", 5)
    MlflowClient().search_experiments()  # create the store once; two fresh processes would race its migration
    workers = [
        subprocess.Popen(command, cwd=REPO, env=env, stderr=subprocess.PIPE, text=True) for _ in range(2)
    ]
    for worker in workers:
        assert worker.wait(timeout=300) == 0, worker.stderr.read()[-2000:]

    (study,) = studies(str(storage)).values()
    assert sorted(t.number for t in study.trials) == list(range(10))
    parents, children = mlflow_tree()
    assert len(parents) == 1
    assert len(children[parents[0].info.run_id]) == 10
    assert_children_mirror_trials(str(storage))


@pytest.mark.parametrize(
    ("storage", "detail"),
    [
        ("foo://podium@host/db", "Can't load plugin"),
        ("sqlite:///{tmp}/no/such/folder/optuna.db", "unable to open database file"),
        ("{tmp}/a-file/studies.journal", "File exists"),
        ("{tmp}", "Is a directory"),
    ],
)
def test_an_unusable_optuna_storage_is_one_clear_error(storage: str, detail: str, tmp_path: Path) -> None:
    (tmp_path / "a-file").write_text("")
    storage = storage.format(tmp=tmp_path)
    with pytest.raises(PodiumError) as caught:
        open_storage(storage)
    message = str(caught.value)
    assert message.startswith("cannot open the Optuna storage ") and detail in message
    assert "Pass --storage (or set the profile's optuna_storage)" in message
    assert "s3cret" not in message and "\n" not in message


def test_train_with_a_bad_storage_prints_one_line(
    profile: Profile, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    args = ["train", "--storage", "foo://bar", "--profile", profile_file(tmp_path, profile)]
    code, _, err = podium(args, capsys, monkeypatch)
    assert code == 1 and "Traceback" not in err
    assert err.strip().startswith("error: cannot open the Optuna storage foo://bar")


def test_two_storages_with_a_study_of_one_name_get_a_parent_each(
    built_profile: Profile, spec: Spec, tmp_path: Path
) -> None:
    """Finding 12: studies of one name in two journals are two studies, so two parent runs."""
    small = fast_spec(spec, tmp_path, ["decision_tree"])
    for journal in ("a.journal", "b.journal"):
        tune.main(built_profile, small, n_trials=2, storage=str(tmp_path / journal))
    parents, children = mlflow_tree()
    assert len(parents) == 2 and {p.data.tags["podium.study"] for p in parents} == {"f1_podium-decision_tree"}
    assert sorted(len(children[p.info.run_id]) for p in parents) == [2, 2]


HALVING_SPACE = """decision_tree:
  max_depth: {type: int, low: 2, high: 8}
  min_samples_leaf: {type: int, low: 5, high: 100, log: true}
logreg:
  C: {type: float, low: 0.01, high: 10.0, log: true}
knn:
  n_neighbors: {type: int, low: 5, high: 100, log: true}
random_forest:  # a slow family: a single fold of it outlasts the whole budget below
  n_estimators: {type: int, low: 1500, high: 2000}
  min_samples_leaf: {type: int, low: 1, high: 2}
"""


def halving_spec(spec: Spec, tmp_path: Path, families: list[str]) -> Spec:
    space = tmp_path / "halving.yaml"
    space.write_text(HALVING_SPACE)
    update = {"search_space": space, "families": families, "pruner_startup_trials": 50}
    return spec.model_copy(update={"tuning": spec.tuning.model_copy(update=update)})


def test_cross_validation_reports_the_same_figures_on_one_core_and_on_two(
    built_profile: Profile, spec: Spec
) -> None:
    with connect(built_profile) as warehouse:
        data = tune.load_training_data(warehouse, spec)
    estimator = make_estimator("decision_tree", {"max_depth": 6, "min_samples_leaf": 20}, data.schema, seed=3)
    window, seen = data.window, {}
    for cores in (1, 2):
        with FoldRunner(window.X, window.y, data.folds, n_jobs=cores) as runner:
            steps: list[int] = []
            seen[cores] = runner.run(estimator, lambda scores, into=steps: into.append(len(scores)))
        assert steps == [1, 2, 3, 4], "the check sees every fold boundary, in order"
    assert seen[1] == seen[2]
    assert [f.valid_season for f in fold_order(data.folds)] == [2020, 2019, 2018, 2017]


@pytest.mark.timed
def test_a_budget_in_seconds_is_spent_by_successive_halving(
    built_profile: Profile, spec: Spec, tmp_path: Path
) -> None:
    families = ["decision_tree", "logreg", "knn"]
    result = tune.main(
        built_profile, halving_spec(spec, tmp_path, families), seconds=20, storage=str(tmp_path / "s.journal")
    )
    board = {s.name: s for s in result.leaderboard if s.name in families}
    ranked = sorted(board.values(), key=lambda s: s.cv_log_loss)
    assert tune.halving_rounds(3) == 3
    assert [s.rounds for s in ranked] == [3, 2, 1], "each round keeps the better half"
    winner = ranked[0]
    trials = winner.complete + winner.pruned + winner.failed
    assert winner.complete >= 1 and trials >= 3, "a trial in every round"
    assert_children_mirror_trials(str(tmp_path / "s.journal"))


@pytest.mark.timed
def test_a_trial_that_would_overrun_the_budget_stops_at_a_fold_boundary(
    built_profile: Profile, spec: Spec, tmp_path: Path
) -> None:
    storage = str(tmp_path / "s.journal")
    result = tune.main(
        built_profile, halving_spec(spec, tmp_path, ["random_forest"]), seconds=16, storage=storage
    )
    (study,) = studies(storage).values()
    (trial,) = study.trials
    assert trial.state.name == "PRUNED" and trial.user_attrs["stopped"] == "out of budget at a fold boundary"
    assert 1 <= len(trial.intermediate_values) < 4, "stopped after a fold, before the last"
    assert next(s for s in result.leaderboard if s.name == "random_forest").pruned == 1
    assert_children_mirror_trials(storage)


def test_a_fold_worker_killed_mid_fold_stops_the_search_with_one_clear_error(
    built_profile: Profile, spec: Spec
) -> None:
    with connect(built_profile) as warehouse:
        data = tune.load_training_data(warehouse, spec)
    slow = make_estimator("random_forest", {"n_estimators": 600}, data.schema, seed=0)
    window = data.window
    with FoldRunner(window.X, window.y, data.folds, n_jobs=2) as runner:
        runner.run(make_estimator("decision_tree", {"max_depth": 3}, data.schema, seed=0))  # workers are up
        victim = next(iter(runner._pool._processes.values()))
        threading.Timer(1.0, os.kill, (victim.pid, signal.SIGKILL)).start()
        with pytest.raises(PodiumError, match="a cross-validation worker process died"):
            runner.run(slow)
        assert runner.failure is not None


def test_a_new_study_starts_from_the_spaces_start_point(
    built_profile: Profile, spec: Spec, tmp_path: Path
) -> None:
    space = tmp_path / "start.yaml"
    space.write_text(
        "decision_tree:\n"
        "  max_depth: {type: int, low: 2, high: 8, start: 5}\n"
        "  min_samples_leaf: {type: int, low: 5, high: 100, log: true}\n"
    )
    tuning = spec.tuning.model_copy(update={"search_space": space, "families": ["decision_tree"]})
    storage = str(tmp_path / "s.journal")
    for _ in range(2):  # a resumed study is not sent back to its start
        tune.main(built_profile, spec.model_copy(update={"tuning": tuning}), n_trials=2, storage=storage)
    (study,) = studies(storage).values()
    first, resumed = study.trials[0], study.trials[2]
    assert first.params["max_depth"] == 5 and "fixed_params" in first.system_attrs
    assert "fixed_params" not in resumed.system_attrs, (
        "the rerun samples; it does not enqueue the start again"
    )
    assert len(study.trials) == 4
