"""No planted secret appears in any output, log, MLflow param, tag or artifact, or file a run leaves.

Secrets are planted where a user keeps them (the environment: SNOWFLAKE_PASSWORD, PGPASSWORD,
MLFLOW_TRACKING_PASSWORD, a cloud key) and where a careless user would (a password inside a
storage or tracking URL). The whole pipeline runs as a real `podium run` process; then every byte
it printed or wrote is searched. A URL carrying a password is refused with the password masked.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from mlflow.tracking import MlflowClient

from tests.helpers import REPO

PLANTED = {
    "SNOWFLAKE_PASSWORD": "planted-snowflake-8d1f",
    "PGPASSWORD": "planted-postgres-5c2a",
    "MLFLOW_TRACKING_PASSWORD": "planted-mlflow-e93b",
    "AWS_SECRET_ACCESS_KEY": "planted-cloud-77aa",
}
IN_URL = "planted-in-url-0b6e"
SECRETS = [*PLANTED.values(), IN_URL]


def project(root: Path) -> Path:
    """A project with the F1 spec made small (two trials of two families)."""
    (root / "conf").mkdir(parents=True)
    (root / "experiments").mkdir()
    (root / "conf" / "local.yaml").write_text(
        "warehouse:\n  backend: duckdb\n  path: warehouse/podium.duckdb\n"
    )
    spec = yaml.safe_load((REPO / "experiments" / "f1_podium" / "spec.yaml").read_text())
    spec["ingest"]["source"] = str(REPO / spec["ingest"]["source"])
    spec["features"]["sql"] = str(REPO / spec["features"]["sql"])
    spec["tuning"] |= {
        "search_space": str(REPO / spec["tuning"]["search_space"]),
        "families": ["logreg", "decision_tree"],
    }
    spec["tuning"]["budget"] = {"trials": 2}
    (root / "experiments" / "f1_podium.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
    return root


def podium(root: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "PODIUM_", "SNOWFLAKE_"))}
    environment = (
        clean
        | PLANTED
        | {
            "MLFLOW_TRACKING_URI": f"sqlite:///{root / 'mlflow.db'}",
            "PYTHONPATH": str(REPO),
            "PODIUM_LOG_LEVEL": "DEBUG",  # the most a log says
        }
        | env
    )
    command = [sys.executable, "-m", "pipelines.cli", *args]
    return subprocess.run(command, cwd=root, env=environment, capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def ran(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, subprocess.CompletedProcess[str]]:
    root = project(tmp_path_factory.mktemp("secrets"))
    return root, podium(root, "run")


def test_a_whole_run_prints_and_records_no_planted_secret(
    ran: tuple[Path, subprocess.CompletedProcess[str]],
) -> None:
    root, result = ran
    assert result.returncode == 0, result.stderr[-3000:]
    for secret in SECRETS:
        assert secret not in result.stdout + result.stderr
    client = MlflowClient(f"sqlite:///{root / 'mlflow.db'}")
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()], max_results=5000)
    assert len(runs) > 10
    recorded = " ".join(f"{k}={v}" for r in runs for k, v in {**r.data.params, **r.data.tags}.items())
    assert "logreg" in recorded, "the runs' params and tags were read"
    for secret in SECRETS:
        assert secret not in recorded
    files = [p for p in root.rglob("*") if p.is_file()]
    assert any(p.name == "MLmodel" for p in files), "the artifacts are among the files searched"
    for path in files:
        content = path.read_bytes()
        for secret in SECRETS:
            assert secret.encode() not in content, path


@pytest.mark.parametrize(
    ("args", "env"),
    [
        (["tune", "--storage", f"postgresql://podium:{IN_URL}@127.0.0.1:9/optuna"], {}),
        (
            ["status"],
            {
                "MLFLOW_TRACKING_URI": f"http://podium:{IN_URL}@127.0.0.1:9",
                "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0",
            },
        ),
    ],
    ids=["storage-url", "tracking-uri"],
)
def test_a_password_in_a_url_is_refused_or_masked(
    ran: tuple[Path, subprocess.CompletedProcess[str]], args: list[str], env: dict[str, str]
) -> None:
    root, _ = ran
    result = podium(root, *args, **env)
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr[-3000:]
    assert "podium:***@127.0.0.1:9" in result.stderr
    for secret in SECRETS:
        assert secret not in result.stdout + result.stderr


def test_a_profile_with_a_password_in_its_storage_is_refused(
    ran: tuple[Path, subprocess.CompletedProcess[str]],
) -> None:
    root, _ = ran
    (root / "conf" / "leaky.yaml").write_text(
        f"warehouse:\n  backend: duckdb\noptuna_storage: postgresql://podium:{IN_URL}@127.0.0.1:9/optuna\n"
    )
    result = podium(root, "status", "--profile", "leaky")
    assert result.returncode == 1 and "carries a password" in result.stderr and "PGPASSWORD" in result.stderr
    assert IN_URL not in result.stdout + result.stderr


def test_under_mlflow_run_the_run_that_logged_a_password_is_deleted(
    mlflow_store: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from tests.helpers import podium as podium_in_process

    client = MlflowClient(mlflow_store)
    url = f"postgresql://podium:{IN_URL}@127.0.0.1:9/optuna"
    run = client.create_run(client.create_experiment("mlflow-run"))  # what `mlflow run -P storage=...` made
    client.log_param(run.info.run_id, "storage", url)
    monkeypatch.setenv("MLFLOW_RUN_ID", run.info.run_id)
    code, out, err = podium_in_process(["tune", "--storage", url], capsys, monkeypatch)
    assert code == 1 and "Traceback" not in err and f"mlflow gc --run-ids {run.info.run_id}" in err
    assert IN_URL not in out + err
    assert client.get_run(run.info.run_id).info.lifecycle_stage == "deleted"
