"""The studies `podium tune` writes open in optuna-dashboard, as the README shows (optuna-dashboard PATH)."""

from __future__ import annotations

import json
import shutil
import sys
import urllib.request
from pathlib import Path

import optuna
import pytest

from pipelines.config import Profile, Spec
from tests.servers import free_port, http_service


def dashboard_command() -> str:
    """The optuna-dashboard script installed beside this Python."""
    found = shutil.which("optuna-dashboard", path=str(Path(sys.executable).parent))
    assert found, "optuna-dashboard is a pinned dependency: reinstall the project"
    return found


def get(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=10) as response:
        return json.load(response)


@pytest.mark.slow
def test_optuna_dashboard_lists_each_familys_study_from_the_journal(
    tuned: tuple[Profile, Spec], tmp_path: Path
) -> None:
    profile, spec = tuned
    journal = tmp_path / "studies.journal"
    shutil.copyfile(profile.optuna_storage, journal)  # the dashboard may write its own notes into a storage
    port = free_port()
    command = [
        dashboard_command(),
        str(journal),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--server",
        "wsgiref",
    ]
    api = f"http://127.0.0.1:{port}/api/studies"
    with http_service(command, api, tmp_path):
        listed = {
            s["study_name"]: len(get(f"{api}/{s['study_id']}")["trials"]) for s in get(api)["study_summaries"]
        }

    storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(journal)))
    expected = {s.study_name: s.n_trials for s in optuna.get_all_study_summaries(storage)}
    assert sorted(expected) == [f"{spec.name}-{family}" for family in sorted(spec.tuning.families)]
    assert listed == expected and all(n > 0 for n in listed.values())
