"""Hostile and careless input, as a user would give it: each prints one clear line and changes nothing.

Each test reproduces one finding of the reliability review (issue 13) on real data and checks the fix.
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import optuna
import pytest

from pipelines import tracking
from pipelines.config import Profile, Spec
from pipelines.config_files import load_spec
from pipelines.errors import ConfigError, PodiumError
from pipelines.stages import tune
from pipelines.studies import open_storage
from pipelines.warehouse import connect
from tests.helpers import REPO, bad_spec, duckdb_profile, podium, profile_file


@pytest.fixture
def own_warehouse(built_profile: Profile, tmp_path: Path) -> Profile:
    """A copy of the built warehouse this test may damage."""
    copy = tmp_path / "warehouse.duckdb"
    shutil.copyfile(built_profile.warehouse.path, copy)
    return duckdb_profile(copy)


def rows(profile: Profile, table: str) -> int:
    with connect(profile, read_only=True) as warehouse:
        return int(warehouse.query(f"SELECT COUNT(*) AS N FROM {table}").N[0])


@pytest.mark.parametrize(
    "statement", ["DROP TABLE RAW.RESULTS", "delete from RAW.RESULTS", "update RAW.RESULTS set GRID = 0"]
)
def test_sql_is_read_only_unless_asked_to_write(
    statement: str, own_warehouse: Profile, tmp_path: Path, capsys, monkeypatch
) -> None:
    before = rows(own_warehouse, "RAW.RESULTS")
    code, _, err = podium(
        ["sql", statement, "-p", profile_file(tmp_path, own_warehouse)], capsys, monkeypatch
    )
    assert code == 1 and "read-only" in err and "--write" in err and "Traceback" not in err
    assert rows(own_warehouse, "RAW.RESULTS") == before > 20000


def test_sql_write_runs_dml_on_purpose(own_warehouse: Profile, tmp_path: Path, capsys, monkeypatch) -> None:
    args = [
        "sql",
        "--write",
        "delete from RAW.RESULTS where RACE_ID < 100",
        "-p",
        profile_file(tmp_path, own_warehouse),
    ]
    before = rows(own_warehouse, "RAW.RESULTS")
    code, _, _ = podium(args, capsys, monkeypatch)
    assert code == 0 and 0 < rows(own_warehouse, "RAW.RESULTS") < before


@pytest.mark.parametrize(
    ("replace", "by", "message"),
    [
        ("train_start: 2010-01-01", "train_start: 2021-13-45", "write dates as YYYY-MM-DD"),
        ("classes: [podium, points, none]", "classes: [podium, points, podium]", "more than once"),
        ("  start: 2021-01-01", "  start: 2021-01-01\n  end: 2020-01-01", "must be after start"),
        ("expect_rows: {min: 5000, max: 6500}", "expect_rows: {min: 6500, max: 5000}", "is below min"),
    ],
)
def test_spec_mistakes_are_config_errors(
    replace: str, by: str, message: str, tmp_path: Path, profile: Profile, capsys, monkeypatch
) -> None:
    path = bad_spec(tmp_path, replace, by)
    with pytest.raises(ConfigError, match=message):
        load_spec(path)
    code, _, err = podium(
        ["features", "-p", profile_file(tmp_path, profile), "--spec", path], capsys, monkeypatch
    )
    assert code == 1 and message in err and "Traceback" not in err


def test_a_class_the_data_never_holds_is_refused_before_any_trial(built_profile: Profile, spec: Spec) -> None:
    extra = spec.model_copy(update={"classes": [*spec.classes, "fastest_lap"]})
    with pytest.raises(PodiumError, match=r"classes \['fastest_lap'\] never occur in the training window"):
        tune.main(built_profile, extra, family="decision_tree", n_trials=1)


def test_a_truncated_warehouse_file_names_the_fix(
    own_warehouse: Profile, tmp_path: Path, capsys, monkeypatch
) -> None:
    path = own_warehouse.warehouse.path
    path.write_bytes(path.read_bytes()[:100_000])
    code, _, err = podium(["status", "-p", profile_file(tmp_path, own_warehouse)], capsys, monkeypatch)
    assert code == 1 and "is damaged or not a DuckDB file" in err and "podium ingest" in err
    assert "Traceback" not in err


def test_a_file_damaged_inside_its_data_names_the_fix_when_a_query_reaches_it(
    own_warehouse: Profile, tmp_path: Path, capsys, monkeypatch
) -> None:
    path = own_warehouse.warehouse.path
    with path.open("r+b") as file:  # the file opens; the feature table's data blocks end early
        file.truncate(int(path.stat().st_size * 0.75))
    query = "select sum(GRID) as g, max(CIRCUIT_REF) as c from ML.F1_FEATURES"
    code, _, err = podium(["sql", "-p", profile_file(tmp_path, own_warehouse), query], capsys, monkeypatch)
    assert code == 1 and "is damaged or not a DuckDB file" in err and "restore it from a backup" in err
    assert "Traceback" not in err
    assert len([line for line in err.splitlines() if line.startswith("error:")]) == 1


def test_a_quoted_column_name_in_the_manifest_is_refused(tmp_path: Path, spec: Spec) -> None:
    from pipelines.stages import ingest

    source = tmp_path / "data"
    shutil.copytree(REPO / "experiments" / "f1_podium" / "data", source)
    manifest = (source / "tables.yaml").read_text()
    assert "raceId: INTEGER" in manifest
    (source / "tables.yaml").write_text(manifest.replace("raceId: INTEGER", "'race\"Id;': INTEGER", 1))
    with pytest.raises(ConfigError, match="not a valid SQL identifier"):
        ingest.read_manifest(source)


def test_mlflow_http_retries_are_bounded_unless_the_user_set_them(profile: Profile, monkeypatch) -> None:
    for name in tracking.HTTP_RETRIES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "5")
    tracking.configure(profile)
    assert os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] == "3"
    assert os.environ["MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR"] == "5"


def test_a_torn_journal_line_loses_no_study(built_profile: Profile, spec: Spec, tmp_path: Path) -> None:
    """`truncate -s -37` on the journal, as a writer killed mid-line leaves it: tune mends it and goes on."""
    journal = tmp_path / "studies.journal"
    tune.main(built_profile, spec, family="decision_tree", n_trials=3, storage=str(journal))
    whole = journal.read_bytes()
    journal.write_bytes(whole[:-37])
    before = optuna.load_study(
        study_name="f1_podium-decision_tree", storage=open_storage(str(journal), False)
    )
    kept = {t.number: t.state for t in before.trials}

    tune.main(built_profile, spec, family="decision_tree", n_trials=1, storage=str(journal))

    (backup,) = tmp_path.glob("studies.journal.torn-*")
    assert backup.read_bytes() == whole[:-37] and journal.read_bytes().startswith(
        whole[: whole[:-37].rfind(b"\n") + 1]
    )
    after = optuna.load_study(study_name="f1_podium-decision_tree", storage=open_storage(str(journal)))
    assert {n: after.trials[n].state for n in kept} == kept
    assert len(after.trials) == len(kept) + 1 and after.trials[-1].state.name == "COMPLETE"


def raw_copy(tmp_path: Path) -> Path:
    source = tmp_path / "f1"
    shutil.copytree(REPO / "experiments" / "f1_podium" / "data", source)
    return source


def from_source(spec: Spec, source: Path) -> Spec:
    return spec.model_copy(update={"ingest": spec.ingest.model_copy(update={"source": source})})


def table_counts(profile: Profile, tables: list[str]) -> dict[str, int]:
    return {t: rows(profile, t) for t in tables}


def replace_csv(source: Path, table: str, text: str) -> None:
    (source / f"{table}.csv.gz").unlink()
    (source / f"{table}.csv").write_text(text)


def csv_text(table: str) -> str:
    import gzip

    path = REPO / "experiments" / "f1_podium" / "data" / f"{table}.csv.gz"
    return gzip.decompress(path.read_bytes()).decode()


RAW_AND_ML = ["RAW.RESULTS", "RAW.CIRCUITS", "ML.F1_FEATURES", "ML.F1_DRIVER_FORM", "ML.F1_RACES"]


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("header-only results", "fewer than its contract's min_rows"),
        ("duplicated results", "breaks its key ['resultId']"),
        ("changed circuits, ragged races", "is not a readable CSV"),
    ],
)
def test_ingest_publishes_every_table_or_none(
    case: str, message: str, own_warehouse: Profile, spec: Spec, tmp_path: Path
) -> None:
    source = raw_copy(tmp_path)
    if case == "header-only results":
        replace_csv(source, "results", csv_text("results").splitlines()[0] + "\n")
    elif case == "duplicated results":
        text = csv_text("results")
        replace_csv(source, "results", text + "\n".join(text.splitlines()[1:]) + "\n")
    else:
        replace_csv(source, "circuits", "\n".join(csv_text("circuits").splitlines()[:61]) + "\n")
        replace_csv(source, "races", csv_text("races") + "1,2,3\n")
    before = table_counts(own_warehouse, RAW_AND_ML)
    from pipelines.stages import ingest

    with pytest.raises(PodiumError, match=re.escape(message)):
        ingest.main(own_warehouse, from_source(spec, source))
    assert table_counts(own_warehouse, RAW_AND_ML) == before
    with connect(own_warehouse, read_only=True) as warehouse:
        assert not warehouse.query(
            "SELECT * FROM information_schema.tables WHERE table_name LIKE '%STAGED'"
        ).size


@pytest.mark.parametrize(
    ("break_it", "message"),
    [
        ("delete from RAW.RESULTS", "row_count: 0 rows"),
        ("update RAW.QUALIFYING set POSITION = POSITION", "row_count"),  # a build that fails its bounds
    ],
)
def test_features_never_replace_good_tables_with_bad_ones(
    break_it: str, message: str, own_warehouse: Profile, spec: Spec
) -> None:
    from pipelines.stages import features

    strict = spec.features.model_copy(
        update={"expect_rows": spec.features.expect_rows.model_copy(update={"min": 6000})}
    )
    target = spec if break_it.startswith("delete") else spec.model_copy(update={"features": strict})
    with connect(own_warehouse) as warehouse:
        warehouse.execute(break_it)
    before = table_counts(own_warehouse, RAW_AND_ML[2:])
    with pytest.raises(PodiumError, match=message) as raised:
        features.main(own_warehouse, target)
    assert "Nothing was published" in str(raised.value)
    assert table_counts(own_warehouse, RAW_AND_ML[2:]) == before and before["ML.F1_FEATURES"] == 5517


def test_a_syntax_error_in_a_feature_sql_model_names_the_file(
    own_warehouse: Profile, tmp_path: Path, capsys, monkeypatch
) -> None:
    models = tmp_path / "sql"
    shutil.copytree(REPO / "experiments" / "f1_podium" / "sql", models)
    last = sorted(models.glob("*.sql"))[
        -1
    ]  # it reads earlier models, so it is parsed to read their staged tables
    last.write_text(last.read_text().replace("SELECT", "SELEKT", 1))
    spec = bad_spec(tmp_path, "sql: experiments/f1_podium/sql", f"sql: {models}")
    code, _, err = podium(
        ["features", "--spec", spec, "-p", profile_file(tmp_path, own_warehouse)], capsys, monkeypatch
    )
    assert code == 1 and "Traceback" not in err
    assert f"{last}: could not parse the SQL model as Snowflake dialect" in err and "fix its syntax" in err


def test_evaluate_with_no_scores_says_so(own_warehouse: Profile, spec: Spec) -> None:
    from pipelines.stages import evaluate

    with connect(own_warehouse) as warehouse:
        warehouse.execute(f"CREATE TABLE {spec.scoring_table} (RACE_ID BIGINT, MODEL_VERSION VARCHAR)")
    with pytest.raises(PodiumError, match=r"ML\.F1_SCORES holds no scores yet: run `podium score`"):
        evaluate.main(own_warehouse, spec)


def test_shadow_asked_for_with_the_champion_as_challenger_is_an_error(
    trained_profile: Profile, tuned: tuple[Profile, Spec]
) -> None:
    from pipelines.stages import promote, score, train

    _, small = tuned
    version = train.main(trained_profile, small).champion.version  # also the challenger
    promote.main(trained_profile, small, version=version, force=True)
    with pytest.raises(PodiumError, match=rf"names v{version} itself: train a new challenger"):
        score.main(trained_profile, small, shadow=True)
