"""Mirroring into Snowflake's model registry, offline: what the registry receives, and what it predicts.

Models are fitted by Podium's train path (`make_estimator`, `NamedClassifier.of`, `served.log_model`,
registered in the test's own MLflow store) on a small frame with NULLs in both kinds of column.
snowflake-ml's own packager saves what `mirror` would upload and loads it as the warehouse's
generated function does (`ModelPackager.load(as_custom_model=True)`, each batch cast to the
signature's dtypes). Unproven here, for want of a Snowflake account: the upload, `MODEL!PREDICT_PROBA`
from SQL, the pinned packages resolving in the warehouse, and the alias in Snowflake.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
import sklearn
import xgboost
from sklearn.pipeline import Pipeline

from pipelines import served
from pipelines.dataset import FeatureSchema
from pipelines.errors import PodiumError
from pipelines.models import make_estimator
from pipelines.served import NamedClassifier
from pipelines.snowflake_registry import (
    INPUT_STEP,
    conda_dependencies,
    from_mlflow,
    mirror,
    native_model,
    pickled_modules,
)
from pipelines.stages.train import pip_requirements

MODEL = "f1_podium"
CLASSES = ["podium", "points", "none"]
SCHEMA = FeatureSchema(["GRID", "DRIVER_FORM"], ["CONSTRUCTOR_REF", "CIRCUIT_REF"])
PROBABILITIES = ["P_PODIUM", "P_POINTS", "P_NONE"]


def frame(n: int, seed: int) -> tuple[pd.DataFrame, np.ndarray]:
    """Feature rows as the warehouse returns them (NULL: NaN in numerics, None in strings), class indices."""
    rng = np.random.default_rng(seed)
    X = pd.DataFrame(
        {
            "GRID": rng.integers(1, 21, n).astype(float),
            "DRIVER_FORM": rng.normal(size=n),
            "CONSTRUCTOR_REF": rng.choice(["ferrari", "mclaren", "williams"], n).astype(object),
            "CIRCUIT_REF": rng.choice(["monza", "spa", "suzuka"], n).astype(object),
        }
    )
    y = np.digitize(X["GRID"] + rng.normal(scale=3, size=n), [3.5, 10.5])  # 0 podium, 1 points, 2 none
    X.loc[::7, "GRID"] = np.nan
    X.loc[::5, "CONSTRUCTOR_REF"] = None
    return X, y


def fitted(family: str) -> tuple[NamedClassifier, pd.DataFrame]:
    """A NamedClassifier as `podium train` makes one: the family's pipeline fitted on indices, then named."""
    X, y = frame(150, seed=0)
    return NamedClassifier.of(
        make_estimator(family, {}, SCHEMA, seed=0).fit(X, y), CLASSES, SCHEMA.numeric
    ), X


@pytest.fixture(params=["logreg", "xgboost"])
def family(request: pytest.FixtureRequest) -> str:
    """One family, logged by `served.log_model` and registered as version 1 of MODEL in this test's store."""
    named, X = fitted(request.param)
    with mlflow.start_run():
        info = served.log_model(named, X, pip_requirements(request.param), {"classes": CLASSES})
    mlflow.register_model(info.model_uri, MODEL)
    return request.param


def test_registry_receives_a_plain_pipeline_and_a_signature_named_by_class(family: str) -> None:
    native = from_mlflow(MODEL, "1")
    assert type(native.estimator) is Pipeline
    assert [name for name, _ in native.estimator.steps] == [INPUT_STEP, "prep", "model"]
    modules = pickled_modules(native.estimator)
    assert modules - set(sys.stdlib_module_names) <= {"sklearn", "numpy", "pandas", "xgboost"}
    named = mlflow.sklearn.load_model(f"models:/{MODEL}/1")
    assert "pipelines" in pickled_modules(named)  # the check does see a Podium class

    signature = native.signatures["predict_proba"]
    assert list(native.signatures) == ["predict_proba"]
    assert [(o.name, o._dtype.name) for o in signature.outputs] == [(p, "DOUBLE") for p in PROBABILITIES]
    logged = mlflow.models.get_model_info(f"models:/{MODEL}/1").signature.inputs.to_dict()
    snowflake_type = {"double": "DOUBLE", "string": "STRING"}
    assert [(i.name, i._dtype.name) for i in signature.inputs] == [
        (c["name"], snowflake_type[c["type"]]) for c in logged
    ]
    assert [c["name"] for c in logged] == SCHEMA.columns
    assert native.sample.dtypes[SCHEMA.numeric].eq("float64").all()

    assert native.version_name == "V1" and native.options == {"relax_version": False}
    assert f"scikit-learn=={sklearn.__version__}" in native.conda_dependencies
    assert (f"xgboost=={xgboost.__version__}" in native.conda_dependencies) == (family == "xgboost")


def test_snowflake_packager_round_trip_predicts_what_mlflow_serves(family: str, tmp_path: Path) -> None:
    from snowflake.ml.model._packager.model_packager import ModelPackager

    arguments = from_mlflow(MODEL, "1").log_arguments()
    keep = ["model", "signatures", "sample_input_data", "conda_dependencies", "target_platforms", "options"]
    ModelPackager(str(tmp_path / "native")).save(name=MODEL, **{k: arguments[k] for k in keep})

    packaged = ModelPackager(str(tmp_path / "native"))
    meta = packaged.load(as_custom_model=True)  # what Snowflake's generated function runs, per batch:
    inputs = meta.signatures["predict_proba"].inputs
    rows, _ = frame(40, seed=1)
    rows.loc[3, "CIRCUIT_REF"] = "interlagos"  # a category never seen in training
    batch = rows[[i.name for i in inputs]].astype({i.name: i.as_dtype() for i in inputs})
    assert batch["CONSTRUCTOR_REF"].isna().any() and batch["GRID"].isna().any()
    got = packaged.model.predict_proba(batch)

    assert list(got.columns) == PROBABILITIES  # the packager names outputs by the signature
    served_rows = mlflow.pyfunc.load_model(f"models:/{MODEL}/1").predict(rows)
    np.testing.assert_allclose(got.to_numpy(dtype=float), served_rows[PROBABILITIES].to_numpy(), rtol=1e-9)
    with pytest.raises(TypeError, match="NA"):  # why `snowflake_input` is there: the bare pipeline fails
        arguments["model"][1:].predict_proba(batch)
    assert f"scikit-learn=={sklearn.__version__}" in meta.env.conda_dependencies


def test_pins_follow_what_the_pickle_names_and_a_podium_class_is_refused() -> None:
    X, y = frame(150, seed=0)
    calibrated = make_estimator("xgboost", {"calibration": "sigmoid"}, SCHEMA, seed=0).fit(X, y)
    native = native_model(NamedClassifier.of(calibrated, CLASSES, SCHEMA.numeric), X, "2")
    assert any(d.startswith("xgboost==") for d in native.conda_dependencies)  # inside CalibratedClassifierCV
    assert len(native.sample) == 5 and not native.sample.isna().any().any()  # complete rows preferred
    with pytest.raises(PodiumError, match=r"pickles objects of \['pipelines'\]"):
        conda_dependencies(NamedClassifier.of(calibrated, CLASSES, SCHEMA.numeric))


class StandInRegistry:
    """Snowflake's registry in memory, only as far as `mirror` uses it: version names and their aliases.

    A stand-in for the account this test does not have; it checks mirror's own steps, not Snowflake's.
    """

    location = "PODIUM.PUBLIC"

    def __init__(self, session: dict) -> None:
        self.aliases, self.calls = session["aliases"], session["calls"]

    def get_model(self, name: str) -> StandInRegistry:
        if not self.aliases:
            raise ValueError(f"Unable to find model {name}")
        return self

    def show_versions(self) -> pd.DataFrame:
        return pd.DataFrame([{"name": v, "aliases": json.dumps(sorted(a))} for v, a in self.aliases.items()])

    def log_model(self, *, model_name: str, version_name: str, **arguments: object) -> None:
        self.calls.append(("log", version_name))
        self.aliases[version_name] = set()

    def version(self, name: str) -> StandInRegistry:
        self.current = name
        return self

    def unset_alias(self, alias: str) -> None:
        self.calls.append(("unset", self.current))
        self.aliases[self.current].discard(alias.upper())

    def set_alias(self, alias: str) -> None:
        self.calls.append(("set", self.current))
        self.aliases[self.current].add(alias.upper())


def test_mirror_logs_a_version_once_and_moves_the_alias(monkeypatch: pytest.MonkeyPatch) -> None:
    import snowflake.ml.registry

    monkeypatch.setattr(snowflake.ml.registry, "Registry", StandInRegistry)
    named, X = fitted("logreg")
    account: dict = {"aliases": {}, "calls": []}
    for version in ["3", "3", "4", "3"]:  # log V3, again (nothing to do), log V4, roll back to V3
        mirror(account, MODEL, native_model(named, X, version), "champion")
    assert account["calls"] == [
        ("log", "V3"),
        ("set", "V3"),
        ("log", "V4"),
        ("unset", "V3"),
        ("set", "V4"),
        ("unset", "V4"),
        ("set", "V3"),
    ]
    assert account["aliases"] == {"V3": {"CHAMPION"}, "V4": set()}


def test_mirror_on_snowpark_local_testing_fails_with_one_line() -> None:
    from snowflake.snowpark import Session

    named, X = fitted("logreg")
    native = native_model(named, X, "3")
    session = Session.builder.config("local_testing", True).create()
    try:
        with pytest.raises(PodiumError) as raised:
            mirror(session, MODEL, native, "champion")
    finally:
        session.close()
    message = str(raised.value)
    assert (
        "could not open Snowflake's model registry (NotImplementedError: [Local Testing] Session.sql"
        in message
    )
    assert "\n" not in message and "Traceback" not in message
    assert raised.value.__cause__ is None and raised.value.__suppress_context__


def test_mirror_without_snowflake_ml_or_with_a_system_alias_fails_with_one_line(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    named, X = fitted("logreg")
    native = native_model(named, X, "3")
    with pytest.raises(PodiumError, match="alias 'LAST' cannot name a Snowflake model version"):
        mirror(None, MODEL, native, "LAST")
    monkeypatch.setitem(sys.modules, "snowflake.ml.registry", None)  # as if the extra were not installed
    with pytest.raises(PodiumError, match=r"pip install snowflake-ml-python==2\.6\.0\.$") as raised:
        mirror(None, MODEL, native, "champion")
    assert "\n" not in str(raised.value)
