"""The background writer of trial runs: a queue drained on a daemon thread, in order.

`study_bridge.StudyBridge` queues each finished trial as a `RunRecord`; the writer creates the run,
logs its metrics, params and tags in one batch and ends it with its status, a moment after the
trial ended so that the writes fall inside the next trial's fit. A failing store is tried once;
the runs after it are kept as missing for the bridge to report once, and nothing is dropped.
"""

from __future__ import annotations

import atexit
import logging
import queue
import threading
import time
import weakref
from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime
from functools import lru_cache
from typing import Any

from mlflow.entities import Metric, Param, RunTag
from mlflow.tracking import MlflowClient
from mlflow.utils.mlflow_tags import MLFLOW_RUN_NAME

log = logging.getLogger(__name__)


def number_ranges(numbers: list[int]) -> str:
    """Trial numbers, runs of consecutive ones shortened: [1, 3, 4, 5, 9] -> "1, 3-5, 9"."""
    spans: list[list[int]] = []
    for n in sorted(set(numbers)):
        if spans and n == spans[-1][1] + 1:
            spans[-1][1] = n
        else:
            spans.append([n, n])
    return ", ".join(str(a) if a == b else f"{a}-{b}" for a, b in spans)


WRITER_THREAD = "podium-run-writer"


def epoch_ms(moment: datetime) -> int:
    """A moment as MLflow's milliseconds since the epoch."""
    return int(moment.timestamp() * 1000)


@dataclass
class RunRecord:
    """One finished run to write, and how far writing it got (a write cut short resumes there)."""

    name: str
    tags: dict[str, str]
    metrics: dict[str, float]
    params: dict[str, Any]
    status: str
    start_ms: int
    end_ms: int
    trial: int | None = None
    run_id: str | None = None  # set once the run exists
    batched: bool = False  # its log_batch went through


def write_run(client: MlflowClient, experiment_id: str, record: RunRecord) -> str:
    """Create the run, one `log_batch` with its metrics, params and tags, then end it with its status."""
    if record.run_id is None:
        created = client.create_run(
            experiment_id, start_time=record.start_ms, tags={MLFLOW_RUN_NAME: record.name}
        )
        record.run_id = created.info.run_id
    if not record.batched:
        client.log_batch(
            record.run_id,
            metrics=[Metric(k, float(v), record.end_ms, 0) for k, v in record.metrics.items()],
            params=[Param(k, str(v)) for k, v in record.params.items()],
            tags=[RunTag(k, v) for k, v in record.tags.items()],
        )
        record.batched = True
    client.set_terminated(record.run_id, status=record.status, end_time=record.end_ms)
    return record.run_id


def write_all(
    client: MlflowClient, experiment_id: str, records: list[RunRecord]
) -> tuple[list[RunRecord], Exception | None]:
    """Write `records` in order until one fails: (those not written, the failure)."""
    for i, record in enumerate(records):
        try:
            write_run(client, experiment_id, record)
        except Exception as exc:  # noqa: BLE001 - whatever stops the store, the rest are reported
            return records[i:], exc
    return [], None


# A run is written this long after its trial ended: by then the next trial has been sampled and is
# fitting, so the writes (and their fsyncs) do not compete with the bookkeeping between two trials.
WRITE_DELAY = 0.03


class RunWriter:
    """A daemon thread that writes queued runs in order, each `delay` s after it was queued.

    Once the store fails it stops trying (MLflow has already retried that call): every later run is kept
    as missing, for the flush to report once. Nothing is dropped. Closing writes what is left at once.
    """

    def __init__(self, client: MlflowClient, experiment_id: str, delay: float = WRITE_DELAY) -> None:
        self.client, self.experiment_id, self.delay = client, experiment_id, delay
        self.error: Exception | None = None
        self.missing: list[RunRecord] = []
        self._queue: queue.SimpleQueue[tuple[float, RunRecord] | None] = queue.SimpleQueue()
        self._current: RunRecord | None = None
        self._closing = threading.Event()
        self._thread = threading.Thread(target=self._drain, name=WRITER_THREAD, daemon=True)
        _on_first_writer()
        _OPEN_WRITERS.add(self)
        self._thread.start()

    def put(self, record: RunRecord) -> None:
        self._queue.put((time.monotonic(), record))

    def stop(self) -> None:
        """Ask the thread to write what is queued at once, then end."""
        if not self._closing.is_set():
            self._closing.set()
            self._queue.put(None)

    def close(self, timeout: float | None = None) -> list[RunRecord]:
        """Write what is queued, stop; the runs not written (after `timeout` s, the rest of the queue too)."""
        self.stop()
        self._thread.join(timeout)
        _OPEN_WRITERS.discard(self)
        if not self._thread.is_alive():
            return self.missing
        current = [self._current] if self._current else []
        return [*self.missing, *current, *iter(self._take, None)]

    def _take(self) -> RunRecord | None:
        try:
            item = self._queue.get_nowait()
        except queue.Empty:
            return None
        return item[1] if item else None

    def _drain(self) -> None:
        while (item := self._queue.get()) is not None:
            queued, self._current = item
            wait = queued + self.delay - time.monotonic()
            if wait > 0:
                self._closing.wait(wait)  # cut short by close()
            self._write(self._current)
            self._current = None

    def _write(self, record: RunRecord) -> None:
        if self.error is None:
            try:
                write_run(self.client, self.experiment_id, record)
                return
            except Exception as exc:  # noqa: BLE001 - any failure of the store: reported once, by the flush
                log.debug("writing run %s failed: %s", record.name, exc)
                self.error = exc
        self.missing.append(record)


_OPEN_WRITERS: weakref.WeakSet[RunWriter] = weakref.WeakSet()


@lru_cache(maxsize=1)
def _on_first_writer() -> None:
    """Once per process: writers still open at exit get to write; urllib3 stays quiet about their retries."""
    atexit.register(_close_at_exit)
    logging.getLogger("urllib3.connectionpool").addFilter(_not_from_writer)


def _not_from_writer(record: logging.LogRecord) -> bool:
    """Drop urllib3's retry warnings logged by a writer thread: its failure is reported once, by the flush."""
    return record.threadName != WRITER_THREAD


def _close_at_exit(timeout: float = 10.0) -> None:
    """Let writers left open (a stage raised before their flush) write for `timeout` s in all; warn once."""
    writers = list(_OPEN_WRITERS)
    for writer in writers:
        writer.stop()
    deadline, unwritten = time.monotonic() + timeout, defaultdict[str, list[int]](list)
    for writer in writers:
        for record in writer.close(max(0.0, deadline - time.monotonic())):
            unwritten[record.tags.get("podium.study", "?")].append(record.trial or 0)
    if unwritten:
        log.warning(
            "MLflow runs not written before exit (%s): rerun `podium tune` to write them from the studies",
            "; ".join(f"{study} trials {number_ranges(trials)}" for study, trials in unwritten.items()),
        )
