"""What the app's pages show, read from the spec's warehouse tables: every figure aggregated in the warehouse.

Each function takes an open warehouse (read-only, opened for one rerun) and the spec, and returns a small
frame: one race's scores, one row per (period, version, metric), one feature's bins. None of them reads a
whole scores table into pandas. A table that does not exist yet reads as an empty frame.
"""

from __future__ import annotations

from datetime import date
from typing import Any

import pandas as pd

from pipelines import audit, shadow
from pipelines.config import Spec
from pipelines.dataset import probability_columns
from pipelines.warehouse import Warehouse
from pipelines.warehouse.dialect import quote

CHAMPION_TARGET = "alias:champion"
TIMES_SHOWN = 1000  # the newest scored time values the predictions page offers


def _read(warehouse: Warehouse, table: str | None, sql: str, params: list[Any] | None = None) -> pd.DataFrame:
    """`sql`, with `{table}` the quoted table, as a frame; empty when the spec has no such table or it
    does not exist yet."""
    if table is None or not warehouse.exists(table):
        return pd.DataFrame()
    return warehouse.query(sql.format(table=quote(table)), params or [])


def times(warehouse: Warehouse, spec: Spec) -> list[Any]:
    """The newest scored time values (F1: race dates), newest first: at most TIMES_SHOWN."""
    sql = f"SELECT DISTINCT {quote(spec.time)} AS T FROM {{table}} ORDER BY T DESC LIMIT {TIMES_SHOWN}"
    found = _read(warehouse, spec.scoring_table, sql)
    return [] if found.empty else list(found["T"])


def predictions(warehouse: Warehouse, spec: Spec, when: date | Any) -> pd.DataFrame:
    """The scores of the rows at time `when`, one row per (key, version), and the actual class if landed."""
    match = " AND ".join(f"s.{quote(k)} = f.{quote(k)}" for k in spec.keys)
    scores = ", ".join(
        f"s.{quote(c)}"
        for c in [*spec.keys, "MODEL_VERSION", "MODEL_ALIAS", "PREDICTED_CLASS", *probability_columns(spec)]
    )
    sql = (
        f"SELECT {scores}, s.SCORED_AT, f.{quote(spec.target)} AS ACTUAL "
        f"FROM {{table}} AS s LEFT JOIN {quote(spec.table)} AS f ON {match} "
        f"WHERE s.{quote(spec.time)} = ? ORDER BY {', '.join(f's.{quote(k)}' for k in spec.keys)}, "
        "s.MODEL_VERSION"
    )
    return _read(warehouse, spec.scoring_table, sql, [when])


def promotions(warehouse: Warehouse, spec: Spec) -> pd.DataFrame:
    """The audit table's rows for the spec's model, oldest first."""
    return audit.rows(warehouse, spec)


def champion(audited: pd.DataFrame) -> str | None:
    """The version the audit last records as promoted to the alias champion."""
    return audit.last_promoted(audited, CHAMPION_TARGET)


def monitoring(warehouse: Warehouse, spec: Spec, like: str, periods: bool = True) -> pd.DataFrame:
    """The monitoring rows whose METRIC is LIKE `like`: per period (`periods`) or the whole-window ones."""
    table = spec.monitoring.table if spec.monitoring else None
    where = "PERIOD <> 'all'" if periods else "PERIOD = 'all'"
    sql = (
        "SELECT MODEL_VERSION, PERIOD, METRIC, VALUE, ROWS FROM {table} "
        f"WHERE MODEL_NAME = ? AND METRIC LIKE ? AND {where} ORDER BY PERIOD, MODEL_VERSION, METRIC"
    )
    return _read(warehouse, table, sql, [spec.model_name, like])


def health(warehouse: Warehouse, spec: Spec) -> pd.DataFrame:
    """The performance figures per (period, version): log loss, AUC, accuracy, hit rate; no drift or pairs."""
    rows = monitoring(warehouse, spec, "%")
    return rows[~rows.METRIC.map(shadow.is_paired)] if not rows.empty else rows


def psi(warehouse: Warehouse, spec: Spec) -> pd.DataFrame:
    """PSI per (version, feature) over its scored rows: MODEL_VERSION, FEATURE, PSI, ROWS; largest first."""
    rows = monitoring(warehouse, spec, "psi.%", periods=False)
    if rows.empty:
        return rows
    out = rows.assign(FEATURE=rows.METRIC.str.removeprefix("psi.")).rename(columns={"VALUE": "PSI"})
    return out[["MODEL_VERSION", "FEATURE", "PSI", "ROWS"]].sort_values(
        "PSI", ascending=False, ignore_index=True
    )


def bins(warehouse: Warehouse, spec: Spec, version: str, feature: str) -> pd.DataFrame:
    """One (version, feature)'s drift bins, the most moved first: BIN, EXPECTED, ACTUAL, PSI."""
    table = spec.monitoring.bins_table if spec.monitoring else None
    sql = (
        "SELECT BIN, EXPECTED, ACTUAL, PSI FROM {table} "
        "WHERE MODEL_NAME = ? AND MODEL_VERSION = ? AND FEATURE = ? ORDER BY PSI DESC, BIN"
    )
    return _read(warehouse, table, sql, [spec.model_name, version, feature])


def shadow_pairs(warehouse: Warehouse, spec: Spec) -> list[tuple[str, str]]:
    """The (challenger, champion) pairs the monitoring table compares, newest challenger first."""
    rows = monitoring(warehouse, spec, "shadow.%")
    found = {
        (str(r.MODEL_VERSION), shadow.split(r.METRIC)[0])
        for r in rows.itertuples()
        if shadow.is_paired(r.METRIC)
    }
    return sorted(found, key=lambda pair: (-int(pair[0]) if pair[0].isdigit() else 0, pair))


def gains(warehouse: Warehouse, spec: Spec, challenger: str, holder: str) -> pd.DataFrame:
    """The challenger's shadow gain over `holder` per period, with its 95% interval (shadow.evidence)."""
    return shadow.evidence(warehouse, spec, challenger, holder)


def table(warehouse: Warehouse, name: str | None, order: str) -> pd.DataFrame:
    """A whole small table (backtest, cycles: one row per period and model), ordered by `order`."""
    return _read(warehouse, name, f"SELECT * FROM {{table}} ORDER BY {order}")
