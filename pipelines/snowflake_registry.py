"""Mirror a registered Podium model into Snowflake's model registry, so SQL can score with it.

Inputs:  a registered MLflow version (`from_mlflow`), or its `served.NamedClassifier` and a few
         input rows (`native_model`); for `mirror`, a Snowpark session on a Snowflake account
         whose current database and schema hold the registry, a model name and an alias.
Outputs: a Snowflake model version `V<mlflow version>` whose one method, PREDICT_PROBA, takes the
         MLflow signature's input columns (numerics DOUBLE, categoricals STRING) and returns
         P_<CLASS> DOUBLE per class in class order; the alias moved to it. Then
         `WITH m AS MODEL f1_podium VERSION V3 SELECT m!PREDICT_PROBA(...)` (or `VERSION <alias>`).

What Snowflake receives is scikit-learn's own Pipeline, not the NamedClassifier (a Podium class
the warehouse could not import, and whose pyfunc would need mlflow there): the fitted
`named.estimator_`, behind one stateless first step, `snowflake_input`, made of two
`FunctionTransformer`s over pandas functions. It gives the pipeline the rows NamedClassifier
gives it: numerics as float64 and NULL categoricals as None. It is needed: Snowflake casts each
batch to the signature's nullable dtypes (pandas `string`, `Float64`) before calling the model,
and the fitted imputers fail on `pd.NA` ("boolean value of NA is ambiguous"). The pickle names
only scikit-learn, pandas, numpy (and xgboost for that family): no `code_paths` are needed, and
`native_model` refuses a pipeline that pickles a class from any other non-standard module.
Dependencies go to Snowflake's Anaconda channel (conda), pinned to this machine's versions, with
`relax_version` off: a pickle is only sure to load under the versions that wrote it.

Needs an account, and unproven offline (Snowpark local testing cannot run the registry, and
there is no emulator): the upload (`Registry.log_model`), that the pinned versions resolve in
the warehouse, `MODEL!PREDICT_PROBA` from SQL, and the alias (`ALTER MODEL ... VERSION ... SET /
UNSET ALIAS`, assuming an alias names one version and a version holds one alias; between the
UNSET on the old holder and the SET, SQL naming the alias finds no version). Proven
offline by tests/unit/test_snowflake_registry.py: the object, its signature and pins, and that
snowflake-ml's own packager saves it, loads it as the warehouse does, and predicts the
probabilities the MLflow pyfunc serves.
"""

from __future__ import annotations

import importlib
import inspect
import json
import re
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import cloudpickle
import pandas as pd
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import FunctionTransformer

from pipelines.errors import PodiumError
from pipelines.secrets import hide_password
from pipelines.served import NamedClassifier, model_input, probability_column
from pipelines.tracking import store_detail

METHOD = "predict_proba"  # the one method logged: `predict` of the pipeline answers class indices
INPUT_STEP = "snowflake_input"
INSTALL = "pip install snowflake-ml-python==2.6.0"
CONDA_NAMES = {
    "sklearn": "scikit-learn",
    "numpy": "numpy",
    "pandas": "pandas",
    "scipy": "scipy",
    "xgboost": "xgboost",
}
SYSTEM_ALIASES = frozenset({"DEFAULT", "FIRST", "LAST"})
IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_$]*")
OPEN_FIX = (
    "use a Snowpark session on a Snowflake account with a current database and schema "
    "(Snowpark local testing has no model registry)"
)
LOG_FIX = (
    "grant the role CREATE MODEL on that schema, and check its pinned packages are in "
    "Snowflake's Anaconda channel (SELECT * FROM INFORMATION_SCHEMA.PACKAGES)"
)


@dataclass(frozen=True)
class NativeModel:
    """What is handed to Snowflake's registry for one MLflow version."""

    estimator: Pipeline  # scikit-learn only: `snowflake_input`, then the fitted steps of named.estimator_
    sample: pd.DataFrame  # a few input rows in signature order, numerics float64 (the sample input)
    signatures: dict[str, Any]  # {"predict_proba": ModelSignature(inputs, outputs P_<CLASS> DOUBLE)}
    version_name: str  # "V<mlflow version>"
    conda_dependencies: list[str]  # "scikit-learn==1.9.1", ... pinned to the installed versions
    options: dict[str, Any] = field(default_factory=lambda: {"relax_version": False})

    def mirror(self, session: Any, model_name: str, alias: str) -> None:
        """Log this version in the session's model registry (unless there) and move `alias` to it."""
        mirror(session, model_name, self, alias)

    def log_arguments(self) -> dict[str, Any]:
        """The keyword arguments of `Registry.log_model` for this version, all but `model_name`."""
        from snowflake.ml.model import target_platform

        return {
            "model": self.estimator,
            "version_name": self.version_name,
            "comment": f"Podium: mirror of MLflow version {self.version_name[1:]}",
            "signatures": self.signatures,
            "sample_input_data": self.sample,
            "conda_dependencies": list(self.conda_dependencies),
            "target_platforms": target_platform.WAREHOUSE_ONLY,
            "options": dict(self.options),
        }


def from_mlflow(model: str, version: str) -> NativeModel:
    """The native model of a registered MLflow version, with its logged input example as the sample."""
    import mlflow

    from pipelines.registry import load_estimator, version_uri

    uri = version_uri(model, version)
    named = load_estimator(model, version)
    sample = mlflow.models.Model.load(uri).load_input_example(uri)
    if not isinstance(sample, pd.DataFrame):
        raise PodiumError(f"version {version} of {model} has no input example: log it with `podium train`.")
    return native_model(named, sample, version)


def native_model(named: NamedClassifier, sample: pd.DataFrame, version: str) -> NativeModel:
    """Build what the registry receives from a fitted NamedClassifier, a few input rows and its version."""
    if not str(version).isdigit():
        raise ValueError(f"MLflow version {version!r} is not a number")
    columns = [str(c) for c in named.estimator_.feature_names_in_]
    numeric = [c for c in columns if c in set(named.numeric or [])]
    missing = [c for c in columns if c not in sample.columns]
    if missing:
        raise ValueError(f"the sample rows lack the model's input columns {missing}")
    if list(getattr(named.estimator_, "classes_", [])) != list(range(len(named.classes_))):
        raise ValueError("the pipeline's classes are not the indices 0..K-1 of the named classes")
    complete = sample[columns].dropna()  # the registry shows a sample row in its usage snippets
    rows = (complete if len(complete) else sample[columns]).head(5).reset_index(drop=True)
    rows = model_input(rows, numeric)
    estimator = snowflake_pipeline(named.estimator_, columns, numeric)
    return NativeModel(
        estimator=estimator,
        sample=rows,
        signatures={METHOD: signature(columns, numeric, list(named.classes_), rows)},
        version_name=f"V{version}",
        conda_dependencies=conda_dependencies(estimator),
    )


def snowflake_pipeline(fitted: Pipeline, columns: list[str], numeric: list[str]) -> Pipeline:
    """The fitted pipeline behind `snowflake_input`: numerics float64, NULLs None, as in NamedClassifier."""
    dtypes = {c: "float64" if c in numeric else object for c in columns}
    prepare = make_pipeline(
        FunctionTransformer(pd.DataFrame.astype, kw_args={"dtype": dtypes}),
        FunctionTransformer(pd.DataFrame.where, kw_args={"cond": pd.notna, "other": None}),
    )
    return Pipeline([(INPUT_STEP, prepare), *fitted.steps])


def signature(columns: list[str], numeric: list[str], classes: list[str], sample: pd.DataFrame) -> Any:
    """predict_proba's signature: numerics DOUBLE, categoricals STRING in; P_<CLASS> DOUBLE per class out."""
    spec = _snowflake_ml("snowflake.ml.model.model_signature")
    strings = [c for c in columns if c not in numeric]
    odd = [f"{c} ({sample[c].dtype})" for c in strings if not pd.api.types.is_string_dtype(sample[c].dtype)]
    if odd:
        raise PodiumError(f"categorical inputs {odd} are not strings: list numeric columns as numeric.")
    inputs = [
        spec.FeatureSpec(c, spec.DataType.DOUBLE if c in numeric else spec.DataType.STRING) for c in columns
    ]
    outputs = [spec.FeatureSpec(probability_column(c), spec.DataType.DOUBLE) for c in classes]
    return spec.ModelSignature(inputs=inputs, outputs=outputs)


def conda_dependencies(estimator: Any) -> list[str]:
    """scikit-learn and every package the pickle names, pinned; any other non-standard module is refused."""
    modules = pickled_modules(estimator)
    foreign = sorted(m for m in modules if m not in CONDA_NAMES and m not in sys.stdlib_module_names)
    if foreign:
        raise PodiumError(
            f"the pipeline pickles objects of {foreign}, which Snowflake's warehouse cannot import: "
            "build the model from scikit-learn and xgboost estimators only."
        )
    needed = sorted({"sklearn", *modules} & set(CONDA_NAMES))
    return [f"{CONDA_NAMES[m]}=={importlib.import_module(m).__version__}" for m in needed]


def pickled_modules(obj: Any) -> set[str]:
    """The top-level packages whose classes or functions a pickle of `obj` names (what unpickling imports)."""
    found: set[str] = set()

    class Recorder(cloudpickle.Pickler):
        def reducer_override(self, value: Any) -> Any:
            named = value if isinstance(value, type) or inspect.isroutine(value) else type(value)
            found.add(str(getattr(named, "__module__", None) or "builtins").split(".")[0])
            return super().reducer_override(value)

    Recorder(_Discard()).dump(obj)
    return found


class _Discard:
    """A file that forgets what is written to it."""

    def write(self, data: bytes) -> int:
        return len(data)


def mirror(session: Any, model_name: str, native: NativeModel, alias: str) -> None:
    """Log the version (unless that version name is already there) and move `alias` to it, in Snowflake.

    Idempotent: a second run for a logged version only moves the alias (and does nothing if it is there).
    """
    _check_alias(alias)
    registry_module = _snowflake_ml("snowflake.ml.registry")
    with _step("open Snowflake's model registry", OPEN_FIX):
        registry = registry_module.Registry(session)
    where = f"model {model_name} in {registry.location}"
    with _step(f"list the versions of {where}", "grant the role USAGE on that database and schema"):
        versions = _versions(registry, model_name)
    if native.version_name not in versions:
        with _step(f"log version {native.version_name} of {where}", LOG_FIX):
            registry.log_model(model_name=model_name, **native.log_arguments())
    holder = _holder(versions, alias)
    if holder == native.version_name:
        return
    move = f"run ALTER MODEL {model_name} VERSION {native.version_name} SET ALIAS = {alias}"
    fix = f"{move}, after ALTER MODEL {model_name} VERSION {holder} UNSET ALIAS" if holder else move
    with _step(f"move alias {alias} of {where} to {native.version_name}", fix):
        model = registry.get_model(model_name)
        if holder is not None:
            model.version(holder).unset_alias(alias)
        model.version(native.version_name).set_alias(alias)


def _versions(registry: Any, model_name: str) -> dict[str, set[str]]:
    """Version name -> its aliases (upper case), of a model in the registry; {} if there is no such model."""
    try:
        model = registry.get_model(model_name)
    except ValueError:  # snowflake-ml: "Unable to find model ..."
        return {}
    shown = model.show_versions()
    if shown.empty:
        return {}
    return {
        str(row["name"]).upper(): {str(a).upper() for a in json.loads(row["aliases"] or "[]")}
        for _, row in shown.iterrows()
    }


def _holder(versions: dict[str, set[str]], alias: str) -> str | None:
    """The version the alias names, if any."""
    return next((name for name, aliases in versions.items() if alias.upper() in aliases), None)


def _check_alias(alias: str) -> None:
    if not IDENTIFIER.fullmatch(alias) or alias.upper() in SYSTEM_ALIASES:
        raise PodiumError(
            f"alias {alias!r} cannot name a Snowflake model version: use a plain identifier other than "
            f"{', '.join(sorted(SYSTEM_ALIASES))} (e.g. champion)."
        )


def _snowflake_ml(module: str) -> Any:
    """A snowflake-ml module, imported when needed: it is an optional extra."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise PodiumError(
            f"snowflake mirror: cannot import {module} ({store_detail(exc)}): {INSTALL}."
        ) from None


@contextmanager
def _step(what: str, fix: str) -> Iterator[None]:
    """Turn any failure of one registry step into one PodiumError line naming the step and its fix."""
    try:
        yield
    except PodiumError:
        raise
    except Exception as exc:
        detail = hide_password(store_detail(exc))
        raise PodiumError(
            f"snowflake mirror: could not {what} ({type(exc).__name__}: {detail}): {fix}."
        ) from None
