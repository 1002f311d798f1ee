"""Two `tune` workers on one Optuna study in a real PostgreSQL, the storage workers on many machines share.

The cluster is a throwaway one the tests start on a loopback port (`tests.servers.postgres_server`);
the test skips only where PostgreSQL is not installed at all.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import optuna
import pytest
from mlflow.tracking import MlflowClient

from pipelines import registry
from pipelines.config import Profile, Spec
from pipelines.errors import PodiumError
from pipelines.studies import open_storage
from tests.helpers import (
    FAST_SPACE,
    REPO,
    assert_children_mirror_trials,
    mlflow_tree,
    studies,
    tune_command,
    worker_env,
)
from tests.servers import postgres_server


@pytest.fixture(scope="module")
def postgres_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The SQLAlchemy URL of an empty database on a PostgreSQL cluster of this module's own."""
    with postgres_server(tmp_path_factory.mktemp("postgres")) as url:
        yield url


@pytest.mark.slow
def test_two_workers_on_postgres_share_one_study_and_one_parent(
    postgres_url: str, built_profile: Profile, spec: Spec, tmp_path: Path
) -> None:
    text = (REPO / "experiments" / "f1_podium" / "spec.yaml").read_text()
    (tmp_path / "space.yaml").write_text(FAST_SPACE)
    (tmp_path / "spec.yaml").write_text(
        text.replace("experiments/f1_podium/search_space.yaml", str(tmp_path / "space.yaml"))
    )
    (tmp_path / "profile.yaml").write_text(
        f"warehouse: {{backend: duckdb, path: {built_profile.warehouse.path}}}\n"
    )
    env = worker_env()
    command = tune_command(tmp_path / "spec.yaml", tmp_path / "profile.yaml", 6, postgres_url)
    MlflowClient().search_experiments()  # create the store once; two fresh processes would race its migration
    workers = [
        subprocess.Popen(command, cwd=REPO, env=env, stderr=subprocess.PIPE, text=True) for _ in range(2)
    ]
    for worker in workers:
        assert worker.wait(timeout=300) == 0, worker.stderr.read()[-2000:]

    (study,) = studies(postgres_url).values()
    assert len(study.trials) == 12
    assert sorted(t.number for t in study.trials) == list(range(12))
    parents, children = mlflow_tree()
    assert len(parents) == 1 and parents[0].data.tags["podium.study"] == study.study_name
    assert len(children[parents[0].info.run_id]) == 12
    assert_children_mirror_trials(postgres_url)


def test_a_plain_postgresql_url_opens_with_psycopg_3(postgres_url: str) -> None:
    """The URL `podium tune --help` shows: SQLAlchemy 2.1 maps postgresql:// to psycopg 3."""
    plain = postgres_url.replace("postgresql+psycopg2://", "postgresql://")
    storage = open_storage(plain)
    optuna.create_study(study_name="plain-url", storage=storage).optimize(
        lambda t: t.suggest_float("x", 0, 1), 2
    )
    assert len(optuna.load_study(study_name="plain-url", storage=storage).trials) == 2


def test_a_storage_password_is_refused_and_never_printed(postgres_url: str, spec: Spec) -> None:
    with_password = postgres_url.replace("postgres@", "postgres:s3cret@")
    with pytest.raises(PodiumError) as raised:
        registry.best_trials(spec, with_password, family="svc")
    assert "carries a password" in str(raised.value) and "PGPASSWORD" in str(raised.value)
    assert "s3cret" not in str(raised.value) and "postgres:***@" in str(raised.value)


def test_the_password_comes_from_pgpassword(
    postgres_url: str, spec: Spec, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PGPASSWORD", "s3cret")  # libpq reads it; the trust cluster accepts any
    with pytest.raises(PodiumError) as raised:
        registry.best_trials(spec, postgres_url, family="svc")  # no svc study here: the error path
    assert "no completed trials" in str(raised.value) and "s3cret" not in str(raised.value)
