"""A user's dbt project as the features stage's builder: `dbt build` on the profile's warehouse.

dbt runs through its programmatic runner (`dbtRunner`) in a child process, which ends with its
parent (`lifeline`): dbt keeps global state (flags, an invocation id, dbt-duckdb's open database)
that must not outlive the build, and the DuckDB file must be free again when the stage opens it to
check and publish what dbt built.
Podium writes the dbt profile itself, for the Podium profile's warehouse, in a private temporary
folder: DuckDB's file, or Snowflake with every credential read from SNOWFLAKE_* variables by dbt's
`env_var()` at run time, so no secret is ever written down. dbt is the optional extra `podium[dbt]`.
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
import tempfile
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import yaml

from pipelines import lifeline
from pipelines.config import DbtFeatures, Profile, SnowflakeConfig
from pipelines.errors import ConfigError, DataQualityError

FAILED = {"error", "fail", "runtime error"}  # a dbt node's status that fails the build
# dbt-snowflake's profile keys, each read by dbt from the variable Podium's own connection reads
SNOWFLAKE_ENV = {
    "account": "SNOWFLAKE_ACCOUNT",
    "user": "SNOWFLAKE_USER",
    "password": "SNOWFLAKE_PASSWORD",
    "authenticator": "SNOWFLAKE_AUTHENTICATOR",
    "private_key_path": "SNOWFLAKE_PRIVATE_KEY_FILE",
    "private_key_passphrase": "SNOWFLAKE_PRIVATE_KEY_FILE_PWD",
    "token": "SNOWFLAKE_TOKEN",
    "host": "SNOWFLAKE_HOST",
    "role": "SNOWFLAKE_ROLE",
    "warehouse": "SNOWFLAKE_WAREHOUSE",
    "database": "SNOWFLAKE_DATABASE",
}


@dataclass(frozen=True)
class BuiltModel:
    """One model a dbt build made: its node id, where it stands, and the SQL dbt ran for it."""

    unique_id: str
    relation: str  # SCHEMA.NAME
    compiled_sql: str


@dataclass(frozen=True)
class DbtBuild:
    """What one `dbt build` made: the lineage a registered version names."""

    invocation_id: str
    models: list[BuiltModel]

    @property
    def sql_checksum(self) -> str:
        """SHA-256 over every built model's id and compiled SQL: another SQL, another checksum."""
        digest = hashlib.sha256()
        for model in sorted(self.models, key=lambda m: m.unique_id):
            digest.update(f"{model.unique_id}\n{model.compiled_sql}\n".encode())
        return digest.hexdigest()

    def relation_of(self, table: str) -> str:
        """Where dbt built the model named like `table`'s name part (its alias)."""
        name = table.split(".")[-1].upper()
        for model in self.models:
            if model.relation.split(".")[-1] == name:
                return model.relation
        built = ", ".join(m.unique_id for m in self.models) or "no model"
        raise ConfigError(
            f"the dbt selection built {built}, and none of them is named {name}: select the model that "
            f"builds the spec's table, or name the model (or its alias) {name.lower()}."
        )

    def tags(self) -> dict[str, str]:
        """The lineage tags every run and version trained on this build carries."""
        return {
            "podium.dbt_invocation_id": self.invocation_id,
            "podium.dbt_sql_checksum": self.sql_checksum,
            "podium.dbt_models": " ".join(sorted(m.unique_id for m in self.models)),
        }


def build(profile: Profile, config: DbtFeatures, schema: str) -> DbtBuild:
    """Run `dbt build` for the selection into `schema`; a failed model or test is one DataQualityError."""
    args = ["build", "--select", config.select, "--vars", json.dumps(config.vars)]
    outcome = run(profile, config.project_dir, schema, config.target, args)
    if outcome["problem"]:
        raise DataQualityError(
            f"dbt build --select {config.select} in {config.project_dir} failed: {outcome['problem']}. "
            "Nothing was published: the spec's table is as it was. Fix the dbt model or the data, then rerun "
            "`podium features`."
        )
    return DbtBuild(outcome["invocation_id"], [BuiltModel(**m) for m in outcome["models"]])


def run(profile: Profile, project: Path, schema: str, target_name: str, args: list[str]) -> dict[str, Any]:
    """One dbt command (`args`) on the project, against the profile's warehouse, in a child process.

    Returns `problem` (empty when it succeeded), `invocation_id` and the `models` it built.
    """
    if not (project / "dbt_project.yml").is_file():
        raise ConfigError(
            f"features.dbt.project_dir {project} holds no dbt_project.yml: point it at a dbt project."
        )
    with tempfile.TemporaryDirectory(prefix="podium-dbt-") as scratch:
        folder = Path(scratch)
        outputs = {target_name: target(profile, schema)}
        (folder / "profiles.yml").write_text(
            yaml.safe_dump({_profile_name(project): {"target": target_name, "outputs": outputs}})
        )
        where = [
            "--project-dir", str(project), "--profiles-dir", str(folder),
            "--target-path", str(folder / "target"), "--log-path", str(folder / "logs"),
            "--no-partial-parse", "--quiet", "--no-use-colors",
        ]  # fmt: skip
        spawn = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(1, spawn, initializer=lifeline.watch, initargs=(os.getpid(),)) as pool:
            return pool.submit(invoke, [*args, *where]).result()


def target(profile: Profile, schema: str) -> dict[str, Any]:
    """The dbt target for the profile's warehouse, writing into `schema`; no secret in it."""
    warehouse = profile.warehouse
    if not isinstance(warehouse, SnowflakeConfig):
        return {"type": "duckdb", "path": str(warehouse.path.resolve()), "schema": schema, "threads": 1}
    if warehouse.connection_name:
        raise ConfigError(
            f"profile {profile.name} names the Snowflake connection {warehouse.connection_name}, which dbt "
            "cannot read: for dbt features, export SNOWFLAKE_ACCOUNT, SNOWFLAKE_USER and SNOWFLAKE_PASSWORD "
            "(or SNOWFLAKE_AUTHENTICATOR / SNOWFLAKE_PRIVATE_KEY_FILE) instead."
        )
    found = {key: f"{{{{ env_var('{name}') }}}}" for key, name in SNOWFLAKE_ENV.items() if name in os.environ}
    fixed = {key: value for key in ("database", "role", "warehouse") if (value := getattr(warehouse, key))}
    return found | fixed | {"type": "snowflake", "schema": schema, "threads": 4}


def _profile_name(project: Path) -> str:
    """The profile the dbt project asks for (its dbt_project.yml's `profile`)."""
    settings = yaml.safe_load((project / "dbt_project.yml").read_text()) or {}
    name = settings.get("profile")
    if not isinstance(name, str) or not name:
        raise ConfigError(f"{project / 'dbt_project.yml'} names no `profile`: add `profile: podium`.")
    return name


def invoke(args: list[str]) -> dict[str, Any]:
    """In the child process: run dbt; what it built, or why it failed (plain values, to cross back)."""
    try:
        from dbt.cli.main import dbtRunner
        from dbt_common.invocation import get_invocation_id
    except ImportError as exc:
        return {"problem": f"dbt could not be imported ({exc}): pip install 'podium[dbt]'", "models": []}
    result = dbtRunner().invoke(args)
    if result.exception is not None:  # dbt could not start: the project, the profile, a parse error
        said = str(result.exception).strip().splitlines() or [type(result.exception).__name__]
        return {"problem": said[0], "models": []}
    nodes = getattr(result.result, "results", None) or []  # `parse` returns a manifest: no node ran
    failed = [f"{r.node.unique_id}: {r.status}" for r in nodes if str(r.status) in FAILED]
    models = [_built(r.node) for r in nodes if r.node.resource_type == "model" and str(r.status) == "success"]
    problem = "; ".join(failed) or ("" if result.success else "dbt reported a failure")
    return {"problem": problem, "invocation_id": get_invocation_id(), "models": models}


def _built(node: Any) -> dict[str, str]:
    return asdict(
        BuiltModel(node.unique_id, f"{node.schema}.{node.alias}".upper(), node.compiled_code or node.raw_code)
    )


def describe(build: DbtBuild) -> dict[str, Any]:
    """The build as the features run's `dbt_build.json` artifact."""
    return {"invocation_id": build.invocation_id, "sql_checksum": build.sql_checksum} | {
        "models": [{"unique_id": m.unique_id, "relation": m.relation} for m in build.models]
    }
