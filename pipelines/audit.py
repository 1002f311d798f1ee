"""The promotion audit table: one row per decision, promoted or refused; read and appended here only.

Rows are only ever appended, each in one atomic write, with an explicit schema. The registry holder
of a target should be the version the table last records as promoted to it; `drift` names every
target where it is not (a promote killed between its audit row and its registry move).
"""

from __future__ import annotations

import json
import uuid
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import pandas as pd
from mlflow.tracking import MlflowClient

from pipelines import registry
from pipelines.config import Spec
from pipelines.registry import MIRROR, Target
from pipelines.warehouse import Warehouse
from pipelines.warehouse.dialect import quote

Action = Literal["promote", "rollback", "reconcile", "mirror"]
Outcome = Literal[
    "promoted",
    "refused",
    "failed",  # a mirror into Snowflake's model registry that did not take
    "dry-run: would be promoted",
    "dry-run: would be refused",
]

COLUMNS = {
    "AUDIT_ID": "VARCHAR",
    "MODEL_NAME": "VARCHAR",
    "MODEL_VERSION": "VARCHAR",
    "FROM_VERSION": "VARCHAR",
    "TARGET": "VARCHAR",
    "ACTION": "VARCHAR",
    "DECISION": "VARCHAR",
    "FORCED": "BOOLEAN",
    "REASON": "VARCHAR",
    "METRIC": "VARCHAR",
    "CANDIDATE_VALUE": "DOUBLE",
    "INCUMBENT_VALUE": "DOUBLE",
    "CHECKS": "VARCHAR",
    "ACTOR": "VARCHAR",
    "DECIDED_AT": "TIMESTAMP_NTZ",
    "RUN_ID": "VARCHAR",
}


@dataclass
class Decision:
    """One promotion decision, as audited."""

    model: str
    version: str
    target: str
    from_version: str | None
    action: Action
    decision: Outcome = "refused"
    forced: bool = False
    reason: str = ""
    metric: str = ""
    candidate_value: float | None = None
    incumbent_value: float | None = None
    checks: dict[str, bool] = field(default_factory=dict)
    actor: str = ""
    decided_at: str = ""
    run_id: str = ""
    live: dict[str, Any] = field(default_factory=dict)  # the shadow evidence, when the policy asks for it

    @property
    def promoted(self) -> bool:
        return self.decision == "promoted"


@dataclass(frozen=True)
class Drift:
    """A target whose registry holder is not the version the audit table last recorded for it."""

    target: str
    audited: str
    held: str | None

    def __str__(self) -> str:
        held = f"v{self.held}" if self.held else "nobody"
        return (
            f"{self.target} was held by {held} while the audit table last recorded v{self.audited} "
            "(a promote stopped between its audit row and its registry move)"
        )


def rows(warehouse: Warehouse, spec: Spec) -> pd.DataFrame:
    """The audit table's rows for the spec's model, oldest first (empty if none yet)."""
    if not warehouse.exists(spec.registry.audit_table):
        return pd.DataFrame()
    return warehouse.query(
        f"SELECT * FROM {quote(spec.registry.audit_table)} WHERE MODEL_NAME = ? ORDER BY DECIDED_AT, RUN_ID",
        [spec.model_name],
    )


def append(warehouse: Warehouse, spec: Spec, decision: Decision) -> None:
    """Append the decision to the audit table (created with its explicit schema) in one atomic write."""
    table = spec.registry.audit_table
    warehouse.ensure_table(table, COLUMNS)
    row = asdict(decision) | {
        "audit_id": uuid.uuid4().hex,
        "model_name": decision.model,
        "model_version": decision.version,
        "checks": json.dumps(decision.checks),
        "decided_at": pd.Timestamp(decision.decided_at).tz_convert(None),
    }
    frame = pd.DataFrame([{name: row[name.lower()] for name in COLUMNS}])
    warehouse.write(
        frame.astype({"CANDIDATE_VALUE": "float64", "INCUMBENT_VALUE": "float64"}), table, mode="append"
    )


def last_promoted(audited: pd.DataFrame, target: str) -> str | None:
    """The version the audit rows last record as promoted to `target` (None if never)."""
    if audited.empty:
        return None
    taken = audited[(audited["TARGET"] == target) & (audited["DECISION"] == "promoted")]["MODEL_VERSION"]
    return str(taken.iloc[-1]) if not taken.empty else None


def drift(client: MlflowClient, warehouse: Warehouse, spec: Spec) -> list[Drift]:
    """Every target whose holder differs from the last promoted version of the audit table."""
    audited = rows(warehouse, spec)
    if audited.empty:
        return []
    promoted = audited[audited["DECISION"] == "promoted"].groupby("TARGET", sort=True)["MODEL_VERSION"].last()
    found = []
    for target, version in promoted.items():
        if Target.parse(str(target)).kind == MIRROR:  # Snowflake's registry: `promote` brings it up to date
            continue
        held = registry.holder(client, spec.model_name, Target.parse(str(target)))
        held_version = str(held.version) if held else None
        if held_version != str(version):
            found.append(Drift(str(target), str(version), held_version))
    return found
