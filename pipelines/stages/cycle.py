"""Cycle stage: one period of the lifecycle, safe to run on a schedule (cron, Airflow, `mlflow run -e cycle`).

As of a date D (`--as-of`, default today) the cycle's period is the monitoring period that holds D
(F1: its season). The rows before D have landed with their actual classes; the period's rows are the
ones to predict. In order:

1. refresh: ingest and features, when the spec has them;
2. score: the rows of the scoring window up to the period's end not yet scored, by the champion;
3. evaluate: the scored rows whose actual class landed before D;
4. decide: every trigger of the spec's retrain policy (`cycle.retrain.when_any`) measured for the
   champion (`retrain`); retrain if one fired, or if there is no champion yet;
5. retrain: tune (the policy's budget, in the cycle's own fresh studies) and train a challenger on the
   rows before the previous period, held out on that period;
6. shadow: the challenger (trained now or earlier) beside the champion on the period's rows;
7. gate: a challenger trained now (or, with `promotion.live`, one waiting in shadow) goes through
   the spec's promotion gate for alias champion and stage Production; it may wait a period or more.

Outputs: one row per period in `cycle.table`, written last (merged on PERIOD); the `cycle` MLflow run
         holding each stage's run, the triggers as metrics, the decision as tags.
Rerun:   a period whose row exists is done: nothing runs and nothing is added.
Killed:  the next run completes the period. The challenger a killed attempt registered, and the gate
         decision it audited, are found through the runs nested in that attempt's run (tagged with
         the period), so they are not trained or gated twice; an attempt killed before registering
         one leaves studies that are started afresh, so the rerun replays the same trials.
Plan:    `plan=True` measures and decides on the tables as they are, and changes nothing.
"""

from __future__ import annotations

import json
import logging
import shutil
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from typing import Any

import mlflow
import pandas as pd
from mlflow.entities.model_registry import ModelVersion
from mlflow.tracking import MlflowClient

from pipelines import alerts, attempts, audit, registry, retrain
from pipelines.alerts import Alert, AlertKind
from pipelines.config import Profile, Spec
from pipelines.errors import PodiumError
from pipelines.lifecycle import Lifecycle
from pipelines.periods import period_label, period_of, shift
from pipelines.processes import end_stale_stage_trees
from pipelines.registry import CHALLENGER, CHAMPION, Target
from pipelines.retrain import Trigger
from pipelines.studies import beside_storage
from pipelines.tracking import STORE_ERRORS, configure, stage_run, store_error
from pipelines.warehouse import connect, types
from pipelines.warehouse.dialect import quote

log = logging.getLogger(__name__)

COLUMNS = {
    "PERIOD": "VARCHAR",
    "AS_OF": "DATE",
    "DRIFT_FEATURES": "DOUBLE",  # each trigger's value, then whether it fired (NULL: not in the policy)
    "DRIFT_FIRED": "BOOLEAN",
    "LIVE_GAP": "DOUBLE",
    "LIVE_FIRED": "BOOLEAN",
    "AGE_PERIODS": "DOUBLE",
    "AGE_FIRED": "BOOLEAN",
    "NEW_ROWS": "DOUBLE",
    "NEW_ROWS_FIRED": "BOOLEAN",
    "RETRAIN": "BOOLEAN",
    "ACTIONS": "VARCHAR",  # refresh,evaluate,tune,train,score,gate: what this cycle did
    "PERIOD_SCORES": "BIGINT",  # the scores table's rows of the period, every version's, after the cycle
    "CHALLENGER_VERSION": "VARCHAR",
    "DECISION": "VARCHAR",  # the gate's, or NULL when nothing was gated
    "REASON": "VARCHAR",
    "CHAMPION_BEFORE": "VARCHAR",
    "CHAMPION_AFTER": "VARCHAR",
    "RUN_ID": "VARCHAR",
    "STAGE_RUN_IDS": "VARCHAR",  # JSON: each stage's run id
    "FINISHED_AT": "TIMESTAMP_NTZ",
}


@dataclass(frozen=True)
class Period:
    """The cycle's period: its label, [start, end), and the as-of date that chose it."""

    label: str
    start: date
    end: date
    as_of: date


@dataclass
class CycleResult:
    """What the cycle did (or, planned, would do); `done` when the period had already finished."""

    table: str
    period: Period
    triggers: list[Trigger]
    retrain: bool
    actions: list[str]
    plan: bool = False
    done: bool = False
    row: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        """The JSON form `podium cycle --format json` prints (and an Airflow branch reads)."""
        return {
            "period": self.period.label,
            "as_of": str(self.period.as_of),
            "done": self.done,
            "plan": self.plan,
            "retrain": self.retrain,
            "triggers": [
                {"name": t.name, "value": t.value, "threshold": t.threshold, "fired": t.fired}
                for t in self.triggers
            ],
            "actions": self.actions,
            "row": {k: _plain(v) for k, v in self.row.items()},
        }


def main(
    profile: Profile,
    spec: Spec,
    lifecycle: Lifecycle,
    as_of: date | None = None,
    plan: bool = False,
    refresh: bool = True,
) -> CycleResult:
    """Run (or with `plan`, decide only) the cycle of the period that holds `as_of` (default: today).

    `refresh=False` skips ingest and features (a scheduler that ran them as tasks of its own)."""
    config = spec.cycle_section
    period = cycle_period(spec, as_of or datetime.now(UTC).date())
    configure(profile)
    if (row := recorded(profile, spec, period.label)) is not None:
        return _finished(spec, period, row, plan)
    if plan:
        return _plan(profile, spec, period, refresh)
    try:
        _end_killed(spec)
        with stage_run(profile, spec, "cycle") as run:
            mlflow.set_tags({attempts.PERIOD_TAG: period.label, "podium.as_of": str(period.as_of)})
            result = _run(Attempt(profile, spec, lifecycle, period, run.info.run_id, refresh))
            with connect(profile) as warehouse:
                warehouse.ensure_table(config.table, COLUMNS)
                frame = types.conform(pd.DataFrame([result.row], columns=list(COLUMNS)), COLUMNS)
                warehouse.write(frame, config.table, mode="merge", keys=["PERIOD"])
            _log(result)
    except Exception as exc:
        alerts.send(profile, failed(spec, period, exc))
        raise
    # after the row is written: a cycle killed before sends them on its next run; one killed after, never
    for alert in news(spec, result):
        alerts.send(profile, alert)
    return result


def news(spec: Spec, result: CycleResult) -> list[Alert]:
    """The alerts a finished cycle sends: drift that fired the policy, the gate's promotion or refusal."""
    row, label, found = result.row, result.period.label, []
    for t in result.triggers:
        if t.name == "drift" and t.fired:
            body = (
                f"{t.value:g} features of v{row['CHAMPION_BEFORE']}'s scored rows are past the policy's PSI"
            )
            found.append(Alert("drift", f"{spec.name} {label}: drift fired the retrain policy", body))
    if row.get("DECISION") in ("promoted", "refused"):
        kind: AlertKind = "promotion" if row["DECISION"] == "promoted" else "refusal"
        title = f"{spec.name} {label}: v{row['CHALLENGER_VERSION']} {row['DECISION']} as champion"
        found.append(Alert(kind, title, str(row["REASON"])))
    return found


def failed(spec: Spec, period: Period, exc: Exception) -> Alert:
    """The alert of a cycle that failed: the error's first line (Podium's errors carry no secret)."""
    reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return Alert("failed_cycle", f"{spec.name} {period.label}: the cycle failed", reason)


def cycle_period(spec: Spec, as_of: date) -> Period:
    """The monitoring period that holds `as_of`; its previous period must leave rows to train on."""
    unit = spec.monitoring_section.period
    start, end = period_of(as_of, unit)
    if shift(start, unit, -1) <= spec.train_start:
        raise PodiumError(
            f"--as-of {as_of} falls in the period from {start}, whose holdout (the period before) starts "
            f"at or before train_start ({spec.train_start}): no rows are left to train on. Pick a later "
            "--as-of, or an earlier train_start."
        )
    return Period(period_label(start, unit), start, end, as_of)


def recorded(profile: Profile, spec: Spec, label: str) -> dict[str, Any] | None:
    """The cycles table's row for period `label`, if that cycle finished."""
    table = spec.cycle_section.table
    with connect(profile, read_only=True) as warehouse:
        if not warehouse.exists(table):
            return None
        found = warehouse.query(f"SELECT * FROM {quote(table)} WHERE PERIOD = ?", [label])
    return found.iloc[0].to_dict() if len(found) else None


def _finished(spec: Spec, period: Period, row: dict[str, Any], plan: bool) -> CycleResult:
    """The result of a period whose cycle finished, from its row: nothing runs again."""
    limits = retrain.thresholds(spec.cycle_section.retrain.when_any)
    triggers = [
        Trigger(name, _number(row.get(column)), limits[name], _flag(row.get(retrain.fired_column(name))))
        for name, column in retrain.VALUE_COLUMNS.items()
    ]
    actions = [a for a in str(row.get("ACTIONS") or "").split(",") if a]
    log.info("the cycle of period %s already finished: nothing to do", period.label)
    table = spec.cycle_section.table
    return CycleResult(table, period, triggers, bool(row["RETRAIN"]), actions, plan, True, row)


def _plan(profile: Profile, spec: Spec, period: Period, refresh: bool) -> CycleResult:
    """What the cycle would do now, judged on the tables and registry as they are; nothing changes.

    The triggers read the monitoring rows `evaluate` last wrote: run `podium evaluate --as-of` first
    for the plan to see the actual classes landed since.
    """
    client = registry.client()
    champion = registry.holder(client, spec.model_name, Target("alias", CHAMPION))
    with connect(profile, read_only=True) as warehouse:
        triggers = retrain.measure(warehouse, spec, champion, period.start)
    again = champion is None or bool(retrain.fired(triggers))
    waiting = _waiting(client, spec, champion)
    actions = ["refresh"] if refresh and (spec.ingest or spec.features) else []
    actions += (["score"] if champion else []) + ["evaluate"] + (["tune", "train"] if again else [])
    actions += ["shadow", "gate"] if again or waiting else []
    return CycleResult(spec.cycle_section.table, period, triggers, again, actions, plan=True)


@dataclass(frozen=True)
class Attempt:
    """One run of one period's cycle: where, what, with which stages, and its MLflow run."""

    profile: Profile
    spec: Spec
    lifecycle: Lifecycle
    period: Period
    run_id: str
    refresh: bool = True  # ingest and features first, those the spec has


def _run(attempt: Attempt) -> CycleResult:
    """Refresh, score, evaluate, decide, retrain and shadow if the policy says so, gate; the cycle's row."""
    profile, spec, period = attempt.profile, attempt.spec, attempt.period
    client, actions = registry.client(), []
    if attempt.refresh and (spec.ingest or spec.features):
        _refresh(attempt)
        actions.append("refresh")
    before = registry.holder(client, spec.model_name, Target("alias", CHAMPION))
    if _score(attempt, before, shadow=False) is not None:
        actions.append("score")
    if _landed_scores(profile, spec, period.start):
        attempt.lifecycle.evaluate(profile, spec, as_of=period.start)
        actions.append("evaluate")
    with connect(profile, read_only=True) as warehouse:
        triggers = retrain.measure(warehouse, spec, before, period.start)
    again = before is None or bool(retrain.fired(triggers))
    mlflow.log_metrics({f"trigger.{t.name}": t.value for t in triggers if t.value is not None})
    trained = _challenger(attempt, client, before) if again else None
    actions += ["tune", "train"] if again else []
    if _score(attempt, before, shadow=True) is not None:
        actions.append("shadow")
    gate = _gate(attempt, client, before, trained)
    actions += ["gate"] if gate else []
    after = registry.holder(client, spec.model_name, Target("alias", CHAMPION))
    row = _row(attempt, triggers, again, actions, trained, gate, before, after)
    return CycleResult(spec.cycle_section.table, period, triggers, again, actions, row=row)


def _refresh(attempt: Attempt) -> None:
    """Ingest and features, those the spec has (both rebuild whole, so a rerun changes nothing)."""
    if attempt.spec.ingest:
        attempt.lifecycle.ingest(attempt.profile, attempt.spec)
    if attempt.spec.features:
        attempt.lifecycle.features(attempt.profile, attempt.spec)


def _landed_scores(profile: Profile, spec: Spec, start: date) -> bool:
    """Whether any scored row before `start` has its actual class: something for evaluate to do."""
    with connect(profile, read_only=True) as warehouse:
        if not warehouse.exists(spec.scoring_table):
            return False
        keys = " AND ".join(f"s.{quote(k)} = f.{quote(k)}" for k in spec.keys)
        found = warehouse.query(
            f"SELECT COUNT(*) AS N FROM {quote(spec.scoring_table)} AS s JOIN {quote(spec.table)} AS f "
            f"ON {keys} WHERE f.{quote(spec.target)} IS NOT NULL AND f.{quote(spec.time)} < ?",
            [start],
        )
    return bool(found.N[0])


def _children() -> list[Any]:
    active = mlflow.active_run()
    assert active is not None, "the cycle's stages run inside its run"
    return MlflowClient().search_runs(
        [active.info.experiment_id], f"tags.`mlflow.parentRunId` = '{active.info.run_id}'"
    )


def retrain_spec(spec: Spec, period: Period) -> Spec:
    """The spec a cycle retrains with: held out on the previous period, trained before it, the policy's
    tuning budget."""
    holdout = shift(period.start, spec.monitoring_section.period, -1)
    tuning = spec.tuning_section.model_copy(update={"budget": spec.cycle_section.retrain.tune})
    return spec.model_copy(update={"holdout_start": holdout, "holdout_end": period.start, "tuning": tuning})


def _challenger(attempt: Attempt, client: MlflowClient, champion: ModelVersion | None) -> str:
    """The challenger of this period: the one a killed attempt registered, else tuned and trained now."""
    spec, period = attempt.spec, attempt.period
    if found := attempts.registered(client, spec, period.label):
        log.info(
            "period %s: version %s was trained by an earlier attempt; not training again", period.label, found
        )
        client.set_registered_model_alias(spec.model_name, CHALLENGER, found)
        return found
    journal = beside_storage(attempt.profile.optuna_storage, "cycles") / period.label
    shutil.rmtree(journal, ignore_errors=True)  # a killed attempt's partial studies: start afresh
    journal.mkdir(parents=True)
    profile = attempt.profile.model_copy(update={"optuna_storage": str(journal / "studies.journal")})
    trained = retrain_spec(spec, period)
    attempt.lifecycle.tune(profile, trained)
    version = str(attempt.lifecycle.train(profile, trained).champion.version)
    log.info("period %s: trained version %s as the challenger of v%s", period.label, version, _v(champion))
    return version


def _waiting(client: MlflowClient, spec: Spec, champion: ModelVersion | None) -> bool:
    """A challenger other than the champion waits in shadow for the live gate (promotion.live)."""
    held = registry.holder(client, spec.model_name, Target("alias", CHALLENGER))
    return bool(spec.promotion.live and held and (champion is None or held.version != champion.version))


def _score(attempt: Attempt, champion: ModelVersion | None, shadow: bool) -> int | None:
    """The champion's scores over the scoring window up to the period's end, or (`shadow`) the challenger's
    beside the champion over the period's rows; never rows the model trained on. Rows written; None
    when the step does not apply (no model, no challenger, a period before the scoring window)."""
    spec, period = attempt.spec, attempt.period
    scoring = spec.scoring_section
    start = max(scoring.start, period.start if shadow else retrain.trained_before(champion) or scoring.start)
    challenger = registry.holder(registry.client(), spec.model_name, Target("alias", CHALLENGER))
    if period.end <= start or (champion is None and not shadow):
        return None
    window = spec.model_copy(
        update={"scoring": scoring.model_copy(update={"start": start, "end": period.end})}
    )
    score, profile = attempt.lifecycle.score, attempt.profile
    if not shadow:
        return int(score(profile, window, shadow=False).rows_written)
    if challenger is None or (champion is not None and challenger.version == champion.version):
        return None
    if champion is None:  # no champion yet: the challenger scores alone
        return int(
            score(profile, window, registry.alias_uri(spec.model_name, CHALLENGER), shadow=False).rows_written
        )
    return int(score(profile, window, shadow=True).rows_written)


def _period_scores(attempt: Attempt) -> int:
    """The scores table's rows in the period, every version's."""
    spec, period = attempt.spec, attempt.period
    with connect(attempt.profile, read_only=True) as warehouse:
        if not warehouse.exists(spec.scoring_table):
            return 0
        time = quote(spec.time)
        found = warehouse.query(
            f"SELECT COUNT(*) AS N FROM {quote(spec.scoring_table)} WHERE {time} >= ? AND {time} < ?",
            [period.start, period.end],
        )
    return int(found.N[0])


def _gate(
    attempt: Attempt, client: MlflowClient, champion: ModelVersion | None, trained: str | None
) -> tuple[str, str, str] | None:
    """The gate's (version, decision, reason) for the challenger trained now or waiting; None: no gate."""
    spec = attempt.spec
    if trained is None and not _waiting(client, spec, champion):
        return None
    candidate = trained or registry.challenger(client, spec.model_name)
    with connect(attempt.profile, read_only=True) as warehouse:
        audited = attempts.audited(client, warehouse, spec, attempt.period.label, candidate)
        behind = bool(audit.drift(client, warehouse, spec))  # a target's holder is not the audit's
    if audited and not behind:
        return candidate, *audited
    # no decision yet, or an attempt was killed between its audit row and the registry: promote's
    # reconcile closes that gap first (its decision then finds the candidate in place)
    decision = attempt.lifecycle.promote(
        attempt.profile,
        retrain_spec(spec, attempt.period),
        version=candidate,
        alias=CHAMPION,
        stage="Production",
    )[0]
    return (candidate, *audited) if audited else (candidate, decision.decision, decision.reason)


def _row(
    attempt: Attempt,
    triggers: list[Trigger],
    again: bool,
    actions: list[str],
    challenger: str | None,
    gate: tuple[str, str, str] | None,
    before: ModelVersion | None,
    after: ModelVersion | None,
) -> dict[str, Any]:
    """The cycles table's row for this attempt."""
    measured: dict[str, Any] = {}
    for t in triggers:
        measured |= {t.column: t.value, t.fired_column: t.fired}
    return measured | {
        "PERIOD": attempt.period.label,
        "AS_OF": attempt.period.as_of,
        "RETRAIN": again,
        "ACTIONS": ",".join(actions),
        "PERIOD_SCORES": _period_scores(attempt),
        "CHALLENGER_VERSION": gate[0] if gate else challenger,
        "DECISION": gate[1] if gate else None,
        "REASON": gate[2] if gate else None,
        "CHAMPION_BEFORE": _v(before),
        "CHAMPION_AFTER": _v(after),
        "RUN_ID": attempt.run_id,
        "STAGE_RUN_IDS": json.dumps(_stage_runs(attempt.run_id)),
        "FINISHED_AT": datetime.now(UTC).replace(tzinfo=None),
    }


def _stage_runs(run_id: str) -> dict[str, str]:
    """The stage runs nested in the cycle's run, by stage."""
    return {
        r.data.tags.get("podium.stage", r.info.run_name): r.info.run_id
        for r in _children()
        if r.info.run_id != run_id
    }


def _log(result: CycleResult) -> None:
    row = result.row
    mlflow.set_tags(
        {
            "podium.retrain": str(result.retrain).lower(),
            "podium.actions": row["ACTIONS"],
            "podium.decision": row["DECISION"] or "none",
            "podium.champion": row["CHAMPION_AFTER"] or "none",
        }
    )
    log.info(
        "cycle %s: %s; champion v%s -> v%s",
        result.period.label,
        row["ACTIONS"],
        row["CHAMPION_BEFORE"],
        row["CHAMPION_AFTER"],
    )


def _end_killed(spec: Spec) -> None:
    """End FAILED what killed cycles left RUNNING: their runs and every run nested in them."""
    try:
        end_stale_stage_trees(spec, "cycle")
    except STORE_ERRORS as exc:
        raise store_error(exc) from None


def _v(version: ModelVersion | None) -> str | None:
    return str(version.version) if version else None


def _number(value: Any) -> float | None:
    return None if value is None or pd.isna(value) else float(value)


def _flag(value: Any) -> bool | None:
    return None if value is None or pd.isna(value) else bool(value)


def _plain(value: Any) -> Any:
    """A table value as JSON takes it."""
    if value is None or (not isinstance(value, str) and pd.isna(value)):
        return None
    if isinstance(value, (date, datetime, pd.Timestamp)):
        return str(value)
    return value.item() if hasattr(value, "item") else value
