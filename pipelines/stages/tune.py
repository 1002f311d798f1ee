"""Tune stage: seeded Optuna searches over model families, every trial tracked in MLflow.

Inputs:  the spec's feature table, rows with train_start <= time < holdout_start only (the
         holdout is excluded by the query and asserted absent); the spec's search spaces.
Outputs: one resumable Optuna study per (spec, family), named `<spec>-<family>`, in the
         profile's storage (or `--storage`), searched within the spec's `tuning.budget` by
         successive halving over the families, each trial's folds on every core.
MLflow:  under the `tune` run (or the run `mlflow run` created): a run per baseline, a
         parent run per family study with a child run per trial (FINISHED / KILLED if
         pruned / FAILED), `leaderboard.csv`, `splits.json`, `spec.json`, and the
         training window as an `mlflow.data` input.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import mlflow
import numpy as np
import optuna
import pandas as pd
from mlflow.tracking import MlflowClient
from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID
from sklearn.base import BaseEstimator

from pipelines import dataset, plots
from pipelines.baselines import baselines
from pipelines.config import Profile, Spec, TuningBudget, TuningConfig
from pipelines.crossval import FoldRunner, available_cores, fold_order
from pipelines.dataset import FeatureSchema, Window
from pipelines.errors import ConfigError, PodiumError
from pipelines.metrics import METRICS
from pipelines.models import FACTORIES, make_estimator, read_spaces, start_point, suggest
from pipelines.processes import PROCESS_TAG, process_gone, process_id
from pipelines.progress import counter
from pipelines.registry import study_name
from pipelines.splits import Fold, season_folds
from pipelines.studies import open_storage, study_key, trial_counts
from pipelines.study_bridge import StudyBridge
from pipelines.tracking import git_sha, log_dataset, log_figures, log_run, stage_run
from pipelines.warehouse import Warehouse, connect

log = logging.getLogger(__name__)

CLOSING_SECONDS = 2.0  # of a seconds budget, kept to close the last studies and draw the leaderboard


@dataclass(frozen=True)
class TrainingData:
    """The training window cut into season folds, with its feature schema."""

    window: Window
    folds: list[Fold]
    schema: FeatureSchema

    @property
    def order(self) -> list[int]:
        """Fold indices in the order cross-validation reports them."""
        return [f.index for f in fold_order(self.folds)]


@dataclass(frozen=True)
class Standing:
    """One leaderboard row: a family study or a baseline."""

    name: str
    complete: int
    pruned: int
    failed: int
    cv_log_loss: float
    cv_auc: float
    seconds: float
    rounds: int = 1


@dataclass(frozen=True)
class TuneResult:
    leaderboard: list[Standing]
    budget_seconds: float | None = None
    seconds: float = 0.0


@dataclass
class Search:
    """One family's study, as the stage spends its budget on it round after round."""

    family: str
    study: optuna.Study
    bridge: StudyBridge
    space: dict
    added: int = 0  # trials this call ran
    seconds: float = 0.0
    rounds: int = 0
    standing: Standing | None = None  # set when closed

    def close(self) -> Standing:
        """Close the family's parent run (once) and return its leaderboard row."""
        if self.standing is None:
            self.bridge.finish(self.study)
            self.standing = _standing(self)
        return self.standing

    def best(self) -> float:
        """The study's best CV log loss so far (infinite before its first complete trial)."""
        complete = self.study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
        return min((t.value for t in complete if t.value is not None), default=math.inf)


def main(
    profile: Profile,
    spec: Spec,
    family: str = "all",
    n_trials: int | None = None,
    seconds: float | None = None,
    n_jobs: int = 0,
    storage: str | None = None,
) -> TuneResult:
    """Score the baselines, then spend the stage's budget on one study per family (run or resumed).

    `n_trials` caps new trials per family and `seconds` bounds the whole stage (either replaces
    the spec's budget); `n_jobs` is the cores cross-validation uses (0: all of them).
    """
    started = time.monotonic()
    tuning: TuningConfig = spec.tuning_section
    families = resolve_families(tuning, family)
    spaces = _spaces(tuning, families)
    budget = _budget(tuning, n_trials, seconds)
    with connect(profile, read_only=True) as warehouse:
        data = load_training_data(warehouse, spec)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    window = data.window
    with FoldRunner(window.X, window.y, data.folds, n_jobs or available_cores()) as runner:
        with stage_run(profile, spec, "tune") as top:
            tags = _record_context(spec, data, top.info.run_id, budget, runner.n_jobs)
            column = spec.baseline.column if spec.baseline else None
            standings = [
                _score_baseline(name, est, data, runner, top, tags) for name, est in baselines(column).items()
            ]
            where = storage or profile.optuna_storage
            searches = [_open_search(spec, name, spaces[name], where, top, tags) for name in families]
            deadline = None if budget.seconds is None else started + budget.seconds - CLOSING_SECONDS
            run = lambda search, until: _search(
                search, data, tuning.seed, runner, until, deadline, budget.trials
            )
            _spend(searches, deadline, run)
            standings += [search.close() for search in searches]
            board = pd.DataFrame([s.__dict__ for s in standings])
            mlflow.log_metric("tune_seconds", time.monotonic() - started)
            mlflow.log_text(board.to_csv(index=False), "leaderboard.csv")
            log_figures({"plots/leaderboard.png": plots.leaderboard_figure(board)})
    return TuneResult(standings, budget.seconds, round(time.monotonic() - started, 1))


def resolve_families(tuning: TuningConfig, family: str) -> list[str]:
    """`all` means the spec's families; otherwise one known family."""
    if family == "all":
        return list(tuning.families)
    if family not in FACTORIES:
        raise PodiumError(f"unknown family {family!r}: choose one of {', '.join(FACTORIES)} or all.")
    return [family]


def _spaces(tuning: TuningConfig, families: list[str]) -> dict[str, dict]:
    """The search space of each family, all of them present."""
    spaces = read_spaces(tuning.search_space)
    missing = [f for f in families if f not in spaces]
    if missing:
        raise ConfigError(f"{tuning.search_space} has no search space for {missing}: add one per family.")
    return spaces


def _budget(tuning: TuningConfig, n_trials: int | None, seconds: float | None) -> TuningBudget:
    """The spec's budget, with a trial cap or seconds given for this call replacing its own."""
    if n_trials is None and seconds is None:
        return tuning.budget
    return TuningBudget(seconds=seconds, trials=n_trials)


def load_training_data(warehouse: Warehouse, spec: Spec) -> TrainingData:
    """Read the training window (never the holdout) and cut it into season folds."""
    schema = dataset.read_schema(warehouse, spec)
    dataset.check_contract(warehouse, spec, schema)
    window = dataset.load_training(warehouse, spec, schema)
    return TrainingData(window, season_folds(window.times, spec.cv.folds, spec.cv.gap), schema)


def summarize(scores: list[dict[str, float]], order: list[int]) -> dict[str, float]:
    """Per-fold metrics as `fold<i>.<metric>` (i: the fold's index) plus their means as `cv_<metric>`."""
    out = {f"fold{i}.{k}": v for i, s in zip(order, scores, strict=False) for k, v in s.items()}
    if len(scores):
        out |= {f"cv_{k}": float(np.mean([s[k] for s in scores])) for k in METRICS}
    return out


def halving_rounds(families: int) -> int:
    """Rounds of successive halving that take `families` down to one: ceil(log2 n) + 1."""
    return math.ceil(math.log2(families)) + 1 if families > 1 else 1


def _spend(
    searches: list[Search], deadline: float | None, run: Callable[[Search, float | None], None]
) -> None:
    """Successive halving over families until `deadline` (a `time.monotonic()`), each round the same time.

    Each round shares its time among the families still in contention; after it, the better
    half by best CV log loss goes on. A family's first trial may run to the stage's deadline,
    so a slow family is judged on one complete trial. Without seconds, each family runs once.
    """
    if deadline is None:
        for search in searches:
            run(search, None)
        return
    alive = list(searches)
    total = halving_rounds(len(alive))
    for r in range(total):
        left = max(0.0, deadline - time.monotonic())
        log.info("round %d of %d, %.0f s left: %s", r + 1, total, left, ", ".join(s.family for s in alive))
        round_end = time.monotonic() + left / (total - r)
        for i, search in enumerate(alive):
            now = time.monotonic()
            if now >= deadline:
                return
            run(search, now + (round_end - now) / (len(alive) - i))
        ranked = sorted(alive, key=Search.best)
        alive = ranked[: math.ceil(len(alive) / 2)]
        for search in ranked[len(alive) :]:
            search.close()  # within the budget: only the last survivors close after the deadline


def _open_search(
    spec: Spec, family: str, space: dict, storage: str, top: mlflow.ActiveRun, tags: dict
) -> Search:
    """The family's study (created or resumed) and its MLflow parent; stale trials failed first."""
    tuning: TuningConfig = spec.tuning_section
    study = _open_study(study_name(spec, family), storage, tuning)
    bridge = StudyBridge.open(
        study.study_name,
        family,
        top.info.experiment_id,
        top.info.run_id,
        tags,
        storage,
        study_key(study, storage),
    )
    fail_stale_trials(study, bridge)
    start = start_point(space)
    if start and not study.trials:
        study.enqueue_trial(start, skip_if_exists=True)  # a known-good first trial, as FLAML starts from one
    return Search(family, study, bridge, space)


def _search(
    search: Search,
    data: TrainingData,
    seed: int,
    runner: FoldRunner,
    until: float | None,
    deadline: float | None,
    cap: int | None,
) -> None:
    """One round of a family: trials until `until` or the trial cap; each logged once through the bridge.

    A trial still running at `until` stops at its next fold boundary (pruned), except a family's
    first complete trial, which may run on to the stage's `deadline`.
    """
    left = None if cap is None else cap - search.added
    if left == 0:
        return
    stop = deadline if search.best() == math.inf else until
    started = time.monotonic()
    with counter(f"tune {search.family}", left) as advance:
        search.study.optimize(
            _objective(search, data, seed, runner, stop),
            n_trials=left,
            timeout=None if until is None else max(until - started, 0.001),
            catch=(Exception,),
            callbacks=[lambda *_: advance()],
        )
    search.seconds += time.monotonic() - started
    search.rounds += 1
    if runner.failure:
        raise runner.failure


def _objective(
    search: Search, data: TrainingData, seed: int, runner: FoldRunner, until: float | None
) -> Callable[[optuna.Trial], float]:
    """One trial: sample, cross-validate with pruning, log it once; the mean CV log loss."""
    bridge, family = search.bridge, search.family

    def objective(trial: optuna.Trial) -> float:
        search.added += 1
        trial.set_user_attr(PROCESS_TAG, process_id())
        params = suggest(trial, search.space)
        seen: list[dict[str, float]] = []
        started = time.perf_counter()
        try:
            estimator = make_estimator(family, params, data.schema, seed)
            runner.run(estimator, _fold_check(trial, len(data.folds), until, seen))
        except optuna.TrialPruned:
            bridge.log_trial(trial, "PRUNED", params, summarize(seen, data.order) | _fit_time(started))
            raise
        except Exception as exc:
            error = f"{type(exc).__name__}: {exc}"
            bridge.log_trial(trial, "FAIL", params, summarize(seen, data.order), error=error)
            if runner.failure:
                search.study.stop()
            raise
        metrics = summarize(seen, data.order)
        trial.set_user_attr("metrics", {k: metrics[f"cv_{k}"] for k in METRICS})
        bridge.log_trial(trial, "COMPLETE", params, metrics | _fit_time(started))
        return metrics["cv_log_loss"]

    return objective


def _fold_check(
    trial: optuna.Trial, folds: int, until: float | None, seen: list[dict[str, float]]
) -> Callable[[list[dict[str, float]]], None]:
    """After each fold: keep its scores, report the running mean, stop if pruned or out of time."""

    def check(scores: list[dict[str, float]]) -> None:
        seen[:] = scores
        trial.report(float(np.mean([s["log_loss"] for s in scores])), len(scores) - 1)
        if trial.should_prune():
            raise optuna.TrialPruned()
        if until is not None and len(scores) < folds and time.monotonic() >= until:
            trial.set_user_attr("stopped", "out of budget at a fold boundary")
            raise optuna.TrialPruned()

    return check


def fail_stale_trials(study: optuna.Study, bridge: StudyBridge) -> list[int]:
    """Fail the trials a killed worker left RUNNING, each with a FAILED child run; their numbers."""
    stale = [
        t
        for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,))
        if process_gone(t.user_attrs.get(PROCESS_TAG))
    ]
    for trial in stale:
        study._storage.set_trial_state_values(trial._trial_id, optuna.trial.TrialState.FAIL)
        error = f"its worker {trial.user_attrs[PROCESS_TAG]} was killed while the trial ran"
        bridge.log_trial(trial, "FAIL", dict(trial.params), {}, error=error)
        log.warning("%s trial %d: %s; marked FAIL", study.study_name, trial.number, error)
    return [t.number for t in stale]


def _fit_time(started: float) -> dict[str, float]:
    return {"fit_seconds": time.perf_counter() - started}


def _standing(search: Search) -> Standing:
    """A family's leaderboard row: trial counts, its best trial's CV metrics, the time this call spent."""
    states = trial_counts(search.study)
    best = search.study.best_trial.user_attrs.get("metrics", {}) if states["COMPLETE"] else {}
    nan = float("nan")
    return Standing(
        search.family,
        states["COMPLETE"],
        states["PRUNED"],
        states["FAIL"],
        best.get("log_loss", nan),
        best.get("auc", nan),
        round(search.seconds, 1),
        search.rounds,
    )


def _open_study(name: str, storage: str, tuning: TuningConfig) -> optuna.Study:
    """Create or resume a study: seeded multivariate TPE, a median pruner over per-fold reports."""
    return optuna.create_study(
        study_name=name,
        storage=open_storage(storage),
        direction="minimize",
        sampler=optuna.samplers.TPESampler(
            seed=tuning.seed, n_startup_trials=tuning.sampler_startup_trials, multivariate=True
        ),
        pruner=optuna.pruners.MedianPruner(n_startup_trials=tuning.pruner_startup_trials, n_warmup_steps=1),
        load_if_exists=True,
    )


def _record_context(
    spec: Spec, data: TrainingData, run_id: str, budget: TuningBudget, cores: int
) -> dict[str, str]:
    """Log the training window and folds on the top run; return the tags every run carries."""
    lineage = dataset.lineage_dataset(spec, data.window, dataset.training_name(spec))
    log_dataset(lineage, context="training")
    folds = [f.describe() for f in data.folds]
    bounds = {"train_start": str(spec.train_start), "holdout_start": str(spec.holdout_start)}
    mlflow.log_dict(bounds | {"folds": folds}, "splits.json")
    seed = spec.tuning.seed if spec.tuning else None
    spend = {"budget_seconds": budget.seconds, "budget_trials": budget.trials, "cv_workers": cores}
    mlflow.log_params(bounds | spend | {"cv_folds": len(folds), "seed": seed, "rows": len(data.window.X)})
    return {
        "podium.spec": spec.name,
        "podium.data_digest": lineage.digest,
        "podium.git_sha": git_sha() or "unknown",
        "podium.seed": str(seed if seed is not None else ""),
        "podium.cv": " ".join(f"{f['train']}>{f['valid']}" for f in folds),
        "podium.top_run_id": run_id,
    } | data.window.source


def _score_baseline(
    name: str,
    estimator: BaseEstimator,
    data: TrainingData,
    runner: FoldRunner,
    top: mlflow.ActiveRun,
    tags: dict[str, str],
) -> Standing:
    """Cross-validate one baseline and log it as a child run with the same metric names."""
    started = time.perf_counter()
    metrics = summarize(runner.run(estimator, here=True), data.order)
    tags = tags | {
        MLFLOW_PARENT_RUN_ID: top.info.run_id,
        "podium.role": "baseline",
        "podium.family": f"baseline:{name}",
        "podium.baseline": name,
    }
    log_run(MlflowClient(), top.info.experiment_id, f"baseline-{name}", tags, metrics)
    log.info("baseline %s: CV log loss %.4f", name, metrics["cv_log_loss"])
    seconds = round(time.perf_counter() - started, 1)
    return Standing(f"baseline:{name}", 1, 0, 0, metrics["cv_log_loss"], metrics["cv_auc"], seconds)
