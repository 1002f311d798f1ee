"""A tracking store MLflow cannot use is one clear error naming the store and the fix, never a traceback."""

from __future__ import annotations

from pathlib import Path

import mlflow
import pytest

from pipelines import registry, status
from pipelines.config import Profile, Spec
from pipelines.errors import PodiumError
from pipelines.secrets import hide_password
from pipelines.stages import promote, score
from pipelines.tracking import stage_run
from tests.helpers import podium, profile_file

REFUSED = "http://127.0.0.1:1"  # nothing listens on loopback port 1: connection refused at once
STORE_FIX = "Fix MLFLOW_TRACKING_URI or the profile's tracking_uri"


def use_store(uri: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    mlflow.set_tracking_uri(uri)


@pytest.mark.parametrize(
    ("uri", "message"),
    [
        (
            REFUSED,
            r"cannot use the MLflow tracking store http://127.0.0.1:1: \[Errno \d+\] Connection refused\.",
        ),
        ("foo://bar", "cannot use the MLflow tracking store foo://bar: .*unsupported URI 'foo://bar'"),
    ],
)
def test_a_stage_on_an_unusable_store_is_one_clear_error(
    uri: str, message: str, profile: Profile, spec: Spec, monkeypatch: pytest.MonkeyPatch
) -> None:
    use_store(uri, monkeypatch)
    with pytest.raises(PodiumError, match=message) as caught, stage_run(profile, spec, "ingest"):
        pass
    assert STORE_FIX in str(caught.value) and "\n" not in str(caught.value)


def test_the_cli_prints_one_line_for_an_unreachable_store(
    profile: Profile, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    use_store(REFUSED, monkeypatch)
    code, _, err = podium(["ingest", "--profile", profile_file(tmp_path, profile)], capsys, monkeypatch)
    assert code == 1 and "Traceback" not in err
    assert err.strip().startswith("error: cannot use the MLflow tracking store http://127.0.0.1:1")


def test_a_stale_mlflow_run_id_is_named(
    profile: Profile, spec: Spec, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MLFLOW_RUN_ID", "deadbeef")
    with pytest.raises(
        PodiumError, match="MLFLOW_RUN_ID deadbeef names no run in the MLflow tracking store .*: unset"
    ):
        with stage_run(profile, spec, "ingest"):
            pass


def test_promote_and_score_on_an_unreachable_store(
    profile: Profile, spec: Spec, monkeypatch: pytest.MonkeyPatch
) -> None:
    use_store(REFUSED, monkeypatch)
    with pytest.raises(PodiumError, match="cannot use the MLflow tracking store"):
        promote.main(profile, spec)
    with pytest.raises(PodiumError, match="cannot use the MLflow tracking store"):
        registry.resolve("models:/f1_podium@champion")


def test_status_on_an_unreachable_store(monkeypatch: pytest.MonkeyPatch) -> None:
    use_store(REFUSED, monkeypatch)
    with pytest.raises(PodiumError, match="cannot use the MLflow tracking store"):
        status.versions("f1_podium")


def test_an_unsupported_store_is_not_reported_as_a_missing_model(monkeypatch: pytest.MonkeyPatch) -> None:
    use_store("foo://bar", monkeypatch)
    with pytest.raises(PodiumError, match="cannot use the MLflow tracking store foo://bar"):
        registry.resolve("models:/f1_podium@champion")


def test_score_resolves_the_model_in_the_profiles_store(
    profile: Profile, spec: Spec, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    own = profile.model_copy(update={"tracking_uri": f"sqlite:///{tmp_path / 'own.db'}"})
    with pytest.raises(PodiumError, match="does not resolve"):
        score.main(own, spec, model_uri="models:/f1_podium@champion")
    assert mlflow.get_tracking_uri() == own.tracking_uri


def test_passwords_are_hidden() -> None:
    assert (
        hide_password("postgresql://podium:s3cret@db:5432/mlflow") == "postgresql://podium:***@db:5432/mlflow"
    )
    assert hide_password("sqlite:///mlflow.db") == "sqlite:///mlflow.db"
