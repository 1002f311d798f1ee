"""Profiles and specs read from YAML files into typed config (pipelines.config), with one error per mistake.

A name finds `conf/<name>.yaml` or `experiments/<name>/spec.yaml` under the project root; a path is read as
given. Relative paths inside a file are resolved against the project root, whatever the current directory.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, NoReturn, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

from pipelines.config import DEFAULT_PROFILE, DuckDBConfig, FeaturesConfig, Profile, Spec
from pipelines.errors import ConfigError

M = TypeVar("M", bound=BaseModel)
SPEC_FILE = "spec.yaml"  # a use case's spec, in its folder experiments/<name>/
SPEC_OPTION = "--spec / PODIUM_SPEC"


def load(profile: str, spec: str | None) -> tuple[Profile, Spec]:
    """A profile and a spec read from the profile's project, whatever the current directory."""
    root = project_root(profile_path(profile))
    return load_profile(profile), load_spec(spec, root=root)


def load_profile(name: str = DEFAULT_PROFILE, root: Path | None = None) -> Profile:
    """Load a profile by name (conf/<name>.yaml) or by path to a YAML file.

    Relative paths in it (the DuckDB file, a journal, a sqlite:/// URL) are read from its
    project (`project_root`); with no tracking_uri, MLflow's store is the project's mlflow.db.
    """
    path = profile_path(name, root)
    root = project_root(path)
    data = read_yaml(path)
    data.setdefault("name", path.stem)
    profile = _validate(Profile, data, path)
    storage = profile.optuna_storage
    update: dict[str, Any] = {
        "optuna_storage": (
            _sqlite_under(root, storage) if "://" in storage else str(_under(root, Path(storage)))
        ),
        "tracking_uri": _sqlite_under(root, profile.tracking_uri or "sqlite:///mlflow.db"),
    }
    if isinstance(profile.warehouse, DuckDBConfig):
        path = _under(root, profile.warehouse.path)
        update["warehouse"] = profile.warehouse.model_copy(update={"path": path})
    return profile.model_copy(update=update)


def profile_path(name: str, root: Path | None = None) -> Path:
    """The YAML file a profile path, or a name (conf/<name>.yaml under `root`, default the cwd), names."""
    return _locate(name, (root or Path.cwd()) / "conf", "profile", "--profile / PODIUM_PROFILE")


def project_root(profile: Path) -> Path:
    """The project a profile file belongs to: the folder holding its conf/ folder; else the current one."""
    folder = profile.resolve().parent
    return folder.parent if folder.name == "conf" else Path.cwd()


def load_spec(name: str | None = None, root: Path | None = None) -> Spec:
    """Load an experiment spec by name (experiments/<name>/spec.yaml) or path; none: the only one."""
    root = root or Path.cwd()
    path = _locate_spec(name or _only_spec(root / "experiments"), root / "experiments")
    spec = _validate(Spec, read_yaml(path), path)
    if spec.ingest:
        spec = spec.model_copy(
            update={"ingest": spec.ingest.model_copy(update={"source": _under(root, spec.ingest.source)})}
        )
    if spec.features:
        spec = spec.model_copy(update={"features": _features_under(root, spec.features)})
    if spec.tuning:
        space = _under(root, spec.tuning.search_space)
        spec = spec.model_copy(update={"tuning": spec.tuning.model_copy(update={"search_space": space})})
    return spec


def _features_under(root: Path, features: FeaturesConfig) -> FeaturesConfig:
    """The features section with its SQL folder or dbt project resolved under the project root."""
    if features.dbt:
        dbt = features.dbt.model_copy(update={"project_dir": _under(root, features.dbt.project_dir)})
        return features.model_copy(update={"dbt": dbt})
    assert features.sql is not None, "a features section has SQL models or a dbt project"  # _one_builder
    return features.model_copy(update={"sql": _under(root, features.sql)})


def _spec_names(folder: Path) -> list[str]:
    """The specs in experiments/: a use-case folder holding spec.yaml, or a lone <name>.yaml."""
    if not folder.is_dir():
        return []
    return sorted(
        {p.parent.name for p in folder.glob(f"*/{SPEC_FILE}")} | {p.stem for p in folder.glob("*.yaml")}
    )


def _only_spec(folder: Path) -> str:
    """The name of the one spec in experiments/, when no spec is named."""
    names = _spec_names(folder)
    if len(names) != 1:
        found = f"found {', '.join(names)}" if names else f"found none in {folder}"
        raise ConfigError(f"which spec? {found}. Choose one with {SPEC_OPTION}.")
    return names[0]


def _locate_spec(name: str, folder: Path) -> Path:
    """A spec's file from its name, its use-case folder or its path; a spec that moved names its new home."""
    given = Path(name)
    if given.is_dir() and (given / SPEC_FILE).is_file():
        return given / SPEC_FILE
    if name.endswith((".yaml", ".yml")) or "/" in name:
        moved = given.with_suffix("") / SPEC_FILE
        if not given.is_file() and moved.is_file():
            raise ConfigError(f"spec file {name} has moved to {moved}: pass that to {SPEC_OPTION}.")
        return _locate(name, folder, "spec", SPEC_OPTION)
    if (folder / name / SPEC_FILE).is_file():
        return folder / name / SPEC_FILE
    if not (folder / f"{name}.yaml").is_file():
        _unknown(name, _spec_names(folder), folder, "spec", SPEC_OPTION)
    return folder / f"{name}.yaml"


def _locate(name: str, folder: Path, kind: str, option: str) -> Path:
    """Resolve a config name or path to an existing YAML file."""
    if name.endswith((".yaml", ".yml")) or "/" in name:
        path = Path(name)
        if not path.is_file():
            raise ConfigError(f"{kind} file {name} does not exist: pass an existing YAML file to {option}.")
        return path
    path = folder / f"{name}.yaml"
    if not path.is_file():
        _unknown(name, sorted(p.stem for p in folder.glob("*.yaml")), folder, kind, option)
    return path


def _unknown(name: str, known: list[str], folder: Path, kind: str, option: str) -> NoReturn:
    """The error for a config name that names nothing: the names there are, or where to run from."""
    hint = (
        f"known {kind}s: {', '.join(known)}"
        if known
        else f"no {folder} folder here: run from the project root"
    )
    raise ConfigError(f"unknown {kind} {name!r} ({hint}). Choose one with {option}.")


def read_yaml(path: Path) -> dict[str, Any]:
    """Parse a YAML mapping, turning syntax errors into one clear message."""
    data = load_yaml(path)
    if not isinstance(data, dict):
        raise ConfigError(
            f"{path}: expected a mapping of keys to values at the top level: write one `key: value` per line."
        )
    return data


def load_yaml(path: Path) -> Any:
    """Parse a YAML file; bad syntax or a value YAML cannot build (2021-13-45) is one clear error."""
    try:
        return yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise malformed_yaml(path, exc) from None
    except ValueError as exc:  # YAML recognised a date or time, then could not build it
        raise ConfigError(
            f"{path}: a value is not what it looks like ({exc}): write dates as YYYY-MM-DD with a real month "
            "and day, or quote the value."
        ) from None


def malformed_yaml(path: Path, exc: yaml.YAMLError) -> ConfigError:
    """A YAML syntax error as one line: the file, the line and column, the problem."""
    mark = getattr(exc, "problem_mark", None)
    where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
    problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
    return ConfigError(f"{path}: malformed YAML{where}: {problem}. Fix the file's syntax.")


def _validate(model: type[M], data: dict[str, Any], path: Path) -> M:
    """Validate data against a model, reporting every problem with its key path."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(f"{path}: " + "; ".join(_describe(e) for e in exc.errors())) from None


def _describe(error: Any) -> str:
    """One validation error as 'key: problem (fix)'."""
    key = ".".join(str(part) for part in error["loc"]) or "(top level)"
    if error["type"] == "extra_forbidden":
        return f"unknown key {key!r}: remove it or fix its spelling"
    if error["type"] == "missing":
        return f"missing key {key!r}: add it"
    if error["type"] == "value_error":  # Podium's own validators: their message names the fix
        return f"{key}: {error['msg'].removeprefix('Value error, ').rstrip('.')}"
    return f"{key}: {error['msg']} (fix this value)"


def _under(root: Path, path: Path) -> Path:
    return path if path.is_absolute() else root / path


def _sqlite_under(root: Path, url: str) -> str:
    """A relative sqlite:/// URL made absolute under `root`; any other URL as it is."""
    prefix = "sqlite:///"
    if not url.startswith(prefix) or url.startswith(prefix + "/") or url == prefix + ":memory:":
        return url
    return prefix + str(_under(root, Path(url.removeprefix(prefix))))
