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

Every figure is computed in the warehouse (SQL through the seam): only sums per period and
rows per PSI bin come back, so memory does not grow with the scored rows.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import mlflow
import numpy as np
import pandas as pd

from pipelines import dataset, plots
from pipelines.config import HitRateConfig, MonitoringConfig, Profile, Spec
from pipelines.dataset import FeatureSchema
from pipelines.errors import ConfigError, PodiumError
from pipelines.metrics import inner_edges, period_figures, psi_of_counts
from pipelines.tracking import log_figures, stage_run
from pipelines.warehouse import Warehouse, connect
from pipelines.warehouse.dialect import quote

log = logging.getLogger(__name__)

KEYS = ["MODEL_NAME", "MODEL_VERSION", "PERIOD", "METRIC"]
COLUMNS = ["MODEL_VERSION", "PERIOD", "METRIC", "VALUE", "ROWS"]
# a period's label from a time column {t}, in Snowflake SQL: 2021, 2021Q3, 2021-07
PERIOD_SQL = {
    "year": "CAST(YEAR({t}) AS VARCHAR)",
    "quarter": "CAST(YEAR({t}) AS VARCHAR) || 'Q' || CAST(QUARTER({t}) AS VARCHAR)",
    "month": "CAST(YEAR({t}) AS VARCHAR) || '-' || LPAD(CAST(MONTH({t}) AS VARCHAR), 2, '0')",
}
PSI_BINS = 10  # deciles of the training window
MISSING = "(missing)"  # the bin of NULL values


@dataclass(frozen=True)
class EvaluateResult:
    table: str
    rows: pd.DataFrame  # the monitoring rows written
    drifting: list[str]  # features whose PSI crossed the threshold


def main(profile: Profile, spec: Spec) -> EvaluateResult:
    """Score the scored rows against the actual classes per version and period; measure feature drift.

    Everything is computed in the warehouse (SQL through the seam): only one row per
    (version, period) and per (version, feature, bin) comes back, whatever the scored rows.
    """
    monitoring: MonitoringConfig = spec.require("monitoring")
    with connect(profile) as warehouse:
        if not warehouse.exists(spec.scoring_table):
            raise PodiumError(
                f"the scoring table {spec.scoring_table} does not exist yet: run `podium score` first."
            )
        columns = warehouse.columns(spec.table)
        check_hit_rate(spec, monitoring.hit_rate, columns)
        schema = dataset.feature_schema(spec, columns)
        with stage_run(profile, spec, "evaluate"):
            figures = performance(warehouse, spec, monitoring)
            drift = pd.DataFrame(drift_rows(warehouse, spec, schema), columns=COLUMNS)
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


# --- per (version, period): sums in SQL, figures from the sums -----------------------------------


def outcomes(spec: Spec, period: str, extra: list[str]) -> str:
    """Scored rows whose actual class is known: version, period, ACTUAL, the scores, `extra` columns."""
    match = " AND ".join(f"s.{quote(k)} = f.{quote(k)}" for k in spec.keys)
    scores = ", ".join(f"s.{quote(c)}" for c in ["PREDICTED_CLASS", *dataset.probability_columns(spec)])
    more = "".join(f", f.{quote(c)}" for c in extra)
    return (
        f"SELECT s.MODEL_VERSION, {PERIOD_SQL[period].format(t=f'f.{quote(spec.time)}')} AS PERIOD, "
        f"f.{quote(spec.target)} AS ACTUAL, {scores}{more} "
        f"FROM {quote(spec.scoring_table)} AS s JOIN {quote(spec.table)} AS f ON {match} "
        f"WHERE f.{quote(spec.target)} IS NOT NULL"
    )


def performance(warehouse: Warehouse, spec: Spec, monitoring: MonitoringConfig) -> pd.DataFrame:
    """Log loss, AUC and its class count, accuracy, rows (and the hit rate) per model version and period."""
    sums = warehouse.query(*_sums_sql(spec, monitoring.period))
    _check_classes(warehouse, spec, sums, monitoring.period)
    rates = _hit_rates(warehouse, spec, monitoring)
    rows = [
        {
            "MODEL_VERSION": r["MODEL_VERSION"],
            "PERIOD": r["PERIOD"],
            "METRIC": m,
            "VALUE": v,
            "ROWS": int(r["N"]),
        }
        for r in sums.to_dict("records")
        for m, v in _figures(r, len(spec.classes), rates).items()
    ]
    return pd.DataFrame(rows, columns=COLUMNS)


def _figures(
    sums: dict[str, Any], n_classes: int, rates: dict[tuple[str, str], dict[str, float]]
) -> dict[str, float]:
    return period_figures(sums, n_classes) | rates.get((sums["MODEL_VERSION"], sums["PERIOD"]), {})


def _sums_sql(spec: Spec, period: str) -> tuple[str, list[Any]]:
    """Per (version, period): rows, hits, summed log loss, unknown classes, and per class i the
    positives POS_i and the sum RANKS_i of their average ranks by P(class i), for AUC.

    Ranks come from counts per distinct probability (a tree has few), not from sorting rows:
    a value's average rank is the rows below it plus (its count + 1) / 2.
    """
    probabilities = dataset.probability_columns(spec)
    actual = "CASE ACTUAL " + " ".join(f"WHEN ? THEN {p}" for p in probabilities) + " END"
    eps = float(np.finfo(float).eps)  # sklearn's log_loss clips to [eps, 1 - eps], after normalising
    truth = f"SELECT o.*, ({actual}) / ({' + '.join(probabilities)}) AS P_TRUE FROM o"  # bound once
    base = (
        "SELECT MODEL_VERSION, PERIOD, COUNT(*) AS N, SUM(IFF(PREDICTED_CLASS = ACTUAL, 1, 0)) AS HITS, "
        f"SUM(-LN(LEAST(GREATEST(P_TRUE, {eps!r}), {1 - eps!r}))) AS LOSS, "
        f"SUM(IFF(ACTUAL IN ({', '.join('?' * len(spec.classes))}), 0, 1)) AS UNKNOWN FROM t "
        "GROUP BY MODEL_VERSION, PERIOD"
    )
    ranks = [_rank_sums_sql(i, p) for i, p in enumerate(probabilities)]
    joined = " ".join(f"JOIN r{i} USING (MODEL_VERSION, PERIOD)" for i in range(len(probabilities)))
    sql = (
        f"WITH o AS ({outcomes(spec, period, [])}), t AS ({truth}), s AS ({base}), {', '.join(ranks)} "
        f"SELECT * FROM s {joined} ORDER BY MODEL_VERSION, PERIOD"
    )
    return sql, [*spec.classes, *spec.classes, *spec.classes]


def _rank_sums_sql(i: int, probability: str) -> str:
    """CTEs g<i>, r<i>: per (version, period), POS_i and RANKS_i for the class whose probability it is."""
    within = "PARTITION BY MODEL_VERSION, PERIOD"
    return (
        f"g{i} AS (SELECT MODEL_VERSION, PERIOD, {probability} AS V, COUNT(*) AS C, "
        f"SUM(IFF(ACTUAL = ?, 1, 0)) AS POS FROM o GROUP BY MODEL_VERSION, PERIOD, {probability}), "
        f"r{i} AS (SELECT MODEL_VERSION, PERIOD, SUM(POS) AS POS_{i}, SUM(POS * (BELOW + (C + 1) / 2.0)) AS "
        f"RANKS_{i} FROM (SELECT g{i}.*, SUM(C) OVER ({within} ORDER BY V ROWS UNBOUNDED PRECEDING) - C "
        f"AS BELOW FROM g{i}) AS x GROUP BY MODEL_VERSION, PERIOD)"
    )


def _check_classes(warehouse: Warehouse, spec: Spec, sums: pd.DataFrame, period: str) -> None:
    """Actual classes outside the spec's are an error naming them (as the training window's are)."""
    if sums.empty or not sums.UNKNOWN.sum():
        return
    found = warehouse.query(
        f"SELECT DISTINCT ACTUAL FROM ({outcomes(spec, period, [])}) AS o "
        f"WHERE ACTUAL NOT IN ({', '.join('?' * len(spec.classes))})",
        list(spec.classes),
    )
    dataset.encode_target(found.ACTUAL, spec)  # raises, naming the values


def _hit_rates(
    warehouse: Warehouse, spec: Spec, monitoring: MonitoringConfig
) -> dict[tuple[str, str], dict[str, float]]:
    """Per (version, period): the share of each group's top k by P(class) that hold the class."""
    hit_rate = monitoring.hit_rate
    if hit_rate is None:
        return {}
    ranked_by = dataset.probability_column(hit_rate.target_class)
    order = ", ".join(f"{quote(k)}" for k in spec.keys)
    rows = warehouse.query(
        f"WITH o AS ({outcomes(spec, monitoring.period, [hit_rate.group, *spec.keys])}), "
        "t AS (SELECT MODEL_VERSION, PERIOD, ACTUAL, ROW_NUMBER() OVER (PARTITION BY MODEL_VERSION, PERIOD, "
        f"{quote(hit_rate.group)} ORDER BY {ranked_by} DESC, {order}) AS RK FROM o) "
        "SELECT MODEL_VERSION, PERIOD, AVG(IFF(ACTUAL = ?, 1.0, 0.0)) AS RATE FROM t WHERE RK <= ? "
        "GROUP BY MODEL_VERSION, PERIOD",
        [hit_rate.target_class, hit_rate.k],
    )
    name = f"hit_rate_top{hit_rate.k}_{hit_rate.target_class}"
    return {(r.MODEL_VERSION, r.PERIOD): {name: float(r.RATE)} for r in rows.itertuples(index=False)}


# --- drift: PSI bins in SQL ---------------------------------------------------------------------


def drift_rows(warehouse: Warehouse, spec: Spec, schema: FeatureSchema) -> list[dict[str, object]]:
    """One `psi.<FEATURE>` row per model version and feature: its scored rows against the training window."""
    edges = quantile_edges(warehouse, spec, schema.numeric)
    time = quote(spec.time)
    training = (
        f"SELECT 'training' AS MODEL_VERSION, * FROM {quote(spec.table)} WHERE {time} >= ? AND {time} < ?"
    )
    expected = bin_counts(warehouse, training, [spec.train_start, spec.holdout_start], edges, schema)
    scored = f"SELECT * FROM ({outcomes(spec, 'year', schema.columns)}) AS o"  # (PSI needs no period)
    actual = bin_counts(warehouse, scored, [], edges, schema)
    rows = []
    for (version, feature), counts in actual.groupby(["MODEL_VERSION", "FEATURE"]):
        reference = expected[expected.FEATURE == feature].set_index("BIN").N
        value = psi_of_counts(reference, counts.set_index("BIN").N)
        psi = {"METRIC": f"psi.{feature}", "VALUE": value, "ROWS": int(counts.N.sum())}
        rows.append({"MODEL_VERSION": version, "PERIOD": "all"} | psi)
    return rows


def quantile_edges(
    warehouse: Warehouse, spec: Spec, numeric: list[str], bins: int = PSI_BINS
) -> dict[str, list[float]]:
    """Each numeric feature's inner bin edges: the training window's distinct deciles, min and max dropped."""
    if not numeric:
        return {}
    cuts = [i / bins for i in range(bins + 1)]
    quantiles = ", ".join(
        f"PERCENTILE_CONT({q}) WITHIN GROUP (ORDER BY {quote(c)}) AS Q_{j}_{i}"
        for j, c in enumerate(numeric)
        for i, q in enumerate(cuts)
    )
    time = quote(spec.time)
    found = warehouse.query(
        f"SELECT {quantiles} FROM {quote(spec.table)} WHERE {time} >= ? AND {time} < ?",
        [spec.train_start, spec.holdout_start],
    ).iloc[0]
    return {c: inner_edges([found[f"Q_{j}_{i}"] for i in range(len(cuts))]) for j, c in enumerate(numeric)}


def bin_counts(
    warehouse: Warehouse,
    source: str,
    params: list[Any],
    edges: dict[str, list[float]],
    schema: FeatureSchema,
) -> pd.DataFrame:
    """Rows per (MODEL_VERSION, FEATURE, BIN) of `source`: numbers by `edges`, levels as is, NULL apart."""
    bins, values = [], []
    for j, c in enumerate(schema.columns):
        if c in edges:
            cases = " ".join(f"WHEN {quote(c)} <= ? THEN '{k}'" for k in range(len(edges[c])))
            last = len(edges[c])
            bins.append(f"CASE WHEN {quote(c)} IS NULL THEN '{MISSING}' {cases} ELSE '{last}' END AS B_{j}")
            values += edges[c]
        else:
            bins.append(f"COALESCE(CAST({quote(c)} AS VARCHAR), '{MISSING}') AS B_{j}")
    names = [f"B_{j}" for j in range(len(schema.columns))]
    counted = warehouse.query(
        f"WITH b AS (SELECT MODEL_VERSION, {', '.join(bins)} FROM ({source}) AS x) "
        f"SELECT MODEL_VERSION, FEATURE, BIN, COUNT(*) AS N FROM b "
        f"UNPIVOT (BIN FOR FEATURE IN ({', '.join(names)})) GROUP BY MODEL_VERSION, FEATURE, BIN",
        values + params,
    )
    feature = dict(zip(names, schema.columns, strict=True))
    return counted.assign(FEATURE=counted.FEATURE.map(feature))


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
