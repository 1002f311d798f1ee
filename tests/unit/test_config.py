"""Typed config: profiles and specs load strictly and fail with one clear message."""

from __future__ import annotations

from datetime import date
from pathlib import Path

import pytest

from pipelines.config import DuckDBConfig, SnowflakeConfig
from pipelines.config_files import load_profile, load_spec
from pipelines.errors import ConfigError
from tests.helpers import REPO


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def spec_text(**overrides: str) -> str:
    """The bundled spec's text with top-level lines replaced."""
    lines = (REPO / "experiments" / "f1_podium" / "spec.yaml").read_text().splitlines()
    for key, value in overrides.items():
        lines = [f"{key}: {value}" if line.startswith(f"{key}:") else line for line in lines]
    return "\n".join(lines)


def test_bundled_profiles_load() -> None:
    local = load_profile("local", root=REPO)
    assert isinstance(local.warehouse, DuckDBConfig)
    assert local.warehouse.path == REPO / "warehouse" / "podium.duckdb"
    snowflake = load_profile("snowflake", root=REPO)
    assert isinstance(snowflake.warehouse, SnowflakeConfig)
    assert snowflake.warehouse.database == "PODIUM"


def test_bundled_spec_loads_with_resolved_paths() -> None:
    spec = load_spec("f1_podium", root=REPO)
    assert (spec.table, spec.keys, spec.time, spec.target) == (
        "ML.F1_FEATURES",
        ["RACE_ID", "DRIVER_ID"],
        "RACE_DATE",
        "FINISH_CLASS",
    )
    assert (spec.train_start, spec.holdout_start) == (date(2010, 1, 1), date(2021, 1, 1))
    assert spec.ingest and spec.ingest.source == REPO / "experiments" / "f1_podium" / "data"
    assert spec.features and spec.features.sql.is_dir()


def test_the_only_spec_is_the_default(tmp_path: Path) -> None:
    write(tmp_path / "experiments" / "mine.yaml", spec_text(name="mine"))
    assert load_spec(None, root=tmp_path).name == "mine"
    write(tmp_path / "experiments" / "other.yaml", spec_text(name="other"))
    with pytest.raises(ConfigError, match="which spec.*mine, other"):
        load_spec(None, root=tmp_path)


def test_a_use_case_folder_is_found_by_its_name_or_its_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write(tmp_path / "loose.yaml", spec_text(name="loose"))
    monkeypatch.chdir(tmp_path)
    assert load_spec("loose.yaml", root=tmp_path).name == "loose"  # a file name is a path, from here
    folder = tmp_path / "experiments" / "mine"
    write(folder / "spec.yaml", spec_text(name="mine"))
    write(tmp_path / "experiments" / "flat.yaml", spec_text(name="flat"))
    assert load_spec("mine", root=tmp_path).name == "mine"
    assert load_spec(str(folder), root=tmp_path).name == "mine"
    assert load_spec("flat", root=tmp_path).name == "flat"
    with pytest.raises(ConfigError, match=r"unknown spec 'other' \(known specs: flat, mine\)"):
        load_spec("other", root=tmp_path)


def test_a_spec_path_from_before_the_use_case_folders_names_the_new_one() -> None:
    old, new = REPO / "experiments" / "f1_podium.yaml", REPO / "experiments" / "f1_podium" / "spec.yaml"
    with pytest.raises(ConfigError, match=f"spec file {old} has moved to {new}: pass that to --spec"):
        load_spec(str(old), root=REPO)
    assert load_spec(None, root=REPO).name == load_spec("f1_podium", root=REPO).name == "f1_podium"


def test_unknown_profile_names_the_known_ones() -> None:
    with pytest.raises(ConfigError, match=r"unknown profile 'prod' \(known profiles: local, snowflake\)"):
        load_profile("prod", root=REPO)


def test_unknown_spec_key_is_named(tmp_path: Path) -> None:
    path = write(tmp_path / "s.yaml", spec_text() + "\nholdout_strat: 2020-01-01\n")
    with pytest.raises(ConfigError, match="unknown key 'holdout_strat'"):
        load_spec(str(path))


def test_unknown_nested_key_is_named_with_its_path(tmp_path: Path) -> None:
    path = write(tmp_path / "p.yaml", "warehouse:\n  backend: duckdb\n  password: hunter2\n")
    with pytest.raises(ConfigError, match="unknown key 'warehouse.duckdb.password'"):
        load_profile(str(path))


def test_malformed_yaml_gives_the_line(tmp_path: Path) -> None:
    path = write(tmp_path / "s.yaml", "name: x\nkeys: [A, B\ntime: T\n")
    with pytest.raises(ConfigError, match=r"malformed YAML at line \d+"):
        load_spec(str(path))


@pytest.mark.parametrize("table", ["'ML.F1;DROP TABLE X'", "'ML.\"F1\"'", '"ML.F1\'"'])
def test_identifier_with_semicolon_or_quotes_is_refused(tmp_path: Path, table: str) -> None:
    path = write(tmp_path / "s.yaml", spec_text(table=table))
    with pytest.raises(ConfigError, match="table: .*not a valid table name"):
        load_spec(str(path))


def test_key_column_with_quote_is_refused(tmp_path: Path) -> None:
    path = write(tmp_path / "s.yaml", spec_text(keys="[RACE_ID, 'DRIVER_ID\"']"))
    with pytest.raises(ConfigError, match="keys.1: .*not a valid SQL identifier"):
        load_spec(str(path))


def test_a_class_that_cannot_name_a_score_column_is_refused_at_load(tmp_path: Path) -> None:
    path = write(tmp_path / "s.yaml", spec_text(classes="[podium, 'very high', none]"))
    with pytest.raises(
        ConfigError, match=r"classes.1: 'very high' cannot name its probability column P_very high"
    ):
        load_spec(str(path))


def test_holdout_must_follow_training_start(tmp_path: Path) -> None:
    path = write(tmp_path / "s.yaml", spec_text(holdout_start="2005-01-01"))
    with pytest.raises(ConfigError, match="train_start .* must be before holdout_start"):
        load_spec(str(path))


def test_missing_key_is_named(tmp_path: Path) -> None:
    text = "\n".join(line for line in spec_text().splitlines() if not line.startswith("target:"))
    with pytest.raises(ConfigError, match="missing key 'target'"):
        load_spec(str(write(tmp_path / "s.yaml", text)))


def test_bad_value_is_named_with_its_key_and_fix(tmp_path: Path) -> None:
    path = write(tmp_path / "s.yaml", spec_text(classes="[podium]"))
    with pytest.raises(ConfigError, match=r"classes: List should have at least 2 items.* \(fix this value\)"):
        load_spec(str(path))


def test_a_file_that_is_not_a_mapping_is_named(tmp_path: Path) -> None:
    path = write(tmp_path / "p.yaml", "- duckdb\n")
    with pytest.raises(ConfigError, match="expected a mapping of keys to values at the top level: write one"):
        load_profile(str(path))


def test_missing_spec_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_spec(str(tmp_path / "nope.yaml"))


@pytest.mark.parametrize(
    ("features", "says"),
    [
        ("{sql: sql, dbt: {project_dir: p, select: m}}", "give one of `sql`"),
        ("{schema: ML}", "give one of `sql`"),
        ("{dbt: {project_dir: p, select: m}, schema: ML}", r"features.schema \(ML\) is where dbt builds"),
    ],
)
def test_a_features_section_names_one_builder_and_dbt_builds_beside_the_spec_table(
    tmp_path: Path, features: str, says: str
) -> None:
    path = write(tmp_path / "s.yaml", spec_text() + f"\nfeatures: {features}\n")
    with pytest.raises(ConfigError, match=says):
        load_spec(str(path))
