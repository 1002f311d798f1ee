"""The MLproject entry points run the same code under `mlflow run --env-manager local`."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from pipelines.config import Profile
from tests.conftest import REPO


@pytest.mark.slow
def test_features_entry_point_records_row_counts(built_profile: Profile, tmp_path: Path, mlflow_store: str) -> None:
    shutil.copy(built_profile.warehouse.path, tmp_path / "warehouse.duckdb")
    profile = tmp_path / "profile.yaml"
    profile.write_text(f"warehouse:\n  backend: duckdb\n  path: {tmp_path / 'warehouse.duckdb'}\n")
    venv_bin = Path(sys.executable).parent
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    env |= {"PATH": f"{venv_bin}{os.pathsep}{env['PATH']}", "MLFLOW_TRACKING_URI": mlflow_store}
    command = [str(venv_bin / "mlflow"), "run", str(REPO), "-e", "features", "--env-manager", "local",
               "--experiment-name", "podium-test", "-P", f"profile={profile}"]  # fmt: skip
    done = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]

    client = MlflowClient(mlflow_store)
    (run,) = client.search_runs([client.get_experiment_by_name("podium-test").experiment_id])
    assert run.info.status == "FINISHED"
    assert run.data.tags["podium.stage"] == "features"
    assert 5_000 <= run.data.metrics["rows.ML.F1_FEATURES"] <= 6_500
    assert run.data.metrics["check.keys_unique"] == 1.0
