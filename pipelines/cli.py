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

from pipelines import features as features_stage
from pipelines import ingest as ingest_stage
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
    storage: Annotated[str, typer.Option(help="Optuna storage URL or journal path (default: the profile's).")] = "",
) -> None:
    """Score the baselines, then run or resume one Optuna study per model family.

    Rerunning resumes each study: trial numbers continue. Several processes may share one
    study through a shared storage (e.g. PostgreSQL).

    Example: [bold]podium tune --family xgboost --n-trials 50[/]
    """
    result = tune_stage.main(*_load(profile, spec), family, n_trials or None, timeout or None, n_jobs, storage or None)
    _print_leaderboard(result.leaderboard)


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
    """Run the whole pipeline (ingest, features, tune), each stage a nested MLflow run under one `main` run.

    Example: [bold]podium run[/] (what `make demo` and `mlflow run . -e main` do)
    """
    loaded = _load(profile, spec)
    with stage_run(*loaded, "main"):
        _print_counts("Ingested", ingest_stage.main(*loaded).rows)
        built = features_stage.main(*loaded)
        _print_counts("Built", built.rows)
        _print_checks(built.checks)
        _print_leaderboard(tune_stage.main(*loaded).leaderboard)


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
