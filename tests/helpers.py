"""Helpers the test modules share: the repo root, profiles, the CLI in-process, MLflow and Optuna views.

Fixtures live in conftest.py; plain functions and constants live here, so no test module imports another.
"""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import duckdb
import mlflow
import optuna
import pandas as pd
import pytest
import yaml
from mlflow.tracking import MlflowClient

from pipelines import cli
from pipelines.config import Profile, Spec
from pipelines.studies import open_storage
from pipelines.study_bridge import STATUS

REPO = Path(__file__).resolve().parent.parent


def duckdb_profile(path: Path) -> Profile:
    """A profile whose warehouse is a DuckDB file at `path`."""
    return Profile.model_validate({"name": "test", "warehouse": {"backend": "duckdb", "path": path}})


def connect_with(warehouse_class: type) -> Callable[..., Iterator[Any]]:
    """A stand-in for `pipelines.warehouse.connect` that opens the DuckDB file with `warehouse_class`.

    Tests pass it a subclass of the real DuckDB backend that records what it hands out.
    """

    @contextmanager
    def connect(profile: Profile, read_only: bool = False) -> Iterator[Any]:
        warehouse = warehouse_class(profile.warehouse.path, read_only)
        try:
            yield warehouse
        finally:
            warehouse.close()

    return connect


@contextmanager
def tracking_store(uri: str) -> Iterator[None]:
    """Point MLflow at `uri` for a block (session fixtures run outside the per-test store)."""
    previous = os.environ.get("MLFLOW_TRACKING_URI")
    os.environ["MLFLOW_TRACKING_URI"] = uri
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop("MLFLOW_TRACKING_URI", None)
        else:
            os.environ["MLFLOW_TRACKING_URI"] = previous


def with_warehouse(profile: Profile, path: Path) -> Profile:
    """The profile on the DuckDB file at `path`."""
    return profile.model_copy(update={"warehouse": profile.warehouse.model_copy(update={"path": path})})


@dataclass(frozen=True)
class Snapshot:
    """State a fixture built once: a DuckDB warehouse, the MLflow store tracking it, what it returned."""

    warehouse: Path
    store: Path
    value: Any


def snapshot(
    root: Path, profile: Profile, build: Callable[[Profile], Any], base: Snapshot | None = None
) -> Snapshot:
    """Run `build` on a copy of the profile's warehouse in `root`, tracked in root/mlflow.db, and keep both.

    With `base`, on copies of that snapshot's warehouse and store. Fixtures build a state once (per session
    or module) and `restore` a copy for each test, instead of training the same models for every test.
    """
    warehouse, store = root / "warehouse.duckdb", root / "mlflow.db"
    shutil.copyfile(base.warehouse if base else profile.warehouse.path, warehouse)
    if base:
        shutil.copyfile(base.store, store)
    previous = mlflow.get_tracking_uri()
    with tracking_store(f"sqlite:///{store}"):
        mlflow.set_tracking_uri(f"sqlite:///{store}")  # the per-test store set it last
        try:
            value = build(with_warehouse(profile, warehouse))
        finally:
            mlflow.set_tracking_uri(previous)
    return Snapshot(warehouse, store, value)


def restore(state: Snapshot, profile: Profile, tmp_path: Path, mlflow_store: str) -> Profile:
    """The profile on this test's copy of the snapshot's warehouse; this test's MLflow store is a copy of
    the snapshot's (the same runs, registered versions and aliases; the artifacts they point to are shared).
    """
    store = Path(mlflow_store.removeprefix("sqlite:///"))
    assert not store.exists(), "the test used its MLflow store before the snapshot was restored into it"
    shutil.copyfile(state.store, store)
    shutil.copyfile(state.warehouse, tmp_path / "warehouse.duckdb")
    return with_warehouse(profile, tmp_path / "warehouse.duckdb")


def podium(
    args: list[str], capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> tuple[int, str, str]:
    """Run the console entry point in-process from the repo root: (exit code, stdout, stderr)."""
    monkeypatch.chdir(REPO)
    monkeypatch.setattr(sys, "argv", ["podium", *args])
    with pytest.raises(SystemExit) as exit_info:
        cli.main()
        raise SystemExit(0)
    captured = capsys.readouterr()
    return int(exit_info.value.code or 0), captured.out, captured.err


def error_lines(stderr: str) -> list[str]:
    """The `error:` lines a command printed (one, for a user error)."""
    return [line for line in stderr.splitlines() if line.startswith("error:")]


def with_sql(spec: Spec, edit: str, by: str, tmp: Path) -> Spec:
    """The spec with a copy of its SQL models in which `edit` is replaced by `by`."""
    folder = tmp / "sql"
    shutil.copytree(spec.features.sql, folder)
    for model in folder.glob("*.sql"):
        model.write_text(model.read_text().replace(edit, by))
    return spec.model_copy(update={"features": spec.features.model_copy(update={"sql": folder})})


def profile_file(tmp_path: Path, profile: Profile) -> str:
    path = tmp_path / "profile.yaml"
    path.write_text(f"warehouse:\n  backend: duckdb\n  path: {profile.warehouse.path}\n")
    return str(path)


def read(profile: Profile, sql: str, params: list[Any] | None = None) -> pd.DataFrame:
    """A query's rows from the profile's DuckDB file, opened read-only beside the code under test."""
    with duckdb.connect(str(profile.warehouse.path), read_only=True) as con:
        return con.execute(sql, params or []).df()


def spec_file(spec: Spec, path: Path) -> str:
    """The spec written to `path` as YAML, for a child `podium` process; the path."""
    path.write_text(yaml.safe_dump(spec.model_dump(mode="json", by_alias=True, exclude_none=True)))
    return str(path)


def bad_spec(tmp_path: Path, replace: str, by: str) -> str:
    path = tmp_path / f"spec_{len(list(tmp_path.glob('spec_*')))}.yaml"
    text = (REPO / "experiments" / "f1_podium" / "spec.yaml").read_text()
    assert replace in text
    path.write_text(text.replace(replace, by))
    return str(path)


FAST_SPACE = """decision_tree:
  max_depth: {type: int, low: 2, high: 8}
  min_samples_leaf: {type: int, low: 5, high: 100, log: true}
knn:  # more neighbours than any fold has rows: every trial fails
  n_neighbors: {type: int, low: 20000, high: 30000}
"""


def studies(storage: str) -> dict[str, optuna.Study]:
    names = optuna.get_all_study_names(open_storage(storage))
    return {n: optuna.load_study(study_name=n, storage=open_storage(storage)) for n in names}


def mlflow_tree(experiment: str = "f1_podium") -> tuple[list[Any], dict[str, list[Any]]]:
    """(family parent runs, their child runs by parent id) of an experiment."""
    client = MlflowClient()
    runs = client.search_runs([client.get_experiment_by_name(experiment).experiment_id], max_results=1000)
    parents = [r for r in runs if r.data.tags.get("podium.role") == "study"]
    children = {
        p.info.run_id: [r for r in runs if r.data.tags.get("mlflow.parentRunId") == p.info.run_id]
        for p in parents
    }
    return parents, children


def assert_children_mirror_trials(storage: str) -> None:
    parents, children = mlflow_tree()
    by_study = {p.data.tags["podium.study"]: p for p in parents}
    for name, study in studies(storage).items():
        runs = {int(r.data.tags["podium.trial"]): r for r in children[by_study[name].info.run_id]}
        assert sorted(runs) == [t.number for t in study.trials]
        for trial in study.trials:
            assert runs[trial.number].info.status == STATUS[trial.state.name]


def worker_env() -> dict[str, str]:
    """The environment of a child `podium` process: no leftover MLflow run, this test's tracking store."""
    return {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")} | {
        "MLFLOW_TRACKING_URI": os.environ["MLFLOW_TRACKING_URI"],
        "MLFLOW_DISABLE_TELEMETRY": "true",
    }


def tune_command(spec: Path, profile: Path, n_trials: int, storage: str | None = None) -> list[str]:
    """A child `podium tune` worker: `n_trials` decision_tree trials on this test's spec and profile."""
    tune = ["tune", "--family", "decision_tree", "-n", str(n_trials)]
    stored = ["--storage", storage] if storage else []
    return [
        sys.executable,
        "-m",
        "pipelines.cli",
        *tune,
        *stored,
        "--spec",
        str(spec),
        "--profile",
        str(profile),
    ]
