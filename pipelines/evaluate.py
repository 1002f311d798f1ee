"""Evaluate stage: how the written scores fare now that the actual classes have landed, and drift.

Inputs:  the spec's scoring table joined on its keys with the feature table's actual
         target (rows whose target is still NULL wait); the training window, for drift.
Outputs: the spec's monitoring table, long format, one row per (model version, period,
         metric): log loss, AUC (over the classes the period holds; NULL only if it holds
         fewer than two), `auc_classes` (how many), accuracy, rows, the top-k hit rate if
         the spec asks for it, and `psi.<FEATURE>` per feature (scored rows vs the training
         window, period `all`). Rerunning replaces the rows it recomputes.
MLflow:  the `evaluate` run: the same figures as metrics (`v<version>.<period>.<metric>`),
         `monitoring.csv`, `plots/monitoring.png`, and a warning tag per drifting feature.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import UTC, datetime

import mlflow
import numpy as np
import pandas as pd

from pipelines import dataset, plots
from pipelines.config import HitRateConfig, MonitoringConfig, Profile, Spec
from pipelines.errors import ConfigError, PodiumError
from pipelines.metrics import period_metrics, psi, top_k_hit_rate
from pipelines.tracking import log_figures, stage_run
from pipelines.warehouse import Warehouse, connect
from pipelines.warehouse.dialect import quote

log = logging.getLogger(__name__)

KEYS = ["MODEL_NAME", "MODEL_VERSION", "PERIOD", "METRIC"]
COLUMNS = ["MODEL_VERSION", "PERIOD", "METRIC", "VALUE", "ROWS"]
PERIODS = {"year": "Y", "quarter": "Q", "month": "M"}


@dataclass(frozen=True)
class EvaluateResult:
    table: str
    rows: pd.DataFrame  # the monitoring rows written
    drifting: list[str]  # features whose PSI crossed the threshold


def main(profile: Profile, spec: Spec) -> EvaluateResult:
    """Score the scored rows against the actual classes per version and period; measure feature drift."""
    monitoring: MonitoringConfig = spec.require("monitoring")
    with connect(profile) as warehouse:
        joined = load_outcomes(warehouse, spec)
        reference = dataset.read_training_rows(warehouse, spec)
        columns = warehouse.columns(spec.table)
        check_hit_rate(spec, monitoring.hit_rate, columns)
        features = dataset.feature_schema(spec, columns).columns
        with stage_run(profile, spec, "evaluate"):
            figures = performance(joined, spec, monitoring)
            drift = pd.DataFrame(
                [
                    row
                    for _, group in joined.groupby("MODEL_VERSION")
                    for row in psi_rows(group, reference, features)
                ],
                columns=COLUMNS,
            )
            rows = _finish(pd.concat([figures, drift], ignore_index=True), spec)
            if not rows.empty:
                warehouse.write(rows, monitoring.table, mode="merge", keys=KEYS)
            drifting = _warn(drift, monitoring.psi_threshold)
            _log(rows, drifting)
    return EvaluateResult(monitoring.table, rows, drifting)


def check_hit_rate(spec: Spec, hit_rate: HitRateConfig | None, columns: dict[str, str]) -> None:
    """The hit rate's class must be one of the spec's, and its group a column of the feature table."""
    if hit_rate is None:
        return
    if hit_rate.target_class not in spec.classes:
        raise ConfigError(
            f"monitoring.hit_rate.class {hit_rate.target_class!r} is not one of the spec's classes "
            f"{spec.classes}: "
            "use one of them."
        )
    if hit_rate.group not in columns:
        raise ConfigError(
            f"monitoring.hit_rate.group {hit_rate.group} is not a column of {spec.table} "
            f"(its columns: {', '.join(columns)}): name one of them."
        )


def load_outcomes(warehouse: Warehouse, spec: Spec) -> pd.DataFrame:
    """Scored rows whose actual class is known, with the model's features."""
    if not warehouse.exists(spec.scoring_table):
        raise PodiumError(
            f"the scoring table {spec.scoring_table} does not exist yet: run `podium score` first."
        )
    match = " AND ".join(f"s.{quote(k)} = f.{quote(k)}" for k in spec.keys)
    probabilities = ", ".join(f"s.{quote(c)}" for c in dataset.probability_columns(spec))
    return warehouse.query(
        f"SELECT s.MODEL_NAME, s.MODEL_VERSION, s.PREDICTED_CLASS, {probabilities}, f.* "
        f"FROM {quote(spec.scoring_table)} AS s JOIN {quote(spec.table)} AS f ON {match} "
        f"WHERE f.{quote(spec.target)} IS NOT NULL"
    )


def performance(joined: pd.DataFrame, spec: Spec, monitoring: MonitoringConfig) -> pd.DataFrame:
    """Log loss, AUC and its class count, accuracy, rows (and the hit rate) per model version and period."""
    period = pd.to_datetime(joined[spec.time]).dt.to_period(PERIODS[monitoring.period]).astype(str)
    rows = [
        {"MODEL_VERSION": version, "PERIOD": when, "METRIC": metric, "VALUE": value, "ROWS": len(group)}
        for (version, when), group in joined.groupby(["MODEL_VERSION", period])
        for metric, value in group_metrics(group, spec, monitoring.hit_rate).items()
    ]
    return pd.DataFrame(rows, columns=COLUMNS)


def group_metrics(group: pd.DataFrame, spec: Spec, hit_rate: HitRateConfig | None) -> dict[str, float]:
    """The figures of one (version, period) group of scored rows."""
    y = dataset.encode_target(group[spec.target], spec)
    out = period_metrics(y, group[dataset.probability_columns(spec)].to_numpy())
    if hit_rate:
        ranked_by = dataset.probability_column(hit_rate.target_class)
        rate = top_k_hit_rate(
            group, hit_rate.group, ranked_by, spec.target, hit_rate.target_class, hit_rate.k
        )
        out[f"hit_rate_top{hit_rate.k}_{hit_rate.target_class}"] = rate
    return out


def psi_rows(scored: pd.DataFrame, reference: pd.DataFrame, features: list[str]) -> list[dict[str, object]]:
    """One `psi.<FEATURE>` row per feature for one model version's scored rows."""
    version, n = scored["MODEL_VERSION"].iloc[0], len(scored)
    return [
        {
            "MODEL_VERSION": version,
            "PERIOD": "all",
            "METRIC": f"psi.{c}",
            "VALUE": psi(reference[c], scored[c]),
            "ROWS": n,
        }
        for c in features
    ]


def _finish(rows: pd.DataFrame, spec: Spec) -> pd.DataFrame:
    now = datetime.now(UTC).replace(tzinfo=None)
    out = rows.assign(MODEL_NAME=spec.model_name, EVALUATED_AT=now)
    out = out.astype(
        {"MODEL_VERSION": str, "PERIOD": str, "METRIC": str, "VALUE": "float64", "ROWS": "int64"}
    )
    return out[["MODEL_NAME", "MODEL_VERSION", "PERIOD", "METRIC", "VALUE", "ROWS", "EVALUATED_AT"]]


def _warn(drift: pd.DataFrame, threshold: float) -> list[str]:
    over = drift[drift["VALUE"] > threshold]
    for row in over.itertuples():
        log.warning(
            "drift: %s of v%s is %.3f (threshold %.2f)", row.METRIC, row.MODEL_VERSION, row.VALUE, threshold
        )
    return sorted({m.removeprefix("psi.") for m in over["METRIC"]})


def _log(rows: pd.DataFrame, drifting: list[str]) -> None:
    """The figures as MLflow metrics, the table as CSV, and monitoring over time as a plot."""
    metrics = {
        f"v{r.MODEL_VERSION}.{r.PERIOD}.{r.METRIC}": r.VALUE
        for r in rows.itertuples()
        if np.isfinite(r.VALUE)
    }
    mlflow.log_metrics(metrics)
    mlflow.log_text(rows.to_csv(index=False), "monitoring.csv")
    mlflow.set_tag("podium.drifting", ",".join(drifting) or "none")
    log_figures({"plots/monitoring.png": plots.monitoring_figure(rows)})
