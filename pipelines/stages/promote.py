"""Promote stage: move a registered version to an alias (champion) or a stage (Production), gated and audited.

Inputs:  a registered version (default: the `challenger` alias) and the current holder of
         each target; the spec's promotion policy; the feature table's columns (for the
         signature check) and, when the two versions were judged on different holdouts,
         the current holdout.
Outputs: the alias moved and/or the stage transitioned (the previous holder archived);
         one audit row per decision, promoted or refused, appended to the spec's audit
         table; registry tags on the version and the model.
MLflow:  the `promote` run with `decision.json`.

Concurrency: the whole decision (read the holder, gate, audit, apply) runs while holding
the warehouse's write lock. On DuckDB that lock is the database file's own exclusive lock,
so a second promotion waits for the first and then judges against the new holder. An
alias names one version by construction; stage transitions archive every other holder.

Crashes: the audit row is written before the registry moves, so a kill between the two
leaves an audited move the registry lacks; the next promote completes it first (an audit
row with action `reconcile`), and `podium status` reports it until then.
"""

from __future__ import annotations

import getpass
import logging
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime

import mlflow
from mlflow.entities.model_registry import ModelVersion
from mlflow.tracking import MlflowClient

from pipelines import audit, dataset, registry, shadow, snowflake_registry
from pipelines.audit import Decision, Outcome
from pipelines.config import Profile, Spec
from pipelines.errors import PodiumError
from pipelines.metrics import classification_metrics, improvement, undefined
from pipelines.registry import CHAMPION, MIRROR, VERSION_STAGES, Target
from pipelines.tracking import configure, stage_run
from pipelines.warehouse import Warehouse, connect

log = logging.getLogger(__name__)


class Decisions(list[Decision]):
    """The decisions of one promote run, one per target, in the order asked.

    `reconciled` holds the moves this run completed first: registry holders that disagreed with
    the audit table (a promote killed between its audit row and its registry move).
    """

    reconciled: list[Decision]
    mirrored: list[Decision]  # the mirrors into Snowflake's model registry this run attempted

    def __init__(self, reconciled: list[Decision] | None = None) -> None:
        super().__init__()
        self.reconciled = reconciled or []
        self.mirrored = []


@dataclass(frozen=True)
class Request:
    """What the user asked for: which version (default: the challenger), and how."""

    version: str | None = None
    dry_run: bool = False
    force: bool = False
    rollback: bool = False


def main(
    profile: Profile,
    spec: Spec,
    alias: str | None = CHAMPION,
    stage: str | None = None,
    version: str | None = None,
    dry_run: bool = False,
    force: bool = False,
    rollback: bool = False,
) -> Decisions:
    """Decide (and unless dry-run, apply and audit) one promotion per requested target."""
    targets = _targets(alias, stage)
    request = Request(version, dry_run, force, rollback)
    configure(profile)
    client = registry.client()
    registry.require_model(client, spec.model_name)
    with stage_run(profile, spec, "promote") as run, connect(profile) as warehouse:
        decisions = Decisions([] if dry_run else reconcile(client, warehouse, spec, run.info.run_id))
        for target in targets:
            decision = _decide(client, warehouse, spec, target, request)
            decision.run_id = run.info.run_id
            if not dry_run:
                _apply_and_audit(client, warehouse, spec, decision)
            decisions.append(decision)
        if not dry_run:
            decisions.mirrored = mirror(client, warehouse, spec, run.info.run_id)
        mlflow.log_dict(
            {
                "decisions": [asdict(d) for d in decisions],
                "reconciled": [asdict(d) for d in decisions.reconciled],
                "mirrored": [asdict(d) for d in decisions.mirrored],
            },
            "decision.json",
        )
        mlflow.set_tags({"podium.model": spec.model_name, "podium.dry_run": str(dry_run).lower()})
    _report_failed_mirrors(decisions)
    return decisions


def parse_stage(stage: str) -> str:
    """A stage name as MLflow spells it; anything else is a user error."""
    for known in VERSION_STAGES:
        if stage.lower() == known.lower():
            return known
    raise PodiumError(
        f"unknown stage {stage!r}: promote to one of {', '.join(VERSION_STAGES)} "
        "(versions leave a stage by being archived when another takes it)."
    )


def reconcile(client: MlflowClient, warehouse: Warehouse, spec: Spec, run_id: str) -> list[Decision]:
    """Complete every move the audit table recorded but the registry lacks, auditing each completion."""
    done = []
    for drift in audit.drift(client, warehouse, spec):
        decision = Decision(
            spec.model_name,
            drift.audited,
            drift.target,
            drift.held,
            "reconcile",
            decision="promoted",
            reason=f"{drift}: completed the recorded move",
            actor=_actor(),
            decided_at=datetime.now(UTC).isoformat(timespec="milliseconds"),
            run_id=run_id,
        )
        log.warning("reconciling %s", decision.reason)
        _apply_and_audit(client, warehouse, spec, decision)
        done.append(decision)
    return done


def mirror(client: MlflowClient, warehouse: Warehouse, spec: Spec, run_id: str) -> list[Decision]:
    """Bring Snowflake's model registry up to the MLflow holder of each mirrored alias, auditing each attempt.

    Runs after this promote's own moves and audit rows, so a failure here leaves them as they are: the
    attempt is audited as `failed`, and the next promote, which finds the mirror behind, retries it.
    """
    config = spec.registry.snowflake
    if config is None:
        return []
    if warehouse.backend != "snowflake":
        log.info(
            "registry.snowflake is set, but this profile's warehouse is %s: nothing mirrored",
            warehouse.backend,
        )
        return []
    rows, done = audit.rows(warehouse, spec), []
    for alias in config.aliases:
        held = registry.holder(client, spec.model_name, Target("alias", alias.lower()))
        target = str(Target(MIRROR, alias.lower()))
        mirrored = audit.last_promoted(rows, target)
        if held is None or str(held.version) == mirrored:
            continue
        decision = _mirror_one(warehouse, spec, str(held.version), alias, target, mirrored)
        decision.run_id = run_id
        audit.append(warehouse, spec, decision)
        done.append(decision)
    return done


def _mirror_one(
    warehouse: Warehouse, spec: Spec, version: str, alias: str, target: str, mirrored: str | None
) -> Decision:
    """Mirror one version under one alias; the decision says whether it took."""
    name = snowflake_model_name(spec)
    decision = Decision(
        spec.model_name,
        version,
        target,
        mirrored,
        "mirror",
        actor=_actor(),
        decided_at=datetime.now(UTC).isoformat(timespec="milliseconds"),
    )
    try:
        warehouse.mirror_model(name, snowflake_registry.from_mlflow(spec.model_name, version), alias)
    except PodiumError as exc:
        decision.decision, decision.reason = "failed", f"{exc} (the next promote retries it)"
        log.warning("mirroring v%s into Snowflake's model registry failed: %s", version, exc)
        return decision
    decision.decision = "promoted"
    decision.reason = f"mirrored as Snowflake model {name} version V{version}, alias {alias}"
    return decision


def snowflake_model_name(spec: Spec) -> str:
    """The model's name in Snowflake's registry: the spec's, or the MLflow name as an identifier."""
    config = spec.registry.snowflake
    return (config and config.model_name) or spec.model_name.replace("-", "_").upper()


def _report_failed_mirrors(decisions: Decisions) -> None:
    """A mirror that failed fails the command, after Podium's own promotion and audit are in place."""
    failed = [d for d in decisions.mirrored if d.decision == "failed"]
    if failed:
        done = "; ".join(f"{d.decision} v{d.version} -> {d.target}" for d in decisions) or "no move asked"
        raise PodiumError(
            f"{done}: MLflow's registry and the audit table hold that. But mirroring v{failed[0].version} "
            f"into Snowflake's model registry failed: {failed[0].reason}"
        )


def _targets(alias: str | None, stage: str | None) -> list[Target]:
    targets = ([Target("alias", alias)] if alias else []) + (
        [Target("stage", parse_stage(stage))] if stage else []
    )
    if not targets:
        raise PodiumError("nothing to promote to: pass --alias champion and/or --stage Production.")
    return targets


def _decide(
    client: MlflowClient, warehouse: Warehouse, spec: Spec, target: Target, request: Request
) -> Decision:
    """Who holds the target, who would take it, and whether the policy lets them."""
    holder = registry.holder(client, spec.model_name, target)
    if request.rollback:
        candidate = _previous_holder(warehouse, spec, target, holder)
    else:
        wanted = request.version or registry.challenger(client, spec.model_name)
        candidate = registry.get_version(client, spec.model_name, wanted)
    decision = Decision(
        spec.model_name,
        str(candidate.version),
        str(target),
        str(holder.version) if holder else None,
        "rollback" if request.rollback else "promote",
        forced=request.force,
        metric=spec.promotion.metric,
        actor=_actor(),
        decided_at=datetime.now(UTC).isoformat(timespec="milliseconds"),
    )
    if holder and str(holder.version) == str(candidate.version):
        decision.reason = f"version {candidate.version} already holds {target}"
    elif request.rollback:
        decision.decision, decision.reason = "promoted", f"rollback to the previous holder of {target}"
    else:
        _gate(warehouse, spec, candidate, holder, decision)
        if request.force:
            decision.decision = "promoted"
            decision.reason = f"forced (the gate said: {decision.reason})"
    if request.dry_run:
        decision.decision = "dry-run: would be promoted" if decision.promoted else "dry-run: would be refused"
    return decision


def _gate(
    warehouse: Warehouse, spec: Spec, candidate: ModelVersion, holder: ModelVersion | None, decision: Decision
) -> None:
    """Apply the policy: the required checks, then the minimum improvement over the holder."""
    policy = spec.promotion
    _check_promotable(candidate)
    decision.candidate_value, decision.incumbent_value = _compare(warehouse, spec, candidate, holder)
    failures = {name: CHECKS[name](warehouse, spec, candidate) for name in policy.checks}
    decision.checks = {name: failure is None for name, failure in failures.items()}
    failed = [f"{name} ({failure})" for name, failure in failures.items() if failure]
    if failed:
        decision.reason = f"failed checks: {', '.join(failed)}"
        return
    if holder is None or decision.incumbent_value is None:  # one without the other never happens (_compare)
        decision.decision, decision.reason = "promoted", f"first holder of {decision.target}; checks passed"
        return
    sides = {"challenger": decision.candidate_value, f"holder v{holder.version}": decision.incumbent_value}
    if cannot := undefined(policy.metric, "on the holdout", sides):
        decision.reason = cannot
        return
    gain = improvement(policy.metric, decision.candidate_value, decision.incumbent_value)
    verdict: Outcome = "promoted" if gain >= policy.min_improvement else "refused"
    decision.decision = verdict
    decision.reason = (
        f"{policy.metric} {decision.candidate_value:.4f} vs holder v{holder.version} "
        f"{decision.incumbent_value:.4f}: "
        f"improvement {gain:+.4f} {'>=' if verdict == 'promoted' else '<'} min_improvement "
        f"{policy.min_improvement}"
    )
    if policy.live:
        _live_gate(warehouse, spec, str(candidate.version), str(holder.version), decision)


def _live_gate(warehouse: Warehouse, spec: Spec, candidate: str, holder: str, decision: Decision) -> None:
    """Beside the holdout rule: the challenger must have won each of the last `live.periods` shadow periods.

    The figures are cited in the reason and kept in `decision.live`. The gate fails closed: with
    fewer evaluated periods than asked the challenger waits in shadow (refused, verdict `waiting`),
    unless it already lost one of them (verdict `lost`).
    """
    live = spec.promotion.live
    assert live is not None, "the live gate needs promotion.live"  # _gate calls it only when that is set
    metric = shadow.paired_metric(spec.promotion.metric)
    last = shadow.evidence(warehouse, spec, candidate, holder).tail(live.periods)
    decision.live = {"metric": metric, "periods": live.periods, "min_improvement": live.min_improvement}
    decision.live["evidence"] = last.to_dict("records")
    verdict = decision.live["verdict"] = shadow.live_verdict(last, live)
    if verdict == "waiting":
        decision.decision = "refused"
        decision.reason += (
            f"; not enough live evidence: {len(last)} of {live.periods} shadow periods of v{candidate} "
            f"against v{holder} evaluated, so it waits in shadow (score --shadow, then evaluate)"
        )
        return
    cited = ", ".join(f"{r.PERIOD} {r.GAIN:+.4f} [{r.LOW:+.4f}, {r.HIGH:+.4f}]" for r in last.itertuples())
    won = verdict == "won"
    decision.reason += (
        f"; live {metric} gain vs v{holder} in shadow, last {len(last)} of {live.periods} periods [95% CI]: "
        f"{cited}: "
        f"{'each' if won else 'not each'} >= {live.min_improvement}"
    )
    if not won:
        decision.decision = "refused"


def _compare(
    warehouse: Warehouse, spec: Spec, candidate: ModelVersion, holder: ModelVersion | None
) -> tuple[float, float | None]:
    """The policy metric of both versions on the same holdout: from their tags, or re-evaluated now."""
    key = f"podium.holdout_{spec.promotion.metric}"
    if holder is None:
        return float(candidate.tags[key]), None
    if candidate.tags.get("podium.holdout_digest") == holder.tags.get("podium.holdout_digest"):
        return float(candidate.tags[key]), float(holder.tags[key])
    log.info(
        "v%s and v%s were judged on different holdouts: re-evaluating both", candidate.version, holder.version
    )
    holdout = dataset.load_holdout(warehouse, spec, dataset.read_schema(warehouse, spec))
    values = []
    for version in (candidate, holder):
        model = registry.load_estimator(spec.model_name, str(version.version))
        values.append(
            classification_metrics(holdout.y, model.predict_proba(holdout.X))[spec.promotion.metric]
        )
    return values[0], values[1]


def _beats_baseline(warehouse: Warehouse, spec: Spec, candidate: ModelVersion) -> str | None:
    """Why the version does not beat the policy's baseline on its holdout (None when it does)."""
    policy = spec.promotion
    mine = float(candidate.tags[f"podium.holdout_{policy.metric}"])
    theirs = candidate.tags.get(f"podium.baseline.{policy.baseline}.holdout_{policy.metric}")
    if theirs is None:
        raise PodiumError(
            f"version {candidate.version} has no holdout score for baseline {policy.baseline!r}: "
            "fix promotion.baseline (prior, or heuristic when the spec has a baseline column)."
        )
    sides = {"challenger": mine, f"baseline {policy.baseline}": float(theirs)}
    if cannot := undefined(policy.metric, "on the holdout", sides):
        return cannot
    if improvement(policy.metric, mine, float(theirs)) > 0:
        return None
    return f"{policy.metric} {mine:.4f} vs baseline {policy.baseline} {float(theirs):.4f}"


def _signature_matches(warehouse: Warehouse, spec: Spec, candidate: ModelVersion) -> str | None:
    """None if every input the model's signature names is a column of the feature table; else the missing."""
    needed = [c.name for c in registry.model_inputs(spec.model_name, str(candidate.version))]
    missing = sorted(set(needed) - set(warehouse.columns(spec.table)))
    return f"{spec.table} lacks {', '.join(missing)}" if missing else None


CHECKS: dict[str, Callable[[Warehouse, Spec, ModelVersion], str | None]] = {
    "beats_baseline": _beats_baseline,
    "signature_matches": _signature_matches,
}


def _check_promotable(version: ModelVersion) -> None:
    """Archived versions and versions from failed runs cannot be promoted (rollback aside)."""
    if version.current_stage == "Archived":
        raise PodiumError(
            f"version {version.version} is archived: promote a live version, or use --rollback to restore it."
        )
    if version.status != "READY":
        raise PodiumError(f"version {version.version} is {version.status}, not READY: register it again.")
    run = registry.client().get_run(version.run_id) if version.run_id else None
    if run and run.info.status == "FAILED":
        raise PodiumError(
            f"version {version.version} comes from run {version.run_id}, which FAILED: train again and "
            "promote that."
        )


def _previous_holder(
    warehouse: Warehouse, spec: Spec, target: Target, holder: ModelVersion | None
) -> ModelVersion:
    """The version the current holder took the target from (walking back past earlier rollbacks)."""
    rows = audit.rows(warehouse, spec)
    if not rows.empty and holder is not None:
        taken = rows[
            (rows["TARGET"] == str(target)) & (rows["DECISION"] == "promoted") & (rows["ACTION"] == "promote")
        ]
        taken = taken[taken["MODEL_VERSION"] == str(holder.version)]
        previous = taken["FROM_VERSION"].dropna()
        if not previous.empty:
            return registry.client().get_model_version(spec.model_name, previous.iloc[-1])
    raise PodiumError(
        f"nothing to roll back to for {target} of {spec.model_name}: {spec.registry.audit_table} records no "
        "earlier holder."
    )


def _apply_and_audit(client: MlflowClient, warehouse: Warehouse, spec: Spec, decision: Decision) -> None:
    """Append the audit row first, then change the registry.

    A crash between the two leaves an audited move the registry lacks; the next promote completes it
    (`reconcile`) and `podium status` reports it. The registry never holds an unaudited version.
    """
    audit.append(warehouse, spec, decision)
    _apply(client, decision)


def _apply(client: MlflowClient, decision: Decision) -> None:
    """Move the alias or transition the stage, then tag the version and the model."""
    stamp = f"{decision.decision} {decision.target} at {decision.decided_at} by {decision.actor}: "
    stamp += decision.reason
    client.set_model_version_tag(
        decision.model, decision.version, f"podium.decision.{decision.target}", stamp[:5000]
    )
    if not decision.promoted:
        return
    registry.move(client, decision.model, Target.parse(decision.target), decision.version)
    client.set_registered_model_tag(decision.model, f"podium.{decision.target}", decision.version)
    client.set_registered_model_tag(decision.model, "podium.last_promotion", stamp[:5000])


def _actor() -> str:
    """Who decided: PODIUM_ACTOR, else the OS user."""
    try:
        return os.environ.get("PODIUM_ACTOR") or getpass.getuser()
    except OSError:
        return "unknown"
