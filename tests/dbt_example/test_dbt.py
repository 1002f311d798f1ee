"""dbt in, dbt out: the example dbt project (examples/dbt_store_demand) builds the features Podium
trains on, its outputs come back to dbt as tested sources, and the champion scores inside the DAG.

Everything runs on DuckDB through dbt's own runner (dbt-duckdb), in a child process as the features
stage runs it. One `podium run` of the example is made once per module; each test works on copies.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Any

import duckdb
import mlflow
import numpy as np
import pandas as pd
import pytest
import yaml
from mlflow import MlflowClient

from pipelines import dataset, dbt_project, dbt_sources, pipeline
from pipelines.config import Profile, Spec, TuningBudget
from pipelines.config_files import load_spec
from pipelines.errors import ConfigError, DataQualityError
from pipelines.stages import features
from pipelines.warehouse import connect
from tests.helpers import (
    REPO,
    Snapshot,
    duckdb_profile,
    profile_file,
    read,
    restore,
    spec_file,
    tracking_store,
    worker_env,
)
from tests.reliability.child import context, instants, run, timed

EXAMPLE = REPO / "examples" / "dbt_store_demand"
KILLS = 4
pytestmark = pytest.mark.slow


def project_copy(root: Path) -> Path:
    """The example dbt project, copied: tests edit its SQL and dbt writes beside it."""
    return Path(shutil.copytree(EXAMPLE, root / "project", ignore=shutil.ignore_patterns("target", "logs")))


def example_spec(project: Path) -> Spec:
    """The example's spec, on the project copy, with a small tuning budget."""
    spec = load_spec(str(EXAMPLE / "store_demand_dbt.yaml"), root=REPO)
    assert spec.features and spec.features.dbt and spec.tuning
    dbt = spec.features.dbt.model_copy(update={"project_dir": project})
    tuning = spec.tuning.model_copy(update={"budget": TuningBudget(trials=2)})
    return spec.model_copy(
        update={"features": spec.features.model_copy(update={"dbt": dbt}), "tuning": tuning}
    )


@pytest.fixture(scope="module")
def ran(tmp_path_factory: pytest.TempPathFactory) -> Snapshot:
    """`podium run` of the example on a fresh DuckDB file, once; its value is (spec, the stages' results)."""
    root = tmp_path_factory.mktemp("dbt_run")
    spec = example_spec(project_copy(root))
    profile = duckdb_profile(root / "warehouse.duckdb").model_copy(
        update={"optuna_storage": str(root / "studies.journal")}
    )
    store = root / "mlflow.db"
    results: list[Any] = []
    previous = mlflow.get_tracking_uri()
    with tracking_store(f"sqlite:///{store}"):
        mlflow.set_tracking_uri(f"sqlite:///{store}")
        try:
            pipeline.run(profile, spec, results.append)
        finally:
            mlflow.set_tracking_uri(previous)
    return Snapshot(profile.warehouse.path, store, (spec, results))


def fresh(ran: Snapshot, tmp_path: Path, mlflow_store: str) -> tuple[Profile, Spec]:
    """This test's copies of the run's warehouse, MLflow store and dbt project."""
    return restore(ran, duckdb_profile(ran.warehouse), tmp_path, mlflow_store), example_spec(
        project_copy(tmp_path)
    )


def run_dbt(profile: Profile, project: Path, *args: str) -> dict[str, Any]:
    """One dbt command on the project and the profile's warehouse, as the features stage runs dbt."""
    return dbt_project.run(profile, project, "DEMAND_DBT", "podium", list(args))


def test_podium_run_trains_on_the_features_dbt_built_and_its_versions_name_the_build(ran: Snapshot) -> None:
    spec, results = ran.value
    profile = duckdb_profile(ran.warehouse)
    built = results[1]
    assert built.rows == {spec.table: 2928} and all(c.passed for c in built.checks)
    client = MlflowClient(f"sqlite:///{ran.store}")
    (feature_run,) = client.search_runs(
        client.get_experiment_by_name(spec.name).experiment_id, "tags.`podium.stage` = 'features'"
    )
    record = read(profile, f"SELECT * FROM {dataset.dbt_build_table(spec)}").iloc[0]
    champion = client.get_model_version_by_alias(spec.model_name, "champion")
    for tag, column in [
        ("podium.dbt_invocation_id", "DBT_INVOCATION_ID"),
        ("podium.dbt_sql_checksum", "DBT_SQL_CHECKSUM"),
    ]:
        assert champion.tags[tag] == feature_run.data.tags[tag] == record[column], tag
    assert "model.store_demand_dbt.store_demand_features" in champion.tags["podium.dbt_models"].split()
    scored = read(profile, f"SELECT COUNT(*) AS N, MIN(WEEK_START) AS FIRST FROM {spec.scoring_table}").iloc[
        0
    ]
    assert scored.N == 8 * 53 and str(scored.FIRST.date()) == "2024-01-01", "every 2024 store-week scored"


def test_a_failing_dbt_test_fails_the_stage_and_leaves_the_feature_table_as_it_was(
    ran: Snapshot, tmp_path: Path, mlflow_store: str
) -> None:
    profile, spec = fresh(ran, tmp_path, mlflow_store)
    assert spec.features and spec.features.dbt
    before = read(profile, f"SELECT * FROM {spec.table} ORDER BY ALL")
    record = read(profile, f"SELECT * FROM {dataset.dbt_build_table(spec)}")
    tests = spec.features.dbt.project_dir / "models" / "features" / "features.yml"
    tests.write_text(tests.read_text().replace("values: [high, normal, low]", "values: [high, normal]"))

    with pytest.raises(DataQualityError, match="accepted_values_store_demand_features_demand_class"):
        features.main(profile, spec)

    pd.testing.assert_frame_equal(read(profile, f"SELECT * FROM {spec.table} ORDER BY ALL"), before)
    pd.testing.assert_frame_equal(read(profile, f"SELECT * FROM {dataset.dbt_build_table(spec)}"), record)


def training_digest(profile: Profile, spec: Spec) -> str:
    with connect(profile, read_only=True) as warehouse:
        schema = dataset.read_schema(warehouse, spec)
        window = dataset.load_training(warehouse, spec, schema)
    return dataset.lineage_dataset(spec, window, dataset.training_name(spec)).digest


def test_changing_a_dbt_model_sql_changes_the_data_digest_even_when_the_rows_stay_the_same(
    ran: Snapshot, tmp_path: Path, mlflow_store: str
) -> None:
    profile, spec = fresh(ran, tmp_path, mlflow_store)
    assert spec.features and spec.features.dbt
    rows_before, digest_before = (
        read(profile, f"SELECT * FROM {spec.table} ORDER BY ALL"),
        training_digest(profile, spec),
    )
    model = spec.features.dbt.project_dir / "models" / "features" / "store_demand_features.sql"
    model.write_text(model.read_text().replace("from sales\n", "from sales  -- the same rows, another SQL\n"))

    features.main(profile, spec)

    pd.testing.assert_frame_equal(read(profile, f"SELECT * FROM {spec.table} ORDER BY ALL"), rows_before)
    assert training_digest(profile, spec) != digest_before


def test_dbt_sources_parse_in_the_example_and_their_tests_pass_on_the_run_tables(
    ran: Snapshot, tmp_path: Path, mlflow_store: str
) -> None:
    profile, spec = fresh(ran, tmp_path, mlflow_store)
    assert spec.features and spec.features.dbt
    project = spec.features.dbt.project_dir
    committed = yaml.safe_load((EXAMPLE / "models" / "podium" / "sources.yml").read_text())
    assert committed == dbt_sources.document(spec), "rerun `podium dbt-sources` for the example"

    assert run_dbt(profile, project, "parse")["problem"] == ""
    tested = run_dbt(profile, project, "test", "--select", "source:*")
    assert tested["problem"] == ""
    sources = project / "models" / "podium" / "sources.yml"
    sources.write_text(sources.read_text().replace("            - normal\n            - low\n", "", 1))
    failed = run_dbt(profile, project, "test", "--select", "source:*")["problem"]
    assert "source_accepted_values_podium_demand_store_demand_dbt_scores_PREDICTED_CLASS" in failed


def test_the_dbt_python_model_scores_like_podium_score(
    ran: Snapshot, tmp_path: Path, mlflow_store: str
) -> None:
    profile, spec = fresh(
        ran, tmp_path, mlflow_store
    )  # MLFLOW_TRACKING_URI: this copy (the model's registry)
    assert spec.features and spec.features.dbt

    outcome = run_dbt(profile, spec.features.dbt.project_dir, "run", "--select", "store_demand_scored")

    assert outcome["problem"] == ""
    probabilities = dataset.probability_columns(spec)
    in_dbt = read(profile, "SELECT * FROM DEMAND_DBT.STORE_DEMAND_SCORED")
    podium = read(profile, f"SELECT * FROM {spec.scoring_table} WHERE MODEL_ALIAS = 'champion'")
    both = podium.merge(in_dbt, on=["STORE_ID", "WEEK_START", "MODEL_VERSION"], suffixes=("", "_DBT"))
    assert len(both) == len(podium) == len(in_dbt) == 8 * 53
    assert (both.PREDICTED_CLASS == both.PREDICTED_CLASS_DBT).all()
    np.testing.assert_allclose(
        both[probabilities], both[[f"{p}_DBT" for p in probabilities]], rtol=0, atol=1e-12
    )


def feature_state(profile: Profile, spec: Spec) -> tuple[str, int]:
    """The build record's checksum and a digest of the spec's table, once no process holds the file.

    A killed `features` leaves its dbt worker to notice (within a second) and exit: until then the
    DuckDB file is locked, so this waits for it, and fails if the worker outlives its parent.
    """
    for _ in range(20):
        try:
            with duckdb.connect(str(profile.warehouse.path), read_only=True) as con:
                checksum = con.execute(
                    f"SELECT DBT_SQL_CHECKSUM FROM {dataset.dbt_build_table(spec)}"
                ).fetchone()
                total = con.execute(f"SELECT SUM(ROUND(SALES_LAST_WEEK * 10)) FROM {spec.table}").fetchone()
            assert checksum and total
            return str(checksum[0]), int(total[0])  # tenths, summed exactly in any order
        except duckdb.IOException:  # the file is still locked by the killed run's dbt worker
            time.sleep(0.5)
    raise AssertionError("the warehouse stayed locked 10 s after the kill: a dbt worker outlived `features`")


@pytest.mark.timed
def test_a_killed_dbt_features_run_leaves_the_table_and_its_record_of_one_build(
    ran: Snapshot, tmp_path: Path, mlflow_store: str
) -> None:
    profile, spec = fresh(ran, tmp_path, mlflow_store)
    assert spec.features and spec.features.dbt
    model = spec.features.dbt.project_dir / "models" / "features" / "store_demand_features.sql"
    sql = [
        model.read_text(),
        model.read_text().replace("/ nullif(sales.usual_units, 0), 1)", "/ nullif(sales.usual_units, 0), 0)"),
    ]
    assert sql[0] != sql[1]
    ctx, env = context(), worker_env()
    args = [
        "features",
        "-p",
        profile_file(tmp_path, profile),
        "--spec",
        spec_file(spec, tmp_path / "spec.yaml"),
    ]
    versions = []
    for text in sql:
        model.write_text(text)
        duration = timed(ctx, args, env, str(REPO))
        versions.append(feature_state(profile, spec))
    assert versions[0] != versions[1] and versions[0][0] != versions[1][0]
    for i, instant in enumerate(instants(duration, KILLS)):
        before = feature_state(profile, spec)
        model.write_text(sql[i % 2])
        run(ctx, args, env, str(REPO), instant)
        after = feature_state(profile, spec)
        assert after in (before, versions[i % 2]), f"kill {i} at {instant:.2f}s left a mix: {after}"
    model.write_text(sql[0])
    assert timed(ctx, args, env, str(REPO)) and feature_state(profile, spec) == versions[0]


def test_the_snowflake_profile_podium_writes_for_dbt_names_every_secret_by_variable_only(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """dbt-snowflake accepts the profile (`dbt parse` renders it; parsing opens no connection), and the
    file holds `env_var()` references where the secrets go, never their values."""
    for name, value in {
        "SNOWFLAKE_ACCOUNT": "acme-x1",
        "SNOWFLAKE_USER": "ana",
        "SNOWFLAKE_PASSWORD": "s3cr3t-pw",
    }.items():
        monkeypatch.setenv(name, value)
    warehouse = {"backend": "snowflake", "database": "PODIUM", "warehouse": "PODIUM_WH"}
    profile = Profile.model_validate({"name": "sf", "warehouse": warehouse})
    written = dbt_project.target(profile, "DEMAND_DBT")
    assert not {"s3cr3t-pw", "ana", "acme-x1"} & {str(v) for v in written.values()}
    assert written["password"] == "{{ env_var('SNOWFLAKE_PASSWORD') }}"
    assert written["warehouse"] == "PODIUM_WH" and written["database"] == "PODIUM"

    assert run_dbt(profile, project_copy(tmp_path), "parse")["problem"] == ""

    named = Profile.model_validate({"name": "sf", "warehouse": warehouse | {"connection_name": "prod"}})
    with pytest.raises(ConfigError, match="which dbt cannot read"):
        dbt_project.target(named, "DEMAND_DBT")
