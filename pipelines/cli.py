"""The `podium` command line: one command per stage, plus `sql` and `run`.

Every command takes `--profile` (where it runs; env PODIUM_PROFILE) and `--spec` (what it
learns; env PODIUM_SPEC). Errors a user can cause print one line and exit 1.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable
from datetime import datetime
from typing import Annotated

import typer
from rich.console import Console
from rich.logging import RichHandler
from rich.markup import escape

from pipelines import cli_views, display, pipeline
from pipelines.cli_help import EPILOG, HELP, reflow
from pipelines.cli_options import (
    AsOfOption,
    Format,
    JobsOption,
    ProfileOption,
    SecondsOption,
    SpecOption,
    StorageOption,
    TrialsOption,
    bounded,
)
from pipelines.config import DEFAULT_PROFILE, MAX_CHUNK_ROWS, Profile, Spec
from pipelines.config_files import load
from pipelines.errors import PodiumError
from pipelines.registry import CHAMPION
from pipelines.secrets import MaskPasswords, hide_password
from pipelines.stages import backtest as backtest_stage
from pipelines.stages import cycle as cycle_stage
from pipelines.stages import evaluate as evaluate_stage
from pipelines.stages import features as features_stage
from pipelines.stages import ingest as ingest_stage
from pipelines.stages import promote as promote_stage
from pipelines.stages import score as score_stage
from pipelines.stages import train as train_stage
from pipelines.stages import tune as tune_stage

app = typer.Typer(
    name="podium",
    help=reflow(HELP),
    epilog=reflow(EPILOG),
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
    add_completion=False,
)
err = Console(stderr=True)


def command(function: Callable[..., None], name: str | None = None) -> Callable[..., None]:
    """Register a command whose docstring is its manual: prose reflowed, examples kept line by line."""
    return app.command(name, help=reflow(function.__doc__ or ""))(function)


@command
def ingest(profile: ProfileOption = DEFAULT_PROFILE, spec: SpecOption = "") -> None:
    """Load the spec's raw CSV files into the warehouse, one table each, with declared types.

    Reads `ingest.source`/tables.yaml (column types per CSV) and replaces each table
    `<ingest.schema>.<TABLE>` atomically: a rerun never duplicates rows.

    [bold]Examples[/]
      podium ingest
          the bundled data into the local DuckDB file
      podium ingest --profile snowflake
          the same tables into Snowflake
      mlflow run . -e ingest --env-manager local
          as an MLflow project run
    """
    settings, experiment = _load(profile, spec)
    display.show(ingest_stage.main(settings, experiment))


@command
def features(profile: ProfileOption = DEFAULT_PROFILE, spec: SpecOption = "") -> None:
    """Build the feature table from the spec's SQL models and check its data quality.

    Runs `features.sql`/NN_name.sql in order (Snowflake dialect; translated for DuckDB), each
    materialized as `<features.schema>.<NAME>`, then checks the spec's table: keys unique and
    not null, target within the classes, row count within `expect_rows`. A failed check fails.

    [bold]Examples[/]
      podium features
      podium sql "select count(*) from ML.F1_FEATURES"
          look at the result
    """
    settings, experiment = _load(profile, spec)
    display.show(features_stage.main(settings, experiment))


@command
def tune(
    profile: ProfileOption = DEFAULT_PROFILE,
    spec: SpecOption = "",
    family: Annotated[
        str, typer.Option("--family", "-f", help="One model family, or all of the spec's.")
    ] = "all",
    n_trials: TrialsOption = None,
    seconds: SecondsOption = None,
    n_jobs: JobsOption = 0,
    storage: StorageOption = "",
) -> None:
    """Score the baselines, then spend the tuning budget on one Optuna study per model family.

    Trains on the training window only (the holdout is never read), with time-ordered CV whose
    folds run on every core. The budget (the spec's tuning.budget; --seconds and --n-trials set
    this call's own instead) is spent by successive halving: a round for every family, then more time for the
    better half, until one is left; a trial that would overrun stops at a fold boundary (pruned).
    Each family's study is `<spec>-<family>`; every trial is a child run under the family's
    parent run. Rerunning resumes each study: trial numbers continue. Several processes,
    on one machine or many, may share a study through a shared storage (e.g. PostgreSQL).
    Ends with the leaderboard; the chart is the tune run's plots/leaderboard.png.

    [bold]Examples[/]
      podium tune
          every family of the spec, within the spec's budget
      podium tune --family xgboost --n-trials 50
          fifty more xgboost trials, however long they take
      podium tune --seconds 600
          ten minutes over every family
      podium tune -j 1 --storage postgresql://u@host/optuna
          a one-core worker on a shared study
    """
    settings, experiment = _load(profile, spec)
    result = tune_stage.main(
        settings,
        experiment,
        family,
        n_trials=n_trials,
        seconds=seconds,
        n_jobs=n_jobs,
        storage=storage or None,
    )
    display.show(result)


@command
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
    """Refit the best family on the training window, evaluate it once on the holdout, register it.

    Takes each family's best trial from the studies; the best CV log loss wins. The model is
    logged with a signature, pinned requirements, plots and a model card, registered as the
    spec's model, and gets the alias [bold]challenger[/]. `podium promote` decides whether it
    becomes champion. Ends with the champion against the baselines on the holdout.

    [bold]Examples[/]
      podium train
          the best family
      podium train --top-k 3
          register the best three families, for comparison
      podium train --family logreg
          this family's best trial, whatever the leaderboard says
    """
    settings, experiment = _load(profile, spec)
    display.show(train_stage.main(settings, experiment, family or None, top_k=top_k, storage=storage or None))


@command
def promote(
    profile: ProfileOption = DEFAULT_PROFILE,
    spec: SpecOption = "",
    alias: Annotated[str, typer.Option(help="Alias to move to the version ('' for none).")] = CHAMPION,
    stage: Annotated[
        str, typer.Option(help="Stage to transition the version to: Staging or Production.")
    ] = "",
    version: Annotated[
        str, typer.Option("--version", "-v", help="Version to promote (default: the challenger).")
    ] = "",
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Print the decision; change nothing.")] = False,
    force: Annotated[
        bool, typer.Option("--force", help="Skip the gate; the audit records it as forced.")
    ] = False,
    rollback: Annotated[
        bool, typer.Option("--rollback", help="Return the alias/stage to its previous holder.")
    ] = False,
) -> None:
    """Promote a registered version by alias and/or stage, through the spec's policy.

    The challenger (or --version) must pass the spec's `promotion` gate: beat the current
    holder by `min_improvement` on the same holdout, and pass the checks. Every decision,
    promoted or refused, is appended to the audit table (`registry.audit_table`).

    [bold]Examples[/]
      podium promote --dry-run
          what the policy would decide; changes nothing
      podium promote --stage Production
          alias champion and stage Production
      podium promote --version 3 --force
          skip the gate (audited as forced)
      podium promote --rollback
          give champion back to its previous holder
    """
    settings, experiment = _load(profile, spec)
    decisions = promote_stage.main(
        settings,
        experiment,
        alias=alias or None,
        stage=stage or None,
        version=version or None,
        dry_run=dry_run,
        force=force,
        rollback=rollback,
    )
    display.show(decisions)


@command
def score(
    profile: ProfileOption = DEFAULT_PROFILE,
    spec: SpecOption = "",
    model: Annotated[
        str, typer.Option("--model", "-m", help="models:/NAME@ALIAS, models:/NAME/STAGE or models:/NAME/N.")
    ] = "",
    full: Annotated[
        bool, typer.Option("--full", help="Rescore every row of the window, not only new ones.")
    ] = False,
    chunk_rows: Annotated[
        int | None,
        typer.Option(
            callback=bounded("--chunk-rows", 1, MAX_CHUNK_ROWS),
            help="Rows per read-predict-write chunk (default: the spec's).",
        ),
    ] = None,
    engine: Annotated[
        str, typer.Option(help="local: stream rows through Podium; warehouse: a vectorized UDF in Snowflake.")
    ] = "local",
    shadow: Annotated[
        bool | None,
        typer.Option(
            "--shadow/--no-shadow",
            help="Also score the challenger on the same rows, in the same batch (default: scoring.shadow).",
        ),
    ] = None,
) -> None:
    """Score the spec's scoring window with a registered model, writing scores back to the warehouse.

    Incremental by default: only rows this model version has not scored yet. Rows stream in
    chunks; each chunk is merged into `scoring_table` by (keys, version) in one transaction,
    so a crash loses no committed chunk and a rerun never duplicates. Ends with rows written.

    [bold]Examples[/]
      podium score
          the champion (models:/NAME@champion)
      podium score --model models:/f1_podium@challenger
          another alias, a stage or a version
      podium score --full --chunk-rows 10000
          rescore the whole window
      podium score --shadow
          the champion and, on the same rows, the challenger (for `evaluate` to compare)
      podium score --engine warehouse --profile snowflake
          inside Snowflake, as a vectorized UDF
    """
    settings, experiment = _load(profile, spec)
    result = score_stage.main(
        settings, experiment, model or None, full=full, chunk_rows=chunk_rows, engine=engine, shadow=shadow
    )
    display.show(result)


@command
def evaluate(
    profile: ProfileOption = DEFAULT_PROFILE, spec: SpecOption = "", as_of: AsOfOption = None
) -> None:
    """Judge written scores against the actual classes, per model version and period; measure drift.

    Writes log loss, AUC, accuracy, rows (and the spec's top-k hit rate) per version and
    period, and each feature's PSI against the training window, to `monitoring.table`;
    warns when a PSI crosses `monitoring.psi_threshold`.

    [bold]Examples[/]
      podium evaluate
      podium evaluate --as-of 2022-01-01
          only the rows before 2022 count (a rehearsal on past data)
      podium sql "select * from ML.F1_MONITORING where METRIC = 'log_loss'"
    """
    settings, experiment = _load(profile, spec)
    display.show(evaluate_stage.main(settings, experiment, as_of.date() if as_of else None))


@command
def backtest(
    profile: ProfileOption = DEFAULT_PROFILE,
    spec: SpecOption = "",
    start: Annotated[
        datetime | None,
        typer.Option(formats=["%Y-%m-%d"], help="First period replayed (default: the spec's)."),
    ] = None,
    end: Annotated[
        datetime | None, typer.Option(formats=["%Y-%m-%d"], help="The replay stops before this date.")
    ] = None,
    trials: Annotated[
        int | None,
        typer.Option(callback=bounded("--trials", 1, 10_000), help="New trials per family per period."),
    ] = None,
) -> None:
    """Replay the lifecycle over past periods: for each, tune, train, gate, score and evaluate it.

    Each period (the spec's monitoring period; F1: a season) is judged as if it were today:
    only earlier rows train and gate its models; the champion of that moment scores it, the
    new challenger in shadow. Versions go to `<model>_backtest`, tagged `podium.backtest`; the
    real champion, stages and scores are never touched. Writes one row per (period, model) to
    `backtest.table`, and `plots/backtest.png` to the MLflow run.

    [bold]Examples[/]
      podium backtest
          the spec's backtest window, at its budget
      podium backtest --start 2019-01-01 --end 2021-01-01 --trials 2
          two seasons, two trials per family
      podium sql "select PERIOD, ROLE, MODEL_FAMILY, LOG_LOSS, DECISION from ML.F1_BACKTEST"
    """
    settings, experiment = _load(profile, spec)
    begin, finish = (d.date() if d else None for d in (start, end))
    display.show(backtest_stage.main(settings, experiment, pipeline.LIFECYCLE, begin, finish, trials))


@command
def cycle(
    profile: ProfileOption = DEFAULT_PROFILE,
    spec: SpecOption = "",
    as_of: AsOfOption = None,
    plan: Annotated[
        bool, typer.Option("--plan", help="Say what this period's cycle would do; change nothing.")
    ] = False,
    refresh: Annotated[
        bool, typer.Option(help="Run ingest and features first; --no-refresh when a scheduler ran them.")
    ] = True,
    format: Annotated[
        Format,
        typer.Option("--format", "-f", help="table for people, json for machines (an Airflow branch)."),
    ] = Format.table,
) -> None:
    """Run one period of the lifecycle: refresh, score, evaluate, decide, retrain if the policy says so, gate.

    The period is the monitoring period that holds --as-of (default today; F1: a season). The
    spec's `cycle.retrain.when_any` policy decides whether to retrain: drift, live performance
    against the holdout, the champion's age, new labelled rows. A retrained challenger scores in
    shadow and goes through the promotion gate. Writes one row per period to `cycle.table`; a
    period already done adds nothing. Safe on a schedule: cron, Airflow, `mlflow run -e cycle`.

    [bold]Examples[/]
      podium cycle
          this period's cycle
      podium cycle --as-of 2022-01-01 --plan --format json
          what the 2022 cycle would do, as JSON; changes nothing
      podium sql "select PERIOD, RETRAIN, ACTIONS, DECISION, CHAMPION_AFTER from ML.F1_CYCLES"
    """
    if format is Format.csv:
        raise PodiumError("cycle has no csv form: use --format table or --format json.")
    settings, experiment = _load(profile, spec)
    day = as_of.date() if as_of else None
    result = cycle_stage.main(settings, experiment, pipeline.LIFECYCLE, day, plan, refresh)
    display.show_or_json(result, result.as_dict, format is Format.json)


command(cli_views.status)
command(cli_views.analysts_app, "app")
command(cli_views.sql)
command(cli_views.dbt_sources, "dbt-sources")


@command
def run(profile: ProfileOption = DEFAULT_PROFILE, spec: SpecOption = "") -> None:
    """Run the whole pipeline: ingest, features, tune, train, promote, score, evaluate.

    Each stage is a nested MLflow run under one `main` run. Promote moves the alias champion
    and the stage Production, if the policy agrees. This is what `make demo` and
    `mlflow run . -e main` do.

    [bold]Examples[/]
      podium run
      podium run --spec examples/store_demand/store_demand.yaml
    """
    settings, experiment = _load(profile, spec)
    pipeline.run(settings, experiment, show=display.show)


def _load(profile: str, spec: str) -> tuple[Profile, Spec]:
    """The profile and the spec a command names (the spec: the only one when none is named)."""
    return load(profile, spec or None)


LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")


def _setup_logging() -> None:
    level = os.environ.get("PODIUM_LOG_LEVEL", "INFO").upper()
    if level not in LOG_LEVELS:
        raise PodiumError(f"PODIUM_LOG_LEVEL={level} is not a log level: use one of {', '.join(LOG_LEVELS)}.")
    handler = RichHandler(console=err, show_path=False, show_time=False)
    handler.addFilter(MaskPasswords())  # every record, Podium's and its libraries', prints no password
    logging.basicConfig(level=logging.WARNING, handlers=[handler], format="%(message)s")
    logging.getLogger("pipelines").setLevel(level)


def main() -> None:
    """Console entry point: user errors print one line and exit 1; usage errors, click's usage and exit 2."""
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")  # no calls home: loopback only
    try:
        _setup_logging()
        app(prog_name="podium")  # standalone: click prints usage errors (exit 2) and exits after the command
    except PodiumError as exc:
        err.print(f"[bold red]error:[/] {escape(hide_password(str(exc)))}", highlight=False, soft_wrap=True)
        sys.exit(1)


if __name__ == "__main__":
    main()
