"""Everything that talks to the MLflow model registry, and the names it shares with Optuna.

- The aliases (`champion`, `challenger`) and stages (Staging, Production).
- Study names (`<spec>-<family>`) and each family's best trial, the candidates `train` refits.
- Model URIs (`models:/NAME@ALIAS`, `models:/NAME/STAGE`, `models:/NAME/N`) resolved to one version.
- Who holds an alias or a stage, and moving it (a stage's other holders are archived).

MLflow deprecates stages while users still promote by them: its FutureWarning is silenced here, once.
Store errors (an unusable tracking URI, a missing driver) become one clear `PodiumError`.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Literal, cast, get_args

import mlflow
import optuna
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import RESOURCE_DOES_NOT_EXIST
from mlflow.tracking import MlflowClient

from pipelines.config import Spec
from pipelines.errors import PodiumError
from pipelines.secrets import hide_password
from pipelines.studies import open_storage, trial_counts
from pipelines.tracking import STORE_ERRORS, store_error

CHAMPION = "champion"
CHALLENGER = "challenger"
VERSION_STAGES = ("Staging", "Production")
TargetKind = Literal["alias", "stage", "snowflake"]
TARGET_KINDS: tuple[TargetKind, ...] = get_args(TargetKind)
MIRROR: TargetKind = "snowflake"  # the target kind of an alias mirrored into Snowflake's model registry
URI = re.compile(r"^models:/(?P<name>[^/@]+)(?:@(?P<alias>[\w-]+)|/(?P<ref>[\w-]+))$")
NOT_FOUND = ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE")  # MLflow's codes for a missing name
NUMERIC_TYPES = {"double", "float", "long", "integer"}


@dataclass(frozen=True)
class Target:
    """What a version is promoted to: an alias or a stage, written `alias:champion` / `stage:Production`."""

    kind: TargetKind
    name: str

    def __str__(self) -> str:
        return f"{self.kind}:{self.name}"

    @classmethod
    def parse(cls, text: str) -> Target:
        """A target from its audited form, `kind:name`."""
        kind, name = text.split(":", 1)
        if kind not in TARGET_KINDS:
            raise PodiumError(
                f"unknown target {text!r} in the audit table: its kind must be one of {TARGET_KINDS}."
            )
        return cls(cast(TargetKind, kind), name)


@dataclass(frozen=True)
class ResolvedModel:
    """A model URI pinned to one registered version."""

    uri: str
    name: str
    version: str
    alias: str  # the alias or stage the URI named; "" for a version URI
    run_id: str
    features: list[str]  # the signature's inputs, in order
    numeric: list[str]  # those the signature types as numbers


@dataclass(frozen=True)
class Candidate:
    """A family's best trial, as its study recorded it."""

    family: str
    study: str
    trial: int
    params: dict[str, Any]
    cv: dict[str, float]


def study_name(spec: Spec, family: str) -> str:
    """The Optuna study (and MLflow parent run) of one family: `<spec>-<family>`."""
    return study_prefix(spec) + family


def study_prefix(spec: Spec) -> str:
    """What every study name of the spec starts with."""
    return f"{spec.name}-"


def version_uri(model: str, version: str) -> str:
    return f"models:/{model}/{version}"


def alias_uri(model: str, alias: str) -> str:
    return f"models:/{model}@{alias}"


def client() -> MlflowClient:
    """A registry client on the configured tracking store."""
    try:
        return MlflowClient()
    except STORE_ERRORS as exc:
        raise store_error(exc) from None


@contextmanager
def stages_allowed() -> Iterator[None]:
    """Stages are deprecated by MLflow; users still promote by them, so its FutureWarning stays quiet."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        yield


def resolve(uri: str) -> ResolvedModel:
    """Pin `models:/name@alias`, `models:/name/Stage` or `models:/name/N` to a registered version."""
    match = URI.match(uri)
    if not match:
        raise PodiumError(
            f"model URI {uri!r} is not a registry URI: use models:/NAME@ALIAS, models:/NAME/STAGE or "
            "models:/NAME/N."
        )
    name, alias, ref = match["name"], match["alias"], match["ref"]
    version = _lookup(client(), uri, name, alias, ref)
    inputs = model_inputs(name, str(version.version))
    return ResolvedModel(
        uri,
        name,
        str(version.version),
        alias or ("" if ref.isdigit() else ref),
        version.run_id or "",
        [c.name for c in inputs],
        [c.name for c in inputs if getattr(c.type, "name", None) in NUMERIC_TYPES],  # AnyType has none
    )


def _lookup(registry: MlflowClient, uri: str, name: str, alias: str | None, ref: str | None) -> ModelVersion:
    try:
        if alias:
            return registry.get_model_version_by_alias(name, alias)
        assert ref is not None, "a URI with no alias has a ref"  # URI's pattern matches one or the other
        if ref.isdigit():
            return registry.get_model_version(name, ref)
        found = holder(registry, name, Target("stage", ref))
        if found is None:
            raise MlflowException(
                f"no version of {name} is in stage {ref}", error_code=RESOURCE_DOES_NOT_EXIST
            )
        return found
    except MlflowException as exc:
        if exc.error_code not in NOT_FOUND:
            raise store_error(exc) from None
        raise PodiumError(
            f"model URI {uri} does not resolve ({exc.message.splitlines()[0]}): check the name, alias, "
            "stage or "
            "version in the registry (`mlflow ui`), or train and promote first."
        ) from None
    except STORE_ERRORS as exc:
        raise store_error(exc) from None


def model_inputs(model: str, version: str) -> list[Any]:
    """The input columns (name and type) of a version's signature; none without a signature."""
    info = mlflow.models.get_model_info(version_uri(model, version))
    return list(info.signature.inputs.inputs) if info.signature else []


def load_estimator(model: str, version: str) -> Any:
    """A version's native model: a `served.NamedClassifier`."""
    return mlflow.sklearn.load_model(version_uri(model, version))


def require_model(registry: MlflowClient, name: str) -> None:
    """The registered model must exist; else say which do, and how to make it."""
    try:
        registry.get_registered_model(name)
    except STORE_ERRORS as exc:
        if not isinstance(exc, MlflowException) or exc.error_code != "RESOURCE_DOES_NOT_EXIST":
            raise store_error(exc) from None
        known = [m.name for m in registry.search_registered_models(max_results=50)]
        hint = f"registered models: {', '.join(known)}" if known else "no model is registered yet"
        raise PodiumError(
            f"unknown model {name!r} ({hint}): run `podium train` first, or fix registry.model_name."
        ) from None


def get_version(registry: MlflowClient, model: str, version: str) -> ModelVersion:
    """One registered version; an unknown number is a user error naming the versions there are."""
    try:
        return registry.get_model_version(model, str(version))
    except MlflowException:
        known = sorted(int(v.version) for v in registry.search_model_versions(f"name = '{model}'"))
        raise PodiumError(
            f"unknown version {version} of model {model} (its versions: "
            f"{', '.join(map(str, known)) or 'none'}): "
            "pass one of them to --version."
        ) from None


def challenger(registry: MlflowClient, model: str) -> str:
    """The version holding the challenger alias."""
    try:
        return str(registry.get_model_version_by_alias(model, CHALLENGER).version)
    except MlflowException:
        raise PodiumError(
            f"model {model} has no {CHALLENGER!r} alias: run `podium train`, or name a version with "
            "--version."
        ) from None


def holder(registry: MlflowClient, model: str, target: Target) -> ModelVersion | None:
    """The version holding an alias or a stage, if any; a store MLflow cannot reach is one clear error."""
    try:
        if target.kind == "alias":
            return registry.get_model_version_by_alias(model, target.name)
        with stages_allowed():
            holders = registry.get_latest_versions(model, stages=[target.name])
        return holders[0] if holders else None
    except MlflowException as exc:
        if target.kind == "alias" and exc.error_code in NOT_FOUND:
            return None  # nobody holds the alias
        raise store_error(exc) from None
    except STORE_ERRORS as exc:
        raise store_error(exc) from None


def move(registry: MlflowClient, model: str, target: Target, version: str | None) -> None:
    """Give `target` to `version` (None: to nobody); a stage's other holders are archived."""
    if target.kind == "alias":
        if version:
            registry.set_registered_model_alias(model, target.name, version)
        else:
            registry.delete_registered_model_alias(model, target.name)
        return
    with stages_allowed():
        if version:
            registry.transition_model_version_stage(
                model, version, target.name, archive_existing_versions=True
            )
        else:
            for held in registry.get_latest_versions(model, stages=[target.name]):
                registry.transition_model_version_stage(model, held.version, "Archived")


def best_trials(spec: Spec, storage: str, family: str | None = None) -> list[Candidate]:
    """Each family's best completed trial, best CV log loss first (no tuning section: one clear error)."""
    tuning = spec.tuning_section
    families = [family] if family else list(tuning.families)
    found = [c for c in (_best_trial(spec, f, storage) for f in families) if c is not None]
    if not found:
        which = f"family {family}" if family else f"any family of {spec.name}"
        raise PodiumError(
            f"no completed trials for {which} in the Optuna storage {hide_password(storage)}: "
            f"run `podium tune{' --family ' + family if family else ''}` first, or pass the study's "
            "--storage."
        )
    return sorted(found, key=lambda c: c.cv["log_loss"])


def _best_trial(spec: Spec, family: str, storage: str) -> Candidate | None:
    name = study_name(spec, family)
    try:
        study = optuna.load_study(study_name=name, storage=open_storage(storage))
    except KeyError:
        return None
    if not trial_counts(study)["COMPLETE"]:
        return None
    best = study.best_trial
    return Candidate(family, name, best.number, dict(best.params), dict(best.user_attrs.get("metrics", {})))
