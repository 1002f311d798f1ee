"""How `podium app` starts Streamlit: `streamlit run pipelines/app/main.py`, on loopback by default."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

from pipelines.errors import PodiumError

SCRIPT = Path(__file__).with_name("main.py")
DEFAULT_HOST, DEFAULT_PORT = "127.0.0.1", 8501


def command_line(host: str, port: int) -> list[str]:
    """The Streamlit server's command: headless, no usage statistics, no file watcher or developer menu."""
    return [
        sys.executable,
        "-m",
        "streamlit",
        "run",
        str(SCRIPT),
        "--server.address",
        host,
        "--server.port",
        str(port),
        "--server.headless",
        "true",
        "--server.fileWatcherType",
        "none",
        "--browser.gatherUsageStats",
        "false",
        "--client.toolbarMode",
        "viewer",
    ]


def run(profile: str, spec: str, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT) -> int:
    """Serve the app for `profile` and `spec` (names or paths) until interrupted; Streamlit's exit code."""
    if importlib.util.find_spec("streamlit") is None:
        raise PodiumError("`podium app` needs Streamlit: pip install 'podium[app]' (or `make demo`'s venv).")
    env = os.environ | {"PODIUM_PROFILE": profile, "PODIUM_SPEC": spec}
    try:
        return subprocess.run(command_line(host, port), env=env, check=False).returncode
    except KeyboardInterrupt:
        return 0
