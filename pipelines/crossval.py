"""Cross-validation over season folds on every core, stopped at a fold boundary when asked.

With one job the folds run in this process; with more, each fold is fitted in a worker
process that holds its own copy of the training window (sent once, when the pool starts)
and runs every estimator on one thread, so nothing is oversubscribed. At most one fold per
worker is in flight. Results are handed to the caller in a fixed order, the largest training
part first (it validates on the latest season), whatever the number of workers, so a pruner
sees the same steps on a laptop and on a workstation. After each fold the caller's `check`
may stop the trial (raise) at that boundary; folds already running finish unseen.
"""

from __future__ import annotations

import multiprocessing
import os
import time
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool

import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator, clone
from threadpoolctl import threadpool_limits

from pipelines import lifeline
from pipelines.errors import PodiumError
from pipelines.metrics import classification_metrics
from pipelines.splits import Fold

Scores = list[dict[str, float]]
FoldCheck = Callable[[Scores], None]

_held: tuple[pd.DataFrame, np.ndarray, list[Fold]] | None = None  # a worker's copy of the window


def available_cores() -> int:
    """The cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def fold_metrics(estimator: BaseEstimator, X: pd.DataFrame, y: np.ndarray, fold: Fold) -> dict[str, float]:
    """Fit a fresh copy on the fold's training part and score it on the fold's season."""
    model = clone(estimator).fit(X.iloc[fold.train_rows], y[fold.train_rows])
    return classification_metrics(y[fold.valid_rows], model.predict_proba(X.iloc[fold.valid_rows]))


def fold_order(folds: list[Fold]) -> list[Fold]:
    """The order results are reported in: the largest training part first."""
    return sorted(folds, key=lambda f: (-len(f.train_rows), -f.index))


class FoldRunner:
    """Runs the folds of one training window, in this process or on `n_jobs` worker processes."""

    def __init__(self, X: pd.DataFrame, y: np.ndarray, folds: list[Fold], n_jobs: int) -> None:
        self.X, self.y, self.folds = X, y, folds
        self.n_jobs = max(1, min(n_jobs, len(folds)))
        self._pool: ProcessPoolExecutor | None = None
        self.failure: PodiumError | None = None  # set once a worker died: the pool is unusable

    def __enter__(self) -> FoldRunner:
        if self.n_jobs > 1:
            self._pool = self._start()
        return self

    def __exit__(self, *exc: object) -> None:
        """Stop the workers; a fold still running belongs to a trial already stopped, so it is cut."""
        if self._pool is not None:
            workers = list(self._pool._processes.values())  # Python 3.14 has terminate_workers()
            self._pool.shutdown(wait=False, cancel_futures=True)
            for worker in workers:
                worker.terminate()
            for worker in workers:
                worker.join()
            self._pool = None

    def run(self, estimator: BaseEstimator, check: FoldCheck | None = None, here: bool = False) -> Scores:
        """Every fold's metrics, in `fold_order`; `check` sees them grow after each fold.

        `here` runs the folds in this process (for cheap estimators, while the workers start).
        """
        if self._pool is None or here:
            return self._run_here(estimator, check or _accept)
        try:
            return self._run_on_workers(estimator, check or _accept)
        except BrokenProcessPool:
            self.failure = PodiumError(
                "a cross-validation worker process died (out of memory, killed, or a script that "
                "starts tune without `if __name__ == '__main__':`): the search stopped. Rerun with "
                "fewer --n-jobs, or --n-jobs 1 to fit in this process."
            )
            raise self.failure from None

    def _run_here(self, estimator: BaseEstimator, check: FoldCheck) -> Scores:
        scores: Scores = []
        with threadpool_limits(limits=1):
            for fold in fold_order(self.folds):
                scores.append(fold_metrics(estimator, self.X, self.y, fold))
                check(scores)
        return scores

    def _run_on_workers(self, estimator: BaseEstimator, check: FoldCheck) -> Scores:
        assert self._pool is not None
        waiting = fold_order(self.folds)
        running: dict[Future[dict[str, float]], int] = {}  # a submitted fold -> its index
        done: dict[int, dict[str, float]] = {}
        scores: Scores = []
        while len(scores) < len(self.folds):
            while waiting and len(running) < self.n_jobs:
                fold = waiting.pop(0)
                running[self._pool.submit(_fit_held, estimator, fold.index)] = fold.index
            finished, _ = wait(running, return_when=FIRST_COMPLETED)
            for future in finished:
                done[running.pop(future)] = future.result()
            for fold in fold_order(self.folds)[len(scores) :]:
                if fold.index not in done:
                    break
                scores.append(done[fold.index])
                check(scores)
        return scores

    def _start(self) -> ProcessPoolExecutor:
        """A pool of fresh interpreters holding the window; started now, so the first trial waits less."""
        pool = ProcessPoolExecutor(
            self.n_jobs,
            mp_context=multiprocessing.get_context("spawn"),
            initializer=_hold,
            initargs=(self.X, self.y, self.folds, os.getpid()),
        )
        for _ in range(self.n_jobs):
            pool.submit(time.sleep, 0)
        return pool


def _accept(scores: Scores) -> None:
    """The default check: let every fold run."""


def _hold(X: pd.DataFrame, y: np.ndarray, folds: list[Fold], parent: int) -> None:
    """Worker start: keep the window, use one thread per estimator, exit when the parent is gone."""
    global _held
    _held = (X, y, folds)
    threadpool_limits(limits=1)
    lifeline.watch(parent)


def _fit_held(estimator: BaseEstimator, index: int) -> dict[str, float]:
    assert _held is not None, "the worker was started without a window"
    X, y, folds = _held
    return fold_metrics(estimator, X, y, next(f for f in folds if f.index == index))
