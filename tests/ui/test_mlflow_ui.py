"""The MLflow UI in a real browser, after tune, train and promote against `mlflow server` on loopback.

Headless Chromium renders the experiment page and the registered model page; the assertions read the
DOM after the UI's JavaScript ran (React fetches everything over AJAX), not the REST answers. The
screenshots land in test-artifacts/ at the repo root: mlflow_experiment.png, mlflow_model.png.
"""

from __future__ import annotations

import re
import shutil
import struct
import urllib.parse
from pathlib import Path

import mlflow
import pytest
from mlflow.tracking import MlflowClient

from pipelines.config import Profile, Spec
from pipelines.stages import promote, train, tune
from tests.helpers import REPO
from tests.servers import PIPELINE_RUNS, WINDOW, RenderedPage, mlflow_page, mlflow_server, rendered

ARTIFACTS = REPO / "test-artifacts"

pytestmark = [
    pytest.mark.browser,
    pytest.mark.slow,
    pytest.mark.skipif(
        shutil.which("chromium") is None, reason="chromium is not installed (apt-get install chromium)"
    ),
]


def assert_screenshot(path: Path) -> None:
    """A PNG of the whole window, big enough to hold a rendered page rather than a blank one."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    assert struct.unpack(">II", data[16:24]) == WINDOW, f"{path} is not {WINDOW[0]}x{WINDOW[1]}"
    assert len(data) > 20_000, f"{path} holds {len(data)} bytes: a blank page?"


def test_mlflow_ui_shows_the_runs_and_the_champion(
    trained_profile: Profile, tuned: tuple[Profile, Spec], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _, spec = tuned
    profile = trained_profile.model_copy(update={"optuna_storage": str(tmp_path / "studies.journal")})
    ARTIFACTS.mkdir(exist_ok=True)
    for stale in ARTIFACTS.glob("mlflow_*.png"):
        stale.unlink()
    with mlflow_server(tmp_path / "server") as url:
        monkeypatch.setenv("MLFLOW_TRACKING_URI", url)
        mlflow.set_tracking_uri(url)
        tune.main(profile, spec, n_trials=3)
        (trained,) = train.main(profile, spec).trained
        promote.main(profile, spec)

        client = MlflowClient(url)
        experiment = client.get_experiment_by_name(spec.name).experiment_id
        runs = client.search_runs([experiment], "tags.`podium.trial` IS NULL", max_results=100)
        tags = {r.info.run_id: r.data.tags for r in runs}
        parents = {run: t["podium.family"] for run, t in tags.items() if t.get("podium.role") == "study"}
        stages = {run: t["podium.stage"] for run, t in tags.items() if "podium.stage" in t}
        assert sorted(parents.values()) == sorted(spec.tuning.families)
        assert sorted(stages.values()) == ["promote", "train", "tune"]
        named = {f"#/experiments/{experiment}/runs/{run}": name for run, name in (parents | stages).items()}
        version = f"#/models/{spec.model_name}/versions/{trained.version}"

        def shows_runs(page: RenderedPage) -> bool:
            registered = any(text.startswith(spec.model_name) for text in page.href_text(version))
            return registered and all(page.href_text(link) == [name] for link, name in named.items())

        shot = ARTIFACTS / "mlflow_experiment.png"
        page = rendered(
            mlflow_page(url, f"/experiments/{experiment}/runs", **PIPELINE_RUNS), shows_runs, shot
        )
        for link, name in named.items():
            assert page.href_text(link) == [name], (name, page.text[:3000])
        assert any(text.startswith(spec.model_name) for text in page.href_text(version)), page.text[:3000]
        assert_screenshot(shot)

        def champion_rows(page: RenderedPage) -> list[str]:
            return [
                row for row in page.rows if re.search(rf"\bVersion {trained.version}\b.*@ champion\b", row)
            ]

        shot = ARTIFACTS / "mlflow_model.png"
        page = rendered(
            mlflow_page(url, f"/models/{urllib.parse.quote(spec.model_name)}"), champion_rows, shot
        )
        assert champion_rows(page), page.text[:3000]
        assert_screenshot(shot)
