"""The served model: a fitted classifier that speaks in class names, and the MLflow flavor it is logged as.

Every registered version is a `NamedClassifier`, logged by `log_model`:

- `mlflow.sklearn.load_model(uri)` gives the classifier itself: `classes_` are the class names,
  `predict` returns names, `predict_proba` one probability per class in that order.
- `mlflow.pyfunc.load_model(uri).predict(frame)`, and so `mlflow models serve`, returns
  `predict_frame`: PREDICTED_CLASS and one P_<CLASS> per class, the scoring table's columns.
  The score stage and the in-warehouse UDF call `predict_frame` too: one way to predict.
- Its signature requires every input column; numeric values may be null (the imputers fill them).
  The pyfunc `predict` checks each request before the model sees it and refuses a bad one with an
  `InvalidInput` (HTTP 400 from `mlflow models serve`): one line naming the column and the fix,
  never a stack trace.

This module imports no other Podium module. It travels inside each logged model (the model's
`code/` folder), so the model loads where Podium is not installed.
"""

from __future__ import annotations

import json
import logging
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd
from mlflow.exceptions import MlflowException
from mlflow.models import Model, ModelSignature, infer_signature
from mlflow.protos.databricks_pb2 import BAD_REQUEST, INVALID_PARAMETER_VALUE
from mlflow.types.schema import ColSpec, Schema
from sklearn.base import BaseEstimator, ClassifierMixin, clone

PREDICTED = "PREDICTED_CLASS"

_logger = logging.getLogger(__name__)


def probability_column(label: str) -> str:
    """The score column of one class: P_<CLASS>, upper case as Snowflake stores unquoted names."""
    return f"P_{label}".upper()


def model_input(frame: pd.DataFrame, numeric: list[str]) -> pd.DataFrame:
    """Numeric inputs as float64, as every model is trained and its signature says (no copy if they are)."""
    cast = {c: "float64" for c in numeric if frame[c].dtype != "float64"}
    return frame.astype(cast) if cast else frame


class NamedClassifier(ClassifierMixin, BaseEstimator):
    """A classifier over integer class indices, presented in class names.

    `estimator` learns indices 0..K-1; `classes` names them in order; `numeric` columns are cast
    to float64 before every call, so callers pass feature rows as the warehouse returns them.
    """

    def __init__(
        self, estimator: Any = None, classes: list[str] | None = None, numeric: list[str] | None = None
    ):
        self.estimator = estimator
        self.classes = classes
        self.numeric = numeric

    @classmethod
    def of(cls, fitted: Any, classes: list[str], numeric: list[str]) -> NamedClassifier:
        """Name the classes of an already fitted index classifier."""
        return cls(fitted, classes, numeric)._fitted(fitted)

    def fit(self, X: pd.DataFrame, y: Any) -> NamedClassifier:
        """Fit a clone of `estimator` on class names `y`."""
        labels = pd.Series(np.asarray(y))
        if self.classes is None:  # built without arguments (sklearn's way): fitting needs the classes
            raise TypeError("'NoneType' object is not iterable")  # what enumerate(None) raised here
        codes = labels.map({c: i for i, c in enumerate(self.classes)})
        if codes.isna().any():
            raise ValueError(f"y holds values outside classes {self.classes}")
        return self._fitted(clone(self.estimator).fit(self._input(X), codes.to_numpy(dtype=int)))

    def predict_proba(self, X: pd.DataFrame) -> np.ndarray:
        return self.estimator_.predict_proba(self._input(X))

    def predict(self, X: pd.DataFrame) -> np.ndarray:
        return self.classes_[self.predict_proba(X).argmax(axis=1)]

    def predict_frame(self, X: pd.DataFrame) -> pd.DataFrame:
        """PREDICTED_CLASS (a categorical over the classes) and P_<CLASS> per class, one row per input row."""
        proba = self.predict_proba(X)
        frame = pd.DataFrame(proba, columns=[probability_column(c) for c in self.classes_])
        frame.insert(0, PREDICTED, pd.Categorical.from_codes(proba.argmax(axis=1), list(self.classes_)))
        return frame

    def _input(self, X: pd.DataFrame) -> pd.DataFrame:
        return model_input(X, list(self.numeric or []))

    def _fitted(self, estimator: Any) -> NamedClassifier:
        self.estimator_ = estimator
        self.classes_ = np.asarray(self.classes, dtype=str)
        return self


# --- the MLflow flavor: sklearn for the native model, predict_frame for pyfunc -------------------


class InvalidInput(MlflowException):
    """A request the model refuses: HTTP 400 whose JSON `message` is one line naming the input and the fix.

    `mlflow models serve` answers any MlflowException raised in `predict` with its `serialize_as_json`
    and status, after prefixing `.message` with the whole input frame's repr (MLflow 3.17.2,
    mlflow/pyfunc/scoring_server/__init__.py, `invocations`): the body keeps the line itself.
    """

    def __init__(self, message: str, error_code: int = INVALID_PARAMETER_VALUE):
        super().__init__(message, error_code=error_code)
        self.line = message

    def serialize_as_json(self) -> str:
        return json.dumps(json.loads(super().serialize_as_json()) | {"message": self.line})


class FramePredictor:
    """The pyfunc face of a NamedClassifier: `predict` checks the request, then returns `predict_frame`."""

    def __init__(self, model: NamedClassifier):
        self.model = model

    def predict(self, data: Any, params: dict[str, Any] | None = None) -> pd.DataFrame:
        frame = check_request(data, self.model)
        try:
            return self.model.predict_frame(frame)
        except Exception as error:  # a request the checks let through: one line out, the trace in the log
            _logger.exception("the model failed on a request that passed its input checks")
            raise InvalidInput(
                f"the model could not score this input ({type(error).__name__}: {_line(error)}): "
                "send every signature column, numbers or null in numeric ones, strings or null in the others",
                BAD_REQUEST,
            ) from error


def check_request(data: Any, model: NamedClassifier) -> pd.DataFrame:
    """`data` as a frame the model can score, or an `InvalidInput` naming the first kind of fault found.

    Rows: at least one. Columns: every one the model was fitted on (extras are left to the model,
    which selects its own). Numeric columns: numbers or null (an imputer fills null), never infinite.
    The others: strings or null (a category never seen in training is fine).
    """
    try:
        frame = data if isinstance(data, pd.DataFrame) else pd.DataFrame(data)
    except Exception as error:
        raise InvalidInput(
            'the input is not a table: send feature rows, e.g. {"dataframe_split": {"columns": [...], '
            '"data": [[...]]}}'
        ) from error
    if len(frame) == 0:
        raise InvalidInput("the input holds no rows: send at least one feature row")
    numeric = list(model.numeric or [])
    fitted = getattr(model.estimator_, "feature_names_in_", None)
    columns = [str(c) for c in fitted] if fitted is not None else numeric
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        names = f"columns {', '.join(missing)} are" if len(missing) > 1 else f"column {missing[0]} is"
        raise InvalidInput(
            f"input {names} missing: send every column of the model's signature "
            "(names are case-sensitive; a value may be null)"
        )
    values = {c: pd.to_numeric(frame[c], errors="coerce") for c in numeric}
    _refuse(
        {c: frame[c].notna() & values[c].isna() for c in numeric},
        frame,
        "must hold numbers or null",
        "send a number, or null where the value is unknown",
    )
    _refuse(
        {c: values[c].isin([np.inf, -np.inf]) for c in numeric},
        frame,
        "must hold finite numbers or null",
        "send a finite number, or null where the value is unknown",
    )
    _refuse(
        {c: ~frame[c].map(_text_or_null).astype(bool) for c in columns if c not in numeric},
        frame,
        "must hold strings or null",
        "send the category as a string, or null where it is unknown",
    )
    return frame


def _refuse(faults: dict[str, pd.Series], frame: pd.DataFrame, what: str, fix: str) -> None:
    """An InvalidInput naming each column with a fault (a mask per column) and its first bad value."""
    bad = {c: mask.to_numpy().nonzero()[0][0] for c, mask in faults.items() if mask.any()}
    if len(bad) == 1:
        [(column, row)] = bad.items()
        raise InvalidInput(
            f"input column {column} {what} ({_shown(frame[column].iloc[row])} at row {row}): {fix}"
        )
    if bad:
        where = "; ".join(f"{c}: {_shown(frame[c].iloc[row])} at row {row}" for c, row in bad.items())
        raise InvalidInput(f"input columns {', '.join(bad)} {what} ({where}): {fix}")


def _text_or_null(value: Any) -> bool:
    return isinstance(value, str) or (pd.api.types.is_scalar(value) and bool(pd.isna(value)))


def _shown(value: Any) -> str:
    """A value as one short line: its repr cut at 40 characters, infinities spelled as in JSON."""
    value = value.item() if isinstance(value, np.generic) else value
    if isinstance(value, float) and np.isinf(value):
        return "Infinity" if value > 0 else "-Infinity"
    text = repr(value)
    return text if len(text) <= 40 else f"{text[:37]}..."


def _line(error: Exception) -> str:
    """An exception's first line, cut at 200 characters."""
    text = (str(error).strip().splitlines() or [""])[0]
    return text if len(text) <= 200 else f"{text[:197]}..."


def _load_pyfunc(path: str) -> FramePredictor:
    """pyfunc's loader: the sklearn flavor reads the file; this module answers `predict`."""
    return FramePredictor(mlflow.sklearn._load_pyfunc(path).get_raw_model())


def save_model(sk_model: NamedClassifier, path: str, mlflow_model: Model, **kwargs: Any) -> None:
    """Save as the sklearn flavor, then make this module the pyfunc loader (called by `Model.log`)."""
    with tempfile.TemporaryDirectory() as folder:
        mlflow.sklearn.save_model(
            sk_model, path, mlflow_model=mlflow_model, code_paths=[_code(Path(folder))], **kwargs
        )
    mlflow_model.flavors[mlflow.pyfunc.FLAVOR_NAME]["loader_module"] = __name__
    mlflow_model.save(str(Path(path) / "MLmodel"))


def _code(folder: Path) -> str:
    """A package holding only this module, under its own import name, to ship inside the model."""
    package = folder / __name__.split(".")[0]
    package.mkdir()
    (package / "__init__.py").write_text('"""What a served Podium model needs to load."""\n')
    shutil.copy(__file__, package / Path(__file__).name)
    return str(package)


def log_model(
    model: NamedClassifier, X: pd.DataFrame, pip_requirements: list[str], metadata: dict[str, Any]
) -> mlflow.models.model.ModelInfo:
    """Log `model` as `model` in the active run: signature from `X`, skops with its own types trusted."""
    from skops.io import dumps, get_untrusted_types

    sample = X.head(100)
    return Model.log(
        artifact_path=None,
        name="model",
        flavor=sys.modules[__name__],
        sk_model=model,
        serialization_format=mlflow.sklearn.SERIALIZATION_FORMAT_SKOPS,
        skops_trusted_types=get_untrusted_types(data=dumps(model)),
        signature=required_signature(sample, model.predict_frame(sample)),
        input_example=X.head(5),
        pip_requirements=pip_requirements,
        pyfunc_predict_fn="predict",
        metadata=metadata,
    )


def required_signature(X: pd.DataFrame, predictions: pd.DataFrame) -> ModelSignature:
    """The inferred signature with every input column required.

    `infer_signature` marks a column optional when the sample holds a missing value; a request must
    still send every column (numeric values may be null: the imputers fill them).
    """
    inferred = infer_signature(X, predictions)
    inputs = Schema([ColSpec(c.type, c.name, required=True) for c in inferred.inputs.inputs])
    return ModelSignature(inputs=inputs, outputs=inferred.outputs, params=inferred.params)
