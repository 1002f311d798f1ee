"""Bring your own table: the store-demand example runs the whole flow from its spec alone.

`examples/store_demand/` holds a ready-made feature table (synthetic, written by make_data.py),
its tables.yaml, a search-space file and a spec with no `features` section. Nothing in it
knows about F1, and no Python or SQL is written for it.
"""

from __future__ import annotations

import gzip
import importlib.util
from pathlib import Path

import numpy as np
import optuna
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from pipelines import dataset
from pipelines.config import Profile, Spec
from pipelines.config_files import load_spec
from pipelines.dataset import FeatureSchema
from pipelines.errors import ConfigError
from pipelines.stages import evaluate, features, ingest, promote, score, train, tune
from pipelines.studies import open_storage
from pipelines.warehouse import connect
from tests.helpers import REPO

EXAMPLE = REPO / "examples" / "store_demand"
DATA = EXAMPLE / "data" / "weekly_demand.csv.gz"


@pytest.fixture(scope="module")
def example_spec() -> Spec:
    """The example's real spec file, loaded as `--spec examples/store_demand/store_demand.yaml` loads it."""
    return load_spec(str(EXAMPLE / "store_demand.yaml"), root=REPO)


@pytest.fixture(scope="module")
def table() -> pd.DataFrame:
    """The committed CSV, as a user's table."""
    return pd.read_csv(DATA, parse_dates=["week_start"])


@pytest.mark.slow
def test_the_example_runs_every_stage_from_its_spec(
    example_spec: Spec, table: pd.DataFrame, profile: Profile, tmp_path: Path
) -> None:
    spec = example_spec
    profile = profile.model_copy(update={"optuna_storage": str(tmp_path / "studies.journal")})
    assert spec.features is None, "the example's table is ready-made: no SQL feature models"

    assert ingest.main(profile, spec).rows == {spec.table: len(table)} == {"DEMAND.WEEKLY_DEMAND": 2928}

    checked = features.main(profile, spec)  # builds nothing, checks the spec's table
    assert checked.rows == {}
    assert {c.name: c.passed for c in checked.checks} == dict.fromkeys(
        ["keys_not_null", "keys_unique", "target_accepted", "row_count", "feature_contract"], True
    )

    board = {s.name: s for s in tune.main(profile, spec, n_trials=3).leaderboard}
    storage = open_storage(profile.optuna_storage)
    studies = {s.study_name: s.n_trials for s in optuna.get_all_study_summaries(storage)}
    assert studies == {f"store_demand-{f}": 3 for f in spec.tuning.families}
    best = min(spec.tuning.families, key=lambda f: board[f].cv_log_loss)
    assert (
        board[best].cv_log_loss
        < board["baseline:heuristic"].cv_log_loss
        < board["baseline:prior"].cv_log_loss
    )

    trained = train.main(profile, spec)
    assert trained.model_name == "store_demand" and trained.champion.version == "1"
    assert trained.champion.holdout["log_loss"] < trained.baselines["heuristic"]["log_loss"]

    decisions = promote.main(profile, spec, alias="champion", stage="Production")
    assert [(d.target, d.decision) for d in decisions] == [
        ("alias:champion", "promoted"),
        ("stage:Production", "promoted"),
    ]
    champion = MlflowClient().get_model_version_by_alias("store_demand", "champion")
    assert (str(champion.version), champion.current_stage) == ("1", "Production")

    window = table[table.week_start >= pd.Timestamp(spec.scoring.start)]
    scored = score.main(profile, spec)
    assert scored.rows_written == len(window) == 424
    with connect(profile, read_only=True) as warehouse:
        written = warehouse.query(f"SELECT * FROM {spec.scoring_table}")
    probabilities = ["P_HIGH", "P_NORMAL", "P_LOW"]
    assert list(written.columns[:6]) == ["STORE_ID", "WEEK_START", "PREDICTED_CLASS", *probabilities]
    assert np.allclose(written[probabilities].sum(axis=1), 1.0)
    assert set(written.PREDICTED_CLASS) <= set(spec.classes)
    keys = set(zip(written.STORE_ID, pd.to_datetime(written.WEEK_START), strict=True))
    assert keys == set(zip(window.store_id, window.week_start, strict=True)), "every window row scored once"

    result = evaluate.main(profile, spec)
    with connect(profile, read_only=True) as warehouse:
        monitoring = warehouse.query(f"SELECT * FROM {spec.monitoring.table}")
    quarters = ["2024Q1", "2024Q2", "2024Q3", "2024Q4"]
    timed = monitoring[monitoring.PERIOD != "all"]
    assert sorted(timed.PERIOD.unique()) == quarters
    assert set(timed.METRIC) == {"log_loss", "auc", "auc_classes", "accuracy", "rows", "hit_rate_top2_high"}
    assert timed[timed.METRIC == "rows"].VALUE.sum() == len(window)
    assert {f"psi.{c}" for c in ("PROMO_DEPTH", "REGION", "SALES_LAST_WEEK")} <= set(monitoring.METRIC)
    assert len(result.rows) == len(monitoring)


def test_a_spec_without_ingest_reads_its_table_as_it_is(example_spec: Spec, profile: Profile) -> None:
    ready = example_spec.model_copy(update={"ingest": None})
    assert ingest.main(profile, ready).rows == {}


def test_heuristic_and_hit_rate_misconfigurations_are_one_clear_error(example_spec: Spec) -> None:
    columns = {
        "STORE_ID": "BIGINT",
        "WEEK_START": "DATE",
        "STORE_NAME": "VARCHAR",
        "REGION": "VARCHAR",
        "STORE_FORMAT": "VARCHAR",
        "PROMO_DEPTH": "BIGINT",
        "UNITS_SOLD": "BIGINT",
        "DEMAND_CLASS": "VARCHAR",
    }
    assert dataset.feature_schema(example_spec, columns) == FeatureSchema(
        ["PROMO_DEPTH"], ["REGION", "STORE_FORMAT"]
    )

    def with_baseline(column: str) -> Spec:
        return example_spec.model_copy(
            update={"baseline": example_spec.baseline.model_copy(update={"column": column})}
        )

    with pytest.raises(ConfigError, match=r"spec baseline.column names \['PROMO'\]"):
        dataset.feature_schema(with_baseline("PROMO"), columns)
    with pytest.raises(ConfigError, match="baseline.column UNITS_SOLD is not a feature"):
        dataset.feature_schema(with_baseline("UNITS_SOLD"), columns)

    hit_rate = example_spec.monitoring.hit_rate
    evaluate.check_hit_rate(example_spec, hit_rate, columns)
    with pytest.raises(ConfigError, match="monitoring.hit_rate.class 'hi' is not one of"):
        evaluate.check_hit_rate(example_spec, hit_rate.model_copy(update={"target_class": "hi"}), columns)
    with pytest.raises(ConfigError, match="monitoring.hit_rate.group WEEK is not a column"):
        evaluate.check_hit_rate(example_spec, hit_rate.model_copy(update={"group": "WEEK"}), columns)


def test_make_data_regenerates_the_committed_csv(tmp_path: Path) -> None:
    module_spec = importlib.util.spec_from_file_location("make_data", EXAMPLE / "make_data.py")
    make_data = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(make_data)
    out = tmp_path / "weekly_demand.csv.gz"
    assert make_data.write(out) == 2928
    assert gzip.decompress(out.read_bytes()) == gzip.decompress(DATA.read_bytes())


@pytest.mark.parametrize("path", ["store_demand.yaml", "data/tables.yaml"])
def test_the_docs_show_the_example_files_as_they_are(path: str) -> None:
    page = (REPO / "docs" / "bring-your-own.md").read_text()
    shown = page.split(f"```yaml\n# examples/store_demand/{path}\n", 1)[1].split("```\n", 1)[0]
    assert shown == (EXAMPLE / path).read_text(), (
        f"docs/bring-your-own.md's copy of examples/store_demand/{path} is stale"
    )
