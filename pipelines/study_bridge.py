"""The Optuna <-> MLflow bridge: one parent run per family study, one nested run per trial.

Trial runs are written off the trial's path by a writer thread (`pipelines.runwriter`); runs that a
killed worker or a failed store left missing are written later from the study itself.
"""

from __future__ import annotations

import logging
import threading
import time
import warnings
from collections import defaultdict
from datetime import datetime
from typing import Any

import optuna
from mlflow.entities import Metric, RunTag
from mlflow.tracking import MlflowClient
from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID, MLFLOW_RUN_NAME

from pipelines.errors import TrackingStoreError
from pipelines.processes import PROCESS_TAG, process_gone, process_id
from pipelines.runwriter import RunRecord, RunWriter, epoch_ms, number_ranges, write_all
from pipelines.secrets import hide_password
from pipelines.studies import storage_key, trial_counts
from pipelines.tracking import store_answers, store_detail

log = logging.getLogger(__name__)


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
                    self.client.set_terminated(run.info.run_id, status=status, end_time=epoch_ms(ended))
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
        status, start_ms, end_ms = STATUS[state], epoch_ms(started), epoch_ms(ended or datetime.now())
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
    from matplotlib.figure import Figure
    from optuna.visualization import matplotlib as optuna_plots

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # optuna marks its matplotlib plots experimental
        ax = optuna_plots.plot_optimization_history(study)
        assert isinstance(ax.figure, Figure)  # optuna draws each plot on a new figure, never a subfigure
        client.log_figure(run_id, ax.figure, "plots/optimization_history.png")
        plt.close(ax.figure)
        try:
            ax = optuna_plots.plot_param_importances(study)
        except (ValueError, RuntimeError) as exc:  # too few trials, or one distinct value
            log.debug("no param importances for %s: %s", study.study_name, exc)
            return
        assert isinstance(ax.figure, Figure)  # as above
        client.log_figure(run_id, ax.figure, "plots/param_importances.png")
        plt.close(ax.figure)
