"""Shared fixtures: the repo's real spec, a tmp DuckDB profile, a tmp MLflow store.

Tests run on small real data: the bundled F1 tables or frames built in the test.
"""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path

import mlflow
import pytest

from pipelines.config import Profile, Spec
from pipelines.config_files import load_spec
from pipelines.stages import features, ingest
from tests import scheduling
from tests.helpers import REPO, Snapshot, duckdb_profile, snapshot, tracking_store

os.environ["MLFLOW_DISABLE_TELEMETRY"] = "true"  # tests talk to loopback only


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """On an xdist worker, the heaviest modules first and the `timed` tests last (tests/scheduling.py)."""
    if hasattr(config, "workerinput"):
        scheduling.order(items)


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log: object) -> object | None:
    """`--dist loadgroup`: a shared module goes to one worker (tests/scheduling.py); other modes: xdist's."""
    return scheduling.make_scheduler(config, log) if config.getoption("dist") == "loadgroup" else None


@pytest.hookimpl(wrapper=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None) -> Iterator[object]:
    """Under xdist a `timed` test runs with no other test beside it (tests/scheduling.py)."""
    with scheduling.running(item):
        return (yield)


@pytest.fixture(scope="session")
def spec() -> Spec:
    """The bundled F1 spec, with its paths resolved against the repo."""
    return load_spec("f1_podium", root=REPO)


@pytest.fixture
def profile(tmp_path: Path) -> Profile:
    """A profile on an empty DuckDB file of this test's own."""
    return duckdb_profile(tmp_path / "warehouse.duckdb")


@pytest.fixture(scope="session", autouse=True)
def migrated_once(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """A new SQLite MLflow store opened in this process is a copy of one migrated once per session.

    MLflow builds a new store by running every schema migration, about a second each time; here it gets
    the same tables and schema version by SQLite's backup from a store migrated at the session's start
    (no experiment in it: MLflow adds its Default experiment as for any new store). Other stores, and
    stores that `podium` and `mlflow` processes create, are built by MLflow as ever.
    """
    import sqlite3

    import sqlalchemy
    from mlflow.store.db import utils
    from mlflow.store.model_registry import sqlalchemy_store as registry_store

    migrate = utils._initialize_tables
    template = tmp_path_factory.mktemp("migrated") / "mlflow.db"
    engine = sqlalchemy.create_engine(f"sqlite:///{template}")
    migrate(engine)
    engine.dispose()

    def initialize(engine: sqlalchemy.engine.Engine) -> None:
        if engine.url.get_backend_name() != "sqlite" or engine.url.database in (None, "", ":memory:"):
            return migrate(engine)
        with engine.connect() as connection, sqlite3.connect(template) as source:
            source.backup(connection.connection.driver_connection)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(utils, "_initialize_tables", initialize)
        patch.setattr(registry_store, "_initialize_tables", initialize)
        yield


@pytest.fixture(autouse=True)
def main_module_kept() -> Iterator[None]:
    """Streamlit's AppTest installs the app's script as `__main__` and leaves it there; a worker
    process spawned later would rerun the app on start (seconds each), so each test puts it back."""
    main = sys.modules["__main__"]
    yield
    sys.modules["__main__"] = main


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
def fakesnow_server() -> Iterator[dict]:
    """Connection kwargs of one emulated Snowflake on loopback, shared by the session's Snowpark tests.

    fakesnow's HTTP server with its gaps on the upload and MERGE paths closed (tests/snowflake/emulator.py).
    """
    from tests.snowflake.emulator import emulator

    with emulator() as kwargs:
        yield kwargs


@pytest.fixture(scope="session")
def built_profile(tmp_path_factory: pytest.TempPathFactory, spec: Spec) -> Profile:
    """A DuckDB warehouse with the raw F1 tables ingested and the features built, once per session."""
    root = tmp_path_factory.mktemp("built")
    profile = duckdb_profile(root / "warehouse.duckdb")
    with tracking_store(f"sqlite:///{root / 'mlflow.db'}"):
        ingest.main(profile, spec)
        features.main(profile, spec)
    return profile


TUNED_SPACE = """decision_tree:
  max_depth: {type: int, low: 2, high: 8}
  min_samples_leaf: {type: int, low: 5, high: 100, log: true}
logreg:
  C: {type: float, low: 0.01, high: 10.0, log: true}
"""


@pytest.fixture(scope="session")
def tuned(
    tmp_path_factory: pytest.TempPathFactory, built_profile: Profile, spec: Spec
) -> tuple[Profile, Spec]:
    """(profile, spec) whose Optuna journal holds small finished studies of decision_tree and logreg."""
    from pipelines.stages import tune

    root = tmp_path_factory.mktemp("tuned")
    (root / "space.yaml").write_text(TUNED_SPACE)
    tuning = spec.tuning.model_copy(
        update={"search_space": root / "space.yaml", "families": ["decision_tree", "logreg"]}
    )
    small = spec.model_copy(update={"tuning": tuning})
    profile = built_profile.model_copy(update={"optuna_storage": str(root / "studies.journal")})
    with tracking_store(f"sqlite:///{root / 'mlflow.db'}"):
        tune.main(profile, small, n_trials=4)
    return profile, small


@pytest.fixture
def trained_profile(tuned: tuple[Profile, Spec], tmp_path: Path) -> Profile:
    """The tuned profile on this test's own copy of the warehouse (promotions write to it)."""
    profile, _ = tuned
    copy = tmp_path / "warehouse.duckdb"
    shutil.copyfile(profile.warehouse.path, copy)
    return profile.model_copy(update={"warehouse": profile.warehouse.model_copy(update={"path": copy})})


@pytest.fixture(scope="session")
def two_versions(tmp_path_factory: pytest.TempPathFactory, tuned: tuple[Profile, Spec]) -> Snapshot:
    """`train --top-k 2` on the tuned warehouse, once per session: versions 1 and 2, no alias yet.

    Its value is train's result; tests restore a copy of its warehouse and MLflow store (tests.helpers).
    """
    from pipelines.stages import train

    profile, spec = tuned
    return snapshot(tmp_path_factory.mktemp("two_versions"), profile, lambda p: train.main(p, spec, top_k=2))


@pytest.fixture(scope="session")
def crowned_2018(tmp_path_factory: pytest.TempPathFactory, tuned: tuple[Profile, Spec]) -> Snapshot:
    """The cycles' rehearsal (tests.cycles): v1 trained before 2018, champion and in Production; once."""
    from tests.cycles import crown

    profile, spec = tuned
    return snapshot(tmp_path_factory.mktemp("crowned_2018"), profile, lambda p: crown(p, spec))
