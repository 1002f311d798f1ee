"""The pipeline against a real `mlflow server` over HTTP: tune, train, promote, score, then the REST registry.

The server runs on a loopback port with a SQLite backend and proxied artifacts in a local
folder (`--artifacts-destination`), the same shape as a production server on PostgreSQL
with an object store: clients only ever see http:// and mlflow-artifacts:/ URIs.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.parse
import urllib.request
import warnings
from pathlib import Path

import mlflow
import pytest
from mlflow.tracking import MlflowClient

from pipelines import registry
from pipelines.config import Profile, Spec
from pipelines.stages import promote, score, train, tune
from pipelines.warehouse import connect
from tests.servers import mlflow_server


def _get(url: str, path: str, **params: str) -> dict:
    with urllib.request.urlopen(f"{url}{path}?{urllib.parse.urlencode(params)}", timeout=10) as response:
        return json.load(response)


@pytest.mark.slow
def test_pipeline_runs_against_an_mlflow_tracking_server(
    trained_profile: Profile, tuned: tuple[Profile, Spec], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _, spec = tuned
    profile = trained_profile.model_copy(update={"optuna_storage": str(tmp_path / "studies.journal")})
    root = tmp_path / "server"
    with mlflow_server(root) as url:
        monkeypatch.setenv("MLFLOW_TRACKING_URI", url)
        mlflow.set_tracking_uri(url)

        tune.main(profile, spec, n_trials=3)
        trained = train.main(profile, spec)
        (version,) = [t.version for t in trained.trained]
        decisions = promote.main(profile, spec, stage="Production")
        assert [(d.target, d.version, d.decision) for d in decisions] == [
            ("alias:champion", version, "promoted"),
            ("stage:Production", version, "promoted"),
        ]
        scored = score.main(profile, spec)
        assert scored.model.version == version and scored.rows_written > 0

        client = MlflowClient(url)
        experiment = client.get_experiment_by_name(spec.name)
        assert experiment is not None and experiment.artifact_location.startswith("mlflow-artifacts:")
        runs = client.search_runs([experiment.experiment_id], max_results=1000)
        parents = [r for r in runs if r.data.tags.get("podium.role") == "study"]
        assert sorted(r.data.tags["podium.family"] for r in parents) == sorted(spec.tuning.families)
        for parent in parents:
            children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
            assert len(children) == 3, parent.data.tags["podium.family"]
            assert parent.info.status == "FINISHED" and "cv_log_loss" in parent.data.metrics
        assert {r.data.tags.get("podium.stage") for r in runs} >= {"tune", "train", "promote", "score"}

        model = client.get_registered_model(spec.model_name)
        assert model.aliases == {"champion": version, "challenger": version}
        champion = client.get_model_version_by_alias(spec.model_name, "champion")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            assert champion.current_stage == "Production"

        served = _get(url, "/api/2.0/mlflow/registered-models/alias", name=spec.model_name, alias="champion")
        assert served["model_version"]["version"] == version
        assert served["model_version"]["current_stage"] == "Production"

        pyfunc = mlflow.pyfunc.load_model(f"models:/{spec.model_name}@champion")
        schema = pyfunc.metadata.get_input_schema()
        with connect(profile, read_only=True) as warehouse:
            rows = warehouse.query(
                f"SELECT * FROM {spec.table} WHERE {spec.time} >= ? LIMIT 20", [spec.scoring.start]
            )
            written = warehouse.query(
                f"SELECT MODEL_VERSION, COUNT(*) AS N FROM {spec.scoring_table} GROUP BY MODEL_VERSION"
            )
        features = rows[schema.input_names()]
        numeric = [c.name for c in schema.inputs if c.type.name in registry.NUMERIC_TYPES]
        predictions = pyfunc.predict(features.astype(dict.fromkeys(numeric, "float64")))
        assert len(predictions) == len(rows) == 20
        assert dict(zip(written.MODEL_VERSION, written.N, strict=True)) == {version: scored.rows_written}
        assert any((root / "artifacts").rglob("MLmodel")), "the model was uploaded through the server's proxy"
        assert not (root / "mlartifacts").exists() and not (root / "mlruns").exists()

    with pytest.raises(urllib.error.URLError):
        urllib.request.urlopen(f"{url}/health", timeout=2)
