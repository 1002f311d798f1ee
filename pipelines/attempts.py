"""What earlier attempts at a period's cycle left behind: their runs, the version one registered, the
gate decision one audited. A killed cycle's next run reads them so it trains and gates nothing twice.

An attempt is a `cycle` run tagged with its period; every stage it ran is a run nested in it, so the
versions it registered and the audit rows it wrote are found through those runs' ids.
"""

from __future__ import annotations

from mlflow.tracking import MlflowClient

from pipelines import audit
from pipelines.config import Spec
from pipelines.registry import CHAMPION, Target
from pipelines.warehouse import Warehouse

PERIOD_TAG = "podium.cycle_period"  # on a cycle's run: the period it runs


def runs(client: MlflowClient, spec: Spec, label: str) -> set[str]:
    """Every run of every unfinished attempt (killed, failed or running) at period `label`'s cycle, nested
    ones included. A finished attempt wrote its period's row: one whose row is gone (a cycles table
    dropped, a backtest's scratch table reset) is no attempt at the cycle being run now."""
    experiment = client.get_experiment_by_name(spec.name)
    if experiment is None:
        return set()
    where = (
        f"tags.`podium.stage` = 'cycle' and tags.`{PERIOD_TAG}` = '{label}' "
        "and attributes.status != 'FINISHED'"
    )
    found = {r.info.run_id for r in client.search_runs([experiment.experiment_id], where)}
    level = set(found)
    while level:
        children = {
            r.info.run_id
            for parent in level
            for r in client.search_runs([experiment.experiment_id], f"tags.`mlflow.parentRunId` = '{parent}'")
        }
        level = children - found
        found |= children
    return found


def registered(client: MlflowClient, spec: Spec, label: str) -> str | None:
    """The version an attempt at period `label`'s cycle registered, if one did (the latest)."""
    mine = runs(client, spec, label)
    versions = client.search_model_versions(f"name = '{spec.model_name}'")
    found = sorted((int(v.version) for v in versions if v.run_id in mine), reverse=True)
    return str(found[0]) if found else None


def audited(
    client: MlflowClient, warehouse: Warehouse, spec: Spec, label: str, version: str
) -> tuple[str, str] | None:
    """The gate's (decision, reason) for `version` to alias champion, if an attempt at `label` audited it."""
    if not warehouse.exists(spec.registry.audit_table):
        return None
    rows = audit.rows(warehouse, spec)
    mine = rows[
        rows.RUN_ID.isin(runs(client, spec, label))
        & (rows.MODEL_VERSION == version)
        & (rows.ACTION == "promote")
        & (rows.TARGET == str(Target("alias", CHAMPION)))
    ]
    return (str(mine.DECISION.iloc[-1]), str(mine.REASON.iloc[-1])) if len(mine) else None
