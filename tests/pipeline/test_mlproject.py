"""The MLproject entry points run the same code under `mlflow run --env-manager local`."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
from mlflow.tracking import MlflowClient

from pipelines.config import Profile, Spec
from pipelines.stages import promote, score, train
from pipelines.studies import open_storage
from pipelines.study_bridge import STATUS
from pipelines.warehouse import connect
from tests.helpers import FAST_SPACE, REPO, duckdb_profile

# the families as experiments/f1_podium/spec.yaml lists them
SPEC_FAMILIES = "[logreg, knn, svc, decision_tree, random_forest, extra_trees, hist_gb, xgboost]"
BACKTEST_FAMILIES = "[logreg, random_forest, extra_trees, xgboost]"


def mlflow_run(
    entry_point: str,
    params: dict[str, str],
    tracking_uri: str,
    cwd: Path,
    experiment: str | None = "f1_podium",
    ok: bool = True,
) -> subprocess.CompletedProcess:
    """`mlflow run` this repo's entry point in the active venv, into `experiment` (None: MLflow's default)."""
    venv_bin = Path(sys.executable).parent
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    env |= {
        "PATH": f"{venv_bin}{os.pathsep}{env['PATH']}",
        "MLFLOW_TRACKING_URI": tracking_uri,
        "MLFLOW_DISABLE_TELEMETRY": "true",
    }
    command = [
        str(venv_bin / "mlflow"),
        "run",
        str(REPO),
        "-e",
        entry_point,
        "--env-manager",
        "local",
        *(["--experiment-name", experiment] if experiment else []),
    ]
    command += [arg for key, value in params.items() for arg in ("-P", f"{key}={value}")]
    done = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert (done.returncode == 0) == ok, done.stderr[-2000:]
    return done


def copy_profile(built_profile: Profile, tmp_path: Path) -> Path:
    shutil.copy(built_profile.warehouse.path, tmp_path / "warehouse.duckdb")
    profile = tmp_path / "profile.yaml"
    profile.write_text(f"warehouse:\n  backend: duckdb\n  path: {tmp_path / 'warehouse.duckdb'}\n")
    return profile


def fast_spec(tmp_path: Path) -> str:
    """The bundled spec with two families and the fast search space, as a file under tmp_path."""
    (tmp_path / "space.yaml").write_text(FAST_SPACE)
    text = (REPO / "experiments" / "f1_podium" / "spec.yaml").read_text()
    text = text.replace("experiments/f1_podium/search_space.yaml", str(tmp_path / "space.yaml"))
    (tmp_path / "spec.yaml").write_text(text.replace(SPEC_FAMILIES, "[decision_tree, knn]"))
    return str(tmp_path / "spec.yaml")


@pytest.mark.slow
def test_features_entry_point_records_row_counts(
    built_profile: Profile, tmp_path: Path, mlflow_store: str
) -> None:
    mlflow_run("features", {"profile": str(copy_profile(built_profile, tmp_path))}, mlflow_store, tmp_path)

    client = MlflowClient(mlflow_store)
    (run,) = client.search_runs([client.get_experiment_by_name("f1_podium").experiment_id])
    assert run.info.status == "FINISHED"
    assert run.data.tags["podium.stage"] == "features"
    assert 5_000 <= run.data.metrics["rows.ML.F1_FEATURES"] <= 6_500
    assert run.data.metrics["check.keys_unique"] == 1.0


@pytest.mark.slow
def test_tune_entry_point_nests_one_parent_per_family_under_the_mlflow_run(
    built_profile: Profile, tmp_path: Path, mlflow_store: str
) -> None:
    storage = tmp_path / "studies.journal"
    params = {
        "profile": str(copy_profile(built_profile, tmp_path)),
        "spec": fast_spec(tmp_path),
        "family": "all",
        "n_trials": "3",
        "storage": str(storage),
    }
    mlflow_run("tune", params, mlflow_store, tmp_path)

    client = MlflowClient(mlflow_store)
    runs = client.search_runs([client.get_experiment_by_name("f1_podium").experiment_id], max_results=500)
    (top,) = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    parents = [r for r in runs if r.data.tags.get("podium.role") == "study"]
    assert sorted(p.data.tags["podium.family"] for p in parents) == ["decision_tree", "knn"]
    assert all(p.data.tags["mlflow.parentRunId"] == top.info.run_id for p in parents)
    for parent in parents:
        study = optuna.load_study(
            study_name=parent.data.tags["podium.study"], storage=open_storage(str(storage))
        )
        children = {
            int(r.data.tags["podium.trial"]): r.info.status
            for r in runs
            if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id
        }
        assert children == {t.number: STATUS[t.state.name] for t in study.trials}
        assert len(children) == 3


@pytest.mark.slow
def test_train_and_promote_entry_points_register_and_crown_a_champion(
    tuned: tuple[Profile, Spec], tmp_path: Path, mlflow_store: str
) -> None:
    profile, _ = tuned
    text = (REPO / "experiments" / "f1_podium" / "spec.yaml").read_text()
    (tmp_path / "spec.yaml").write_text(text.replace(SPEC_FAMILIES, "[decision_tree, logreg]"))
    profile_path = copy_profile(profile, tmp_path)
    profile_path.write_text(profile_path.read_text() + f"optuna_storage: {profile.optuna_storage}\n")
    common = {"profile": str(profile_path), "spec": str(tmp_path / "spec.yaml")}
    mlflow_run("train", common | {"top_k": "2"}, mlflow_store, tmp_path)
    client = MlflowClient(mlflow_store)
    mlflow_run("promote", common | {"stage": "Production", "dry_run": "true"}, mlflow_store, tmp_path)
    assert "champion" not in client.get_registered_model("f1_podium").aliases
    mlflow_run("promote", common | {"stage": "Production"}, mlflow_store, tmp_path)

    champion = client.get_model_version_by_alias("f1_podium", "champion")
    assert champion.version == client.get_model_version_by_alias("f1_podium", "challenger").version
    assert champion.current_stage == "Production"
    runs = client.search_runs([client.get_experiment_by_name("f1_podium").experiment_id])
    assert {r.data.tags.get("podium.stage") for r in runs} >= {"train", "promote"}


@pytest.mark.slow
def test_score_entry_point_twice_more_adds_no_rows(
    trained_profile: Profile, tuned: tuple[Profile, Spec], tmp_path: Path, mlflow_store: str
) -> None:
    _, spec = tuned
    train.main(trained_profile, spec)
    promote.main(trained_profile, spec)
    first = score.main(trained_profile, spec)
    profile_path = tmp_path / "profile.yaml"
    profile_path.write_text(f"warehouse:\n  backend: duckdb\n  path: {trained_profile.warehouse.path}\n")
    for _ in range(2):
        mlflow_run("score", {"profile": str(profile_path)}, mlflow_store, tmp_path)
    with connect(trained_profile, read_only=True) as warehouse:
        rows = warehouse.query(
            f"SELECT COUNT(*) AS N, COUNT(DISTINCT BATCH_ID) AS B FROM {spec.scoring_table}"
        )
    assert (rows.N[0], rows.B[0]) == (first.rows_written, 1)
    client = MlflowClient(mlflow_store)
    runs = client.search_runs([client.get_experiment_by_name("f1_podium").experiment_id])
    projects = [r for r in runs if r.data.tags.get("mlflow.source.type") == "PROJECT"]
    assert len(projects) == 2 and not [r for r in projects if "rows_written" in r.data.metrics]  # nothing new


@pytest.mark.slow
def test_mlflow_run_outside_the_spec_experiment_stops_before_any_trial(
    built_profile: Profile, tmp_path: Path, mlflow_store: str
) -> None:
    storage = tmp_path / "studies.journal"
    common = {"profile": str(copy_profile(built_profile, tmp_path)), "spec": fast_spec(tmp_path)}
    tune = common | {"n_trials": "2", "storage": str(storage)}

    for entry_point, params in [("tune", tune), ("tune", tune), ("main", common)]:
        done = mlflow_run(entry_point, params, mlflow_store, tmp_path, experiment=None, ok=False)
        assert "pass `--experiment-name f1_podium` to `mlflow run`" in done.stderr
        assert "Traceback" not in done.stderr

    assert not storage.exists() or not optuna.get_all_study_names(open_storage(str(storage)))
    client = MlflowClient(mlflow_store)
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()], max_results=500)
    assert len(runs) == 3 and not [r for r in runs if r.data.tags.get("podium.role") == "study"]
    assert client.get_experiment_by_name("f1_podium") is None  # nothing was filed under the spec either


def test_backtest_entry_point_replays_a_season_into_the_backtest_table(
    built_profile: Profile, tmp_path: Path, mlflow_store: str
) -> None:
    profile = copy_profile(built_profile, tmp_path)
    spec = Path(fast_spec(tmp_path))
    spec.write_text(spec.read_text().replace(BACKTEST_FAMILIES, "[decision_tree]"))
    params = {
        "profile": str(profile),
        "spec": str(spec),
        "start": "2020-01-01",
        "end": "2021-01-01",
        "trials": "1",
    }
    mlflow_run("backtest", params, mlflow_store, tmp_path)
    with connect(duckdb_profile(tmp_path / "warehouse.duckdb"), read_only=True) as warehouse:
        rows = warehouse.query("SELECT PERIOD, ROLE, MODEL_FAMILY, DECISION FROM ML.F1_BACKTEST")
    assert len(rows) == 1 and rows.PERIOD[0] == "2020" and rows.MODEL_FAMILY[0] == "decision_tree"
    assert rows.ROLE[0] == "challenger", "no champion yet: the season's challenger scores it alone"
