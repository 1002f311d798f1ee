"""The served model: a fitted classifier that speaks in class names, and the MLflow flavor it is logged as.

Every registered version is a `NamedClassifier`, logged by `log_model`:

- `mlflow.sklearn.load_model(uri)` gives the classifier itself: `classes_` are the class names,
  `predict` returns names, `predict_proba` one probability per class in that order.
- `mlflow.pyfunc.load_model(uri).predict(frame)`, and so `mlflow models serve`, returns
  `predict_frame`: PREDICTED_CLASS and one P_<CLASS> per class, the scoring table's columns.
  The score stage and the in-warehouse UDF call `predict_frame` too: one way to predict.

This module imports no other Podium module. It travels inside each logged model (the model's
`code/` folder), so the model loads where Podium is not installed.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd
from mlflow.models import Model, infer_signature
from sklearn.base import BaseEstimator, ClassifierMixin, clone

PREDICTED = "PREDICTED_CLASS"


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
        codes = pd.Series(np.asarray(y)).map({c: i for i, c in enumerate(self.classes)})
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


class FramePredictor:
    """The pyfunc face of a NamedClassifier: `predict` returns `predict_frame`."""

    def __init__(self, model: NamedClassifier):
        self.model = model

    def predict(self, data: Any, params: dict[str, Any] | None = None) -> pd.DataFrame:
        return self.model.predict_frame(pd.DataFrame(data))


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
        signature=infer_signature(sample, model.predict_frame(sample)),
        input_example=X.head(5),
        pip_requirements=pip_requirements,
        pyfunc_predict_fn="predict",
        metadata=metadata,
    )
