"""The CLI: a user's mistake prints one clear line and exits 1, never a traceback."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from pipelines import cli
from pipelines.config import Profile
from tests.helpers import REPO, bad_spec, podium, profile_file


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("unknown profile", "unknown profile 'prod'"),
        ("unknown spec key", "unknown key 'holdout_strat'"),
        ("malformed yaml", "malformed YAML at line"),
        ("identifier with ;", "not a valid table name"),
        ("identifier with quotes", "not a valid SQL identifier"),
        ("missing feature table", "F1_FEATURES.* does not exist"),
        ("features before ingest", "does not exist"),
    ],
)
def test_user_errors_are_one_clear_line(
    case: str,
    message: str,
    tmp_path: Path,
    profile: Profile,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    local = profile_file(tmp_path, profile)
    args = {
        "unknown profile": ["ingest", "--profile", "prod"],
        "unknown spec key": [
            "ingest",
            "-p",
            local,
            "--spec",
            bad_spec(tmp_path, "holdout_start:", "holdout_strat:"),
        ],
        "malformed yaml": [
            "ingest",
            "-p",
            local,
            "--spec",
            bad_spec(tmp_path, "keys: [RACE_ID, DRIVER_ID]", "keys: [RACE_ID"),
        ],
        "identifier with ;": [
            "features",
            "-p",
            local,
            "--spec",
            bad_spec(tmp_path, "table: ML.F1_FEATURES", "table: ML.F1;DROP"),
        ],
        "identifier with quotes": [
            "features",
            "-p",
            local,
            "--spec",
            bad_spec(tmp_path, "target: FINISH_CLASS", "target: 'FINISH\"'"),
        ],
        "missing feature table": ["sql", "select count(*) from ML.F1_FEATURES", "-p", local],
        "features before ingest": ["features", "-p", local],
    }[case]
    code, _, err = podium(args, capsys, monkeypatch)
    assert code == 1
    last = err.strip().splitlines()[-1]
    assert last.startswith("error:") and re.search(message, last)
    assert "Traceback" not in err


def test_sql_prints_csv_for_machines(
    built_profile: Profile,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    args = [
        "sql",
        "select count(*) as n, min(race_date) as first from ML.F1_FEATURES",
        "-p",
        profile_file(tmp_path, built_profile),
        "--format",
        "csv",
    ]
    code, out, _ = podium(args, capsys, monkeypatch)
    assert code == 0
    header, row = out.strip().splitlines()
    assert header == "N,FIRST"
    n, first = row.split(",")
    assert 5000 <= int(n) <= 6500 and first.startswith("2010-")


COMMANDS = [c.name or c.callback.__name__ for c in cli.app.registered_commands]


def test_help_lists_every_command_and_reads_like_a_manual(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    code, out, _ = podium(["--help"], capsys, monkeypatch)
    assert code == 0
    assert len(COMMANDS) == 14 and all(re.search(rf"\b{c}\b", out) for c in COMMANDS)
    for section in ("Examples", "Environment", "Files", "Exit status"):
        assert section in out


@pytest.mark.parametrize("command", COMMANDS)
def test_each_command_has_a_manual_with_an_example(
    command: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COLUMNS", "100")
    code, out, _ = podium([command, "--help"], capsys, monkeypatch)
    assert code == 0 and "Examples" in out
    assert re.search(rf"^\s+podium {command}\b", out, re.MULTILINE), f"no example of `podium {command}`"
    assert not re.search(r"--help\s+<", out), "a flag is listed as taking a value"


def test_no_traceback_from_the_real_console_script(tmp_path: Path) -> None:
    spec = bad_spec(tmp_path, "keys: [RACE_ID, DRIVER_ID]", "keys: [RACE_ID")
    done = subprocess.run(
        [sys.executable, "-m", "pipelines.cli", "features", "--spec", spec],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 1
    assert "malformed YAML" in done.stderr and "Traceback" not in done.stderr
    usage = subprocess.run(
        [sys.executable, "-m", "pipelines.cli", "train", "--top-k", "0"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert usage.returncode == 2 and "Invalid value for '--top-k'" in usage.stderr
    assert "Traceback" not in usage.stderr


def test_error_text_is_printed_verbatim_not_as_markup(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    code, _, stderr = podium(["ingest", "--spec", "experiments/[bold]/x.yaml"], capsys, monkeypatch)
    assert code == 1 and "spec file experiments/[bold]/x.yaml does not exist" in stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["ingest", "--bad-option"], "No such option: --bad-option"),
        (["tune", "--n-trials", "abc"], "Invalid value for '--n-trials'"),
        (["sql"], "Missing argument 'query'"),
        (["nocommand"], "No such command 'nocommand'"),
    ],
)
def test_usage_errors_print_usage_and_exit_2(
    args: list[str], message: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    code, _, stderr = podium(args, capsys, monkeypatch)
    assert code == 2 and "Usage: podium" in stderr and message in stderr and "Traceback" not in stderr


def test_a_bad_log_level_is_one_clear_line(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PODIUM_LOG_LEVEL", "chatty")
    code, _, stderr = podium(["status"], capsys, monkeypatch)
    assert code == 1 and "PODIUM_LOG_LEVEL=CHATTY is not a log level" in stderr


def test_a_broken_sql_model_is_named_in_the_error(
    tmp_path: Path, profile: Profile, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    models = tmp_path / "sql"
    models.mkdir()
    (models / "10_f1_features.sql").write_text("SELECT NOPE FROM RAW.RACES")
    spec = bad_spec(tmp_path, "sql: experiments/f1_podium/sql", f"sql: {models}")
    code, _, stderr = podium(
        ["features", "-p", profile_file(tmp_path, profile), "--spec", spec], capsys, monkeypatch
    )
    assert (
        code == 1
        and f"the SQL model {models / '10_f1_features.sql'} failed to build ML.F1_FEATURES" in stderr
    )
