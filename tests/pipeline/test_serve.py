"""The registered champion served by `mlflow models serve`: class names and probabilities, by name.

One server (a module fixture) answers every test: a good request, then each malformed body a client
may send, each refused with a 4xx and a JSON message naming the problem, never a stack trace, or
predicted as the in-process pyfunc predicts it; the server is still up after them all.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import sys
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
from mlflow.exceptions import MlflowException
from mlflow.models import infer_signature
from mlflow.tracking import MlflowClient

from pipelines import dataset, registry, served
from pipelines.config import Profile, Spec
from pipelines.dataset import FeatureSchema
from pipelines.models import make_estimator
from pipelines.stages import train
from pipelines.warehouse import connect
from tests.helpers import tracking_store
from tests.servers import free_port, http_service


@dataclass(frozen=True)
class Served:
    """The served champion: its /invocations URL, the same model in-process, feature rows to send."""

    url: str
    model: mlflow.pyfunc.PyFuncModel
    rows: pd.DataFrame
    spec: Spec


@pytest.fixture(scope="module")
def champion(tmp_path_factory: pytest.TempPathFactory, tuned: tuple[Profile, Spec]) -> Iterator[Served]:
    """Train and alias a champion in a store of this module's own, and serve it once for every test here."""
    profile, spec = tuned
    root = tmp_path_factory.mktemp("serve")
    shutil.copyfile(profile.warehouse.path, root / "warehouse.duckdb")
    profile = profile.model_copy(
        update={"warehouse": profile.warehouse.model_copy(update={"path": root / "warehouse.duckdb"})}
    )
    store = f"sqlite:///{root / 'mlflow.db'}"
    uri = f"models:/{spec.model_name}@{registry.CHAMPION}"
    with tracking_store(store):
        mlflow.set_tracking_uri(store)  # the per-test store set it last; each test sets its own again
        version = train.main(profile, spec).champion.version
        MlflowClient().set_registered_model_alias(spec.model_name, registry.CHAMPION, version)
        model, features = mlflow.pyfunc.load_model(uri), registry.resolve(uri).features
    with connect(profile, read_only=True) as warehouse:
        rows = warehouse.query(f"SELECT * FROM {spec.table} WHERE {spec.time} >= '2022-01-01' LIMIT 5")
    rows = rows[features]

    port = free_port()
    command = [sys.executable, "-m", "mlflow", "models", "serve", "-m", uri, "--env-manager", "local"]
    command += ["--host", "127.0.0.1", "--port", str(port), "--workers", "1"]
    env = os.environ | {
        "MLFLOW_TRACKING_URI": store,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",  # uvicorn
    }
    with http_service(command, f"http://127.0.0.1:{port}/ping", root, env):
        yield Served(f"http://127.0.0.1:{port}/invocations", model, rows, spec)


@pytest.mark.slow
def test_served_champion_answers_with_class_names_and_probabilities(champion: Served) -> None:
    spec, rows = champion.spec, champion.rows.head(3)
    status, answer = _post(champion.url, _body(rows))
    assert status == 200

    served_rows = pd.DataFrame(answer["predictions"])
    probabilities = dataset.probability_columns(spec)
    assert list(served_rows.columns) == ["PREDICTED_CLASS", *probabilities] and len(served_rows) == 3
    assert set(served_rows.PREDICTED_CLASS) <= set(spec.classes)
    assert np.allclose(served_rows[probabilities].sum(axis=1), 1.0)
    likeliest = (
        served_rows[probabilities].idxmax(axis=1).map(dict(zip(probabilities, spec.classes, strict=True)))
    )
    assert served_rows.PREDICTED_CLASS.tolist() == likeliest.tolist()
    local = champion.model.predict(rows)
    assert list(local.PREDICTED_CLASS.cat.categories) == spec.classes  # a categorical over the classes
    pd.testing.assert_frame_equal(served_rows, local.astype({"PREDICTED_CLASS": object}), check_exact=False)


# --- malformed requests: each refused in a clear JSON message, or predicted as in-process ------------


@dataclass(frozen=True)
class Case:
    """A request body built from feature rows; refused naming `words`, or predicted on `expected` rows."""

    body: Callable[[pd.DataFrame], bytes]
    words: tuple[str, ...] = ()  # the refusal's message names each (case-insensitive)
    one_line: bool = True  # the message is one line (MLflow's own schema and JSON errors are not)
    expected: Callable[[pd.DataFrame], pd.DataFrame] | None = None  # predicted: the rows it equals


def _set(column: str, value: object) -> Callable[[pd.DataFrame], pd.DataFrame]:
    """The rows with `value` in `column` of the first row."""

    def change(rows: pd.DataFrame) -> pd.DataFrame:
        changed = rows.copy()
        changed.iloc[0, changed.columns.get_loc(column)] = value
        return changed

    return change


def _sending(column: str, value: object) -> Callable[[pd.DataFrame], bytes]:
    """The rows' body with `value` in `column` of the first row, as Python writes it (NaN, Infinity)."""

    def body(rows: pd.DataFrame) -> bytes:
        frame = _split(rows)
        frame["data"][0][frame["columns"].index(column)] = value
        return json.dumps({"dataframe_split": frame}).encode()

    return body


def _sent(change: Callable[[pd.DataFrame], pd.DataFrame]) -> Callable[[pd.DataFrame], bytes]:
    return lambda rows: _body(change(rows))


CASES = {
    "empty body": Case(lambda rows: b"", ("JSON",), one_line=False),
    "not JSON": Case(lambda rows: b'{"dataframe_split": ', ("JSON",), one_line=False),
    "no frame": Case(lambda rows: b'{"rows": []}', ("dataframe_split",)),
    "empty frame": Case(
        lambda rows: json.dumps({"dataframe_split": {"columns": list(rows.columns), "data": []}}).encode(),
        ("no rows",),
    ),
    "missing column": Case(
        _sent(lambda rows: rows.drop(columns=["GRID"])), ("missing", "GRID"), one_line=False
    ),
    "missing a column the training sample had nulls in": Case(  # optional in an inferred signature
        _sent(lambda rows: rows.drop(columns=["DRIVER_PREV_FINISH"])),
        ("missing", "DRIVER_PREV_FINISH"),
        one_line=False,
    ),
    "missing columns": Case(
        _sent(lambda rows: rows.drop(columns=["QUALI_POSITION", "CIRCUIT_REF"])),
        ("missing", "QUALI_POSITION", "CIRCUIT_REF"),
        one_line=False,
    ),
    "renamed column": Case(
        _sent(lambda rows: rows.rename(columns={"GRID": "grid"})), ("missing", "GRID"), one_line=False
    ),
    "extra column": Case(_sent(lambda rows: rows.assign(EXTRA=1.0, NOTE="x")), expected=lambda rows: rows),
    "string for a number": Case(_sending("GRID", "fourth"), ("GRID", "fourth")),
    "number for a string": Case(_sending("CONSTRUCTOR_REF", 7), ("CONSTRUCTOR_REF", "string")),
    "null number": Case(_sending("GRID", None), expected=_set("GRID", np.nan)),
    "NaN number": Case(_sending("DRIVER_AGE", math.nan), expected=_set("DRIVER_AGE", np.nan)),
    "null category": Case(_sending("CIRCUIT_REF", None), expected=_set("CIRCUIT_REF", None)),
    "Infinity": Case(_sending("GRID", math.inf), ("GRID", "Infinity", "finite")),
    "-Infinity": Case(_sending("QUALI_GAP_PCT", -math.inf), ("QUALI_GAP_PCT", "-Infinity", "finite")),
    "unknown category": Case(
        _sending("CONSTRUCTOR_REF", "no_such_team"), expected=_set("CONSTRUCTOR_REF", "no_such_team")
    ),
    "20,000 rows": Case(
        _sent(lambda rows: _repeat(rows, 20_000)), expected=lambda rows: _repeat(rows, 20_000)
    ),
}


@pytest.mark.slow
@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
def test_a_malformed_request_is_refused_in_a_clear_message_or_predicted(champion: Served, case: Case) -> None:
    status, text = _send(champion.url, case.body(champion.rows))
    assert "Traceback" not in text and 'File "' not in text, text[:2000]
    answer = json.loads(text)
    if case.expected is None:
        assert 400 <= status < 500, (status, text[:2000])
        assert isinstance(answer, dict) and {"error_code", "message"} <= set(answer), text[:2000]
        assert "stack_trace" not in answer
        message = answer["message"]
        assert all(word.lower() in message.lower() for word in case.words), message
        assert not case.one_line or "\n" not in message.strip(), message
    else:
        assert status == 200, text[:2000]
        got = pd.DataFrame(answer["predictions"])
        local = champion.model.predict(case.expected(champion.rows))
        pd.testing.assert_frame_equal(got, local.astype({"PREDICTED_CLASS": object}), check_exact=False)


@pytest.mark.slow
def test_the_server_still_predicts_after_the_malformed_requests(champion: Served) -> None:
    status, answer = _post(champion.url, _body(champion.rows))
    assert status == 200
    local = champion.model.predict(champion.rows)
    pd.testing.assert_frame_equal(
        pd.DataFrame(answer["predictions"]), local.astype({"PREDICTED_CLASS": object}), check_exact=False
    )


def _repeat(rows: pd.DataFrame, n: int) -> pd.DataFrame:
    return pd.concat([rows] * -(-n // len(rows)), ignore_index=True).head(n)


def _split(rows: pd.DataFrame) -> dict:
    """Feature rows in MLflow's `dataframe_split` layout, a missing value as null."""
    data = rows.astype(object).where(rows.notna(), None).to_numpy().tolist()
    return {"columns": list(rows.columns), "data": data}


def _body(rows: pd.DataFrame) -> bytes:
    return json.dumps({"dataframe_split": _split(rows)}).encode()


def _send(url: str, body: bytes) -> tuple[int, str]:
    """POST `body` as JSON; the status and the body's text, whatever the status."""
    request = urllib.request.Request(url, body, {"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=120) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


def _post(url: str, body: bytes) -> tuple[int, dict]:
    status, text = _send(url, body)
    return status, json.loads(text)


# --- the signature and the pyfunc's own checks, in-process ----------------------------------------

CLASSES = ["podium", "points", "none"]
SCHEMA = FeatureSchema(["GRID", "DRIVER_FORM"], ["CONSTRUCTOR_REF", "CIRCUIT_REF"])


def _small(n: int = 120, seed: int = 0) -> tuple[pd.DataFrame, np.ndarray]:
    """Feature rows with NULLs in both kinds of column (as the warehouse returns them), class indices."""
    rng = np.random.default_rng(seed)
    X = pd.DataFrame(
        {
            "GRID": rng.integers(1, 21, n).astype(float),
            "DRIVER_FORM": rng.normal(size=n),
            "CONSTRUCTOR_REF": rng.choice(["ferrari", "mclaren"], n).astype(object),
            "CIRCUIT_REF": rng.choice(["monza", "spa"], n).astype(object),
        }
    )
    y = np.digitize(X["GRID"] + rng.normal(scale=3, size=n), [3.5, 10.5])
    X.loc[::7, "GRID"] = np.nan
    X.loc[::5, "CONSTRUCTOR_REF"] = None
    return X, y


def _named() -> tuple[served.NamedClassifier, pd.DataFrame]:
    X, y = _small()
    fitted = make_estimator("logreg", {}, SCHEMA, seed=0).fit(X, y)
    return served.NamedClassifier.of(fitted, CLASSES, SCHEMA.numeric), X


def test_the_logged_signature_requires_every_input_column() -> None:
    named, X = _named()
    with mlflow.start_run():
        info = served.log_model(named, X, train.pip_requirements("logreg"), {"classes": CLASSES})
    inputs = mlflow.models.get_model_info(info.model_uri).signature.inputs.inputs
    inferred = infer_signature(X.head(100)).inputs.inputs
    assert {c.name for c in inferred if not c.required} == {"GRID", "CONSTRUCTOR_REF"}  # what it fixes
    assert [(c.name, c.type, c.required) for c in inputs] == [(c.name, c.type, True) for c in inferred]
    with pytest.raises(MlflowException, match="missing inputs \\['GRID'\\]"):
        mlflow.pyfunc.load_model(info.model_uri).predict(X.drop(columns=["GRID"]))


@pytest.mark.parametrize(
    ("change", "words"),
    [
        (lambda X: X.drop(columns=["GRID"]), "input column GRID is missing"),  # an old, optional signature
        (lambda X: X.head(0), "no rows"),
        (lambda X: X.assign(DRIVER_FORM=X.DRIVER_FORM.where(X.index != 3, np.inf)), "DRIVER_FORM"),
        (lambda X: X.assign(CIRCUIT_REF=X.CIRCUIT_REF.where(X.index != 2, 4)), "CIRCUIT_REF must hold"),
        (lambda X: X.assign(GRID=X.GRID.astype(object).where(X.index != 1, "pole")), "'pole' at row 1"),
    ],
    ids=["missing column", "no rows", "infinity", "number for a string", "string for a number"],
)
def test_the_pyfunc_refuses_a_bad_frame_in_one_line(change: Callable, words: str) -> None:
    """What any loaded version answers in-process too, whatever its signature lets through."""
    named, X = _named()
    with pytest.raises(served.InvalidInput) as refused:
        served.FramePredictor(named).predict(change(X))
    message = json.loads(refused.value.serialize_as_json())["message"]
    assert words in message and "\n" not in message
    refused.value.message = (
        f"Failed to predict data '{X}'. \nError: {refused.value.message}"  # as the server does
    )
    assert json.loads(refused.value.serialize_as_json())["message"] == message
    assert refused.value.get_http_status_code() == 400
