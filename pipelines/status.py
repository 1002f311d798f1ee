"""Where a spec stands: its warehouse tables, studies, registered versions, scores and monitoring.

Read-only: it opens the warehouse read-only, creates no Optuna storage and no MLflow store,
and reports what does not exist yet as missing (None or empty) instead of failing.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import mlflow
import optuna
import pandas as pd

from pipelines import audit, pipeline, registry
from pipelines.config import DuckDBConfig, Profile, Spec
from pipelines.processes import PROCESS_TAG, of_stage, process_gone, stale_run_trees, stale_runs
from pipelines.secrets import hide_password
from pipelines.studies import open_storage, trial_counts
from pipelines.tracking import STORE_ERRORS, configure, store_error
from pipelines.warehouse import Warehouse, connect
from pipelines.warehouse.dialect import quote


@dataclass(frozen=True)
class TableStatus:
    table: str
    rows: int | None  # None: the table does not exist yet


@dataclass(frozen=True)
class StudyStatus:
    study: str
    family: str
    complete: int
    pruned: int
    failed: int
    best_value: float | None
    best_trial: int | None
    running: int = 0  # RUNNING trials, stale ones included
    stale: int = 0  # RUNNING trials whose worker was killed (the next `podium tune` fails them)


@dataclass(frozen=True)
class VersionStatus:
    version: str
    aliases: list[str]
    stage: str | None  # MLflow's ModelVersion fields, as it types them
    family: str | None
    holdout_log_loss: float | None
    run_id: str | None


@dataclass(frozen=True)
class Status:
    spec: str
    profile: str
    backend: str
    tables: list[TableStatus]
    studies: list[StudyStatus]
    model: str
    versions: list[VersionStatus]
    latest_batch: dict[str, Any] | None = None
    monitoring: list[dict[str, Any]] = field(default_factory=list)
    # targets whose registry holder the audit table disagrees with (a promote killed mid-way)
    promotion_drift: list[str] = field(default_factory=list)
    # stage runs left RUNNING by a killed process (the next run of that stage ends them FAILED)
    stale_runs: list[dict[str, str]] = field(default_factory=list)
    # where it looked: the warehouse, the MLflow store and the Optuna storage (passwords hidden)
    locations: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def main(profile: Profile, spec: Spec, storage: str | None = None) -> Status:
    """Collect the status of `spec` on `profile`, touching nothing."""
    configure(profile)
    tables = pipeline.tables_written(spec)
    seen: dict[str, Any] = {"tables": [TableStatus(t, None) for t in tables]}
    if not _warehouse_missing(profile):
        with connect(profile, read_only=True) as warehouse:
            seen = _warehouse_view(warehouse, spec, tables)
    return Status(
        spec=spec.name,
        profile=profile.name,
        backend=profile.warehouse.backend,
        studies=studies(spec, storage or profile.optuna_storage),
        model=spec.model_name,
        versions=versions(spec.model_name),
        stale_runs=stale_stage_runs(spec),
        locations=locations(profile, storage or profile.optuna_storage),
        **seen,
    )


def locations(profile: Profile, storage: str) -> dict[str, str]:
    """The absolute places this profile reads, for a reader who wonders why a table is missing."""
    warehouse = profile.warehouse
    return {
        "warehouse": str(warehouse.path) if isinstance(warehouse, DuckDBConfig) else "Snowflake",
        "tracking": hide_password(mlflow.get_tracking_uri()),
        "studies": hide_password(storage),
    }


def _warehouse_view(warehouse: Warehouse, spec: Spec, tables: list[str]) -> dict[str, Any]:
    """Row counts, the latest batch, the latest monitoring and audit drift, as Status fields."""
    counts = [TableStatus(t, row_count(warehouse, t)) for t in tables]
    present = {c.table: c.rows for c in counts if c.rows is not None}
    scored = present.get(spec.scoring_table)
    monitored = spec.monitoring and spec.monitoring.table in present
    drift = (
        [] if _store_missing(mlflow.get_tracking_uri()) else audit.drift(registry.client(), warehouse, spec)
    )
    return {
        "tables": counts,
        "latest_batch": latest_batch(warehouse, spec.scoring_table, scored) if scored is not None else None,
        "monitoring": latest_monitoring(warehouse, spec) if monitored else [],
        "promotion_drift": [str(d) for d in drift],
    }


def row_count(warehouse: Warehouse, table: str) -> int | None:
    """The table's row count, or None when it does not exist."""
    if not warehouse.exists(table):
        return None
    return int(warehouse.query(f"SELECT COUNT(*) AS N FROM {quote(table)}").iloc[0, 0])


def studies(spec: Spec, storage: str) -> list[StudyStatus]:
    """Trial counts and the best value of each of the spec's studies (`<spec>-<family>`)."""
    if "://" not in storage and not Path(storage).is_file():
        return []
    opened = open_storage(storage, mend=False)  # status only reads: a torn journal is reported
    names = sorted(s.study_name for s in optuna.get_all_study_summaries(opened, include_best_trial=False))
    prefix = registry.study_prefix(spec)
    return [
        _study(optuna.load_study(study_name=n, storage=opened), prefix) for n in names if n.startswith(prefix)
    ]


def _study(study: optuna.Study, prefix: str) -> StudyStatus:
    counts = trial_counts(study)
    best = study.best_trial if counts["COMPLETE"] else None
    running = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,))
    return StudyStatus(
        running=len(running),
        stale=sum(process_gone(t.user_attrs.get(PROCESS_TAG)) for t in running),
        study=study.study_name,
        family=study.study_name.removeprefix(prefix),
        complete=counts["COMPLETE"],
        pruned=counts["PRUNED"],
        failed=counts["FAIL"],
        best_value=best.value if best else None,
        best_trial=best.number if best else None,
    )


def stale_stage_runs(spec: Spec) -> list[dict[str, str]]:
    """Stage runs of the spec's experiment still RUNNING though their process is gone."""
    if _store_missing(mlflow.get_tracking_uri()):
        return []
    client = registry.client()
    try:
        experiment = client.get_experiment_by_name(spec.name)
        if experiment is None:
            return []
        found = stale_runs(client, experiment.experiment_id, "tags.`podium.stage` LIKE '%'")
        # a killed backtest's nested runs (periods, studies, trials, models) record no process of their own
        found += stale_run_trees(client, experiment.experiment_id, of_stage("backtest"))
    except STORE_ERRORS as exc:
        raise store_error(exc) from None
    runs = {r.info.run_id: r for r in found}.values()  # a backtest's own stage runs are in both
    stage = lambda r: r.data.tags.get("podium.stage") or f"backtest: {r.info.run_name}"
    return [{"run_id": r.info.run_id, "stage": stage(r)} for r in runs]


def versions(model: str) -> list[VersionStatus]:
    """The model's registered versions, newest first, with their aliases and stages."""
    if _store_missing(mlflow.get_tracking_uri()):
        return []
    try:
        client = registry.client()
        found = client.search_model_versions(f"name = '{model}'")
        if not found:
            return []
        aliases = client.get_registered_model(model).aliases  # search results carry no aliases
    except STORE_ERRORS as exc:
        raise store_error(exc) from None
    ordered = sorted(found, key=lambda v: int(v.version), reverse=True)
    return [
        VersionStatus(
            version=str(v.version),
            aliases=sorted(a for a, held_by in aliases.items() if str(held_by) == str(v.version)),
            stage=v.current_stage,
            family=v.tags.get("podium.family"),
            holdout_log_loss=_number(v.tags.get("podium.holdout_log_loss")),
            run_id=v.run_id,
        )
        for v in ordered
    ]


def latest_batch(warehouse: Warehouse, table: str, total_rows: int) -> dict[str, Any] | None:
    """The most recent scoring batch, whole: its id, rows and time, and each version it holds (a shadow
    batch holds the champion's and the challenger's); `total_rows`: the table's."""
    parts = warehouse.query(
        "WITH LATEST AS (SELECT BATCH_ID FROM "
        f"{quote(table)} GROUP BY BATCH_ID ORDER BY MAX(SCORED_AT) DESC, BATCH_ID LIMIT 1) "
        "SELECT s.BATCH_ID, s.MODEL_NAME, s.MODEL_VERSION, s.MODEL_ALIAS, COUNT(*) AS ROWS, "
        f"MAX(s.SCORED_AT) AS SCORED_AT FROM {quote(table)} AS s JOIN LATEST AS l ON s.BATCH_ID = l.BATCH_ID "
        "GROUP BY s.BATCH_ID, s.MODEL_NAME, s.MODEL_VERSION, s.MODEL_ALIAS "
        "ORDER BY s.MODEL_ALIAS, s.MODEL_VERSION"
    )
    if parts.empty:
        return None
    first = parts.iloc[0]
    return {
        "batch_id": first["BATCH_ID"],
        "model": first["MODEL_NAME"],
        "versions": [
            {"version": str(p.MODEL_VERSION), "alias": p.MODEL_ALIAS, "rows": int(p.ROWS)}
            for p in parts.itertuples(index=False)
        ],
        "rows": int(parts.ROWS.sum()),
        "scored_at": pd.Timestamp(parts.SCORED_AT.max()).isoformat(),
        "total_rows": total_rows,
        "run_status": batch_run_status(str(first["BATCH_ID"])),
    }


def batch_run_status(batch_id: str) -> str | None:
    """The status of the score run that wrote a batch (FINISHED; FAILED or RUNNING if it was cut short)."""
    if _store_missing(mlflow.get_tracking_uri()):
        return None
    try:
        runs = registry.client().search_runs(
            [e.experiment_id for e in registry.client().search_experiments()],
            filter_string=f"params.batch_id = '{batch_id}'",
            max_results=1,
        )
    except STORE_ERRORS as exc:
        raise store_error(exc) from None
    return runs[0].info.status if runs else None


def latest_monitoring(warehouse: Warehouse, spec: Spec) -> list[dict[str, Any]]:
    """The per-period figures of the most recently evaluated model version, one dict per period.

    (Drift rows, period `all`, are left out: `podium evaluate` reports them.)
    """
    table = quote(spec.monitoring_section.table)  # the caller checked the spec has one
    rows = warehouse.query(
        f"SELECT MODEL_VERSION, PERIOD, METRIC, VALUE FROM {table} "
        f"WHERE MODEL_NAME = ? AND PERIOD <> 'all' AND MODEL_VERSION = (SELECT MODEL_VERSION FROM {table} "
        "WHERE MODEL_NAME = ? ORDER BY EVALUATED_AT DESC LIMIT 1) ORDER BY PERIOD, METRIC",
        [spec.model_name, spec.model_name],
    )
    return [
        {"version": str(version), "period": str(period)}
        | {
            m: int(v) if m == "rows" else float(v)
            for m, v in zip(group["METRIC"], group["VALUE"], strict=True)
        }
        for (version, period), group in rows.groupby(["MODEL_VERSION", "PERIOD"], sort=True)
    ]


def _warehouse_missing(profile: Profile) -> bool:
    """True when the embedded warehouse file has not been created yet (nothing ran)."""
    return profile.warehouse.backend == "duckdb" and not Path(profile.warehouse.path).is_file()


def _store_missing(uri: str) -> bool:
    """True when the tracking store is a SQLite file that does not exist yet (nothing was tracked)."""
    return uri.startswith("sqlite:///") and not Path(uri.removeprefix("sqlite:///")).is_file()


def _number(text: str | None) -> float | None:
    return float(text) if text else None
