"""Promote stage: move a registered version to an alias (champion) or a stage (Production), guarded and audited.

Inputs:  a registered version (default: the `challenger` alias) and the current holder of
         each target; the spec's promotion policy; the feature table's columns (for the
         signature check) and, when the two versions were judged on different holdouts,
         the current holdout.
Outputs: the alias moved and/or the stage transitioned (the previous holder archived);
         one audit row per decision, promoted or refused, appended to the spec's audit
         table; registry tags on the version and the model.
MLflow:  the `promote` run with `decision.json`.

Concurrency: the whole decision (read the holder, gate, apply, audit) runs while holding
the warehouse's write lock. On DuckDB that lock is the database file's own exclusive lock,
so a second promotion waits for the first and then judges against the new holder. An
alias names one version by construction; stage transitions archive every other holder.
"""

from __future__ import annotations

import getpass
import json
import logging
import os
import time
import uuid
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime

import mlflow
import pandas as pd
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from pipelines.config import Profile, PromotionPolicy, Spec
from pipelines.errors import PodiumError, WarehouseError
from pipelines.metrics import score
from pipelines.tracking import STORE_ERRORS, configure, stage_run, store_error
from pipelines.train import CHALLENGER, load_holdout
from pipelines.tune import load_training_data
from pipelines.warehouse import Warehouse, connect
from pipelines.warehouse.dialect import quote, split_table

log = logging.getLogger(__name__)

STAGES = ("Staging", "Production")
HIGHER_IS_BETTER = {"log_loss": False, "auc": True, "balanced_accuracy": True}
LOCK_WAIT_SECONDS = 120.0


@dataclass(frozen=True)
class Target:
    """Where a version is promoted to: an alias or a stage."""

    kind: str  # "alias" | "stage"
    name: str

    def __str__(self) -> str:
        return f"{self.kind}:{self.name}"


@dataclass
class Decision:
    """One promotion decision, as audited."""

    model: str
    version: str
    target: str
    from_version: str | None
    action: str  # promote | rollback
    decision: str = "refused"  # promoted | refused | dry-run (would promote / would refuse)
    forced: bool = False
    reason: str = ""
    metric: str = ""
    candidate_value: float | None = None
    incumbent_value: float | None = None
    checks: dict[str, bool] = field(default_factory=dict)
    actor: str = ""
    decided_at: str = ""
    run_id: str = ""

    @property
    def promoted(self) -> bool:
        return self.decision == "promoted"


def main(
    profile: Profile, spec: Spec, alias: str | None = "champion", stage: str | None = None,
    version: str | None = None, dry_run: bool = False, force: bool = False, rollback: bool = False,
) -> list[Decision]:  # fmt: skip
    """Decide (and unless dry-run, apply and audit) one promotion per requested target."""
    targets = _targets(alias, stage)
    configure(profile)
    try:
        client = MlflowClient()
    except STORE_ERRORS as exc:
        raise store_error(exc) from None
    _require_model(client, spec.model_name)
    with stage_run(profile, spec, "promote") as run, _exclusive(profile) as warehouse:
        decisions = []
        for target in targets:
            decision = _decide(client, warehouse, spec, target, version, force, rollback, dry_run)
            decision.run_id = run.info.run_id
            if not dry_run:
                _apply_and_audit(client, warehouse, spec, decision)
            decisions.append(decision)
        mlflow.log_dict({"decisions": [asdict(d) for d in decisions]}, "decision.json")
        mlflow.set_tags({"podium.model": spec.model_name, "podium.dry_run": str(dry_run).lower()})
    return decisions


def parse_stage(stage: str) -> str:
    """A stage name as MLflow spells it; anything else is a user error."""
    for known in STAGES:
        if stage.lower() == known.lower():
            return known
    raise PodiumError(
        f"unknown stage {stage!r}: promote to one of {', '.join(STAGES)} "
        "(versions leave a stage by being archived when another takes it)."
    )


def audit_rows(warehouse: Warehouse, spec: Spec) -> pd.DataFrame:
    """The audit table's rows for this spec's model, oldest first (empty if none yet)."""
    try:
        return warehouse.query(
            f"SELECT * FROM {quote(spec.registry.audit_table)} WHERE MODEL_NAME = ? ORDER BY DECIDED_AT, RUN_ID",
            [spec.model_name],
        )
    except WarehouseError:
        return pd.DataFrame()


def _targets(alias: str | None, stage: str | None) -> list[Target]:
    targets = ([Target("alias", alias)] if alias else []) + ([Target("stage", parse_stage(stage))] if stage else [])
    if not targets:
        raise PodiumError("nothing to promote to: pass --alias champion and/or --stage Production.")
    return targets


def _require_model(client: MlflowClient, name: str) -> None:
    try:
        client.get_registered_model(name)
    except STORE_ERRORS as exc:
        if not isinstance(exc, MlflowException) or exc.error_code != "RESOURCE_DOES_NOT_EXIST":
            raise store_error(exc) from None
        known = [m.name for m in client.search_registered_models(max_results=50)]
        hint = f"registered models: {', '.join(known)}" if known else "no model is registered yet"
        raise PodiumError(
            f"unknown model {name!r} ({hint}): run `podium train` first, or fix registry.model_name."
        ) from None


@contextmanager
def _exclusive(profile: Profile) -> Iterator[Warehouse]:
    """A read-write warehouse connection, which on DuckDB is an exclusive lock; wait for it."""
    deadline = time.monotonic() + LOCK_WAIT_SECONDS
    while True:
        try:
            with connect(profile) as warehouse:
                yield warehouse
            return
        except WarehouseError as exc:
            if "lock" not in str(exc).lower() or time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def _decide(
    client: MlflowClient, warehouse: Warehouse, spec: Spec, target: Target, version: str | None,
    force: bool, rollback: bool, dry_run: bool,
) -> Decision:  # fmt: skip
    """Who holds the target, who would take it, and whether the policy lets them."""
    holder = _holder(client, spec.model_name, target)
    if rollback:
        candidate = _previous_holder(warehouse, spec, target, holder)
    else:
        candidate = _version(client, spec.model_name, version or _challenger(client, spec.model_name))
    decision = Decision(
        spec.model_name, str(candidate.version), str(target), str(holder.version) if holder else None,
        "rollback" if rollback else "promote", forced=force, metric=spec.promotion.metric,
        actor=_actor(), decided_at=datetime.now(UTC).isoformat(timespec="milliseconds"),
    )  # fmt: skip
    if holder and str(holder.version) == str(candidate.version):
        decision.reason = f"version {candidate.version} already holds {target}"
    elif rollback:
        decision.decision, decision.reason = "promoted", f"rollback to the previous holder of {target}"
    else:
        _gate(client, warehouse, spec, candidate, holder, decision)
        if force:
            decision.decision = "promoted"
            decision.reason = f"forced (the gate said: {decision.reason})"
    if dry_run:
        decision.decision = f"dry-run: would be {decision.decision}"
    return decision


def _gate(
    client: MlflowClient, warehouse: Warehouse, spec: Spec, candidate: ModelVersion,
    holder: ModelVersion | None, decision: Decision,
) -> None:  # fmt: skip
    """Apply the policy: the required checks, then the minimum improvement over the holder."""
    policy = spec.promotion
    _check_promotable(candidate)
    decision.candidate_value, decision.incumbent_value = _compare(warehouse, spec, candidate, holder)
    for check in policy.checks:
        decision.checks[check] = CHECKS[check](client, warehouse, spec, candidate)
    failed = [name for name, passed in decision.checks.items() if not passed]
    if failed:
        decision.reason = f"failed checks: {', '.join(failed)}"
        return
    if decision.incumbent_value is None:
        decision.decision, decision.reason = "promoted", f"first holder of {decision.target}; checks passed"
        return
    gain = _gain(policy, decision.candidate_value, decision.incumbent_value)
    verdict = "promoted" if gain >= policy.min_improvement else "refused"
    decision.decision = verdict
    decision.reason = (
        f"{policy.metric} {decision.candidate_value:.4f} vs holder v{holder.version} {decision.incumbent_value:.4f}: "
        f"improvement {gain:+.4f} {'>=' if verdict == 'promoted' else '<'} min_improvement {policy.min_improvement}"
    )


def _gain(policy: PromotionPolicy, candidate: float, incumbent: float) -> float:
    return candidate - incumbent if HIGHER_IS_BETTER[policy.metric] else incumbent - candidate


def _compare(
    warehouse: Warehouse, spec: Spec, candidate: ModelVersion, holder: ModelVersion | None
) -> tuple[float, float | None]:
    """The policy metric of both versions on the same holdout: from their tags, or re-evaluated now."""
    key = f"podium.holdout_{spec.promotion.metric}"
    if holder is None:
        return float(candidate.tags[key]), None
    if candidate.tags.get("podium.holdout_digest") == holder.tags.get("podium.holdout_digest"):
        return float(candidate.tags[key]), float(holder.tags[key])
    log.info("v%s and v%s were judged on different holdouts: re-evaluating both", candidate.version, holder.version)
    data = load_training_data(warehouse, spec)
    holdout = load_holdout(warehouse, spec, data)
    values = []
    for version in (candidate, holder):
        model = mlflow.sklearn.load_model(f"models:/{spec.model_name}/{version.version}")
        values.append(score(holdout.y, model.predict_proba(holdout.X))[spec.promotion.metric])
    return values[0], values[1]


def _beats_baseline(client: MlflowClient, warehouse: Warehouse, spec: Spec, candidate: ModelVersion) -> bool:
    policy = spec.promotion
    mine = float(candidate.tags[f"podium.holdout_{policy.metric}"])
    theirs = candidate.tags.get(f"podium.baseline.{policy.baseline}.holdout_{policy.metric}")
    if theirs is None:
        raise PodiumError(
            f"version {candidate.version} has no holdout score for baseline {policy.baseline!r}: "
            "fix promotion.baseline (prior, or heuristic when the spec has a baseline column)."
        )
    return _gain(policy, mine, float(theirs)) > 0


def _signature_matches(client: MlflowClient, warehouse: Warehouse, spec: Spec, candidate: ModelVersion) -> bool:
    """Every input the model's signature names is a column of the current feature table."""
    signature = mlflow.models.get_model_info(f"models:/{spec.model_name}/{candidate.version}").signature
    needed = signature.inputs.input_names() if signature else []
    return set(needed) <= set(warehouse.columns(spec.table))


CHECKS = {"beats_baseline": _beats_baseline, "signature_matches": _signature_matches}


def _holder(client: MlflowClient, model: str, target: Target) -> ModelVersion | None:
    if target.kind == "alias":
        try:
            return client.get_model_version_by_alias(model, target.name)
        except MlflowException:
            return None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # stages are deprecated; users still promote by them
        holders = client.get_latest_versions(model, stages=[target.name])
    return holders[0] if holders else None


def _challenger(client: MlflowClient, model: str) -> str:
    try:
        return str(client.get_model_version_by_alias(model, CHALLENGER).version)
    except MlflowException:
        raise PodiumError(
            f"model {model} has no {CHALLENGER!r} alias: run `podium train`, or name a version with --version."
        ) from None


def _version(client: MlflowClient, model: str, version: str) -> ModelVersion:
    try:
        return client.get_model_version(model, str(version))
    except MlflowException:
        known = sorted(int(v.version) for v in client.search_model_versions(f"name = '{model}'"))
        raise PodiumError(
            f"unknown version {version} of model {model} (its versions: {', '.join(map(str, known)) or 'none'}): "
            "pass one of them to --version."
        ) from None


def _check_promotable(version: ModelVersion) -> None:
    """Archived versions and versions from failed runs cannot be promoted (rollback aside)."""
    if version.current_stage == "Archived":
        raise PodiumError(
            f"version {version.version} is archived: promote a live version, or use --rollback to restore it."
        )
    if version.status != "READY":
        raise PodiumError(f"version {version.version} is {version.status}, not READY: register it again.")
    run = MlflowClient().get_run(version.run_id) if version.run_id else None
    if run and run.info.status == "FAILED":
        raise PodiumError(
            f"version {version.version} comes from run {version.run_id}, which FAILED: train again and promote that."
        )


def _previous_holder(warehouse: Warehouse, spec: Spec, target: Target, holder: ModelVersion | None) -> ModelVersion:
    """The version the current holder took the target from (walking back past earlier rollbacks)."""
    rows = audit_rows(warehouse, spec)
    if not rows.empty and holder is not None:
        taken = rows[(rows["TARGET"] == str(target)) & (rows["DECISION"] == "promoted") & (rows["ACTION"] == "promote")]
        taken = taken[taken["MODEL_VERSION"] == str(holder.version)]
        previous = taken["FROM_VERSION"].dropna()
        if not previous.empty:
            return MlflowClient().get_model_version(spec.model_name, previous.iloc[-1])
    raise PodiumError(
        f"nothing to roll back to for {target} of {spec.model_name}: {spec.registry.audit_table} records no "
        "earlier holder."
    )


def _apply_and_audit(client: MlflowClient, warehouse: Warehouse, spec: Spec, decision: Decision) -> None:
    """Change the registry, then append the audit row; if the row cannot be written, undo the change."""
    _apply(client, decision)
    try:
        _audit(warehouse, spec, decision)
    except Exception:
        if decision.promoted:
            log.warning("audit write failed: returning %s to v%s", decision.target, decision.from_version)
            _move(client, decision.model, decision.target, decision.from_version)
        raise


def _apply(client: MlflowClient, decision: Decision) -> None:
    """Move the alias or transition the stage, then tag the version and the model."""
    stamp = f"{decision.decision} {decision.target} at {decision.decided_at} by {decision.actor}: {decision.reason}"
    client.set_model_version_tag(decision.model, decision.version, f"podium.decision.{decision.target}", stamp[:5000])
    if not decision.promoted:
        return
    _move(client, decision.model, decision.target, decision.version)
    client.set_registered_model_tag(decision.model, f"podium.{decision.target}", decision.version)
    client.set_registered_model_tag(decision.model, "podium.last_promotion", stamp[:5000])


def _move(client: MlflowClient, model: str, target: str, version: str | None) -> None:
    """Give `target` to `version` (None: to nobody); a stage's other holders are archived."""
    kind, name = target.split(":", 1)
    if kind == "alias":
        if version:
            client.set_registered_model_alias(model, name, version)
        else:
            client.delete_registered_model_alias(model, name)
        return
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # stages are deprecated; users still promote by them
        if version:
            client.transition_model_version_stage(model, version, name, archive_existing_versions=True)
        else:
            for holder in client.get_latest_versions(model, stages=[name]):
                client.transition_model_version_stage(model, holder.version, "Archived")


AUDIT_COLUMNS = {
    "AUDIT_ID": "VARCHAR", "MODEL_NAME": "VARCHAR", "MODEL_VERSION": "VARCHAR", "FROM_VERSION": "VARCHAR",
    "TARGET": "VARCHAR", "ACTION": "VARCHAR", "DECISION": "VARCHAR", "FORCED": "BOOLEAN", "REASON": "VARCHAR",
    "METRIC": "VARCHAR", "CANDIDATE_VALUE": "DOUBLE", "INCUMBENT_VALUE": "DOUBLE", "CHECKS": "VARCHAR",
    "ACTOR": "VARCHAR", "DECIDED_AT": "TIMESTAMP_NTZ", "RUN_ID": "VARCHAR",
}  # fmt: skip


def _audit(warehouse: Warehouse, spec: Spec, decision: Decision) -> None:
    """Append the decision to the audit table (created with its explicit schema) in one atomic write."""
    table = spec.registry.audit_table
    schema, _ = split_table(table)
    if schema:
        warehouse.execute(f"CREATE SCHEMA IF NOT EXISTS {quote(schema)}")
    columns = ", ".join(f"{quote(name)} {kind}" for name, kind in AUDIT_COLUMNS.items())
    warehouse.execute(f"CREATE TABLE IF NOT EXISTS {quote(table)} ({columns})")
    row = asdict(decision) | {"audit_id": uuid.uuid4().hex, "model_name": decision.model,
                              "model_version": decision.version, "checks": json.dumps(decision.checks),
                              "decided_at": pd.Timestamp(decision.decided_at).tz_convert(None)}  # fmt: skip
    frame = pd.DataFrame([{name: row[name.lower()] for name in AUDIT_COLUMNS}])
    warehouse.write(frame.astype({"CANDIDATE_VALUE": "float64", "INCUMBENT_VALUE": "float64"}), table, mode="append")


def _actor() -> str:
    """Who decided: PODIUM_ACTOR, else the OS user."""
    try:
        return os.environ.get("PODIUM_ACTOR") or getpass.getuser()
    except OSError:
        return "unknown"
