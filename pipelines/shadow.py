"""Champion and challenger on the same rows: the comparison `evaluate` writes and `promote` reads back.

A shadow batch (`score --shadow`) writes both versions' scores for the same keys under one
batch id, the challenger's with MODEL_ALIAS `challenger`. Once the actual classes land,
`evaluate` sums each pair per period and per block of rows sharing a time value (F1: one
race), and `compare` turns the sums into monitoring rows for the challenger's version:

- `shadow.vs_v<champion>.<metric>_gain`: how much better the challenger did on the pairs
  (positive: better; `metrics.improvement`), with `_gain_low` / `_gain_high`, a 95% bootstrap
  interval that resamples the period's blocks (rows of one race are not independent), and
  `won` (1 or 0), per period;
- `shadow.vs_v<champion>.won_share`: the share of periods won, period `all`.

`evidence` reads those rows back for the live gate (`promotion.live`).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from pipelines.config import LiveEvidence, Spec
from pipelines.metrics import improvement
from pipelines.warehouse import Warehouse
from pipelines.warehouse.dialect import quote

ROLE = "challenger"  # the MODEL_ALIAS of a shadow batch's second version
PAIRED_METRICS = ("log_loss", "balanced_accuracy")  # the metrics that add up over blocks of rows
RESAMPLES = 2000
LEVEL = 0.95
SEED = 0  # the bootstrap's: the same sums give the same interval


def paired_metric(policy_metric: str) -> str:
    """The metric the pairs are compared on: the policy's if it adds up over rows, else log loss."""
    return policy_metric if policy_metric in PAIRED_METRICS else "log_loss"


def prefix(champion: str) -> str:
    """What every paired figure's METRIC against `champion` starts with."""
    return f"shadow.vs_v{champion}."


def is_paired(metric: str) -> bool:
    return metric.startswith("shadow.vs_v")


def split(metric: str) -> tuple[str, str]:
    """A paired figure's METRIC as (champion version, figure): `shadow.vs_v3.won` -> ("3", "won")."""
    champion, figure = metric.removeprefix("shadow.vs_v").split(".", 1)
    return champion, figure


def compare(blocks: pd.DataFrame, metric: str, n_classes: int) -> list[tuple[str, str, str, float, int]]:
    """Monitoring rows (version, period, metric, value, rows) from per-block pair sums.

    `blocks`: CHALLENGER, CHAMPION, PERIOD, N and, per side S in C (challenger) and H (holder),
    LOSS_S (summed log loss) and per class i POS_i (rows of class i) and HIT_S_i (those predicted i).
    """
    rows = []
    for (challenger, champion), pair in blocks.groupby(["CHALLENGER", "CHAMPION"]):
        name, won = prefix(str(champion)), []
        for period, group in pair.groupby("PERIOD"):
            gain, low, high = _gain_interval(group, metric, n_classes)
            n = int(group.N.sum())
            won.append(gain > 0)
            figures = {f"{metric}_gain": gain, f"{metric}_gain_low": low, f"{metric}_gain_high": high}
            figures["won"] = float(gain > 0)
            rows += [(str(challenger), str(period), name + k, v, n) for k, v in figures.items()]
        rows.append((str(challenger), "all", name + "won_share", float(np.mean(won)), int(pair.N.sum())))
    return rows


def _gain_interval(group: pd.DataFrame, metric: str, n_classes: int) -> tuple[float, float, float]:
    """The period's gain and its bootstrap interval, resampling blocks with replacement.

    Blocks are put in order first, so the same sums always draw the same resamples.
    """
    ordered = group.sort_values("BLOCK") if "BLOCK" in group else group
    sums = ordered.drop(columns=["CHALLENGER", "CHAMPION", "PERIOD"]).select_dtypes("number")
    point = _gains(sums.sum().to_frame().T, metric, n_classes)[0]
    weights = np.random.default_rng(SEED).multinomial(len(sums), [1 / len(sums)] * len(sums), RESAMPLES)
    resampled = pd.DataFrame(weights @ sums.to_numpy(dtype=float), columns=sums.columns)
    tail = (1 - LEVEL) / 2 * 100
    low, high = np.nanpercentile(_gains(resampled, metric, n_classes), [tail, 100 - tail])
    return float(point), float(low), float(high)


def _gains(sums: pd.DataFrame, metric: str, n_classes: int) -> np.ndarray:
    """The challenger's gain over the champion for each row of summed pairs."""
    if metric == "log_loss":
        sides = [sums[f"LOSS_{side}"] / sums.N for side in "CH"]
    else:  # balanced accuracy: mean recall over the classes present
        positives = sums[[f"POS_{i}" for i in range(n_classes)]].to_numpy()
        present = np.where(positives > 0, positives, np.nan)
        sides = [
            np.nanmean(sums[[f"HIT_{side}_{i}" for i in range(n_classes)]].to_numpy() / present, axis=1)
            for side in "CH"
        ]
    return np.asarray(improvement(metric, np.asarray(sides[0]), np.asarray(sides[1])), dtype=float)


def live_verdict(last: pd.DataFrame, live: LiveEvidence) -> str:
    """The live gate on the last `live.periods` rows of `evidence`: `won`, `lost`, or `waiting` for more.

    It fails closed: fewer periods than asked wait in shadow, unless one of them is already lost.
    """
    won = bool((last.GAIN >= live.min_improvement).all())
    if won and len(last) < live.periods:
        return "waiting"
    return "won" if won else "lost"


def evidence(warehouse: Warehouse, spec: Spec, candidate: str, holder: str) -> pd.DataFrame:
    """The candidate's shadow periods against the holder, oldest first: PERIOD, GAIN, LOW, HIGH, ROWS."""
    table = spec.monitoring.table if spec.monitoring else None
    empty = pd.DataFrame(columns=["PERIOD", "GAIN", "LOW", "HIGH", "ROWS"])
    if table is None or not warehouse.exists(table):
        return empty
    gain = prefix(holder) + f"{paired_metric(spec.promotion.metric)}_gain"
    rows = warehouse.query(
        f"SELECT PERIOD, METRIC, VALUE, ROWS FROM {quote(table)} "
        "WHERE MODEL_NAME = ? AND MODEL_VERSION = ? AND METRIC IN (?, ?, ?) AND PERIOD <> 'all'",
        [spec.model_name, candidate, gain, gain + "_low", gain + "_high"],
    )
    if rows.empty:
        return empty
    wide = rows.pivot_table(index="PERIOD", columns="METRIC", values="VALUE").reindex(
        columns=[gain, gain + "_low", gain + "_high"]
    )
    wide.columns = ["GAIN", "LOW", "HIGH"]
    counts = rows[rows.METRIC == gain].set_index("PERIOD").ROWS
    return wide.assign(ROWS=counts).sort_index().rename_axis("PERIOD").reset_index()
