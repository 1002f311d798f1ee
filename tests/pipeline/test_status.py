"""`podium status`: what it reports after the pipeline matches the warehouse, Optuna and the registry."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import duckdb
import optuna
import pytest

from pipelines.config import Profile, Spec
from pipelines.stages import evaluate, promote, score, train
from tests.helpers import REPO, duckdb_profile, podium


def profile_yaml(tmp_path: Path, profile: Profile) -> str:
    """A profile file for the CLI: the test's warehouse and Optuna storage."""
    path = tmp_path / "status_profile.yaml"
    path.write_text(
        f"warehouse:\n  backend: duckdb\n  path: {profile.warehouse.path}\noptuna_storage: "
        f"{profile.optuna_storage}\n"
    )
    return str(path)


def status_json(tmp_path: Path, profile: Profile, capsys, monkeypatch) -> dict:
    code, stdout, stderr = podium(
        ["status", "-p", profile_yaml(tmp_path, profile), "--format", "json"], capsys, monkeypatch
    )
    assert code == 0, stderr
    return json.loads(stdout)


@pytest.mark.slow
def test_status_json_reports_the_counts_after_the_pipeline(
    trained_profile: Profile, tuned: tuple[Profile, Spec], tmp_path: Path, capsys, monkeypatch
) -> None:
    _, spec = tuned
    train.main(trained_profile, spec)
    decisions = promote.main(trained_profile, spec, stage="Production")
    scored = score.main(trained_profile, spec)
    evaluated = evaluate.main(trained_profile, spec)

    status = status_json(tmp_path, trained_profile, capsys, monkeypatch)

    with duckdb.connect(str(trained_profile.warehouse.path), read_only=True) as con:
        actual = {
            f"{schema}.{name}".upper(): con.execute(f'SELECT COUNT(*) FROM "{schema}"."{name}"').fetchone()[0]
            for schema, name in con.execute(
                "SELECT table_schema, table_name FROM information_schema.tables"
            ).fetchall()
        }
    reported = {t["table"]: t["rows"] for t in status["tables"]}
    assert reported == {name: actual[name] for name in reported}, "row counts differ from the warehouse"
    assert reported[spec.scoring_table] == scored.rows_written > 0
    assert reported[spec.registry.audit_table] == len(decisions) == 2
    assert sum(name.startswith("RAW.") for name in reported) == 13

    storage = optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(trained_profile.optuna_storage)
    )
    studies = {s["study"]: s for s in status["studies"]}
    assert sorted(studies) == [f"{spec.name}-{f}" for f in sorted(spec.tuning.families)]
    for name, reported_study in studies.items():
        study = optuna.load_study(study_name=name, storage=storage)
        states = [t.state for t in study.trials]
        assert reported_study["complete"] == states.count(optuna.trial.TrialState.COMPLETE)
        assert reported_study["pruned"] == states.count(optuna.trial.TrialState.PRUNED)
        assert reported_study["failed"] == states.count(optuna.trial.TrialState.FAIL)
        assert reported_study["best_value"] == pytest.approx(study.best_value)

    (version,) = status["versions"]
    assert version["version"] == scored.model.version == "1"
    assert version["aliases"] == ["challenger", "champion"] and version["stage"] == "Production"

    batch = status["latest_batch"]
    assert (
        batch["batch_id"] == scored.batch_id and batch["rows"] == batch["total_rows"] == scored.rows_written
    )
    assert batch["versions"] == [{"version": "1", "alias": "champion", "rows": scored.rows_written}]

    expected = evaluated.rows[(evaluated.rows["PERIOD"] != "all") & (evaluated.rows["METRIC"] == "log_loss")]
    assert {m["period"]: m["log_loss"] for m in status["monitoring"]} == pytest.approx(
        dict(zip(expected["PERIOD"], expected["VALUE"], strict=True))
    )
    assert sum(m["rows"] for m in status["monitoring"]) == scored.rows_written

    code, table, _ = podium(["status", "-p", profile_yaml(tmp_path, trained_profile)], capsys, monkeypatch)
    assert code == 0 and "champion" in table and f"{scored.rows_written:,}" in table


def test_status_before_anything_ran_reports_missing_and_creates_nothing(
    tmp_path: Path, mlflow_store: str, capsys, monkeypatch
) -> None:
    profile = duckdb_profile(tmp_path / "nothing" / "warehouse.duckdb").model_copy(
        update={"optuna_storage": str(tmp_path / "nothing" / "studies.journal")}
    )
    status = status_json(tmp_path, profile, capsys, monkeypatch)
    assert status["tables"] and all(t["rows"] is None for t in status["tables"])
    assert status["studies"] == [] and status["versions"] == [] and status["latest_batch"] is None
    assert not (tmp_path / "nothing").exists(), "status must not create the warehouse or the Optuna journal"
    assert not Path(mlflow_store.removeprefix("sqlite:///")).exists(), (
        "status must not create the MLflow store"
    )


def test_status_has_no_csv_form(tmp_path: Path, capsys, monkeypatch) -> None:
    profile = duckdb_profile(tmp_path / "warehouse.duckdb")
    code, _, stderr = podium(
        ["status", "-p", profile_yaml(tmp_path, profile), "-f", "csv"], capsys, monkeypatch
    )
    assert code == 1 and "status has no csv form" in stderr


@pytest.mark.slow
def test_status_from_another_folder_reads_the_profile_project(built_profile: Profile, tmp_path: Path) -> None:
    project, elsewhere = tmp_path / "project", tmp_path / "elsewhere"
    (project / "warehouse").mkdir(parents=True)
    (project / "conf").mkdir()
    elsewhere.mkdir()
    shutil.copy(built_profile.warehouse.path, project / "warehouse" / "podium.duckdb")
    shutil.copy(REPO / "conf" / "local.yaml", project / "conf" / "local.yaml")  # relative paths, as shipped
    shutil.copytree(REPO / "experiments", project / "experiments")  # the use case: spec, SQL models, data
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "PODIUM_"))}
    command = [str(Path(sys.executable).parent / "podium"), "status", "--format", "json"]
    command += ["--profile", str(project / "conf" / "local.yaml")]
    done = subprocess.run(command, cwd=elsewhere, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr

    status = json.loads(done.stdout)
    rows = {t["table"]: t["rows"] for t in status["tables"]}
    with duckdb.connect(str(built_profile.warehouse.path), read_only=True) as con:
        names = con.execute("SELECT schema_name, table_name FROM duckdb_tables()").fetchall()
    built = {f"{schema}.{name}".upper() for schema, name in names}
    assert {t for t, n in rows.items() if n is not None} == built & set(rows) != set()
    assert rows["ML.F1_FEATURES"] > 5_000
    assert status["locations"]["warehouse"] == str(project / "warehouse" / "podium.duckdb")
    assert status["locations"]["tracking"] == f"sqlite:///{project / 'mlflow.db'}"
    assert status["locations"]["studies"] == str(project / "optuna" / "studies.journal")
    assert not list(elsewhere.iterdir())  # nothing was created in the current folder
