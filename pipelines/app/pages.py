"""The app's pages: one function each, drawing from `queries` with Streamlit; the spec names every column.

A page shows its key figures as metrics and tables (what a reader copies, and what the tests read) and
its trends as charts. A page whose table is missing or empty says what would fill it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import altair as alt
import pandas as pd
import streamlit as st

from pipelines import shadow
from pipelines.app import queries
from pipelines.config import Spec
from pipelines.dataset import probability_columns
from pipelines.warehouse import Warehouse

# a version's registry tags by version (None when the registry cannot be read), and its page's address
Tags = Callable[[str], dict[str, str] | None]
Link = Callable[[str], str | None]


@dataclass(frozen=True)
class View:
    """What a page reads: the spec, the warehouse opened for this rerun, and the registry's tags."""

    spec: Spec
    warehouse: Warehouse
    tags: Tags
    link: Link


@dataclass(frozen=True)
class Page:
    slug: str  # the page's `?page=` value
    title: str
    render: Callable[[View], None]


def nothing_yet(what: str, fix: str) -> None:
    """A page with no rows to show: what is missing and the command that makes it."""
    st.info(f"Nothing yet: {what}. {fix}")


def predictions(view: View) -> None:
    """One time value's scores, every version side by side, with the actual class once it landed."""
    spec = view.spec
    found = queries.times(view.warehouse, spec)
    if not found:
        nothing_yet(f"{spec.scoring_table} holds no scores", "Run `podium score`.")
        return
    when = st.selectbox(spec.time, found, key="when", format_func=_shown)
    rows = queries.predictions(view.warehouse, spec, when)
    labels = {v: f"v{v} ({alias})" for v, alias in zip(rows.MODEL_VERSION, rows.MODEL_ALIAS, strict=True)}
    columns = st.columns(3)
    columns[0].metric("Rows", len(rows[spec.keys].drop_duplicates()))
    columns[1].metric("Versions", ", ".join(dict.fromkeys(labels.values())))
    columns[2].metric("Scored at", str(rows.SCORED_AT.max())[:19])
    st.caption("Each version as it scored these rows: the champion serving them, a challenger in shadow.")
    st.dataframe(side_by_side(rows, spec, labels), hide_index=True)


def side_by_side(rows: pd.DataFrame, spec: Spec, labels: dict[str, str]) -> pd.DataFrame:
    """One row per key: the actual class, then each version's predicted class and probabilities."""
    values = ["PREDICTED_CLASS", *probability_columns(spec)]
    wide = rows.assign(LABEL=rows.MODEL_VERSION.map(labels)).pivot(
        index=spec.keys, columns="LABEL", values=values
    )
    wide.columns = [f"{value} · {label}" for value, label in wide.columns]
    order = [f"{value} · {label}" for label in dict.fromkeys(labels.values()) for value in values]
    actual = rows.drop_duplicates(spec.keys).set_index(spec.keys).ACTUAL
    return wide[order].assign(ACTUAL=actual).reset_index()[[*spec.keys, "ACTUAL", *order]]


def health(view: View) -> None:
    """Each monitored metric per period and version, against the holdout figures of the versions."""
    rows = queries.health(view.warehouse, view.spec)
    if rows.empty:
        nothing_yet("no version has been evaluated", "Run `podium evaluate` once actual classes have landed.")
        return
    metrics = sorted(set(rows.METRIC))
    metric = st.selectbox(
        "Metric", metrics, index=metrics.index("log_loss") if "log_loss" in metrics else 0, key="metric"
    )
    chosen = rows[rows.METRIC == metric]
    references = holdout_lines(view, sorted(set(chosen.MODEL_VERSION)), metric)
    lines = (
        alt.Chart(chosen)
        .mark_line(point=True)
        .encode(x="PERIOD:N", y=alt.Y("VALUE:Q", title=metric), color="MODEL_VERSION:N")
    )
    rules = alt.Chart(references).mark_rule(strokeDash=[4, 4]).encode(y="VALUE:Q", color="REFERENCE:N")
    st.altair_chart(lines + rules if not references.empty else lines, width="stretch")
    st.dataframe(
        chosen.pivot(index="PERIOD", columns="MODEL_VERSION", values="VALUE").add_prefix("v").reset_index(),
        hide_index=True,
    )
    if not references.empty:
        st.caption("Reference lines: each version's holdout figure and the baselines' (from the registry).")
        st.dataframe(references, hide_index=True)


def holdout_lines(view: View, versions: list[str], metric: str) -> pd.DataFrame:
    """REFERENCE, VALUE: each version's holdout `metric` and its baselines', from the registry's tags."""
    found: dict[str, float] = {}
    for version in versions:
        tags = view.tags(version) or {}
        if f"podium.holdout_{metric}" in tags:
            found[f"v{version} holdout"] = float(tags[f"podium.holdout_{metric}"])
        for name, value in tags.items():
            if name.startswith("podium.baseline.") and name.endswith(f".holdout_{metric}"):
                found[f"baseline {name.split('.')[2]} holdout"] = float(value)
    return pd.DataFrame({"REFERENCE": list(found), "VALUE": list(found.values())})


def drift(view: View) -> None:
    """PSI per feature against the threshold; for one feature, the bins that moved most."""
    spec = view.spec
    psi = queries.psi(view.warehouse, spec)
    if psi.empty:
        nothing_yet("no drift has been measured", "Run `podium evaluate` after `podium score`.")
        return
    threshold = spec.monitoring_section.psi_threshold
    version = st.selectbox("Model version", sorted(set(psi.MODEL_VERSION), key=_newest), key="version")
    mine = psi[psi.MODEL_VERSION == version].assign(OVER=lambda d: d.PSI > threshold)
    columns = st.columns(2)
    columns[0].metric("Features over the threshold", f"{int(mine.OVER.sum())} of {len(mine)}")
    columns[1].metric("PSI threshold", f"{threshold:g}")
    bars = alt.Chart(mine).mark_bar().encode(x="PSI:Q", y=alt.Y("FEATURE:N", sort="-x"), color="OVER:N")
    rule = alt.Chart(pd.DataFrame({"PSI": [threshold]})).mark_rule(color="red").encode(x="PSI:Q")
    st.altair_chart(bars + rule, width="stretch")
    st.dataframe(mine[["FEATURE", "PSI", "OVER", "ROWS"]], hide_index=True)
    feature = st.selectbox("Feature", list(mine.FEATURE), key="feature")
    moved = queries.bins(view.warehouse, spec, version, feature)
    st.metric(f"PSI of {feature}", f"{mine.set_index('FEATURE').PSI[feature]:.4f}")
    if moved.empty:
        nothing_yet("no bins were kept for this feature", "Run `podium evaluate` again to keep them.")
        return
    st.caption(
        "Each bin's share of the training window (EXPECTED) and of the scored rows (ACTUAL), "
        "the most moved first."
    )
    st.dataframe(moved, hide_index=True)


def challenger(view: View) -> None:
    """The shadow gains of a challenger over the champion per period, and what the live gate says now."""
    spec = view.spec
    pairs = queries.shadow_pairs(view.warehouse, spec)
    if not pairs:
        nothing_yet(
            "no challenger has been scored in shadow and evaluated",
            "Run `podium score --shadow VERSION`, then `podium evaluate`.",
        )
        return
    pair = st.selectbox(
        "Challenger vs champion", pairs, format_func=lambda p: f"v{p[0]} vs v{p[1]}", key="pair"
    )
    gains = queries.gains(view.warehouse, spec, *pair)
    metric = shadow.paired_metric(spec.promotion.metric)
    live = spec.promotion.live
    verdict = shadow.live_verdict(gains.tail(live.periods), live) if live else "no live gate"
    columns = st.columns(2)
    columns[0].metric(f"Latest {metric} gain", f"{gains.GAIN.iloc[-1]:+.4f}" if not gains.empty else "n/a")
    columns[1].metric("Live gate now", verdict)
    if live is None:
        st.caption("The spec's promotion has no `live` section: promote decides on the holdout alone.")
    else:
        st.caption(
            f"The live gate asks a gain of at least {live.min_improvement:g} in each of the last "
            f"{live.periods} shadow periods."
        )
    points = (
        alt.Chart(gains)
        .mark_point(filled=True)
        .encode(x="PERIOD:N", y=alt.Y("GAIN:Q", title=f"{metric} gain"))
    )
    bars = alt.Chart(gains).mark_errorbar().encode(x="PERIOD:N", y="LOW:Q", y2="HIGH:Q")
    st.altair_chart(bars + points, width="stretch")
    st.dataframe(gains, hide_index=True)


def backtest(view: View) -> None:
    """The replay's metric over time with promotions marked, and its decisions with their reasons."""
    spec = view.spec
    if spec.backtest is None:
        nothing_yet(
            "the spec has no `backtest` section", "Add one to replay the lifecycle over past periods."
        )
        return
    rows = queries.table(view.warehouse, spec.backtest.table, "PERIOD, ROLE")
    if rows.empty:
        nothing_yet(f"{spec.backtest.table} holds no rows", "Run `podium backtest`.")
        return
    st.metric("Periods replayed", rows.PERIOD.nunique())
    line = alt.Chart(rows).mark_line(point=True).encode(x="PERIOD:N", y="LOG_LOSS:Q", color="ROLE:N")
    promoted = alt.Chart(rows[rows.DECISION == "promoted"]).mark_rule(color="green").encode(x="PERIOD:N")
    st.altair_chart(line + promoted, width="stretch")
    st.caption("Each period's log loss, of its champion and of its challenger in shadow; green: a promotion.")
    shown = ["PERIOD", "ROLE", "MODEL_VERSION", "MODEL_FAMILY", "LOG_LOSS", "AUC", "ACCURACY", "ROWS"]
    st.dataframe(rows[shown], hide_index=True)
    decisions = rows[rows.DECISION.notna()].drop_duplicates("PERIOD")
    reasons = ["PERIOD", "CHAMPION_VERSION", "CHALLENGER_VERSION", "DECISION", "REASON"]
    st.dataframe(decisions[reasons], hide_index=True)


def promotions(view: View) -> None:
    """The audit table as a timeline, and the current champion's card."""
    audited = queries.promotions(view.warehouse, view.spec)
    if audited.empty:
        nothing_yet("no promotion has been decided", "Run `podium promote`.")
        return
    champion = queries.champion(audited)
    if champion:
        card(view, champion)
    timeline = audited.sort_values("DECIDED_AT", ascending=False)
    decided = alt.Chart(timeline).mark_point(filled=True, size=80)
    encoded = decided.encode(x="DECIDED_AT:T", y="MODEL_VERSION:N", color="DECISION:N", shape="TARGET:N")
    st.altair_chart(encoded.encode(tooltip=["TARGET", "DECISION", "REASON"]), width="stretch")
    shown = ["DECIDED_AT", "ACTOR", "MODEL_VERSION", "TARGET", "ACTION", "DECISION", "FORCED", "REASON"]
    st.dataframe(timeline[shown], hide_index=True)


def card(view: View, version: str) -> None:
    """The champion's family, training window, holdout figures and registry page."""
    st.subheader(f"Champion: v{version}")
    tags = view.tags(version)
    if tags is None:
        st.warning(
            "The MLflow registry cannot be read from here: the card shows the audit table's version only."
        )
        return
    metrics = {
        name.removeprefix("podium.holdout_"): float(value)
        for name, value in tags.items()
        if name.startswith("podium.holdout_") and _is_number(value)
    }
    columns = st.columns(3)
    columns[0].metric("Family", tags.get("podium.family", "?"))
    columns[1].metric("Trained on", f"{view.spec.train_start} to {tags.get('podium.trained_before', '?')}")
    columns[2].metric("Holdout log loss", f"{metrics['log_loss']:.4f}" if "log_loss" in metrics else "n/a")
    st.dataframe(
        pd.DataFrame({"METRIC": list(metrics), "HOLDOUT": list(metrics.values())}),
        hide_index=True,
    )
    if (link := view.link(version)) is not None:
        st.markdown(f"[The version in the MLflow registry]({link})")


def cycles(view: View) -> None:
    """The cycles table: what each scheduled period decided and did."""
    spec = view.spec
    if spec.cycle is None:
        nothing_yet("the spec has no `cycle` section", "Add a retrain policy to run `podium cycle`.")
        return
    rows = queries.table(view.warehouse, spec.cycle.table, "PERIOD DESC")
    if rows.empty:
        nothing_yet(f"{spec.cycle.table} holds no rows", "Run `podium cycle`.")
        return
    st.metric("Cycles", len(rows))
    st.dataframe(rows, hide_index=True)


def _shown(value: Any) -> str:
    """A time value as people write it: a date without its midnight."""
    return str(value).removesuffix(" 00:00:00")


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _newest(version: str) -> tuple[int, str]:
    return (-int(version) if version.isdigit() else 0, version)


PAGES = [
    Page("predictions", "Predictions", predictions),
    Page("health", "Model health", health),
    Page("drift", "Drift", drift),
    Page("challenger", "Champion vs challenger", challenger),
    Page("backtest", "Backtest", backtest),
    Page("promotions", "Promotions", promotions),
    Page("cycles", "Cycles", cycles),
]


def by_slug(slug: Any) -> Page:
    """The page a `?page=` value names (the first page for anything else)."""
    return next((p for p in PAGES if p.slug == slug), PAGES[0])
