"""Shared fixtures: the repo's real spec, a tmp DuckDB profile, a tmp MLflow store.

Tests run on small real data: the bundled F1 tables or frames built in the test.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import mlflow
import pytest

from pipelines import features, ingest
from pipelines.config import Profile, Spec, load_spec

REPO = Path(__file__).resolve().parent.parent
os.environ["MLFLOW_DISABLE_TELEMETRY"] = "true"  # tests talk to loopback only


def duckdb_profile(path: Path) -> Profile:
    """A profile whose warehouse is a DuckDB file at `path`."""
    return Profile.model_validate({"name": "test", "warehouse": {"backend": "duckdb", "path": path}})


@pytest.fixture(scope="session")
def spec() -> Spec:
    """The bundled F1 spec, with its paths resolved against the repo."""
    return load_spec("f1_podium", root=REPO)


@pytest.fixture
def profile(tmp_path: Path) -> Profile:
    """A profile on an empty DuckDB file of this test's own."""
    return duckdb_profile(tmp_path / "warehouse.duckdb")


@pytest.fixture(autouse=True)
def mlflow_store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """Every test gets its own MLflow store; no run is left active afterwards."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    for leftover in ("MLFLOW_RUN_ID", "MLFLOW_EXPERIMENT_ID", "MLFLOW_EXPERIMENT_NAME"):
        monkeypatch.delenv(leftover, raising=False)
    mlflow.set_tracking_uri(uri)
    yield uri
    while mlflow.active_run():
        mlflow.end_run()


@pytest.fixture(scope="session")
def built_profile(tmp_path_factory: pytest.TempPathFactory, spec: Spec) -> Profile:
    """A DuckDB warehouse with the raw F1 tables ingested and the features built, once per session."""
    root = tmp_path_factory.mktemp("built")
    previous = os.environ.get("MLFLOW_TRACKING_URI")
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{root / 'mlflow.db'}"
    try:
        profile = duckdb_profile(root / "warehouse.duckdb")
        ingest.main(profile, spec)
        features.main(profile, spec)
    finally:
        if previous is None:
            os.environ.pop("MLFLOW_TRACKING_URI", None)
        else:
            os.environ["MLFLOW_TRACKING_URI"] = previous
    return profile
