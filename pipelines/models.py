"""Model families: an estimator factory per family, and search spaces read from YAML.

Every family is an sklearn Pipeline: a ColumnTransformer (impute; categoricals one-hot
encoded with unknown values ignored, or for trees one ordinal column each, unknown values
coded -1; scale numerics where the estimator needs it) and then the estimator. A new
family is one factory here plus one entry in the search-space file.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, Literal

import optuna
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, model_validator
from sklearn.base import BaseEstimator
from sklearn.calibration import CalibratedClassifierCV
from sklearn.compose import ColumnTransformer
from sklearn.ensemble import ExtraTreesClassifier, HistGradientBoostingClassifier, RandomForestClassifier
from sklearn.impute import SimpleImputer
from sklearn.linear_model import LogisticRegression
from sklearn.neighbors import KNeighborsClassifier
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import OneHotEncoder, OrdinalEncoder, StandardScaler
from sklearn.svm import SVC
from sklearn.tree import DecisionTreeClassifier
from xgboost import XGBClassifier

from pipelines.config_files import load_yaml
from pipelines.dataset import FeatureSchema
from pipelines.errors import ConfigError

Factory = Callable[[dict[str, Any], int], BaseEstimator]

CALIBRATION = "calibration"  # a search parameter of any family: none, sigmoid or isotonic
CALIBRATION_FOLDS = 3

FACTORIES: dict[str, Factory] = {
    "logreg": lambda p, seed: LogisticRegression(max_iter=2000, random_state=seed, **p),
    "knn": lambda p, seed: KNeighborsClassifier(**p),
    "svc": lambda p, seed: CalibratedClassifierCV(
        SVC(random_state=seed, **p), method="sigmoid", ensemble=False, cv=CALIBRATION_FOLDS
    ),
    "decision_tree": lambda p, seed: DecisionTreeClassifier(random_state=seed, **p),
    "random_forest": lambda p, seed: RandomForestClassifier(random_state=seed, n_jobs=1, **p),
    "extra_trees": lambda p, seed: ExtraTreesClassifier(random_state=seed, n_jobs=1, **p),
    "hist_gb": lambda p, seed: HistGradientBoostingClassifier(random_state=seed, early_stopping=False, **p),
    "xgboost": lambda p, seed: XGBClassifier(
        random_state=seed, n_jobs=1, tree_method="hist", objective="multi:softprob", **p
    ),
}
SCALED = frozenset({"logreg", "knn", "svc"})  # distance- or margin-based: scale numerics
TREES = frozenset({"decision_tree", "random_forest", "extra_trees", "hist_gb", "xgboost"})  # split on codes


class _Param(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    start: Any = Field(None, description="the value of a new study's first trial (a sensible default)")


class IntParam(_Param):
    type: Literal["int"]
    low: int
    high: int
    step: int = 1
    log: bool = False

    def suggest(self, trial: optuna.Trial, name: str) -> int:
        return trial.suggest_int(name, self.low, self.high, step=self.step, log=self.log)

    @model_validator(mode="after")
    def _range(self) -> IntParam:
        _check_range(self.low, self.high, self.log, self.start)
        return self


class FloatParam(_Param):
    type: Literal["float"]
    low: float
    high: float
    log: bool = False

    def suggest(self, trial: optuna.Trial, name: str) -> float:
        return trial.suggest_float(name, self.low, self.high, log=self.log)

    @model_validator(mode="after")
    def _range(self) -> FloatParam:
        _check_range(self.low, self.high, self.log, self.start)
        return self


class CategoricalParam(_Param):
    type: Literal["categorical"]
    choices: list[Any] = Field(min_length=1)

    def suggest(self, trial: optuna.Trial, name: str) -> Any:
        return trial.suggest_categorical(name, self.choices)

    @model_validator(mode="after")
    def _start_is_a_choice(self) -> CategoricalParam:
        if self.start is not None and self.start not in self.choices:
            raise ValueError(f"start {self.start!r} is not one of the choices {self.choices}")
        return self


Param = Annotated[IntParam | FloatParam | CategoricalParam, Field(discriminator="type")]
SPACES = TypeAdapter(dict[str, dict[str, Param]])


def _check_range(low: float, high: float, log: bool, start: Any) -> None:
    if low >= high:
        raise ValueError(f"low ({low}) must be below high ({high})")
    if log and low <= 0:
        raise ValueError(f"a log-scale range needs low > 0, got {low}")
    if start is not None and not low <= start <= high:
        raise ValueError(f"start ({start}) must lie in [{low}, {high}]")


def read_spaces(path: Path) -> dict[str, dict[str, Param]]:
    """Family -> parameter -> range, validated; every family must have a factory."""
    if not path.is_file():
        raise ConfigError(f"search-space file {path} does not exist: fix tuning.search_space in the spec.")
    try:
        spaces = SPACES.validate_python(load_yaml(path) or {})
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(map(str, e['loc']))}: {e['msg'].removeprefix('Value error, ')}" for e in exc.errors()
        )
        raise ConfigError(
            f"{path}: invalid search space: {problems}. Fix those entries "
            "(experiments/f1_podium/search_space.yaml shows the format)."
        ) from None
    unknown = sorted(set(spaces) - set(FACTORIES))
    if unknown:
        raise ConfigError(
            f"{path}: no model factory for {unknown}: rename or remove them (known families: "
            f"{', '.join(FACTORIES)})."
        )
    return spaces


def suggest(trial: optuna.Trial, space: dict[str, Param]) -> dict[str, Any]:
    """Sample one parameter set from a family's space."""
    return {name: param.suggest(trial, name) for name, param in space.items()}


def start_point(space: dict[str, Param]) -> dict[str, Any]:
    """The parameters given a `start` value: a new study's first trial takes them (others are sampled)."""
    return {name: param.start for name, param in space.items() if param.start is not None}


def make_estimator(family: str, params: dict[str, Any], schema: FeatureSchema, seed: int) -> Pipeline:
    """The family's full sklearn Pipeline: preprocessing fitted with the estimator, per fold."""
    numeric_steps = [SimpleImputer(strategy="median", add_indicator=True)]
    if family in SCALED:
        numeric_steps.append(StandardScaler())
    encoder = (
        OrdinalEncoder(handle_unknown="use_encoded_value", unknown_value=-1)
        if family in TREES
        else OneHotEncoder(handle_unknown="ignore", sparse_output=False)
    )
    categorical_steps = make_pipeline(SimpleImputer(strategy="constant", fill_value="(missing)"), encoder)
    prep = ColumnTransformer(
        [
            ("numeric", make_pipeline(*numeric_steps), schema.numeric),
            ("categorical", categorical_steps, schema.categorical),
        ],
        remainder="drop",
    )
    return Pipeline([("prep", prep), ("model", _model(family, params, seed))])


def _model(family: str, params: dict[str, Any], seed: int) -> BaseEstimator:
    """The family's estimator; with `calibration` other than none, calibrated by internal CV.

    Calibration fits the estimator on each of `CALIBRATION_FOLDS` parts of the training rows it
    is given (a CV fold's, or the whole window at train time), never on the rows it is scored on.
    """
    params = dict(params)
    method = params.pop(CALIBRATION, "none")
    estimator = FACTORIES[family](params, seed)
    if method == "none":
        return estimator
    return CalibratedClassifierCV(estimator, method=method, cv=CALIBRATION_FOLDS)
