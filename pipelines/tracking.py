"""Tracking plumbing shared by the stages: MLflow runs, the Optuna <-> MLflow bridge, Optuna storages.

A stage's run nests under an active run (so `podium run` / `-e main` shows one tree),
resumes the run that `mlflow run` created (MLFLOW_RUN_ID), or starts a new run in the
spec's experiment. Every run is tagged with its stage, spec, profile and git sha and
carries the resolved spec as `spec.json`.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import shutil
import socket
import subprocess
import threading
import time
import urllib.request
import warnings
from collections import Counter, defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from functools import lru_cache
from pathlib import Path
from typing import Any

import mlflow
import optuna
import sqlalchemy
from mlflow.data.dataset import Dataset
from mlflow.entities import Metric, RunTag
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID, MLFLOW_RUN_NAME

from pipelines.config import Profile, Spec
from pipelines.errors import PodiumError, TrackingStoreError
from pipelines.runwriter import RunRecord, RunWriter, number_ranges, write_all, write_run
from pipelines.secrets import hide_password, refuse_password
from pipelines.warehouse.base import first_line

log = logging.getLogger(__name__)


# MLflow retries a dead server for minutes by default (7 retries, backoff factor 2); Podium gives up
# within about 15 s unless the user set MLflow's own variables.
HTTP_RETRIES = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "3", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "2"}


def configure(profile: Profile) -> None:
    """Point MLflow at the profile's tracking store unless MLFLOW_TRACKING_URI says otherwise."""
    for name, value in HTTP_RETRIES.items():
        os.environ.setdefault(name, value)
    if profile.tracking_uri and not os.environ.get("MLFLOW_TRACKING_URI"):
        mlflow.set_tracking_uri(profile.tracking_uri)


# What MLflow raises when its store cannot be used: an unsupported or unreachable URI, a missing DB driver.
STORE_ERRORS = (MlflowException, ImportError, sqlalchemy.exc.SQLAlchemyError)


def store_error(exc: Exception) -> PodiumError:
    """A tracking store MLflow cannot use, as one clear error: its URI (password hidden), why, and the fix."""
    uri = hide_password(mlflow.get_tracking_uri())
    return PodiumError(
        f"cannot use the MLflow tracking store {uri}: {store_detail(exc)}. Fix "
        "MLFLOW_TRACKING_URI or "
        "the profile's tracking_uri (e.g. sqlite:///mlflow.db), or start the server it names."
    )


def store_detail(exc: BaseException) -> str:
    """Why a store failed, in one short clause: a refused connection's errno, else its first 200 chars."""
    text = " ".join(str(getattr(exc, "message", exc)).split()) or type(exc).__name__
    refused = re.search(r"\[Errno -?\d+\][^\"')]*", text)  # a server that does not answer: say only that
    detail = refused.group(0) if refused else text if len(text) <= 200 else text[:200].rsplit(". ", 1)[0]
    return hide_password(detail.strip().rstrip("."))


@contextmanager
def stage_run(profile: Profile, spec: Spec, stage: str) -> Iterator[mlflow.ActiveRun]:
    """Open the MLflow run of one stage; it ends FAILED if the block raises."""
    configure(profile)
    resumed = os.environ.get("MLFLOW_RUN_ID")  # read first: start_run unsets it
    try:
        if mlflow.active_run():
            run = nested_run(stage)
        elif resumed:
            check_experiment(resumed, spec)
            run = mlflow.start_run()
        else:
            run = mlflow.start_run(experiment_id=experiment_id(spec.name), run_name=stage)
    except STORE_ERRORS as exc:
        if resumed and getattr(exc, "error_code", "") == "RESOURCE_DOES_NOT_EXIST":
            raise PodiumError(
                f"MLFLOW_RUN_ID {resumed} names no run in the MLflow tracking store "
                f"{hide_password(mlflow.get_tracking_uri())}: unset it, or point MLFLOW_TRACKING_URI at "
                "the store that holds that run."
            ) from None
        raise store_error(exc) from None
    with run:
        mlflow.set_tags(
            {
                "podium.stage": stage,
                "podium.spec": spec.name,
                "podium.profile": profile.name,
                "podium.backend": profile.warehouse.backend,
                "podium.git_sha": git_sha() or "unknown",
                PROCESS_TAG: process_id(),
            }
        )
        mlflow.log_dict(spec.model_dump(mode="json", by_alias=True), "spec.json")
        end_stale_runs(MlflowClient(), run.info.experiment_id, of_stage(stage))
        try:
            yield run
        except Exception as exc:
            _end_failed(run, exc)
            raise


def check_experiment(run_id: str, spec: Spec) -> None:
    """A run that `mlflow run` opened must be in the spec's experiment, or a study would get two parents."""
    try:
        experiment = MlflowClient().get_experiment(MlflowClient().get_run(run_id).info.experiment_id)
    except MlflowException:
        return  # no such run: start_run says so, with the fix
    if experiment.name != spec.name:
        raise PodiumError(
            f"`mlflow run` put this run in experiment {experiment.name!r}, but spec {spec.name} files "
            f"its runs and studies in experiment {spec.name!r}: pass `--experiment-name {spec.name}` to "
            "`mlflow run`."
        )


RETRIES_VARIABLE = "MLFLOW_HTTP_REQUEST_MAX_RETRIES"


def _end_failed(run: mlflow.ActiveRun, exc: Exception) -> None:
    """End `run` FAILED if still active, keeping `exc` the error a user sees even if the store fails here too.

    After a TrackingStoreError the store is known to be down, so it is tried once, without MLflow's retries.
    """
    active = mlflow.active_run()
    if active is None or active.info.run_id != run.info.run_id:
        return
    previous = os.environ.get(RETRIES_VARIABLE)
    if isinstance(exc, TrackingStoreError):
        os.environ[RETRIES_VARIABLE] = "0"
    try:
        mlflow.end_run("FAILED")
    except STORE_ERRORS as failed:
        log.debug("could not end the run FAILED after %s: %s", type(exc).__name__, first_line(failed))
    finally:
        if previous is None:
            os.environ.pop(RETRIES_VARIABLE, None)
        else:
            os.environ[RETRIES_VARIABLE] = previous


# --- runs and trials left RUNNING by a killed process ----------------------------------

PROCESS_TAG = "podium.process"  # host:pid:start of the process that runs a stage or a trial


def process_id(pid: int | None = None) -> str:
    """This process (or `pid`) as host:pid:start-time, so a reused pid is not mistaken for it."""
    pid = pid or os.getpid()
    return f"{socket.gethostname()}:{pid}:{_start_time(pid)}"


def process_gone(ident: str | None) -> bool:
    """Whether the process `ident` names ran on this host and has ended (unknown hosts: False)."""
    if not ident or ident.count(":") < 2:
        return False
    host, pid, started = ident.rsplit(":", 2)
    return host == socket.gethostname() and (not pid.isdigit() or _start_time(int(pid)) != started)


def _start_time(pid: int) -> str:
    """The process's start time in clock ticks since boot (Linux), or "" when it does not exist."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        try:
            os.kill(pid, 0)
        except OSError:
            return ""
        return "?"  # alive, start time unknown (no /proc)


def stale_runs(client: MlflowClient, experiment_id: str, where: str) -> list[Any]:
    """RUNNING runs matching `where` whose process has ended."""
    runs = client.search_runs(
        [experiment_id], filter_string=f"attributes.status = 'RUNNING' and {where}", max_results=1000
    )
    return [r for r in runs if process_gone(r.data.tags.get(PROCESS_TAG))]


def end_stale_runs(client: MlflowClient, experiment_id: str, where: str) -> list[str]:
    """End FAILED every RUNNING run matching `where` whose process was killed; their ids."""
    ended = []
    for run in stale_runs(client, experiment_id, where):
        client.set_tag(run.info.run_id, "podium.stale", "its process ended without closing the run")
        client.set_terminated(run.info.run_id, status="FAILED")
        log.warning(
            "ended stale run %s (%s) FAILED: its process was killed", run.info.run_id, run.info.run_name
        )
        ended.append(run.info.run_id)
    return ended


def end_stale_stage_runs(spec: Spec, stage: str) -> list[str]:
    """End FAILED the spec's `stage` runs whose process was killed, for a stage with nothing to do."""
    client = MlflowClient()
    found = client.get_experiment_by_name(spec.name)
    return end_stale_runs(client, found.experiment_id, of_stage(stage)) if found else []


def stale_run_trees(client: MlflowClient, experiment_id: str, where: str) -> list[Any]:
    """`stale_runs(where)` and the RUNNING runs nested in them at any depth, innermost first.

    A nested run (a backtest's period, a study's parent and trials, a model run) records no process
    of its own: it is stale with the run it nests in, unless a run between them records a live process.
    Runs between may have ended already (another stage ends its own stale runs). Ending them in this
    order leaves a top run RUNNING, so found again, until everything nested in it has ended.
    """
    roots = {r.info.run_id for r in stale_runs(client, experiment_id, where)}
    if not roots:
        return []
    running = client.search_runs(
        [experiment_id], filter_string="attributes.status = 'RUNNING'", max_results=50000
    )
    known = {r.info.run_id: r for r in running}

    def read(run_id: str) -> Any:
        if run_id not in known:
            try:
                known[run_id] = client.get_run(run_id)
            except MlflowException:  # deleted, or in no store we see
                known[run_id] = None
        return known[run_id]

    def depth(run: Any) -> int | None:
        """How deep `run` nests in a stale root (0: a root), or None."""
        for level in range(100):
            owner = run.data.tags.get(PROCESS_TAG)
            if run.info.run_id in roots:
                return level
            parent = run.data.tags.get(MLFLOW_PARENT_RUN_ID)
            if (owner and not process_gone(owner)) or not parent or (run := read(parent)) is None:
                return None
        return None

    found = [(level, run) for run in running if (level := depth(run)) is not None]
    return [run for _, run in sorted(found, key=lambda pair: -pair[0])]


def end_stale_stage_trees(spec: Spec, stage: str) -> list[str]:
    """End FAILED the spec's `stage` runs whose process was killed and every RUNNING run nested in them."""
    client = MlflowClient()
    experiment = client.get_experiment_by_name(spec.name)
    stale = stale_run_trees(client, experiment.experiment_id, of_stage(stage)) if experiment else []
    for run in stale:
        client.set_tag(run.info.run_id, "podium.stale", "its process ended without closing the run")
        client.set_terminated(run.info.run_id, status="FAILED")
    for run in stale:
        if run.data.tags.get("podium.stage") == stage:
            log.warning(
                "ended stale run %s (%s) FAILED, and the runs left RUNNING in it: its process was killed",
                run.info.run_id,
                run.info.run_name,
            )
    return [r.info.run_id for r in stale]


def of_stage(stage: str) -> str:
    """The MLflow filter for the runs of one stage."""
    return f"tags.`podium.stage` = '{stage}'"


def nested_run(name: str) -> mlflow.ActiveRun:
    """A child of the active run, in its experiment (MLflow would otherwise file it under Default)."""
    parent = mlflow.active_run()
    return mlflow.start_run(run_name=name, nested=True, experiment_id=parent.info.experiment_id)


def experiment_id(name: str) -> str:
    """The id of the named experiment, created if missing; safe when workers race to create it."""
    client = MlflowClient()
    found = client.get_experiment_by_name(name)
    if found:
        return found.experiment_id
    try:
        return client.create_experiment(name)
    except MlflowException:
        found = client.get_experiment_by_name(name)
        if not found:
            raise
        return found.experiment_id


@lru_cache(maxsize=1)
def git_sha() -> str | None:
    """The current commit, if the project is a git checkout."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5, check=True
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


# --- the Optuna <-> MLflow bridge ----------------------------------------------------

ROLE_STUDY = "study"
STATUS = {"COMPLETE": "FINISHED", "PRUNED": "KILLED", "FAIL": "FAILED"}
STATES = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED, optuna.trial.TrialState.FAIL)


class StudyBridge:
    """One parent run per family study, one nested child run per trial, written off the trial's path.

    `log_trial` queues the trial's run and returns at once; a writer thread writes it in three tracking
    calls (create the run, one `log_batch` with its params, metrics and tags, its end status). `finish`
    waits for the queue, reports a store that failed as one error naming the trials whose runs are
    missing, and writes the runs that trials of ended processes lack, from the study. Parents are shared:
    every process that works on a study logs under the same parent (the earliest created), so resumed and
    parallel workers add children to one tree. No autolog, no model per trial.
    """

    def __init__(
        self,
        client: MlflowClient,
        experiment_id: str,
        parent_id: str,
        study_name: str,
        family: str,
        tags: dict[str, str],
        storage: str = "",
    ) -> None:
        self.client, self.experiment_id, self.parent_id = client, experiment_id, parent_id
        self.study_name, self.family, self.tags, self.storage = study_name, family, tags, storage
        self._writer: RunWriter | None = None
        self._lock = threading.Lock()

    @classmethod
    def open(
        cls,
        study_name: str,
        family: str,
        experiment_id: str,
        top_run_id: str | None,
        tags: dict[str, str],
        storage: str = "",
        key: str | None = None,
    ) -> StudyBridge:
        """Find the parent run of the study, or create it; racing creators agree on the earliest.

        `key` names the study (`study_key`; default: the storage's); studies of one name in two
        storages are two studies, with a parent each.
        """
        client = MlflowClient()
        key = key if key is not None else storage_key(storage) if storage else ""
        parent = _parent_runs(client, experiment_id, study_name, key)
        if not parent:
            run_tags = tags | {
                "podium.role": ROLE_STUDY,
                "podium.study": study_name,
                "podium.family": family,
                "podium.storage": key,
                "podium.storage_label": hide_password(storage),
                MLFLOW_RUN_NAME: family,
            }
            if top_run_id:
                run_tags[MLFLOW_PARENT_RUN_ID] = top_run_id
            mine = client.create_run(experiment_id, tags=run_tags).info.run_id
            parent = _parent_runs(client, experiment_id, study_name, key)
            if parent[0] != mine:
                client.delete_run(mine)
        else:
            client.update_run(parent[0], status="RUNNING")
        return cls(client, experiment_id, parent[0], study_name, family, tags, key)

    def log_trial(
        self,
        trial: optuna.Trial | optuna.trial.FrozenTrial,
        state: str,
        params: dict[str, Any],
        metrics: dict[str, float],
        error: str | None = None,
    ) -> None:
        """Queue one finished trial's child run (its status mirrors Optuna's state); returns at once."""
        self._queue(self._record(trial, state, params, metrics, error))

    def flush(self) -> None:
        """Wait until every run queued so far is written; stop the writer (the next `log_trial` starts one).

        After a store failure, the runs not written are tried once more if the store answers now; those still
        missing are one TrackingStoreError naming their trials.
        """
        with self._lock:
            writer, self._writer = self._writer, None
        if writer is None:
            return
        missing, error = writer.close(), writer.error
        if missing and store_answers(self.client.tracking_uri):
            missing, error = write_all(self.client, self.experiment_id, missing)
        if missing:
            raise self._failed(error, sorted({r.trial for r in missing if r.trial is not None}))

    def finish(self, study: optuna.Study) -> None:
        """Write every queued run and the runs trials lack, then put the study's summary on the parent run.

        The summary is its best value and params, trial counts and plots. Best params are tags
        (`best.<name>`), not params: a resumed study may find a new best.
        """
        self.flush()
        self._settle()
        self.mend(study)
        counts = trial_counts(study)
        metrics = {f"trials.{state.name.lower()}": float(counts[state.name]) for state in STATES}
        tags: dict[str, str] = {}
        if metrics["trials.complete"]:
            best = study.best_trial
            metrics |= _kept_metrics(best)  # cv_<metric>: the column baselines and trials use too
            tags = {f"best.{k}": str(v) for k, v in best.params.items()} | {"best.trial": str(best.number)}
            _log_plots(self.client, self.parent_id, study)
        now = int(time.time() * 1000)
        self.client.log_batch(
            self.parent_id,
            metrics=[Metric(k, v, now, 0) for k, v in metrics.items()],
            tags=[RunTag(k, v) for k, v in tags.items()],
        )
        self.client.set_terminated(self.parent_id, status="FINISHED")

    def mend(self, study: optuna.Study) -> list[int]:
        """Write the child runs finished trials lack, from the study; end those left RUNNING. Their numbers.

        Only trials of this process (its queue is flushed) or of processes that ended are mended: a live
        worker's runs may still wait in its own queue. A killed worker or a failed store leaves such gaps.
        """
        children: dict[str, list[Any]] = defaultdict(list)
        for run in self._children():
            children[run.data.tags.get("podium.trial", "")].append(run)
        mended = []
        for trial in _unattended_trials(study):
            status, runs = STATUS[trial.state.name], children.get(str(trial.number), [])
            ended = trial.datetime_complete or datetime.now()
            for run in runs:
                if run.info.status == "RUNNING":  # its writer was killed before it ended the run
                    self.client.set_terminated(run.info.run_id, status=status, end_time=_ms(ended))
                    mended.append(trial.number)
            if not runs:
                record = self._record(
                    trial, trial.state.name, trial.params, _kept_metrics(trial), ended=ended
                )
                record.tags["podium.mended"] = "written from the Optuna study: the trial's run was missing"
                self._queue(record)
                mended.append(trial.number)
        self.flush()
        if mended:
            log.info("%s: wrote the missing MLflow runs of trials %s", self.study_name, number_ranges(mended))
        return mended

    def _record(
        self,
        trial: optuna.Trial | optuna.trial.FrozenTrial,
        state: str,
        params: dict[str, Any],
        metrics: dict[str, float],
        error: str | None = None,
        ended: datetime | None = None,
    ) -> RunRecord:
        """The child run of one trial, ready to write."""
        tags = self.tags | {
            MLFLOW_PARENT_RUN_ID: self.parent_id,
            "podium.family": self.family,
            "podium.study": self.study_name,
            "podium.trial": str(trial.number),
            "podium.state": state,
        }
        if state == "PRUNED":
            tags["podium.pruned"] = "true"
        if error:
            tags["podium.error"] = error[:4000]
        name, started = f"{self.family}-{trial.number:04d}", trial.datetime_start or datetime.now()
        status, start_ms, end_ms = STATUS[state], _ms(started), _ms(ended or datetime.now())
        return RunRecord(name, tags, dict(metrics), dict(params), status, start_ms, end_ms, trial.number)

    def _queue(self, record: RunRecord) -> None:
        """Hand a run to this bridge's writer thread, starting one if none runs."""
        with self._lock:
            if self._writer is None:
                self._writer = RunWriter(self.client, self.experiment_id)
            self._writer.put(record)

    def _failed(self, error: BaseException | None, trials: list[int]) -> TrackingStoreError:
        """One error: the failed store, the study kept intact, the trials whose runs are missing, the fix."""
        uri = hide_password(self.client.tracking_uri)
        return TrackingStoreError(
            f"the MLflow tracking store {uri} failed while study {self.study_name} ran "
            f"({store_detail(error or TimeoutError())}): every trial is intact in the Optuna study, but the "
            f"MLflow runs of trials {number_ranges(trials)} are missing. Start the tracking server or fix "
            "MLFLOW_TRACKING_URI (or the profile's tracking_uri), then rerun the same `podium tune` command "
            f"(e.g. `podium tune --family {self.family}`): the study resumes, and the rerun writes the "
            "missing runs from the trials the study kept."
        )

    def _children(self) -> list[Any]:
        """The child runs under this bridge's parent run."""
        return self.client.search_runs(
            [self.experiment_id],
            filter_string=f"tags.`{MLFLOW_PARENT_RUN_ID}` = '{self.parent_id}'",
            max_results=50000,
        )

    def _settle(self) -> None:
        """If a concurrent worker's parent run is the earlier one, move this worker's children there.

        Two workers opening a new study at the same moment may each create a parent before
        seeing the other's; both exist by now, so both agree on the earliest.
        """
        earliest = _parent_runs(self.client, self.experiment_id, self.study_name, self.storage)[0]
        if earliest == self.parent_id:
            return
        for child in self._children():
            self.client.set_tag(child.info.run_id, MLFLOW_PARENT_RUN_ID, earliest)
        self.client.delete_run(self.parent_id)
        self.parent_id = earliest


def _unattended_trials(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    """Finished trials run by this process or by one that has ended: no live writer holds their runs."""
    me, ended = process_id(), {}
    found = []
    for trial in study.get_trials(deepcopy=False, states=STATES):
        owner = trial.user_attrs.get(PROCESS_TAG)
        if owner not in ended:
            ended[owner] = owner == me or process_gone(owner)
        if ended[owner]:
            found.append(trial)
    return found


def _kept_metrics(trial: optuna.trial.FrozenTrial) -> dict[str, float]:
    """The CV means a trial keeps in Optuna (`cv_<metric>`), for a run written from the study."""
    return {f"cv_{k}": float(v) for k, v in trial.user_attrs.get("metrics", {}).items()}


def _ms(moment: datetime) -> int:
    return int(moment.timestamp() * 1000)


def store_answers(uri: str, timeout: float = 2.0) -> bool:
    """Whether the store may work now: an HTTP server's /health answers (no retries); other stores: yes."""
    if not uri.startswith(("http://", "https://")):
        return True
    try:
        with urllib.request.urlopen(f"{uri.rstrip('/')}/health", timeout=timeout) as response:
            return response.status == 200
    except (OSError, ValueError):
        return False


def log_figures(figures: dict[str, Any]) -> None:
    """Log matplotlib figures to the active run as PNG artifacts at their paths, then close them."""
    import matplotlib.pyplot as plt

    for path, figure in figures.items():
        mlflow.log_figure(figure, path)
        plt.close(figure)


def log_dataset(dataset: Dataset, context: str, attempts: int = 3) -> None:
    """`mlflow.log_input`, tolerant of another process registering the same dataset first.

    MLflow inserts the dataset row before linking it to the run, so two workers logging the
    same training window race on a unique key; the loser retries and finds the row present.
    """
    for attempt in range(attempts):
        try:
            mlflow.log_input(dataset, context=context)
            return
        except MlflowException:
            if attempt == attempts - 1:
                raise
            time.sleep(0.2 * (attempt + 1))


def log_run(
    client: MlflowClient,
    experiment_id: str,
    name: str,
    tags: dict[str, str],
    metrics: dict[str, float],
    params: dict[str, Any] | None = None,
    status: str = "FINISHED",
    started: datetime | None = None,
) -> str:
    """A finished run in three calls, written now: create it, one `log_batch`, end it with `status`."""
    now = int(time.time() * 1000)
    start_ms = _ms(started) if started else now
    return write_run(
        client, experiment_id, RunRecord(name, tags, metrics, params or {}, status, start_ms, now)
    )


STUDY_KEY = "podium.study_key"  # a study's own user attribute: what names its MLflow parent run


def study_key(study: optuna.Study, storage: str) -> str:
    """The study's own name for its MLflow parent, kept in the study, so moving its storage keeps it.

    A study gets it once, from the storage it lives in then (what earlier parents were tagged with);
    the same study found through another path or URL later (a moved or copied project) keeps it.
    """
    key = study.user_attrs.get(STUDY_KEY)
    if not isinstance(key, str):
        key = storage_key(storage)
        study.set_user_attr(STUDY_KEY, key)
    return key


def storage_key(storage: str) -> str:
    """A short, filter-safe digest naming one Optuna storage (a URL, or a journal's absolute path)."""
    label = storage if "://" in storage else str(Path(storage).resolve())
    return hashlib.sha1(hide_password(label).encode()).hexdigest()[:16]


def _parent_runs(client: MlflowClient, experiment_id: str, study_name: str, storage: str = "") -> list[str]:
    """Parent runs of a study (in one storage, when given), earliest first (ties broken by run id)."""
    where = f"tags.`podium.role` = '{ROLE_STUDY}' and tags.`podium.study` = '{study_name}'"
    if storage:
        where += f" and tags.`podium.storage` = '{storage}'"
    runs = client.search_runs([experiment_id], filter_string=where, max_results=50)
    return [r.info.run_id for r in sorted(runs, key=lambda r: (r.info.start_time, r.info.run_id))]


def _log_plots(client: MlflowClient, run_id: str, study: optuna.Study) -> None:
    """Optimization history and (with enough trials) parameter importances, as PNGs."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from optuna.visualization import matplotlib as optuna_plots

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # optuna marks its matplotlib plots experimental
        ax = optuna_plots.plot_optimization_history(study)
        client.log_figure(run_id, ax.figure, "plots/optimization_history.png")
        plt.close(ax.figure)
        try:
            ax = optuna_plots.plot_param_importances(study)
        except (ValueError, RuntimeError) as exc:  # too few trials, or one distinct value
            log.debug("no param importances for %s: %s", study.study_name, exc)
            return
        client.log_figure(run_id, ax.figure, "plots/param_importances.png")
        plt.close(ax.figure)


def trial_counts(study: optuna.Study) -> Counter[str]:
    """How many of the study's trials are in each state, by state name (COMPLETE, PRUNED, FAIL, ...)."""
    return Counter(t.state.name for t in study.get_trials(deepcopy=False))


# --- Optuna storages ---------------------------------------------------------------------


def open_storage(storage: str, mend: bool = True) -> optuna.storages.BaseStorage:
    """A database URL as an RDB storage; a plain path is a resumable journal file (its torn tail mended)."""
    refuse_password(storage, "the Optuna storage")
    try:
        if "://" in storage:
            return _rdb_storage(storage)
        path = Path(storage)
        path.parent.mkdir(parents=True, exist_ok=True)
        mend_journal(path, repair=mend)
        return _journal(path)
    except (
        sqlalchemy.exc.SQLAlchemyError,
        ImportError,
        OSError,
    ) as exc:  # a bad URL or path, no server, no driver
        detail = hide_password((str(exc).strip().splitlines() or [type(exc).__name__])[0].rstrip("."))
        raise PodiumError(
            f"cannot open the Optuna storage {hide_password(storage)}: {detail}. Pass --storage (or set the "
            "profile's optuna_storage) to a journal file path, or to a database URL that is reachable and "
            "whose "
            "driver is installed (sqlite:///optuna.db, postgresql://user@host/db)."
        ) from None


def _journal(path: Path) -> optuna.storages.JournalStorage:
    """A journal storage, replayed now, so that a damaged record is one clear error."""
    try:
        return optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(path)))
    except (ValueError, KeyError, TypeError) as exc:  # a record inside the file is not valid JSON
        raise PodiumError(
            f"the Optuna journal {path} is damaged inside (not only at its end: {first_line(exc)}): "
            "restore it "
            f"from a backup ({path.name}.torn-* if Podium made one), or move it aside to start the studies "
            "afresh."
        ) from None


def mend_journal(path: Path, repair: bool = True) -> Path | None:
    """Cut a journal's torn last record (a writer killed mid-line) after a backup; the backup's path, if any.

    Optuna skips a torn last line but fuses the next append onto it, after which every read fails.
    Every whole record, so every finished trial, is kept. With `repair=False` it only warns.
    """
    torn = _torn_tail(path)
    if not torn:
        return None
    if not repair:
        log.warning(
            "the Optuna journal %s ends in a torn record (%d bytes): `podium tune` mends it", path, torn
        )
        return None
    lock = optuna.storages.journal.JournalFileSymlinkLock(str(path))
    lock.acquire()  # writers append under this lock; a dead holder's lock expires after its grace period
    try:
        torn = _torn_tail(path)
        if not torn:
            return None
        backup = path.with_name(f"{path.name}.torn-{int(time.time())}")
        shutil.copy2(path, backup)
        os.truncate(path, path.stat().st_size - torn)
    finally:
        lock.release()
    log.warning(
        "the Optuna journal %s ended in a torn record (%d bytes, from a killed writer): cut it, kept every "
        "whole record; the original is %s",
        path,
        torn,
        backup,
    )
    return backup


def _torn_tail(path: Path, block: int = 1 << 16) -> int:
    """How many bytes follow the journal's last newline (0: whole, or no file)."""
    if not path.is_file():
        return 0
    size = path.stat().st_size
    with path.open("rb") as f:
        end = size
        while end > 0:
            start = max(0, end - block)
            f.seek(start)
            chunk = f.read(end - start)
            newline = chunk.rfind(b"\n")
            if newline >= 0:
                return size - (start + newline + 1)
            end = start
    return size


def _rdb_storage(url: str, attempts: int = 3) -> optuna.storages.RDBStorage:
    """Open (on first use, create) an Optuna database; workers starting together race to create its schema."""
    for attempt in range(attempts - 1):
        try:
            return optuna.storages.RDBStorage(url)
        except sqlalchemy.exc.ArgumentError:  # a malformed URL or an unknown dialect: retrying cannot help
            raise
        except sqlalchemy.exc.SQLAlchemyError as exc:  # the loser of the race finds the schema half made
            log.debug("creating the Optuna schema at %s raced another worker: %s", url.split("@")[-1], exc)
            time.sleep(0.5 * (attempt + 1))
    return optuna.storages.RDBStorage(url)
