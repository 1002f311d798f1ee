"""Ingest: explicit types, NULL spellings, clear errors, idempotent reloads."""

from __future__ import annotations

import gzip
from pathlib import Path

import pytest

from pipelines.config import Profile, Spec
from pipelines.errors import ConfigError, PodiumError
from pipelines.stages import ingest
from pipelines.warehouse import connect

MANIFEST = """tables:
  drivers:
    driverId: INTEGER
    dob: DATE
    code: VARCHAR
    points: FLOAT
"""
CSV = 'driverId,dob,code,points\n1,1985-01-07,HAM,10.5\n2,\\N,,\n3,,"A,B",\\N\n'


@pytest.fixture
def source(tmp_path: Path) -> Path:
    folder = tmp_path / "raw"
    folder.mkdir()
    (folder / "tables.yaml").write_text(MANIFEST)
    (folder / "drivers.csv.gz").write_bytes(gzip.compress(CSV.encode()))
    return folder


def small_spec(spec: Spec, source: Path) -> Spec:
    return spec.model_copy(update={"ingest": spec.ingest.model_copy(update={"source": source})})


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("raceId", "RACE_ID"),
        ("positionOrder", "POSITION_ORDER"),
        ("fp1_date", "FP1_DATE"),
        ("dob", "DOB"),
        ("q1", "Q1"),
    ],
)
def test_column_names_become_upper_snake_case(name: str, expected: str) -> None:
    assert ingest.snake_upper(name) == expected


def test_read_csv_applies_types_and_both_null_spellings(source: Path) -> None:
    frame = ingest.read_csv(source / "drivers.csv.gz", ingest.read_manifest(source)["drivers"])
    assert list(frame.columns) == ["DRIVER_ID", "DOB", "CODE", "POINTS"]
    assert [str(t) for t in frame.dtypes] == [
        "int64[pyarrow]",
        "date32[day][pyarrow]",
        "string[pyarrow]",
        "double[pyarrow]",
    ]
    assert frame["DOB"].isna().tolist() == [False, True, True]
    assert frame["CODE"].tolist()[0] == "HAM" and frame["CODE"].isna().tolist() == [False, True, False]
    assert frame["POINTS"].isna().tolist() == [False, True, True]


def test_header_must_match_the_manifest(source: Path) -> None:
    (source / "tables.yaml").write_text(MANIFEST.replace("code: VARCHAR", "kode: VARCHAR"))
    with pytest.raises(PodiumError, match="does not match the manifest"):
        ingest.read_csv(source / "drivers.csv.gz", ingest.read_manifest(source)["drivers"])


def test_value_of_the_wrong_type_is_named(source: Path) -> None:
    (source / "tables.yaml").write_text(MANIFEST.replace("code: VARCHAR", "code: INTEGER"))
    with pytest.raises(PodiumError, match="does not match its declared type"):
        ingest.read_csv(source / "drivers.csv.gz", ingest.read_manifest(source)["drivers"])


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"not gzip", "zlib inflate failed"),
        (gzip.compress(b""), "Empty CSV file"),
        (gzip.compress(b"driverId,dob,code,points\n1,2,3,4,5\n"), "Expected 4 columns, got 5"),
    ],
    ids=["not gzip", "empty", "a row too long"],  # gzip's header holds the time: ids from it differ by worker
)
def test_an_unreadable_csv_is_named(source: Path, content: bytes, message: str) -> None:
    (source / "drivers.csv.gz").write_bytes(content)
    with pytest.raises(
        PodiumError, match=f"drivers.csv.gz is not a readable CSV: .*{message}.*Fix or re-export it"
    ):
        ingest.read_csv(source / "drivers.csv.gz", ingest.read_manifest(source)["drivers"])


@pytest.mark.parametrize(
    ("manifest", "message"),
    [
        ("tables: {}\n", "lists no tables"),
        ("tables:\n  t:\n    a: BLOB\n", "unknown types"),
        ("tables:\n  't;x':\n    a: INTEGER\n", "tables.yaml: 't;x' is not a valid"),
        ("tables:\n  t: [a\n", r"tables.yaml: malformed YAML at line \d+"),
        ("tables:\n  - t\n", "must map each table to its columns"),
        ("tables:\n  t: [a, b]\n", "must map each table to its columns"),
        ("- t\n", "lists no tables"),
    ],
)
def test_bad_manifest(source: Path, manifest: str, message: str) -> None:
    (source / "tables.yaml").write_text(manifest)
    with pytest.raises(PodiumError, match=message):
        ingest.read_manifest(source)


def test_missing_manifest_and_missing_file(
    tmp_path: Path, source: Path, spec: Spec, profile: Profile
) -> None:
    with pytest.raises(ConfigError, match="tables.yaml"):
        ingest.read_manifest(tmp_path)
    (source / "drivers.csv.gz").unlink()
    with pytest.raises(PodiumError, match="no drivers.csv or drivers.csv.gz"):
        ingest.main(profile, small_spec(spec, source))


def test_rerun_replaces_without_duplicates(source: Path, spec: Spec, profile: Profile) -> None:
    first = ingest.main(profile, small_spec(spec, source))
    second = ingest.main(profile, small_spec(spec, source))
    assert first.rows == second.rows == {"RAW.DRIVERS": 3}
    with connect(profile) as warehouse:
        assert warehouse.columns("RAW.DRIVERS") == {
            "DRIVER_ID": "BIGINT",
            "DOB": "DATE",
            "CODE": "VARCHAR",
            "POINTS": "DOUBLE",
        }
        assert warehouse.query("SELECT COUNT(*) AS N FROM RAW.DRIVERS").N[0] == 3
