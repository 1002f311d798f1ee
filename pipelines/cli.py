"""The `podium` command line: one command per stage, plus `sql` and `run`.

Every command takes `--profile` (where it runs; env PODIUM_PROFILE) and `--spec` (what it
learns; env PODIUM_SPEC). Errors a user can cause print one line and exit 1.
"""

from __future__ import annotations

import logging
import os
import sys
from enum import StrEnum
from typing import Annotated

import click
import typer
from rich.console import Console
from rich.logging import RichHandler
from rich.table import Table

from pipelines import evaluate as evaluate_stage
from pipelines import features as features_stage
from pipelines import ingest as ingest_stage
from pipelines import promote as promote_stage
from pipelines import score as score_stage
from pipelines import train as train_stage
from pipelines import tune as tune_stage
from pipelines.config import DEFAULT_PROFILE, Profile, Spec, load_profile, load_spec
from pipelines.errors import PodiumError
from pipelines.tracking import stage_run
from pipelines.warehouse import connect

app = typer.Typer(
    name="podium",
    help="Podium: MLflow-tracked experiments and a model registry over Snowflake (DuckDB offline).",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
    add_completion=False,
)
out = Console()
err = Console(stderr=True)

ProfileOption = Annotated[
    str, typer.Option("--profile", "-p", envvar="PODIUM_PROFILE", help="Profile name (conf/<name>.yaml) or path.")
]
SpecOption = Annotated[
    str,
    typer.Option(
        "--spec", "-s", envvar="PODIUM_SPEC", help="Spec name (experiments/<name>.yaml) or path; default: the only one."
    ),
]

StorageOption = Annotated[str, typer.Option(help="Optuna storage URL or journal path (default: the profile's).")]


class Format(StrEnum):
    table = "table"
    csv = "csv"
    json = "json"


@app.command()
def ingest(profile: ProfileOption = DEFAULT_PROFILE, spec: SpecOption = "") -> None:
    """Load the spec's raw CSV files into the warehouse's RAW schema.

    Example: [bold]podium ingest --profile local[/]
    """
    result = ingest_stage.main(*_load(profile, spec))
    _print_counts("Ingested", result.rows)


@app.command()
def features(profile: ProfileOption = DEFAULT_PROFILE, spec: SpecOption = "") -> None:
    """Build the feature table from the spec's SQL models and run its data-quality checks.

    Example: [bold]podium features[/]
    """
    result = features_stage.main(*_load(profile, spec))
    _print_counts("Built", result.rows)
    _print_checks(result.checks)


@app.command()
def tune(
    profile: ProfileOption = DEFAULT_PROFILE,
    spec: SpecOption = "",
    family: Annotated[str, typer.Option("--family", "-f", help="One model family, or all of the spec's.")] = "all",
    n_trials: Annotated[
        int, typer.Option("--n-trials", "-n", min=0, help="Trials to add per family (0: the spec's).")
    ] = 0,
    timeout: Annotated[float, typer.Option(min=0, help="Seconds per family (0: the spec's).")] = 0,
    n_jobs: Annotated[int, typer.Option("--n-jobs", "-j", min=1, help="Parallel trials in this process.")] = 1,
    storage: StorageOption = "",
) -> None:
    """Score the baselines, then run or resume one Optuna study per model family.

    Rerunning resumes each study: trial numbers continue. Several processes may share one
    study through a shared storage (e.g. PostgreSQL).

    Example: [bold]podium tune --family xgboost --n-trials 50[/]
    """
    result = tune_stage.main(*_load(profile, spec), family, n_trials or None, timeout or None, n_jobs, storage or None)
    _print_leaderboard(result.leaderboard)


@app.command()
def train(
    profile: ProfileOption = DEFAULT_PROFILE,
    spec: SpecOption = "",
    family: Annotated[
        str, typer.Option("--family", "-f", help="Train this family's best trial (default: the best family).")
    ] = "",
    top_k: Annotated[
        int, typer.Option("--top-k", "-k", min=1, help="Register the best K families for comparison.")
    ] = 1,
    storage: StorageOption = "",
) -> None:
    """Refit the best family on the whole training window, evaluate it once on the holdout, register it.

    The new version gets the alias [bold]challenger[/]; `podium promote` decides whether it becomes champion.

    Example: [bold]podium train --top-k 3[/]
    """
    result = train_stage.main(*_load(profile, spec), family or None, top_k, storage or None)
    _print_trained(result)


@app.command()
def promote(
    profile: ProfileOption = DEFAULT_PROFILE,
    spec: SpecOption = "",
    alias: Annotated[str, typer.Option(help="Alias to move to the version ('' for none).")] = "champion",
    stage: Annotated[str, typer.Option(help="Stage to transition the version to: Staging or Production.")] = "",
    version: Annotated[str, typer.Option("--version", "-v", help="Version to promote (default: the challenger).")] = "",
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Print the decision; change nothing.")] = False,
    force: Annotated[bool, typer.Option("--force", help="Skip the gate; the audit records it as forced.")] = False,
    rollback: Annotated[
        bool, typer.Option("--rollback", help="Return the alias/stage to its previous holder.")
    ] = False,
) -> None:
    """Promote a registered version by alias and/or stage, through the spec's policy; audit every decision.

    Example: [bold]podium promote --alias champion --stage Production --dry-run[/]
    """
    decisions = promote_stage.main(*_load(profile, spec), alias or None, stage or None, version or None,
                                   dry_run, force, rollback)  # fmt: skip
    _print_decisions(decisions)


@app.command()
def score(
    profile: ProfileOption = DEFAULT_PROFILE,
    spec: SpecOption = "",
    model: Annotated[
        str, typer.Option("--model", "-m", help="models:/NAME@ALIAS, models:/NAME/STAGE or models:/NAME/N.")
    ] = "",
    full: Annotated[bool, typer.Option("--full", help="Rescore every row of the window, not only new ones.")] = False,
    chunk_rows: Annotated[
        int | None, typer.Option(help="Rows per read-predict-write chunk (default: the spec's).")
    ] = None,
    engine: Annotated[
        str, typer.Option(help="local: stream rows through Podium; warehouse: a vectorized UDF in Snowflake.")
    ] = "local",
) -> None:
    """Score the spec's scoring window with a registered model and merge the scores into the scoring table.

    Incremental by default: only rows this model version has not scored. At most one row per (keys, version).

    Example: [bold]podium score --model models:/f1_podium@challenger[/]
    """
    _print_scored(score_stage.main(*_load(profile, spec), model or None, full, chunk_rows, engine))


@app.command()
def evaluate(profile: ProfileOption = DEFAULT_PROFILE, spec: SpecOption = "") -> None:
    """Judge written scores against the actual classes, per model version and period, and measure feature drift.

    Example: [bold]podium evaluate[/]
    """
    result = evaluate_stage.main(*_load(profile, spec))
    _print_monitoring(result)


@app.command()
def sql(
    query: Annotated[str, typer.Argument(help="One query in Snowflake dialect.")],
    profile: ProfileOption = DEFAULT_PROFILE,
    format: Annotated[
        Format, typer.Option("--format", "-f", help="table for people, csv or json for machines.")
    ] = Format.table,
) -> None:
    """Run a Snowflake-dialect query on the profile's warehouse and print the rows.

    Example: [bold]podium sql "select count(*) from ML.F1_FEATURES"[/]
    """
    with connect(load_profile(profile)) as warehouse:
        frame = warehouse.query(query)
    if format is Format.csv:
        frame.to_csv(sys.stdout, index=False)
    elif format is Format.json:
        sys.stdout.write(frame.to_json(orient="records", date_format="iso") + "\n")
    else:
        table = Table(*[str(c) for c in frame.columns], show_lines=False)
        for row in frame.itertuples(index=False):
            table.add_row(*["" if v is None else str(v) for v in row])
        out.print(table)


@app.command()
def run(profile: ProfileOption = DEFAULT_PROFILE, spec: SpecOption = "") -> None:
    """Run the whole pipeline (ingest ... promote, score, evaluate), each stage a nested run under one `main` run.

    Example: [bold]podium run[/] (what `make demo` and `mlflow run . -e main` do)
    """
    loaded = _load(profile, spec)
    with stage_run(*loaded, "main"):
        _print_counts("Ingested", ingest_stage.main(*loaded).rows)
        built = features_stage.main(*loaded)
        _print_counts("Built", built.rows)
        _print_checks(built.checks)
        _print_leaderboard(tune_stage.main(*loaded).leaderboard)
        _print_trained(train_stage.main(*loaded))
        _print_decisions(promote_stage.main(*loaded, alias="champion", stage="Production"))
        _print_scored(score_stage.main(*loaded))
        _print_monitoring(evaluate_stage.main(*loaded))


def _load(profile: str, spec: str) -> tuple[Profile, Spec]:
    return load_profile(profile), load_spec(spec or None)


def _print_counts(verb: str, rows: dict[str, int]) -> None:
    table = Table("table", "rows", title=f"{verb} {len(rows)} tables", title_justify="left")
    for name, n in rows.items():
        table.add_row(name, f"{n:,}")
    out.print(table)


def _print_leaderboard(standings: list[tune_stage.Standing]) -> None:
    table = Table(title="Leaderboard (lower log loss is better)", title_justify="left")
    table.add_column("family", no_wrap=True, min_width=18)
    for name in ("complete", "pruned", "failed", "CV log loss", "CV AUC", "seconds"):
        table.add_column(name, justify="right")
    for s in sorted(standings, key=lambda s: s.cv_log_loss):
        style = "dim" if s.name.startswith("baseline") else ""
        table.add_row(s.name, str(s.complete), str(s.pruned), str(s.failed), f"{s.cv_log_loss:.4f}", f"{s.cv_auc:.4f}",
                      f"{s.seconds:.1f}", style=style)  # fmt: skip
    out.print(table)


def _print_trained(result: train_stage.TrainResult) -> None:
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
    out.print(f"version {result.champion.version} ({result.champion.candidate.family}) is now [bold]challenger[/]")


def _print_decisions(decisions: list[promote_stage.Decision]) -> None:
    for d in decisions:
        colour = "green" if d.promoted else "yellow" if d.decision.startswith("dry-run") else "red"
        holder = f"v{d.from_version}" if d.from_version else "nobody"
        out.print(f"[bold {colour}]{d.decision}[/] {d.model} v{d.version} -> {d.target} (held by {holder}). {d.reason}",
                  highlight=False)  # fmt: skip


def _print_scored(result: score_stage.ScoreResult) -> None:
    out.print(
        f"scored [bold]{result.rows_written:,}[/] of {result.rows_read:,} rows read into {result.table} with "
        f"{result.model.name} v{result.model.version} ({result.model.uri}); batch {result.batch_id}",
        highlight=False,
    )


def _print_monitoring(result: evaluate_stage.EvaluateResult) -> None:
    timed = result.rows[result.rows["PERIOD"] != "all"]
    wide = timed.pivot_table(index=["MODEL_VERSION", "PERIOD"], columns="METRIC", values="VALUE").reset_index()
    table = Table(*[str(c) for c in wide.columns], title=f"Monitoring ({result.table})", title_justify="left")
    for row in wide.itertuples(index=False):
        table.add_row(*[v if isinstance(v, str) else f"{v:.4f}" for v in row])
    out.print(table)
    drift = ", ".join(result.drifting) or "none"
    out.print(f"features drifting past the PSI threshold: {drift}", highlight=False)


def _print_checks(checks: list[features_stage.Check]) -> None:
    table = Table("check", "result", "detail", title="Data-quality checks", title_justify="left")
    for check in checks:
        table.add_row(check.name, "[green]pass[/]" if check.passed else "[red]FAIL[/]", check.detail)
    out.print(table)


def _setup_logging() -> None:
    level = os.environ.get("PODIUM_LOG_LEVEL", "INFO").upper()
    handler = RichHandler(console=err, show_path=False, show_time=False)
    logging.basicConfig(level=logging.WARNING, handlers=[handler], format="%(message)s")
    logging.getLogger("pipelines").setLevel(level)


def main() -> None:
    """Console entry point: run the app, turning user errors into one line and exit 1."""
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")  # no calls home: loopback only
    _setup_logging()
    try:
        app(standalone_mode=False)
    except PodiumError as exc:
        err.print(f"[bold red]error:[/] {exc}", highlight=False, soft_wrap=True)
        sys.exit(1)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except click.exceptions.Abort:
        err.print("aborted")
        sys.exit(130)


if __name__ == "__main__":
    main()
