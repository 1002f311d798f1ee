"""A failure inside the Snowflake connector reaches the user as one `error:` line, never a traceback.

fakesnow's own server, without the harness's patches, takes the PUT of an upload to a stage it
named wrongly (its `IDENTIFIER(?)` gap), and the connector's file transfer then fails with
`KeyError: 'command'`: a real failure of the real connector, which Podium must report as one
line naming the step and the fix. Before the fix it printed the connector's traceback.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from tests.helpers import REPO
from tests.snowflake.emulator import snowflake_env

pytestmark = pytest.mark.snowflake

PLAIN_FAKESNOW = """
import json, threading, fakesnow
with fakesnow.server() as kwargs:
    print(json.dumps(kwargs), flush=True)
    threading.Event().wait()
"""


@pytest.fixture(scope="module")
def plain_fakesnow() -> Iterator[dict]:
    server = subprocess.Popen(
        [sys.executable, "-c", PLAIN_FAKESNOW], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True
    )
    try:
        yield json.loads(server.stdout.readline())
    finally:
        server.terminate()
        server.wait(timeout=30)


def test_a_failed_upload_is_one_error_line(plain_fakesnow: dict, tmp_path: Path) -> None:
    (tmp_path / "conf").mkdir()
    (tmp_path / "conf" / "p.yaml").write_text(yaml.safe_dump({"warehouse": {"backend": "snowflake"}}))
    spec = yaml.safe_load((REPO / "experiments" / "f1_podium" / "spec.yaml").read_text())
    spec["ingest"]["source"] = str(REPO / spec["ingest"]["source"])
    (tmp_path / "spec.yaml").write_text(yaml.safe_dump(spec))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SNOWFLAKE_", "MLFLOW_"))}
    env |= snowflake_env(plain_fakesnow, "PODIUM", "RAW") | {
        "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}",
        "PYTHONPATH": str(REPO),
    }
    command = [sys.executable, "-m", "pipelines.cli", "ingest", "--profile", "p", "--spec", "spec.yaml"]
    result = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr[-3000:]
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, result.stderr[-3000:]
    assert "uploading rows for RAW." in errors[0] and "to Snowflake failed: 'command'" in errors[0]
    assert "temporary stage" in errors[0], "names the step and the fix"
