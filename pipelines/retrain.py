"""The retrain policy's triggers, measured: what a cycle (and its plan) reads to decide whether to retrain.

Each trigger is measured for the champion, whether or not the policy names it, so every cycle records
every value; only the ones the policy names can fire (`cycle.retrain.when_any` in the spec):

- drift: features whose PSI (the champion's scored rows against its training window, as `evaluate`
  last wrote it) is past the trigger's `psi` (default: monitoring.psi_threshold);
- live: how much worse the champion did in its latest evaluated period than on its holdout
  (log loss: higher is worse; AUC: lower is worse);
- age: whole periods from the end of the champion's training window to the cycle's period;
- new_rows: labelled rows from the end of its training window to the cycle's period (rows it never fit).

Reads only: the monitoring table, the feature table, the champion's version tags.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date
from typing import Any, Literal

from mlflow.entities.model_registry import ModelVersion

from pipelines.config import RetrainTriggers, Spec
from pipelines.periods import period_label, periods_between
from pipelines.warehouse import Warehouse
from pipelines.warehouse.dialect import quote

TriggerName = Literal["drift", "live", "age", "new_rows"]
TRAINED_BEFORE = "podium.trained_before"  # a version tag: its training window's end
VALUE_COLUMNS: dict[TriggerName, str] = {
    "drift": "DRIFT_FEATURES",
    "live": "LIVE_GAP",
    "age": "AGE_PERIODS",
    "new_rows": "NEW_ROWS",
}


@dataclass(frozen=True)
class Trigger:
    """One trigger of the policy: its value for the champion, its threshold, and whether it fired.

    `value` is None when there is nothing to measure yet (no champion, no evaluated period);
    `threshold` and `fired` are None when the policy leaves the trigger out.
    """

    name: TriggerName
    value: float | None
    threshold: float | None
    fired: bool | None

    @property
    def column(self) -> str:
        """Its value's column in the cycles table."""
        return VALUE_COLUMNS[self.name]

    @property
    def fired_column(self) -> str:
        """Its verdict's column in the cycles table."""
        return fired_column(self.name)


def fired_column(name: TriggerName) -> str:
    """The cycles table's column of a trigger's verdict: DRIFT_FIRED, ..."""
    return f"{name.upper()}_FIRED"


def measure(warehouse: Warehouse, spec: Spec, champion: ModelVersion | None, start: date) -> list[Trigger]:
    """Every trigger for `champion` before the period from `start`, judged by the spec's policy."""
    policy = spec.cycle_section.retrain.when_any
    values = _values(warehouse, spec, policy, champion, start)
    limits = thresholds(policy)
    return [Trigger(name, value, limits[name], _fired(value, limits[name])) for name, value in values.items()]


def fired(triggers: list[Trigger]) -> list[Trigger]:
    """The triggers that fired."""
    return [t for t in triggers if t.fired]


def _fired(value: float | None, threshold: float | None) -> bool | None:
    if threshold is None:
        return None
    return value is not None and value >= threshold


def thresholds(policy: RetrainTriggers) -> dict[TriggerName, float | None]:
    """Each trigger's threshold in the policy; None for those it leaves out."""
    return {
        "drift": policy.drift.features if policy.drift else None,
        "live": policy.live.worse_than_holdout_by if policy.live else None,
        "age": policy.age.periods if policy.age else None,
        "new_rows": policy.new_rows,
    }


def _values(
    warehouse: Warehouse, spec: Spec, policy: RetrainTriggers, champion: ModelVersion | None, start: date
) -> dict[TriggerName, float | None]:
    if champion is None:
        return {"drift": None, "live": None, "age": None, "new_rows": None}
    version, tags = str(champion.version), champion.tags or {}
    ended = trained_before(champion)
    period = spec.monitoring_section.period
    return {
        "drift": _drifting(warehouse, spec, version, policy),
        "live": _live_gap(warehouse, spec, version, tags, policy, start),
        "age": None if ended is None else float(periods_between(ended, start, period)),
        "new_rows": None if ended is None else _new_rows(warehouse, spec, ended, start),
    }


def trained_before(version: ModelVersion | None) -> date | None:
    """The end of a version's training window (its `podium.trained_before` tag), if it has one."""
    tags = (version.tags or {}) if version else {}
    return date.fromisoformat(tags[TRAINED_BEFORE]) if TRAINED_BEFORE in tags else None


def _monitoring(
    warehouse: Warehouse, spec: Spec, version: str, where: str, params: list[object]
) -> list[Any]:
    """The champion's monitoring rows (PERIOD, METRIC, VALUE) that match `where`, or none yet."""
    table = spec.monitoring_section.table
    if not warehouse.exists(table):
        return []
    found = warehouse.query(
        f"SELECT PERIOD, METRIC, VALUE FROM {quote(table)} "
        f"WHERE MODEL_NAME = ? AND MODEL_VERSION = ? AND {where} ORDER BY PERIOD",
        [spec.model_name, version, *params],
    )
    return list(found.itertuples(index=False))


def _drifting(warehouse: Warehouse, spec: Spec, version: str, policy: RetrainTriggers) -> float | None:
    """How many features' PSI is past the drift trigger's threshold; None before any evaluation."""
    psi = policy.drift.psi if policy.drift else spec.monitoring_section.psi_threshold
    rows = _monitoring(warehouse, spec, version, "PERIOD = 'all' AND METRIC LIKE 'psi.%'", [])
    return float(sum(r.VALUE is not None and r.VALUE > psi for r in rows)) if rows else None


def _live_gap(
    warehouse: Warehouse,
    spec: Spec,
    version: str,
    tags: dict[str, str],
    policy: RetrainTriggers,
    start: date,
) -> float | None:
    """The champion's latest evaluated period before `start`, against its holdout: worse is positive."""
    metric = policy.live.metric if policy.live else "log_loss"
    holdout = tags.get(f"podium.holdout_{metric}")
    before = period_label(start, spec.monitoring_section.period)
    rows = _monitoring(
        warehouse, spec, version, "METRIC = ? AND PERIOD <> 'all' AND PERIOD < ?", [metric, before]
    )
    if holdout is None or not rows or rows[-1].VALUE is None:
        return None
    gap = float(rows[-1].VALUE) - float(holdout)
    return gap if metric == "log_loss" else -gap


def _new_rows(warehouse: Warehouse, spec: Spec, trained_before: date, start: date) -> float:
    """Labelled rows of the feature table in [trained_before, start)."""
    time = quote(spec.time)
    found = warehouse.query(
        f"SELECT COUNT(*) AS N FROM {quote(spec.table)} "
        f"WHERE {quote(spec.target)} IS NOT NULL AND {time} >= ? AND {time} < ?",
        [trained_before, start],
    )
    return float(found.N[0])
