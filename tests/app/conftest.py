"""The states the app is driven on: a rehearsed F1 lifecycle with every table, the store-demand example, and
the F1 features with nothing else yet. Each is built once per session and restored per test."""

from __future__ import annotations

import duckdb
import pytest

from pipelines import pipeline
from pipelines.config import Profile, Spec
from pipelines.config_files import load_spec
from pipelines.stages import backtest, cycle, evaluate, features, ingest, promote, score, train, tune
from tests.app.states import STORE_DEMAND, lifecycle_spec
from tests.cycles import SEASONS
from tests.helpers import REPO, Snapshot, duckdb_profile, snapshot


@pytest.fixture(scope="session")
def lifecycle(
    tmp_path_factory: pytest.TempPathFactory, crowned_2018: Snapshot, tuned: tuple[Profile, Spec]
) -> Snapshot:
    """Three cycles (2020 keeps v1; 2021 retrains, shadows and promotes v2; 2022 judges the 2021 pairs)
    and a backtest: scores, monitoring, drift bins, shadow gains, promotions, cycles and backtest rows."""
    root = tmp_path_factory.mktemp("app_lifecycle")
    spec = lifecycle_spec(tuned[1])

    def build(profile: Profile) -> None:
        profile = profile.model_copy(update={"optuna_storage": str(root / "optuna" / "studies.journal")})
        for day in SEASONS:
            cycle.main(profile, spec, pipeline.LIFECYCLE, as_of=day)
        backtest.main(profile, spec, pipeline.LIFECYCLE)

    return snapshot(root, tuned[0], build, base=crowned_2018)


@pytest.fixture(scope="session")
def store_demand(tmp_path_factory: pytest.TempPathFactory) -> Snapshot:
    """The store-demand example through every stage (three trials per family): its champion scored and
    evaluated."""
    root = tmp_path_factory.mktemp("app_store_demand")
    spec = load_spec(str(STORE_DEMAND), root=REPO)

    def build(profile: Profile) -> None:
        profile = profile.model_copy(update={"optuna_storage": str(root / "studies.journal")})
        ingest.main(profile, spec)
        features.main(profile, spec)
        tune.main(profile, spec, n_trials=3)
        train.main(profile, spec)
        promote.main(profile, spec)
        score.main(profile, spec)
        evaluate.main(profile, spec)

    empty = root / "empty.duckdb"
    duckdb.connect(str(empty)).close()
    (root / "state").mkdir()
    return snapshot(root / "state", duckdb_profile(empty), build)
