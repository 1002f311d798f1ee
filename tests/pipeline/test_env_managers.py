"""`mlflow run` in environments MLflow builds from python_env.yaml: `--env-manager uv` and `virtualenv`.

Each test runs a copy of the project (the working tree's files that git tracks or would track) with its
own tracking store and MLflow env root (MLFLOW_ENV_ROOT) in tmp_path, so MLflow builds the env afresh.
The Python that python_env.yaml pins must already be on the machine: neither manager may download one
(uv runs with UV_PYTHON_DOWNLOADS=never; pyenv must list the version). Packages come from PyPI; uv keeps
its download cache where it always does (~/.cache/uv, or UV_CACHE_DIR).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml
from mlflow.entities import Run
from mlflow.tracking import MlflowClient
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from pipelines.config import Spec
from pipelines.stages import ingest
from pipelines.warehouse import connect
from tests.helpers import REPO, duckdb_profile

PINNED_PYTHON = yaml.safe_load((REPO / "python_env.yaml").read_text())["python"]
VENV_BIN = Path(sys.executable).parent
DISTRIBUTIONS = (
    "import importlib.metadata as m, json; print(json.dumps({d.name: d.version for d in m.distributions()}))"
)


def project_copy(tmp_path: Path) -> Path:
    """The working tree's tracked and unignored files (uncommitted edits included), copied under tmp_path."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    project = tmp_path / "podium"
    for name in filter(None, listed.split("\0")):
        if (REPO / name).is_file():  # skips tracked files deleted in the working tree
            (project / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, project / name)
    return project


def run_env() -> dict[str, str]:
    """The environment of `mlflow run`: this venv's mlflow and uv first, no leftover MLflow run or venv."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "PODIUM_", "VIRTUAL_ENV"))}
    env["PATH"] = f"{VENV_BIN}{os.pathsep}{env['PATH']}"
    # pip leaves byte-compiling to first import (as uv does): the env holds the same files, built sooner
    return env | {"MLFLOW_DISABLE_TELEMETRY": "true", "UV_PYTHON_DOWNLOADS": "never", "PIP_NO_COMPILE": "1"}


def mlflow_run(project: Path, entry_point: str, env_manager: str, spec: Spec, store: str, envs: Path) -> None:
    """`mlflow run` an entry point of `project` into `store` (the spec's experiment), its env under `envs`."""
    env = run_env() | {"MLFLOW_TRACKING_URI": store, "MLFLOW_ENV_ROOT": str(envs)}
    command = ["mlflow", "run", str(project), "-e", entry_point, "--env-manager", env_manager]
    command += ["--experiment-name", spec.name]
    done = subprocess.run(command, cwd=envs.parent, env=env, capture_output=True, text=True, timeout=1200)
    assert done.returncode == 0, f"-e {entry_point} --env-manager {env_manager}:\n{done.stderr[-3000:]}"


def the_env(envs: Path) -> tuple[Path, dict[str, str]]:
    """The one env MLflow built under `envs`, and its pyvenv.cfg."""
    (env,) = envs.iterdir()
    lines = (env / "pyvenv.cfg").read_text().splitlines()
    return env, dict(tuple(part.strip() for part in line.split("=", 1)) for line in lines if "=" in line)


def assert_env_holds_the_pins(env: Path) -> None:
    """podium is installed in `env`, and each of pyproject.toml's `==` pins is the version installed there."""
    shown = subprocess.run([env / "bin" / "python", "-c", DISTRIBUTIONS], capture_output=True, check=True)
    installed = {canonicalize_name(name): version for name, version in json.loads(shown.stdout).items()}
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    pins = {canonicalize_name(r.name): str(r.specifier) for r in map(Requirement, project["dependencies"])}
    assert "podium" in installed
    assert pins == {name: f"=={installed.get(name)}" for name in pins}


def stage_runs(store: str, spec: Spec) -> dict[str, Run]:
    """The runs of the spec's experiment, by podium stage."""
    client = MlflowClient(store)
    runs = client.search_runs([client.get_experiment_by_name(spec.name).experiment_id])
    return {run.data.tags["podium.stage"]: run for run in runs}


def table_rows(project: Path, table: str) -> int:
    """Rows of `table` in the project copy's DuckDB warehouse (profile local's file)."""
    with connect(duckdb_profile(project / "warehouse" / "podium.duckdb"), read_only=True) as warehouse:
        return int(warehouse.query(f"SELECT COUNT(*) AS N FROM {table}").N[0])


@pytest.mark.slow
def test_uv_builds_the_env_from_the_machines_python_for_ingest_and_features(
    spec: Spec, tmp_path: Path, mlflow_store: str
) -> None:
    assert shutil.which("uv", path=run_env()["PATH"]), (
        "no uv: it is a test dependency (pip install -e '.[test]')"
    )
    found = subprocess.run(
        ["uv", "python", "find", PINNED_PYTHON], env=run_env(), capture_output=True, text=True
    )
    assert found.returncode == 0, f"uv finds no Python {PINNED_PYTHON} (python_env.yaml): {found.stderr}"
    project, envs = project_copy(tmp_path), tmp_path / "envs"

    mlflow_run(project, "ingest", "uv", spec, mlflow_store, envs)
    mlflow_run(project, "features", "uv", spec, mlflow_store, envs)

    env, config = the_env(envs)  # one env: features reused the one ingest built
    assert "uv" in config and config["version_info"] == PINNED_PYTHON
    assert_env_holds_the_pins(env)
    runs = stage_runs(mlflow_store, spec)
    assert sorted(runs) == ["features", "ingest"]
    assert [(r.info.status, r.data.tags["mlflow.project.env"]) for r in runs.values()] == [
        ("FINISHED", "uv")
    ] * 2
    rows = table_rows(project, spec.table)
    assert spec.features.expect_rows.min <= rows <= spec.features.expect_rows.max
    assert runs["features"].data.metrics[f"rows.{spec.table}"] == rows
    assert runs["features"].data.metrics["check.keys_unique"] == 1.0


@pytest.mark.slow
def test_virtualenv_builds_the_env_from_pyenvs_python_for_ingest(
    spec: Spec, tmp_path: Path, mlflow_store: str
) -> None:
    assert shutil.which("pyenv", path=run_env()["PATH"]), "no pyenv: --env-manager virtualenv runs it"
    prefix = subprocess.run(["pyenv", "prefix", PINNED_PYTHON], env=run_env(), capture_output=True, text=True)
    assert prefix.returncode == 0, f"pyenv has no Python {PINNED_PYTHON} (python_env.yaml): {prefix.stderr}"
    project, envs = project_copy(tmp_path), tmp_path / "envs"

    mlflow_run(project, "ingest", "virtualenv", spec, mlflow_store, envs)

    env, config = the_env(envs)
    assert "uv" not in config and config["version"] == PINNED_PYTHON
    assert Path(config["home"]) == Path(prefix.stdout.strip()) / "bin"  # pyenv's Python, no download
    assert_env_holds_the_pins(env)
    (run,) = stage_runs(mlflow_store, spec).values()
    assert (run.info.status, run.data.tags["mlflow.project.env"]) == ("FINISHED", "virtualenv")
    counts = {table: table_rows(project, table) for table in ingest.tables_written(spec)}
    assert len(counts) == 13 and min(counts.values()) > 0  # the tables of the F1 data/tables.yaml
    metrics = {name: value for name, value in run.data.metrics.items() if name.startswith("rows.")}
    assert metrics == {f"rows.{table}": rows for table, rows in counts.items()}
