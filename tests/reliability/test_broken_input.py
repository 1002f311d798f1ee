"""Every command fed a broken spec, profile, manifest, CSV, journal or warehouse: one `error:` line."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from pipelines.config import Profile, Spec
from tests.helpers import REPO, podium

COMMANDS = ["ingest", "features", "tune", "train", "promote", "score", "evaluate", "status", "sql", "run"]
USES = {
    "spec": [c for c in COMMANDS if c != "sql"],
    "profile": COMMANDS,
    "manifest": ["ingest", "status", "run"],
    "csv": ["ingest", "run"],
    "journal": ["tune", "train", "status"],
    "warehouse": ["features", "tune", "train", "score", "evaluate", "status", "sql"],
}
CASES = [(broken, command) for broken, commands in USES.items() for command in commands]


def setup(tmp_path: Path, built_profile: Profile, broken: str) -> tuple[Path, Path]:
    """A spec and a profile of this test's own, with one thing broken; (spec path, profile path)."""
    source = tmp_path / "f1"
    shutil.copytree(REPO / "experiments" / "f1_podium" / "data", source)
    warehouse, journal = tmp_path / "warehouse.duckdb", tmp_path / "studies.journal"
    shutil.copyfile(built_profile.warehouse.path, warehouse)
    spec = (REPO / "experiments" / "f1_podium" / "spec.yaml").read_text()
    spec = spec.replace("source: experiments/f1_podium/data", f"source: {source}")
    profile = f"warehouse: {{backend: duckdb, path: {warehouse}}}\noptuna_storage: {journal}\n"
    if broken == "spec":
        spec = spec.replace("keys: [RACE_ID, DRIVER_ID]", "keys: [RACE_ID")
    elif broken == "profile":
        profile += "warehouse_path: elsewhere\n"
    elif broken == "manifest":
        (source / "tables.yaml").write_text("tables:\n  results: [raceId\n")
    elif broken == "csv":
        (source / "races.csv.gz").unlink()
        (source / "races.csv").write_text("raceId,year\n1,2\n3\n")
    elif broken == "journal":
        journal.write_text('garbage{\n{"op_code": 0}\n')
    elif broken == "warehouse":
        warehouse.write_bytes(warehouse.read_bytes()[:100_000])
    (tmp_path / "spec.yaml").write_text(spec)
    (tmp_path / "profile.yaml").write_text(profile)
    return tmp_path / "spec.yaml", tmp_path / "profile.yaml"


@pytest.mark.parametrize(("broken", "command"), CASES, ids=[f"{b}-{c}" for b, c in CASES])
def test_broken_input_is_one_clear_line(
    broken: str, command: str, built_profile: Profile, spec: Spec, tmp_path: Path, capsys, monkeypatch
) -> None:
    spec_path, profile_path = setup(tmp_path, built_profile, broken)
    args = [command, "--profile", str(profile_path)]
    args = ["sql", "select count(*) from ML.F1_FEATURES", *args[1:]] if command == "sql" else args
    args += [] if command == "sql" else ["--spec", str(spec_path)]
    code, _, err = podium(args, capsys, monkeypatch)
    assert "Traceback" not in err, err[-3000:]
    assert code == 1, f"podium {command} with a broken {broken} exited {code}: {err[-2000:]}"
    last = err.strip().splitlines()[-1]
    assert last.startswith("error:") and len(last) > 60, last
