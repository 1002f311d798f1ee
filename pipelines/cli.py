"""The `podium` command line: one command per stage, plus `sql` and `run`.

Every command takes `--profile` (where it runs; env PODIUM_PROFILE) and `--spec` (what it
learns; env PODIUM_SPEC). Errors a user can cause print one line and exit 1.
"""

from __future__ import annotations

import inspect
import json
import logging
import math
import os
import sys
from collections.abc import Callable
from datetime import datetime
from enum import StrEnum
from typing import Annotated

import pandas as pd
import typer
from mlflow.tracking import MlflowClient
from rich.console import Console
from rich.logging import RichHandler
from rich.markup import escape

from pipelines import display, pipeline
from pipelines import status as status_stage
from pipelines.config import (
    DEFAULT_PROFILE,
    MAX_CHUNK_ROWS,
    MIN_TUNE_SECONDS,
    WEEK,
    Profile,
    Spec,
    load,
    load_profile,
)
from pipelines.errors import ConfigError, PodiumError
from pipelines.registry import CHAMPION
from pipelines.secrets import MaskPasswords, hide_password, refuse_password
from pipelines.stages import backtest as backtest_stage
from pipelines.stages import evaluate as evaluate_stage
from pipelines.stages import features as features_stage
from pipelines.stages import ingest as ingest_stage
from pipelines.stages import promote as promote_stage
from pipelines.stages import score as score_stage
from pipelines.stages import train as train_stage
from pipelines.stages import tune as tune_stage
from pipelines.warehouse import Warehouse, connect
from pipelines.warehouse.dialect import check_one, check_read, reads_only, shown

HELP = """Podium: MLflow-tracked experiments and a model registry over Snowflake (a DuckDB file offline).

One command per stage, in pipeline order: [bold]ingest[/] raw files, build [bold]features[/] in SQL,
[bold]tune[/] one Optuna study per model family, [bold]train[/] and register the best, [bold]promote[/] it
through the spec's policy, [bold]score[/] rows back into the warehouse, [bold]evaluate[/] them against
actuals. [bold]run[/] chains them all, [bold]backtest[/] replays them over past periods, [bold]status[/]
shows where everything stands and [bold]sql[/] queries the warehouse. Every stage is an MLflow run:
see them with `mlflow ui`.

A [italic]spec[/] (experiments/NAME.yaml) says what is learned; a [italic]profile[/] (conf/NAME.yaml)
says where it runs. `podium COMMAND --help` explains one command, with examples.
"""

EPILOG = """[bold]Examples[/]
  podium run
      the whole pipeline on the local DuckDB file (what `make demo` does)
  podium status --format json
      tables, studies, versions, latest scores and monitoring, for machines
  podium tune --family xgboost --n-trials 50
      fifty more xgboost trials: the study resumes

[bold]Environment[/]
  PODIUM_PROFILE, PODIUM_SPEC
      defaults for --profile and --spec
  MLFLOW_TRACKING_URI
      the MLflow store; else the profile's tracking_uri, else the project's sqlite:///mlflow.db
  PODIUM_LOG_LEVEL
      INFO (default), DEBUG or WARNING
  PODIUM_ACTOR
      who promotes, recorded in the audit table (default: the OS user)
  SNOWFLAKE_ACCOUNT, SNOWFLAKE_USER, ...
      Snowflake credentials, when the profile names no connection_name

[bold]Files[/]
  conf/NAME.yaml, experiments/NAME.yaml
      profiles and specs
  warehouse/podium.duckdb
      the embedded warehouse of profile local
  mlflow.db, mlruns/
      MLflow's default store: runs, artifacts, registered models
  optuna/studies.journal
      the Optuna studies (the profile's optuna_storage)

[bold]Exit status[/]
  0 on success; 1 for a problem with your input, printed as one line
  `error: ...` that names the fix; 2 for bad usage (an unknown option).
"""


def reflow(text: str) -> str:
    """Unwrap prose for the terminal's width: a line joins the line before it unless either is indented."""
    lines: list[str] = []
    for line in inspect.cleandoc(text).splitlines():
        if lines and lines[-1] and line and not line[0].isspace() and not lines[-1][0].isspace():
            lines[-1] += " " + line
        else:
            lines.append(line)
    return "\n".join(lines)


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


def command(function: Callable[..., None]) -> Callable[..., None]:
    """Register a command whose docstring is its manual: prose reflowed, examples kept line by line."""
    return app.command(help=reflow(function.__doc__ or ""))(function)


ProfileOption = Annotated[
    str,
    typer.Option("--profile", "-p", envvar="PODIUM_PROFILE", help="Profile name (conf/<name>.yaml) or path."),
]
SpecOption = Annotated[
    str,
    typer.Option(
        "--spec",
        "-s",
        envvar="PODIUM_SPEC",
        help="Spec name (experiments/<name>.yaml) or path; default: the only one.",
    ),
]


def bounded(option: str, low: float, high: float, hint: str = "") -> Callable[[float | None], float | None]:
    """A callback refusing NaN, infinity and values outside [low, high] for `option`, as one clear error."""

    def check(value: float | None) -> float | None:
        if value is not None and not (math.isfinite(value) and low <= value <= high):
            raise PodiumError(f"{option} must be a number from {low:g} to {high:g}, got {value}{hint}.")
        return value

    return check


def _no_secret(storage: str) -> str:
    """A storage URL carrying a password is refused; under `mlflow run`, which logged it as a parameter
    before Podium started, the run holding it is deleted too (`mlflow gc` purges it)."""
    try:
        return refuse_password(storage, "--storage")
    except ConfigError as exc:
        run_id = os.environ.get("MLFLOW_RUN_ID")
        if not run_id:
            raise
        MlflowClient().delete_run(run_id)
        raise ConfigError(
            f"{exc} `mlflow run` logged it as a parameter of run {run_id}, which Podium deleted: purge it "
            f"with `mlflow gc --run-ids {run_id}`."
        ) from None


StorageOption = Annotated[
    str,
    typer.Option(
        callback=_no_secret, help="Optuna storage URL (no password) or journal path (default: the profile's)."
    ),
]


class Format(StrEnum):
    table = "table"
    csv = "csv"
    json = "json"


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
    display.show(ingest_stage.main(*_load(profile, spec)))


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
    display.show(features_stage.main(*_load(profile, spec)))


SPEC_BUDGET = ": leave it out for the spec's budget"
TrialsOption = Annotated[
    int | None,
    typer.Option(
        "--n-trials",
        "-n",
        callback=bounded("--n-trials", 1, 100_000, SPEC_BUDGET),
        help="At most this many new trials per family.",
    ),
]
SecondsOption = Annotated[
    float | None,
    typer.Option(
        "--seconds",
        "--timeout",
        callback=bounded(
            "--seconds", MIN_TUNE_SECONDS, WEEK, " (the stage keeps 2 s to close)" + SPEC_BUDGET
        ),
        help="Seconds for the whole stage.",
    ),
]


@command
def tune(
    profile: ProfileOption = DEFAULT_PROFILE,
    spec: SpecOption = "",
    family: Annotated[
        str, typer.Option("--family", "-f", help="One model family, or all of the spec's.")
    ] = "all",
    n_trials: TrialsOption = None,
    seconds: SecondsOption = None,
    n_jobs: Annotated[
        int,
        typer.Option(
            "--n-jobs",
            "-j",
            callback=bounded("--n-jobs", 0, 1024),
            help="Cores for cross-validation (0: all).",
        ),
    ] = 0,
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
    loaded = _load(profile, spec)
    display.show(tune_stage.main(*loaded, family, n_trials, seconds, n_jobs, storage or None))


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
    display.show(train_stage.main(*_load(profile, spec), family or None, top_k, storage or None))


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
    loaded = _load(profile, spec)
    display.show(
        promote_stage.main(*loaded, alias or None, stage or None, version or None, dry_run, force, rollback)
    )


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
    display.show(score_stage.main(*_load(profile, spec), model or None, full, chunk_rows, engine, shadow))


@command
def evaluate(profile: ProfileOption = DEFAULT_PROFILE, spec: SpecOption = "") -> None:
    """Judge written scores against the actual classes, per model version and period; measure drift.

    Writes log loss, AUC, accuracy, rows (and the spec's top-k hit rate) per version and
    period, and each feature's PSI against the training window, to `monitoring.table`;
    warns when a PSI crosses `monitoring.psi_threshold`.

    [bold]Examples[/]
      podium evaluate
      podium sql "select * from ML.F1_MONITORING where METRIC = 'log_loss'"
    """
    display.show(evaluate_stage.main(*_load(profile, spec)))


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
    profile_, spec_ = _load(profile, spec)
    begin, finish = (d.date() if d else None for d in (start, end))
    display.show(backtest_stage.main(profile_, spec_, pipeline.LIFECYCLE, begin, finish, trials))


@command
def status(
    profile: ProfileOption = DEFAULT_PROFILE,
    spec: SpecOption = "",
    storage: StorageOption = "",
    format: Annotated[
        Format, typer.Option("--format", "-f", help="table for people, json for machines (csv: not offered).")
    ] = Format.table,
) -> None:
    """Show where the spec stands: tables, studies, registered versions, the latest scores and monitoring.

    Changes nothing: the warehouse is opened read-only; what does not exist yet shows as missing.

    [bold]Examples[/]
      podium status
      podium status --format json | jq '.versions[] | select(.aliases | index("champion"))'
    """
    if format is Format.csv:
        raise PodiumError("status has no csv form: use --format table or --format json.")
    result = status_stage.main(*_load(profile, spec), storage or None)
    if format is Format.json:
        sys.stdout.write(json.dumps(result.to_dict(), indent=2, default=str) + "\n")
    else:
        display.show(result)


@command
def sql(
    query: Annotated[str, typer.Argument(help="One query in Snowflake dialect.")],
    profile: ProfileOption = DEFAULT_PROFILE,
    format: Annotated[
        Format, typer.Option("--format", "-f", help="table for people, csv or json for machines.")
    ] = Format.table,
    write: Annotated[
        bool, typer.Option("--write", help="Allow DDL and DML, one statement (default: read-only).")
    ] = False,
) -> None:
    """Run one Snowflake-dialect query on the profile's warehouse and print the rows.

    Read-only by default: the statement must be a query (SELECT, WITH, UNION, VALUES, PIVOT,
    DESCRIBE, SHOW) with no write anywhere inside it, or it is refused before it runs; a DuckDB
    file is opened read-only, with no access to other files, databases or extensions, and takes
    no write lock. `--write` runs exactly one statement, DDL and DML included.

    [bold]Examples[/]
      podium sql "select count(*) from ML.F1_FEATURES"
      podium sql "select * from ML.F1_SCORES limit 5" --format csv
      podium sql "select * from ML.MODEL_PROMOTIONS" --format json | jq .
      podium sql --write "delete from ML.F1_SCORES where MODEL_VERSION = '1'"
          change data, on purpose
    """
    if write:
        check_one(query)
    else:
        check_read(query)
    settings = load_profile(profile)
    _check_readable(settings, query, write)
    with connect(settings, read_only=not write) as warehouse:
        if write and not reads_only(query):
            warehouse.execute(query)
            err.print("done: the statement ran (--write)", highlight=False)
            return
        frame = _read(warehouse, query, write)
    if format is Format.csv:
        frame.to_csv(sys.stdout, index=False)
    elif format is Format.json:
        sys.stdout.write(frame.to_json(orient="records", date_format="iso") + "\n")
    else:
        display.frame(frame)


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
    pipeline.run(*_load(profile, spec), show=display.show)


def _load(profile: str, spec: str) -> tuple[Profile, Spec]:
    return load(profile, spec or None)


LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")


def _check_readable(settings: Profile, query: str, write: bool) -> None:
    """A read of a DuckDB file that is not there fails at once: a read creates no file."""
    where = settings.warehouse
    if not write and where.backend == "duckdb" and not where.path.exists():
        raise PodiumError(
            f"`{shown(query)}` has nothing to read: the DuckDB warehouse {where.path} does not exist. "
            "Build it first (`podium ingest`, then `podium features`), or fix warehouse.path in the profile."
        )


READ_ONLY_REFUSALS = (
    "Permission Error",
    "read-only mode",
    "has been locked",
    "disabled through configuration",
)


def _read(warehouse: Warehouse, query: str, write: bool) -> pd.DataFrame:
    """The query's rows; DuckDB's own refusal on the read-only connection (a file, extension, setting or
    write) as one error naming the fix."""
    try:
        return warehouse.query(query)
    except PodiumError as exc:
        if write or not any(sign in str(exc) for sign in READ_ONLY_REFUSALS):
            raise
        raise PodiumError(
            f"`{shown(query)}` was refused by the read-only warehouse ({exc}): podium sql opens the "
            "DuckDB file read-only, with no access to other files, databases or extensions; query its "
            "tables, or pass --write to run it on purpose (one statement per call)."
        ) from None


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
