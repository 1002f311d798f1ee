"""The registered champion served by `mlflow models serve`: class names and probabilities, by name."""

from __future__ import annotations

import json
import os
import sys
import urllib.request
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from pipelines import dataset, registry, train
from pipelines.config import Profile, Spec
from pipelines.warehouse import connect
from tests.servers import free_port, http_service

pytestmark = pytest.mark.slow


def test_served_champion_answers_with_class_names_and_probabilities(
    trained_profile: Profile, tuned: tuple[Profile, Spec], tmp_path: Path
) -> None:
    _, spec = tuned
    version = train.main(trained_profile, spec).champion.version
    MlflowClient().set_registered_model_alias(spec.model_name, registry.CHAMPION, version)
    uri = f"models:/{spec.model_name}@{registry.CHAMPION}"
    features = registry.resolve(uri).features
    with connect(trained_profile, read_only=True) as warehouse:
        rows = warehouse.query(f"SELECT * FROM {spec.table} WHERE {spec.time} >= '2022-01-01' LIMIT 3")
    rows = rows[features]

    port = free_port()
    command = [sys.executable, "-m", "mlflow", "models", "serve", "-m", uri, "--env-manager", "local"]
    command += ["--host", "127.0.0.1", "--port", str(port), "--workers", "1"]
    env = os.environ | {"PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}  # uvicorn
    with http_service(command, f"http://127.0.0.1:{port}/ping", tmp_path, env):
        answer = _post(f"http://127.0.0.1:{port}/invocations", rows)

    served = pd.DataFrame(answer["predictions"])
    probabilities = dataset.probability_columns(spec)
    assert list(served.columns) == ["PREDICTED_CLASS", *probabilities] and len(served) == 3
    assert set(served.PREDICTED_CLASS) <= set(spec.classes)
    assert np.allclose(served[probabilities].sum(axis=1), 1.0)
    likeliest = served[probabilities].idxmax(axis=1).map(dict(zip(probabilities, spec.classes, strict=True)))
    assert served.PREDICTED_CLASS.tolist() == likeliest.tolist()
    local = mlflow.pyfunc.load_model(uri).predict(rows)
    assert list(local.PREDICTED_CLASS.cat.categories) == spec.classes  # a categorical over the classes
    pd.testing.assert_frame_equal(served, local.astype({"PREDICTED_CLASS": object}), check_exact=False)


def _post(url: str, rows: pd.DataFrame) -> dict:
    """POST feature rows as MLflow's `dataframe_split` JSON; the parsed answer."""
    body = json.dumps({"dataframe_split": json.loads(rows.to_json(orient="split", index=False))})
    request = urllib.request.Request(url, body.encode(), {"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=60) as response:
        return json.loads(response.read())
