"""What the CLI prints at the end of each stage: one screen of rich tables per result.

`show(result)` picks the view by the result's type, so `podium run` and each command print
a stage's result the same way.
"""

from __future__ import annotations

import functools
import json
import sys
from collections.abc import Callable
from typing import Any

import numpy as np
import pandas as pd
from rich.console import Console
from rich.table import Table

from pipelines import shadow
from pipelines.metrics import COUNTS
from pipelines.stages.backtest import BacktestResult
from pipelines.stages.cycle import CycleResult
from pipelines.stages.evaluate import EvaluateResult, same_drift
from pipelines.stages.features import FeaturesResult, QualityCheck
from pipelines.stages.ingest import IngestResult
from pipelines.stages.promote import Decisions
from pipelines.stages.score import ScoreResult
from pipelines.stages.train import TrainResult
from pipelines.stages.tune import TuneResult
from pipelines.status import Status

out = Console()


def show_or_json(result: Any, as_dict: Callable[[], dict[str, Any]], as_json: bool) -> None:
    """A result as JSON on stdout (`--format json`, for machines), or as tables for people."""
    if as_json:
        sys.stdout.write(json.dumps(as_dict(), indent=2, default=str) + "\n")
    else:
        show(result)


@functools.singledispatch
def show(result: Any) -> None:
    """Print a stage's result."""
    raise TypeError(f"no view for {type(result).__name__}")


@show.register
def _(result: IngestResult) -> None:
    _counts("Ingested", result.rows)


@show.register
def _(result: FeaturesResult) -> None:
    _counts("Built", result.rows)
    _checks(result.checks)


@show.register
def _(result: TuneResult) -> None:
    table = Table(title="Leaderboard (lower log loss is better)", title_justify="left")
    table.add_column("family", no_wrap=True, min_width=18)
    for name in ("complete", "pruned", "failed", "CV log loss", "CV AUC", "seconds", "rounds"):
        table.add_column(name, justify="right")
    for s in sorted(result.leaderboard, key=lambda s: s.cv_log_loss):
        counts = (str(s.complete), str(s.pruned), str(s.failed))
        figures = (f"{s.cv_log_loss:.4f}", f"{s.cv_auc:.4f}", f"{s.seconds:.1f}", str(s.rounds))
        table.add_row(s.name, *counts, *figures, style="dim" if s.name.startswith("baseline") else "")
    out.print(table)
    budget = f" of a {result.budget_seconds:g} s budget" if result.budget_seconds else ""
    out.print(f"tune took {result.seconds:.1f} s{budget}")


@show.register
def _(result: TrainResult) -> None:
    table = Table(title=f"Holdout: {result.model_name} vs baselines (evaluated once)", title_justify="left")
    table.add_column("model", no_wrap=True, min_width=18)
    for name in ("version", "log loss", "AUC", "balanced acc"):
        table.add_column(name, justify="right")
    rows = [(t.candidate.family, t.version, t.holdout, "") for t in result.trained]
    rows += [(f"baseline:{name}", "", m, "dim") for name, m in result.baselines.items()]
    for name, version, m, style in rows:
        figures = (f"{m[k]:.4f}" for k in ("log_loss", "auc", "balanced_accuracy"))
        table.add_row(name, version, *figures, style=style)
    out.print(table)
    out.print(
        f"version {result.champion.version} ({result.champion.candidate.family}) is now [bold]challenger[/]"
    )


@show.register
def _(result: Decisions) -> None:
    for d in result.reconciled:
        out.print(
            f"[bold yellow]reconciled[/] {d.model} v{d.version} -> {d.target}: {d.reason}", highlight=False
        )
    for d in result:
        colour = "green" if d.promoted else "yellow" if d.decision.startswith("dry-run") else "red"
        holder = f"v{d.from_version}" if d.from_version else "nobody"
        line = f"[bold {colour}]{d.decision}[/] {d.model} v{d.version} -> {d.target} (held by {holder})."
        line += f" {d.reason}"
        out.print(line, highlight=False)


@show.register
def _(result: ScoreResult) -> None:
    if not result.batch_id:
        who = f"v{result.model.version}" + (f" and v{result.shadow.version}" if result.shadow else "")
        out.print(
            f"nothing to score: {result.model.name} {who} {'have' if result.shadow else 'has'} scored every "
            f"row of the window in {result.table} (`--full` rescores them)",
            highlight=False,
        )
        return
    shadow = f" and, in shadow, v{result.shadow.version} ({result.shadow.uri})" if result.shadow else ""
    out.print(
        f"scored [bold]{result.rows_written:,}[/] rows for {result.rows_read:,} read into {result.table} with"
        f" {result.model.name} v{result.model.version} ({result.model.uri}){shadow}; batch "
        f"{result.batch_id}",
        highlight=False,
    )


@show.register
def _(result: EvaluateResult) -> None:
    paired = result.rows["METRIC"].map(shadow.is_paired).astype(bool)
    timed = result.rows[(result.rows["PERIOD"] != "all") & ~paired]
    wide = timed.pivot_table(
        index=["MODEL_VERSION", "PERIOD"], columns="METRIC", values="VALUE", dropna=False
    ).reset_index()
    table = Table(*[str(c) for c in wide.columns], title=f"Monitoring ({result.table})", title_justify="left")
    for row in wide.to_dict("records"):
        table.add_row(*[v if isinstance(v, str) else figure(str(m), v) for m, v in row.items()])
    out.print(table)
    _shadow_pairs(result.rows[paired])
    if not result.drifting:
        out.print("features drifting past the PSI threshold: none", highlight=False)
    for versions, d in same_drift(result.drifting):
        line = f"drift: {d.feature} ({versions}) PSI {d.psi:.2f}; moved most: {d.moved()}"
        out.print(line, highlight=False)


def _shadow_pairs(rows: pd.DataFrame) -> None:
    """The challenger against the champion on the same rows, per period: the paired gain and its interval."""
    if rows.empty:
        return
    table = Table(
        "challenger",
        "champion",
        "period",
        "gain",
        "95% interval",
        "won",
        title="Shadow pairs (gain > 0: the challenger did better)",
        title_justify="left",
    )
    champion, figure = zip(*rows.METRIC.map(shadow.split), strict=True)
    named = rows.assign(CHAMPION=champion, FIGURE=figure)
    for (challenger, champion, period), group in named.groupby(["MODEL_VERSION", "CHAMPION", "PERIOD"]):
        value = dict(zip(group.FIGURE, group.VALUE, strict=True))
        if period == "all":
            table.add_row(
                f"v{challenger}", f"v{champion}", "all", "", "", f"{value['won_share']:.0%} of periods"
            )
            continue
        gain = next(k for k in value if k.endswith("_gain"))
        interval = f"[{value[gain + '_low']:+.4f}, {value[gain + '_high']:+.4f}]"
        won = "yes" if value["won"] else "no"
        table.add_row(
            f"v{challenger}", f"v{champion}", str(period), f"{value[gain]:+.4f} {gain}", interval, won
        )
    out.print(table)


@show.register
def _(result: BacktestResult) -> None:
    table = Table(
        "period",
        "role",
        "model",
        "log loss",
        "AUC",
        "shadow gain [95%]",
        "gate",
        "reason",
        title=f"Backtest {result.backtest_id} ({result.table})",
        title_justify="left",
    )
    for r in result.rows.itertuples():
        gain = (
            ""
            if pd.isna(r.SHADOW_GAIN)
            else f"{r.SHADOW_GAIN:+.4f} [{r.SHADOW_GAIN_LOW:+.4f}, {r.SHADOW_GAIN_HIGH:+.4f}]"
        )
        model = f"v{r.MODEL_VERSION} {r.MODEL_FAMILY}"
        cells = [r.PERIOD, r.ROLE, model, figure("log_loss", r.LOG_LOSS), figure("auc", r.AUC), gain]
        first = r.Index == 0 or result.rows.PERIOD[r.Index - 1] != r.PERIOD
        table.add_row(*cells, r.DECISION if first else "", r.REASON if first else "")
    out.print(table)


@show.register
def _(result: CycleResult) -> None:
    period = result.period
    state = "planned" if result.plan else "already done" if result.done else "done"
    out.print(f"[bold]Cycle {period.label}[/] as of {period.as_of} ({state})", highlight=False)
    table = Table("trigger", "value", "threshold", "fired", title="Retrain policy", title_justify="left")
    for t in result.triggers:
        value = "-" if t.value is None else f"{t.value:.4g}"
        threshold = "not in the policy" if t.threshold is None else f"{t.threshold:g}"
        table.add_row(t.name, value, threshold, "" if t.fired is None else "yes" if t.fired else "no")
    out.print(table)
    verb = "would" if result.plan else "did"
    out.print(f"retrain: {'yes' if result.retrain else 'no'}; {verb}: {', '.join(result.actions)}")
    row = result.row
    if row.get("DECISION"):
        out.print(f"gate: v{row['CHALLENGER_VERSION']} {row['DECISION']} ({row['REASON']})", highlight=False)
    if row:
        out.print(f"champion: v{row['CHAMPION_BEFORE']} -> v{row['CHAMPION_AFTER']}; table {result.table}")


@show.register
def _(status: Status) -> None:
    out.print(
        f"[bold]{status.spec}[/] on profile [bold]{status.profile}[/] ({status.backend})", highlight=False
    )
    for name, where in status.locations.items():
        out.print(f"  {name}: {where}", highlight=False, soft_wrap=True)
    tables = Table("table", "rows", title="Warehouse", title_justify="left")
    for t in status.tables:
        tables.add_row(t.table, "[dim]missing[/]" if t.rows is None else f"{t.rows:,}")
    out.print(tables)
    _studies(status)
    _versions(status)
    _latest_batch(status.latest_batch)
    _monitoring(status.monitoring)
    for run in status.stale_runs:
        out.print(
            f"[bold yellow]stale run[/] {run['run_id']} ({run['stage']}): its process was killed",
            highlight=False,
        )
    for drift in status.promotion_drift:
        out.print(
            f"[bold yellow]audit and registry disagree:[/] {drift}; `podium promote` completes it",
            highlight=False,
        )


def frame(data: pd.DataFrame) -> None:
    """Any query result, as a table."""
    table = Table(*[str(c) for c in data.columns], show_lines=False)
    for row in data.itertuples(index=False):
        table.add_row(*["" if v is None else str(v) for v in row])
    out.print(table)


def _studies(status: Status) -> None:
    if not status.studies:
        out.print("[dim]no studies yet: podium tune[/]")
        return
    title = f"Optuna studies ({status.spec}-<family>)"
    table = Table(
        "family",
        "complete",
        "pruned",
        "failed",
        "running (stale)",
        "best log loss",
        "best trial",
        title=title,
        title_justify="left",
    )
    for s in status.studies:
        best = "" if s.best_value is None else f"{s.best_value:.4f}"
        trial = "" if s.best_trial is None else str(s.best_trial)
        running = f"{s.running} ({s.stale})" if s.stale else str(s.running)
        table.add_row(s.family, str(s.complete), str(s.pruned), str(s.failed), running, best, trial)
    out.print(table)


def _versions(status: Status) -> None:
    if not status.versions:
        out.print(f"[dim]no versions of {status.model} yet: podium train[/]")
        return
    title = f"Registered model {status.model}"
    table = Table(
        "version", "aliases", "stage", "family", "holdout log loss", title=title, title_justify="left"
    )
    for v in status.versions:
        loss = "" if v.holdout_log_loss is None else f"{v.holdout_log_loss:.4f}"
        table.add_row(v.version, ", ".join(v.aliases), v.stage, v.family or "", loss)
    out.print(table)


def _latest_batch(batch: dict[str, Any] | None) -> None:
    if not batch:
        out.print("[dim]no scores yet: podium score[/]")
        return
    status = batch.get("run_status")
    unfinished = "" if status in (None, "FINISHED") else f" [bold yellow](unfinished: its run is {status})[/]"
    versions = ", ".join(f"{v['rows']:,} by v{v['version']} ({v['alias']})" for v in batch["versions"])
    out.print(
        f"latest scoring batch {batch['batch_id']} of {batch['model']}: {versions} at {batch['scored_at']}; "
        f"{batch['total_rows']:,} scores in all{unfinished}",
        highlight=False,
    )


def _monitoring(rows: list[dict[str, Any]]) -> None:
    if not rows:
        out.print("[dim]no monitoring yet: podium evaluate[/]")
        return
    metrics = [k for k in rows[0] if k not in ("version", "period")]
    table = Table("version", "period", *metrics, title="Latest monitoring", title_justify="left")
    for row in rows:
        figures = [figure(m, row.get(m, float("nan"))) for m in metrics]
        table.add_row(row["version"], row["period"], *figures)
    out.print(table)


def figure(metric: str, value: float) -> str:
    """A monitoring figure: a count as a whole number, a metric to four decimals, NaN as undefined."""
    if value is None or np.isnan(value):
        return "undefined"
    return f"{int(value):,}" if metric in COUNTS else f"{value:.4f}"


def _counts(verb: str, rows: dict[str, int]) -> None:
    if not rows:
        out.print(f"[dim]{verb} no tables: the spec reads a ready-made table[/]")
        return
    table = Table("table", "rows", title=f"{verb} {len(rows)} tables", title_justify="left")
    for name, n in rows.items():
        table.add_row(name, f"{n:,}")
    out.print(table)


def _checks(checks: list[QualityCheck]) -> None:
    table = Table("check", "result", "detail", title="Data-quality checks", title_justify="left")
    for check in checks:
        table.add_row(check.name, "[green]pass[/]" if check.passed else "[red]FAIL[/]", check.detail)
    out.print(table)
