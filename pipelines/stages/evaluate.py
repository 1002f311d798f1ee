"""Evaluate stage: how the written scores fare now that the actual classes have landed, and drift.

Inputs:  the spec's scoring table joined on its keys with the feature table's actual
         target (rows whose target is still NULL wait); the training window, for drift.
Outputs: the spec's monitoring table, long format, one row per (model version, period,
         metric): log loss, AUC (over the classes the period holds; NULL only if it holds
         fewer than two), `auc_classes` (how many), accuracy, rows, the top-k hit rate if
         the spec asks for it, `psi.<FEATURE>` per feature (scored rows vs the training
         window, period `all`), and for each shadow challenger its paired comparison with
         the champion (`shadow.vs_v<N>.*`, see `shadow`). Rerunning replaces the rows it
         recomputes. Beside it, `<monitoring table>_DRIFT_BINS`: every PSI bin's training and
         scored shares per (version, feature), replaced whole by each run (the app's drift page).
MLflow:  the `evaluate` run: the same metrics as metrics (`v<version>.<period>.<metric>`),
         `monitoring.csv`, `drift_bins.csv` (every PSI bin's shares), `plots/monitoring.png`,
         and a tag naming the drifting features.

Every metric is computed in the warehouse (SQL through the seam): only sums per period and
rows per PSI bin come back, so memory does not grow with the scored rows.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import Any

import mlflow
import numpy as np
import pandas as pd

from pipelines import dataset, plots, shadow
from pipelines.config import HitRateConfig, MonitoringConfig, Profile, Spec
from pipelines.dataset import FeatureSchema
from pipelines.errors import ConfigError, PodiumError
from pipelines.metrics import MISSING, inner_edges, period_metrics, psi_bins
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


@dataclass(frozen=True)
class EvaluateResult:
    table: str
    rows: pd.DataFrame  # the monitoring rows written
    drifting: list[Drift]  # (version, feature) pairs whose PSI crossed the threshold, by PSI

    @property
    def drifting_features(self) -> list[str]:
        return sorted({d.feature for d in self.drifting})


def main(profile: Profile, spec: Spec, as_of: date | None = None) -> EvaluateResult:
    """Score the scored rows against the actual classes per version and period; measure feature drift.

    Everything is computed in the warehouse (SQL through the seam): only one row per
    (version, period) and per (version, feature, bin) comes back, whatever the scored rows.
    `as_of`: only the rows before it count (the actual classes landed by then; a cycle's rehearsal).
    """
    monitoring: MonitoringConfig = spec.monitoring_section
    with connect(profile) as warehouse:
        if not warehouse.exists(spec.scoring_table):
            raise PodiumError(
                f"the scoring table {spec.scoring_table} does not exist yet: run `podium score` first."
            )
        if not int(warehouse.query(f"SELECT COUNT(*) AS N FROM {quote(spec.scoring_table)}").N[0]):
            raise PodiumError(
                f"the scoring table {spec.scoring_table} holds no scores yet: run `podium score` (its "
                "window is scoring.start to scoring.end) before evaluating."
            )
        columns = warehouse.columns(spec.table)
        check_hit_rate(spec, monitoring.hit_rate, columns)
        schema = dataset.feature_schema(spec, columns)
        with stage_run(profile, spec, "evaluate"):
            metrics = performance(warehouse, spec, monitoring, as_of)
            pairs = shadow_rows(warehouse, spec, monitoring, as_of)
            drifts = drift_rows(warehouse, spec, schema, as_of)
            parts = [part for part in (metrics, pairs, drift_metrics(drifts)) if not part.empty]
            rows = _finish(pd.concat(parts, ignore_index=True) if parts else metrics, spec)
            if not rows.empty:
                warehouse.write(rows, monitoring.table, mode="merge", keys=KEYS)
            bins = bin_rows(drifts, spec)
            if not bins.empty:  # every version's drift is measured anew: the table is replaced whole
                warehouse.write(bins, monitoring.bins_table, mode="replace")
            drifting = _warn(drifts, monitoring.psi_threshold)
            _log(rows, bins, drifting)
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


# --- per (version, period): sums in SQL, metrics from the sums -----------------------------------


def outcomes(spec: Spec, period: str, extra: list[str], as_of: date | None) -> str:
    """Scored rows whose actual class is known: version, period, ACTUAL, the scores, `extra` columns.

    With `as_of`, only rows before it: the SQL then binds `landed(as_of)` before its other values.
    """
    match = " AND ".join(f"s.{quote(k)} = f.{quote(k)}" for k in spec.keys)
    scores = ", ".join(
        f"s.{quote(c)}"
        for c in ["PREDICTED_CLASS", *dataset.probability_columns(spec), "MODEL_ALIAS", "BATCH_ID"]
    )
    more = "".join(f", f.{quote(c)}" for c in extra)
    return (
        f"SELECT s.MODEL_VERSION, {PERIOD_SQL[period].format(t=f'f.{quote(spec.time)}')} AS PERIOD, "
        f"f.{quote(spec.target)} AS ACTUAL, {scores}{more} "
        f"FROM {quote(spec.scoring_table)} AS s JOIN {quote(spec.table)} AS f ON {match} "
        f"WHERE f.{quote(spec.target)} IS NOT NULL{f' AND f.{quote(spec.time)} < ?' if as_of else ''}"
    )


def landed(as_of: date | None) -> list[Any]:
    """The values `outcomes(..., as_of)` binds: as_of, if given."""
    return [as_of] if as_of else []


def performance(
    warehouse: Warehouse, spec: Spec, monitoring: MonitoringConfig, as_of: date | None
) -> pd.DataFrame:
    """Log loss, AUC and its class count, accuracy, rows (and the hit rate) per model version and period."""
    sums = warehouse.query(*_sums_sql(spec, monitoring.period, as_of))
    _check_classes(warehouse, spec, sums, monitoring.period, as_of)
    rates = _hit_rates(warehouse, spec, monitoring, as_of)
    rows = [
        {
            "MODEL_VERSION": r["MODEL_VERSION"],
            "PERIOD": r["PERIOD"],
            "METRIC": m,
            "VALUE": v,
            "ROWS": int(r["N"]),
        }
        for r in sums.to_dict("records")
        for m, v in _metrics(r, len(spec.classes), rates).items()
    ]
    return pd.DataFrame(rows, columns=COLUMNS)


def _metrics(
    sums: dict[str, Any], n_classes: int, rates: dict[tuple[str, str], dict[str, float]]
) -> dict[str, float]:
    return period_metrics(sums, n_classes) | rates.get((sums["MODEL_VERSION"], sums["PERIOD"]), {})


def _sums_sql(spec: Spec, period: str, as_of: date | None) -> tuple[str, list[Any]]:
    """Per (version, period): rows, hits, summed log loss, unknown classes, and per class i the
    positives POS_i and the sum RANKS_i of their average ranks by P(class i), for AUC.

    Ranks come from counts per distinct probability (a tree has few), not from sorting rows:
    a value's average rank is the rows below it plus (its count + 1) / 2.
    """
    probabilities = dataset.probability_columns(spec)
    base = (
        "SELECT MODEL_VERSION, PERIOD, COUNT(*) AS N, SUM(IFF(PREDICTED_CLASS = ACTUAL, 1, 0)) AS HITS, "
        f"SUM({_loss('P_TRUE')}) AS LOSS, "
        f"SUM(IFF(ACTUAL IN ({', '.join('?' * len(spec.classes))}), 0, 1)) AS UNKNOWN FROM t "
        "GROUP BY MODEL_VERSION, PERIOD"
    )
    ranks = [_rank_sums_sql(i, p) for i, p in enumerate(probabilities)]
    joined = " ".join(f"JOIN r{i} USING (MODEL_VERSION, PERIOD)" for i in range(len(probabilities)))
    sql = (
        f"WITH o AS ({outcomes(spec, period, [], as_of)}), t AS ({_truth(spec)}), s AS ({base}), "
        f"{', '.join(ranks)} SELECT * FROM s {joined} ORDER BY MODEL_VERSION, PERIOD"
    )
    return sql, [*landed(as_of), *spec.classes, *spec.classes, *spec.classes]


def _truth(spec: Spec) -> str:
    """Rows of CTE `o` with P_TRUE, the normalised probability of the actual class (binds the classes)."""
    probabilities = dataset.probability_columns(spec)
    actual = "CASE ACTUAL " + " ".join(f"WHEN ? THEN {p}" for p in probabilities) + " END"
    return f"SELECT o.*, ({actual}) / ({' + '.join(probabilities)}) AS P_TRUE FROM o"


def _loss(p_true: str) -> str:
    """A row's log loss, clipped as sklearn's log_loss clips: to [eps, 1 - eps] after normalising."""
    eps = float(np.finfo(float).eps)
    return f"-LN(LEAST(GREATEST({p_true}, {eps!r}), {1 - eps!r}))"


# --- shadow pairs: the challenger against the champion on the same rows ------------------------------


def shadow_rows(
    warehouse: Warehouse, spec: Spec, monitoring: MonitoringConfig, as_of: date | None
) -> pd.DataFrame:
    """The paired comparison of every shadow batch's challenger and champion, per period (`shadow`)."""
    metric = shadow.paired_metric(spec.promotion.metric)
    if metric != spec.promotion.metric:
        log.info(
            "shadow pairs are compared on %s: %s does not add up over races", metric, spec.promotion.metric
        )
    blocks = warehouse.query(*_pairs_sql(spec, monitoring.period, as_of))
    return pd.DataFrame(shadow.compare(blocks, metric, len(spec.classes)), columns=COLUMNS)


def _pairs_sql(spec: Spec, period: str, as_of: date | None) -> tuple[str, list[Any]]:
    """Per (challenger, champion, period, time): the pairs' rows, summed log loss and per-class hits."""
    match = " AND ".join(f"c.{quote(k)} = h.{quote(k)}" for k in spec.keys)
    classes = range(len(spec.classes))
    sums = [
        "COUNT(*) AS N",
        *(f"SUM({_loss(f'{side}.P_TRUE')}) AS LOSS_{side.upper()}" for side in "ch"),
        *(f"SUM(IFF(c.ACTUAL = ?, 1, 0)) AS POS_{i}" for i in classes),
        *(
            f"SUM(IFF(c.ACTUAL = ? AND {side}.PREDICTED_CLASS = c.ACTUAL, 1, 0)) AS HIT_{side.upper()}_{i}"
            for side in "ch"
            for i in classes
        ),
    ]
    sql = (
        f"WITH o AS ({outcomes(spec, period, spec.id_columns, as_of)}), t AS ({_truth(spec)}), "
        f"c AS (SELECT * FROM t WHERE MODEL_ALIAS = ?), h AS (SELECT * FROM t WHERE MODEL_ALIAS <> ?) "
        f"SELECT c.MODEL_VERSION AS CHALLENGER, h.MODEL_VERSION AS CHAMPION, c.PERIOD, "
        f"CAST(c.{quote(spec.time)} AS VARCHAR) AS BLOCK, {', '.join(sums)} "
        f"FROM c JOIN h ON {match} AND c.BATCH_ID = h.BATCH_ID AND c.MODEL_VERSION <> h.MODEL_VERSION "
        "GROUP BY c.MODEL_VERSION, h.MODEL_VERSION, c.PERIOD, BLOCK"
    )
    names = spec.classes
    return sql, [*landed(as_of), *names, shadow.ROLE, shadow.ROLE, *names, *names, *names]


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


def _check_classes(
    warehouse: Warehouse, spec: Spec, sums: pd.DataFrame, period: str, as_of: date | None
) -> None:
    """Actual classes outside the spec's are an error naming them (as the training window's are)."""
    if sums.empty or not sums.UNKNOWN.sum():
        return
    found = warehouse.query(
        f"SELECT DISTINCT ACTUAL FROM ({outcomes(spec, period, [], as_of)}) AS o "
        f"WHERE ACTUAL NOT IN ({', '.join('?' * len(spec.classes))})",
        [*landed(as_of), *spec.classes],
    )
    dataset.encode_target(found.ACTUAL, spec)  # raises, naming the values


def _hit_rates(
    warehouse: Warehouse, spec: Spec, monitoring: MonitoringConfig, as_of: date | None
) -> dict[tuple[str, str], dict[str, float]]:
    """Per (version, period): the share of each group's top k by P(class) that hold the class."""
    hit_rate = monitoring.hit_rate
    if hit_rate is None:
        return {}
    ranked_by = dataset.probability_column(hit_rate.target_class)
    order = ", ".join(f"{quote(k)}" for k in spec.keys)
    rows = warehouse.query(
        f"WITH o AS ({outcomes(spec, monitoring.period, [hit_rate.group, *spec.keys], as_of)}), "
        "t AS (SELECT MODEL_VERSION, PERIOD, ACTUAL, ROW_NUMBER() OVER (PARTITION BY MODEL_VERSION, PERIOD, "
        f"{quote(hit_rate.group)} ORDER BY {ranked_by} DESC, {order}) AS RK FROM o) "
        "SELECT MODEL_VERSION, PERIOD, AVG(IFF(ACTUAL = ?, 1.0, 0.0)) AS RATE FROM t WHERE RK <= ? "
        "GROUP BY MODEL_VERSION, PERIOD",
        [*landed(as_of), hit_rate.target_class, hit_rate.k],
    )
    name = f"hit_rate_top{hit_rate.k}_{hit_rate.target_class}"
    return {(r.MODEL_VERSION, r.PERIOD): {name: float(r.RATE)} for r in rows.itertuples(index=False)}


# --- drift: PSI bins in SQL ---------------------------------------------------------------------


@dataclass(frozen=True)
class Drift:
    """One feature's PSI for one model version's scored rows, with each bin's shares (most moved first)."""

    version: str
    feature: str
    psi: float
    rows: int  # the version's scored rows
    bins: pd.DataFrame  # by bin label: EXPECTED and ACTUAL shares, the bin's PSI term

    def moved(self, top: int = 3) -> str:
        """The `top` bins that moved most, as `> 20 7.2% -> 0.0%`."""
        return ", ".join(
            f"{label} {r.EXPECTED:.1%} -> {r.ACTUAL:.1%}" for label, r in self.bins.head(top).iterrows()
        )


def drift_rows(warehouse: Warehouse, spec: Spec, schema: FeatureSchema, as_of: date | None) -> list[Drift]:
    """Each model version's drift per feature: its scored rows against the training window, bin by bin."""
    edges = quantile_edges(warehouse, spec, schema.numeric)
    time = quote(spec.time)
    training = (
        f"SELECT 'training' AS MODEL_VERSION, * FROM {quote(spec.table)} WHERE {time} >= ? AND {time} < ?"
    )
    expected = bin_counts(warehouse, training, [spec.train_start, spec.holdout_start], edges, schema)
    scored = f"SELECT * FROM ({outcomes(spec, 'year', schema.columns, as_of)}) AS o"  # (PSI needs no period)
    actual = bin_counts(warehouse, scored, landed(as_of), edges, schema)
    found = []
    for (version, feature), counts in actual.groupby(["MODEL_VERSION", "FEATURE"]):
        reference = expected[expected.FEATURE == feature].set_index("BIN").N
        bins = psi_bins(reference, counts.set_index("BIN").N, edges.get(feature))
        moved = bins.reindex(bins.PSI.sort_values(ascending=False).index)
        found.append(Drift(str(version), str(feature), float(bins.PSI.sum()), int(counts.N.sum()), moved))
    return found


def drift_metrics(drifts: list[Drift]) -> pd.DataFrame:
    """The monitoring rows of `drifts`: `psi.<FEATURE>` per version, period `all`."""
    found = [(d.version, "all", f"psi.{d.feature}", d.psi, d.rows) for d in drifts]
    return pd.DataFrame(found, columns=COLUMNS)


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


def bin_rows(drifts: list[Drift], spec: Spec) -> pd.DataFrame:
    """Every drift bin of every (version, feature): its training and scored shares and PSI term."""
    if not drifts:
        return pd.DataFrame()
    bins = pd.concat([d.bins.assign(MODEL_VERSION=d.version, FEATURE=d.feature) for d in drifts])
    out = bins.rename_axis("BIN").reset_index().assign(MODEL_NAME=spec.model_name)
    return out[["MODEL_NAME", "MODEL_VERSION", "FEATURE", "BIN", "EXPECTED", "ACTUAL", "PSI"]]


def _finish(rows: pd.DataFrame, spec: Spec) -> pd.DataFrame:
    now = datetime.now(UTC).replace(tzinfo=None)
    out = rows.assign(MODEL_NAME=spec.model_name, EVALUATED_AT=now)
    out = out.astype(
        {"MODEL_VERSION": str, "PERIOD": str, "METRIC": str, "VALUE": "float64", "ROWS": "int64"}
    )
    return out[["MODEL_NAME", "MODEL_VERSION", "PERIOD", "METRIC", "VALUE", "ROWS", "EVALUATED_AT"]]


def _warn(drifts: list[Drift], threshold: float) -> list[Drift]:
    """The drifts over `threshold`, largest first, each warned once with the bins that moved most."""
    over = sorted((d for d in drifts if d.psi > threshold), key=lambda d: -d.psi)
    for versions, d in same_drift(over):
        log.warning(
            "drift: %s of %s has PSI %.3f (threshold %.2f); moved most: %s",
            d.feature,
            versions,
            d.psi,
            threshold,
            d.moved(),
        )
    return over


def same_drift(drifts: list[Drift]) -> list[tuple[str, Drift]]:
    """`drifts` with those of one feature and the same metrics (versions that scored the same rows)
    told once, as ("v1, v2", the first of them), in order."""
    groups: dict[tuple[str, float, str], list[Drift]] = {}
    for d in drifts:
        groups.setdefault((d.feature, round(d.psi, 9), d.moved()), []).append(d)
    return [(", ".join(f"v{d.version}" for d in same), same[0]) for same in groups.values()]


def _log(rows: pd.DataFrame, bins: pd.DataFrame, drifting: list[Drift]) -> None:
    """The metrics as MLflow metrics, the tables as CSV (`drift_bins.csv`: every bin), a plot over time."""
    metrics = {
        f"v{r.MODEL_VERSION}.{r.PERIOD}.{r.METRIC}": r.VALUE
        for r in rows.itertuples()
        if np.isfinite(r.VALUE)
    }
    mlflow.log_metrics(metrics)
    mlflow.log_text(rows.to_csv(index=False), "monitoring.csv")
    if not bins.empty:
        mlflow.log_text(bins.to_csv(index=False), "drift_bins.csv")
    mlflow.set_tag("podium.drifting", ",".join(sorted({d.feature for d in drifting})) or "none")
    log_figures({"plots/monitoring.png": plots.monitoring_figure(rows)})
