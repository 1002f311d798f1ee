"""Backtest stage: the lifecycle replayed over past periods, each period's cycle as if it were today.

For each period P from `backtest.start` to `backtest.end`, one monitoring period long (F1: each
season), the backtest runs P's cycle (the `cycle` stage, as of P's first day) on a scratch model:
the same decision path as the production schedule. Each cycle scores P by the champion of its
start, judges the periods before P, measures the retrain policy, and if it fires tunes fresh
studies (`backtest.trials` per family: no warm start from the spec's, which saw later periods),
trains a challenger on the rows before the period preceding P (held out on that one), scores P
with it in shadow and gates it. The policy is the spec's `cycle.retrain` (a replay of the
schedule); a spec without one retrains every period. A last `evaluate` judges the final period.

Inputs:  the feature table; the spec's tuning, promotion and monitoring sections.
Outputs: `backtest.table`, one row per (period, model scored in it), replaced in one write
         once every period is done (a failed or killed backtest leaves the previous one);
         the scratch tables `<table>_SCORES`, `_MONITORING`, `_PROMOTIONS` and `_CYCLES` (the
         replayed cycles' rows, which the backtest rows repeat), and the
         versions of `<model>_backtest`, each tagged `podium.backtest` (the run id).
         Each backtest starts from an empty scratch state: no champion, no scores.
Never:   the spec's model (its aliases, stages and versions), scoring, monitoring or audit tables.
MLflow:  the `backtest` run: a child run per period holding that period's cycle run, the
         metrics per period as steps, `backtest.csv` and `plots/backtest.png`.
Checked: before any tuning: the options (trials, families), and every period's window against
         the feature table (seasons enough for cv.folds before it, rows in it).
Killed:  the studies live in `<the Optuna storage's folder>/backtests/<backtest id>` (a URL storage:
         the temp folder's `podium-backtests`), removed when the backtest ends. The next backtest
         ends FAILED every run a killed one left RUNNING (its run, and every run nested in it, found
         by parent run id: the run records its process, nested runs are stale with it) and removes
         the study folders whose process is gone.

The stages come in as a `Lifecycle` (see `pipeline.LIFECYCLE`): a stage never imports another.
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any

import mlflow
import pandas as pd
from pydantic import ValidationError

from pipelines import plots, registry, shadow
from pipelines.config import (
    AgeTrigger,
    BacktestConfig,
    CycleConfig,
    Profile,
    RegistryConfig,
    RetrainPolicy,
    RetrainTriggers,
    ScoringConfig,
    Spec,
    TuningBudget,
)
from pipelines.errors import PodiumError
from pipelines.lifecycle import Lifecycle
from pipelines.models import FACTORIES
from pipelines.periods import STEPS, period_label, period_starts
from pipelines.processes import end_stale_stage_trees, process_gone, process_id
from pipelines.registry import CHALLENGER, CHAMPION
from pipelines.retrain import trained_before
from pipelines.studies import beside_storage
from pipelines.tracking import STORE_ERRORS, configure, log_figures, nested_run, stage_run, store_error
from pipelines.warehouse import connect, types
from pipelines.warehouse.dialect import quote

log = logging.getLogger(__name__)

COLUMNS = {
    "PERIOD": "VARCHAR",
    "ROLE": "VARCHAR",  # champion or challenger (in shadow)
    "MODEL_VERSION": "VARCHAR",
    "MODEL_FAMILY": "VARCHAR",
    "CHAMPION_VERSION": "VARCHAR",
    "CHAMPION_FAMILY": "VARCHAR",
    "CHALLENGER_VERSION": "VARCHAR",
    "CHALLENGER_FAMILY": "VARCHAR",
    "DECISION": "VARCHAR",
    "REASON": "VARCHAR",
    "LOG_LOSS": "DOUBLE",
    "AUC": "DOUBLE",
    "ACCURACY": "DOUBLE",
    "HIT_RATE": "DOUBLE",
    "ROWS": "BIGINT",
    "SHADOW_GAIN": "DOUBLE",  # the challenger's paired gain over the champion (challenger rows)
    "SHADOW_GAIN_LOW": "DOUBLE",
    "SHADOW_GAIN_HIGH": "DOUBLE",
    "TRAINED_BEFORE": "DATE",  # the model of the row saw rows before this (its holdout's start)
    "BACKTEST_ID": "VARCHAR",
}
OWNER = "podium.process"  # in a backtest's studies folder: the process that runs it (host:pid:start)


@dataclass(frozen=True)
class Replay:
    """One backtest: where it runs, the spec it derives each period's from, and its id."""

    profile: Profile
    spec: Spec
    config: BacktestConfig
    lifecycle: Lifecycle
    backtest_id: str
    studies: Path  # a folder of per-period journals


@dataclass(frozen=True)
class BacktestResult:
    table: str
    rows: pd.DataFrame
    backtest_id: str


def main(
    profile: Profile,
    spec: Spec,
    lifecycle: Lifecycle,
    start: date | None = None,
    end: date | None = None,
    trials: int | None = None,
) -> BacktestResult:
    """Replay the cycle of each period in [start, end) (default: the spec's) on the scratch model."""
    config = _config(spec, start, end, trials)
    monitoring = spec.monitoring_section
    periods = period_starts(config.start, config.end, monitoring.period)
    for begin, _ in periods:  # all checked first
        check_holdout(spec, config, begin)
    check_windows(profile, spec, config, periods)
    _end_killed(profile, spec)
    replayed = replay_spec(spec, config)
    with stage_run(profile, spec, "backtest") as run, _studies(profile, run.info.run_id) as studies:
        replay = Replay(profile, spec, config, lifecycle, run.info.run_id, studies)
        _reset(replay)
        mlflow.log_params(_params(replay, periods))
        cycles = [(begin, _period(replay, replayed, begin, finish)) for begin, finish in periods]
        rows = _table_rows(replay, replayed, cycles, _monitoring(replay, replayed))
        frame = _checked(
            types.conform(pd.DataFrame(rows, columns=list(COLUMNS)), COLUMNS), periods, monitoring.period
        )
        with connect(profile) as warehouse:
            warehouse.ensure_table(config.table, COLUMNS)
            warehouse.write(frame, config.table, mode="replace")
        mlflow.log_text(frame.to_csv(index=False), "backtest.csv")
        log_figures({"plots/backtest.png": plots.backtest_figure(frame)})
    return BacktestResult(config.table, frame, replay.backtest_id)


def _config(spec: Spec, start: date | None, end: date | None, trials: int | None) -> BacktestConfig:
    """The spec's backtest section with this call's start, end and trials."""
    config: BacktestConfig = spec.backtest_section
    given = {"start": start, "end": end, "trials": trials}
    merged = config.model_dump() | {k: v for k, v in given.items() if v is not None}
    if isinstance(merged["trials"], int) and merged["trials"] < 1:
        raise PodiumError(
            f"backtest --trials / backtest.trials must be at least 1, not {merged['trials']}: each period "
            "tunes each family with that many new trials."
        )
    if unknown := [f for f in merged["families"] or [] if f not in FACTORIES]:
        raise PodiumError(
            f"backtest.families names unknown families {unknown}: the known families are "
            f"{', '.join(FACTORIES)}. Fix backtest.families, or drop it to replay tuning.families."
        )
    try:
        return BacktestConfig.model_validate(merged)
    except ValidationError as exc:
        problems = "; ".join(e["msg"].removeprefix("Value error, ") for e in exc.errors())
        raise PodiumError(f"backtest options: {problems}") from None


def scratch(spec: Spec, config: BacktestConfig) -> Spec:
    """The spec a backtest works in: its own model name, scores, monitoring and audit tables."""
    tables = {suffix: f"{config.table}_{suffix}" for suffix in ("SCORES", "MONITORING", "PROMOTIONS")}
    monitoring = spec.monitoring_section.model_copy(update={"table": tables["MONITORING"]})
    tuning = spec.tuning_section
    budget = tuning.budget.model_copy(update={"seconds": None, "trials": config.trials})
    tuning = tuning.model_copy(update={"families": config.families or tuning.families, "budget": budget})
    return spec.model_copy(
        update={
            "scoring_table": tables["SCORES"],
            "monitoring": monitoring,
            "tuning": tuning,
            "registry": RegistryConfig(
                model_name=f"{spec.model_name}_backtest", audit_table=tables["PROMOTIONS"]
            ),
        }
    )


def check_holdout(spec: Spec, config: BacktestConfig, start: date) -> None:
    """The period from `start` is retrained on the rows before the period preceding it: some must exist."""
    holdout = (pd.Timestamp(start) - STEPS[spec.monitoring_section.period]).date()
    if holdout <= spec.train_start:
        raise PodiumError(
            f"backtest.start {config.start} leaves no training rows before its first holdout "
            f"({holdout}; train_start is {spec.train_start}): start the backtest later."
        )


def replay_spec(spec: Spec, config: BacktestConfig) -> Spec:
    """The scratch spec the replayed cycles run: the spec's retrain policy (without one, retrain every
    period: age 1 always fires), `backtest.trials` per family, scoring from the first period on."""
    policy = (
        spec.cycle.retrain
        if spec.cycle
        else RetrainPolicy(when_any=RetrainTriggers(age=AgeTrigger(periods=1)))
    )
    policy = policy.model_copy(update={"tune": TuningBudget(trials=config.trials)})
    cycle = CycleConfig(table=f"{config.table}_CYCLES", retrain=policy)
    return scratch(spec, config).model_copy(
        update={"cycle": cycle, "scoring": ScoringConfig(start=config.start)}
    )


def check_windows(
    profile: Profile, spec: Spec, config: BacktestConfig, periods: list[tuple[date, date]]
) -> None:
    """Every period's window against the feature table, before any tuning: seasons enough for cv.folds
    in the rows before its holdout (the period preceding it), and rows in the period itself."""
    seasons = _seasons(profile, spec)
    for begin, _ in periods:
        _check_seasons(spec, config, seasons, begin)
    last = max(last for _, last in seasons.values())
    if late := [begin for begin, _ in periods if begin > last]:
        labels = ", ".join(period_label(begin, spec.monitoring_section.period) for begin in late)
        raise PodiumError(
            f"backtest.end {config.end} runs past the data: the last {spec.time} in {spec.table} is "
            f"{last}, so periods {labels} have no rows to replay. Set backtest.end (or --end) to "
            f"{late[0]} or earlier."
        )


def _check_seasons(
    spec: Spec, config: BacktestConfig, seasons: dict[int, tuple[date, date]], begin: date
) -> None:
    """The period from `begin` tunes on the seasons before its holdout: cv.folds + 1 + cv.gap at least."""
    step, need = STEPS[spec.monitoring_section.period], spec.cv.folds + 1 + spec.cv.gap
    holdout = (pd.Timestamp(begin) - step).date()
    before = [str(s) for s, (first, _) in seasons.items() if first < holdout]
    if len(before) >= need:
        return
    ready = sorted(first for first, _ in seasons.values())[need - 1 :]  # the need-th season's first row
    later = pd.Timestamp(config.start)
    while ready and later - step <= pd.Timestamp(ready[0]):  # the first start whose holdout follows it
        later += step
    fix = (
        f"start the backtest at {later.date()} or later (backtest.start or --start), or lower cv.folds."
        if ready
        else f"lower cv.folds: {spec.table} holds {len(seasons)} seasons from train_start on."
    )
    raise PodiumError(
        f"backtest.start {config.start} leaves period {period_label(begin, spec.monitoring_section.period)} "
        f"too few seasons to tune on: the rows before its holdout ({holdout}) hold {len(before)} "
        f"({', '.join(before) or 'none'}), and cv.folds {spec.cv.folds} with cv.gap {spec.cv.gap} "
        f"need {need}: {fix}"
    )


def _seasons(profile: Profile, spec: Spec) -> dict[int, tuple[date, date]]:
    """The first and last time of each season (calendar year) of the feature table, from train_start on."""
    time = quote(spec.time)
    with connect(profile, read_only=True) as warehouse:
        found = warehouse.query(
            f"SELECT YEAR({time}) AS SEASON, MIN({time}) AS FIRST_AT, MAX({time}) AS LAST_AT "
            f"FROM {quote(spec.table)} WHERE {time} >= ? GROUP BY YEAR({time}) ORDER BY SEASON",
            [spec.train_start],
        )
    return {
        int(row.SEASON): (pd.Timestamp(row.FIRST_AT).date(), pd.Timestamp(row.LAST_AT).date())
        for row in found.itertuples(index=False)
    }


def _end_killed(profile: Profile, spec: Spec) -> None:
    """End FAILED what killed backtests left RUNNING: their runs and every run nested in them."""
    configure(profile)
    try:
        end_stale_stage_trees(spec, "backtest")
    except STORE_ERRORS as exc:
        raise store_error(exc) from None


@contextmanager
def _studies(profile: Profile, backtest_id: str) -> Iterator[Path]:
    """This backtest's folder of study journals, removed when it ends (killed backtests' swept first)."""
    root = beside_storage(profile.optuna_storage, "backtests")
    _sweep(root)
    folder = root / backtest_id
    folder.mkdir(parents=True, exist_ok=True)
    (folder / OWNER).write_text(process_id())
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)
        with suppress(OSError):  # kept while another backtest's folder is in it
            root.rmdir()


def _sweep(root: Path) -> None:
    """Remove the study folders of backtests whose process has ended (a killed one could not)."""
    for folder in sorted(p for p in root.iterdir() if p.is_dir()) if root.is_dir() else []:
        owner = folder / OWNER
        if not owner.is_file() or process_gone(owner.read_text().strip()):
            shutil.rmtree(folder, ignore_errors=True)
            log.info("removed the studies of killed backtest %s (%s)", folder.name, folder)


def _reset(replay: Replay) -> None:
    """An empty scratch state: the backtest model holds no alias, the scratch tables are gone."""
    spec = scratch(replay.spec, replay.config)
    with connect(replay.profile) as warehouse:
        tables = [spec.scoring_table, spec.monitoring_section.table, spec.registry.audit_table]
        warehouse.drop([*tables, f"{replay.config.table}_CYCLES"])
    client = registry.client()
    for alias in (CHAMPION, CHALLENGER):
        if registry.holder(client, spec.model_name, registry.Target("alias", alias)):
            client.delete_registered_model_alias(spec.model_name, alias)


def _params(replay: Replay, periods: list[tuple[date, date]]) -> dict[str, Any]:
    tuning = scratch(replay.spec, replay.config).tuning_section
    return {
        "backtest_start": str(replay.config.start),
        "backtest_end": str(replay.config.end),
        "periods": len(periods),
        "families": ",".join(tuning.families),
        "trials_per_family": replay.config.trials,
        "warm_start": "none (fresh studies per period)",
        "model": f"{replay.spec.model_name}_backtest",
    }


def _monitoring(replay: Replay, spec: Spec) -> pd.DataFrame:
    """The scratch monitoring rows of the scratch model, every period judged."""
    with connect(replay.profile, read_only=True) as warehouse:
        return warehouse.query(
            f"SELECT MODEL_VERSION, PERIOD, METRIC, VALUE FROM {quote(spec.monitoring_section.table)} "
            "WHERE MODEL_NAME = ?",
            [spec.model_name],
        )


def _scratch_profile(replay: Replay) -> Profile:
    """The profile the replayed cycles run on: their studies in this backtest's folder."""
    return replay.profile.model_copy(update={"optuna_storage": str(replay.studies / "studies.journal")})


def _period(replay: Replay, spec: Spec, start: date, end: date) -> dict[str, Any]:
    """Replay the cycle of the period [start, end), as of its first day; that cycle's row. The last period
    is judged too, as of its end: no later cycle will."""
    label = period_label(start, spec.monitoring_section.period)
    life = replay.lifecycle
    with nested_run(f"period {label}"), _replaying():
        mlflow.set_tags({"podium.backtest": replay.backtest_id, "podium.period": label})
        row = life.cycle(_scratch_profile(replay), spec, life, as_of=start, refresh=False).row
        if end == replay.config.end:
            life.evaluate(_scratch_profile(replay), spec, as_of=end)
        if row["RETRAIN"] and row["CHALLENGER_VERSION"]:
            _tag(spec.model_name, row["CHALLENGER_VERSION"], replay.backtest_id, label)
        mlflow.set_tags(
            {"podium.decision": row["DECISION"] or "none", "podium.champion": row["CHAMPION_AFTER"] or "none"}
        )
    log.info("backtest %s: %s (%s)", label, row["DECISION"] or "no retrain", row["REASON"] or row["ACTIONS"])
    return dict(row)


@contextmanager
def _replaying() -> Iterator[None]:
    """The replayed stages log errors only (their runs hold the rest); the backtest logs each period."""
    stages = logging.getLogger("pipelines")
    level = stages.level
    log.setLevel(logging.INFO)
    stages.setLevel(logging.ERROR)
    try:
        yield
    finally:
        stages.setLevel(level)


def _tag(model: str, version: str, backtest_id: str, label: str) -> None:
    client = registry.client()
    client.set_model_version_tag(model, version, "podium.backtest", backtest_id)
    client.set_model_version_tag(model, version, "podium.backtest_period", label)


def _family(model: str, version: str | None) -> str | None:
    if version is None:
        return None
    return registry.client().get_model_version(model, version).tags.get("podium.family")


def _table_rows(
    replay: Replay, spec: Spec, cycles: list[tuple[date, dict[str, Any]]], measured: pd.DataFrame
) -> list[dict[str, Any]]:
    """The backtest table's rows, each period's from its cycle row; each logged as a step of the run."""
    rows = []
    for start, cycle in cycles:
        for row in _rows(spec, period_label(start, spec.monitoring_section.period), cycle, measured):
            row["BACKTEST_ID"] = replay.backtest_id
            _log_step(row, start)
            rows.append(row)
    return rows


def _rows(spec: Spec, label: str, cycle: dict[str, Any], monitoring: pd.DataFrame) -> list[dict[str, Any]]:
    """One row per model that scored the period: the champion of its start (if any), and the challenger
    it shadowed (or that scored alone, with no champion yet). `cycle` is the period's cycle row;
    `monitoring`, the rows `evaluate` wrote."""
    champion, challenger = cycle["CHAMPION_BEFORE"] or None, cycle["CHALLENGER_VERSION"] or None
    measured = monitoring[monitoring.PERIOD == label]
    common = {
        "PERIOD": label,
        "CHAMPION_VERSION": champion,
        "CHAMPION_FAMILY": _family(spec.model_name, champion),
        "CHALLENGER_VERSION": challenger,
        "CHALLENGER_FAMILY": _family(spec.model_name, challenger),
        "DECISION": cycle["DECISION"] or "no retrain",
        "REASON": cycle["REASON"] or f"the retrain policy did not fire ({cycle['ACTIONS']})",
    }
    scored = [(CHAMPION, champion)] if champion else []
    scored += [(CHALLENGER, challenger)] if challenger and challenger != champion else []
    return [common | _measured(spec, role, version, champion, measured) for role, version in scored]


def _measured(
    spec: Spec, role: str, version: str, champion: str | None, measured: pd.DataFrame
) -> dict[str, Any]:
    """A scored model's figures in the period, and its shadow gain over the champion if it shadowed."""
    mine = dict(zip(*measured[measured.MODEL_VERSION == version][["METRIC", "VALUE"]].T.values, strict=True))
    gain = shadow.prefix(champion or "") + f"{shadow.paired_metric(spec.promotion.metric)}_gain"
    return (
        {"ROLE": role, "MODEL_VERSION": version, "MODEL_FAMILY": _family(spec.model_name, version)}
        | {"LOG_LOSS": mine.get("log_loss"), "AUC": mine.get("auc"), "ACCURACY": mine.get("accuracy")}
        | {"HIT_RATE": next((v for k, v in mine.items() if k.startswith("hit_rate")), None)}
        | {"ROWS": mine.get("rows"), "SHADOW_GAIN": mine.get(gain)}
        | {"SHADOW_GAIN_LOW": mine.get(gain + "_low"), "SHADOW_GAIN_HIGH": mine.get(gain + "_high")}
        | {
            "TRAINED_BEFORE": trained_before(registry.client().get_model_version(spec.model_name, version)),
            "BACKTEST_ID": None,
        }
    )


def _log_step(row: dict[str, Any], start: date) -> None:
    """The row's metrics as steps on the backtest run, the step being the period's start (yyyymm)."""
    step = start.year * 100 + start.month
    role = row["ROLE"]
    measured = {
        f"{role}_{k.lower()}": row[k]
        for k in ("LOG_LOSS", "AUC", "ACCURACY", "HIT_RATE")
        if row[k] is not None
    }
    mlflow.log_metrics(measured, step=step)  # the backtest run: the period's child run has ended


def _checked(frame: pd.DataFrame, periods: list[tuple[date, date]], period: str) -> pd.DataFrame:
    """The backtest rows, checked before they replace the table: each period, one row per role."""
    labels = [period_label(begin, period) for begin, _ in periods]
    problems = []
    if missing := sorted(set(labels) - set(frame.PERIOD)):
        problems.append(f"no row for {', '.join(missing)}")
    if frame.duplicated(["PERIOD", "ROLE"]).any():
        problems.append("two rows for one (period, role)")
    if frame.LOG_LOSS.isna().any():
        problems.append("a model scored no row with an actual class")
    if problems:
        raise PodiumError(
            f"the backtest's rows failed their checks ({'; '.join(problems)}): the table is unchanged."
        )
    return frame.astype({"ROWS": "int64"})
