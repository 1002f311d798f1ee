"""Overlapping the steps of a chunked job: read ahead on one thread, write behind on another.

`prefetched` reads items on a background thread while the caller works on the previous one;
`drained` hands items to a consumer on a background thread while the caller makes the next.
Each holds at most `depth` items waiting, so memory is bounded by a few items whatever the
job's length. An error on either side stops both and reaches the caller. The threads pay
off when the work releases the GIL (DuckDB, Arrow, tree predictors, numpy).
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, TypeVar

T = TypeVar("T")
R = TypeVar("R")

POLL_SECONDS = 0.05  # how often a blocked side checks whether the other one stopped
_DONE = object()


class _Failed:
    """The error that ended the producing side, carried to the consuming side."""

    def __init__(self, error: BaseException) -> None:
        self.error = error


def prefetched(items: Iterator[T], depth: int = 1) -> Iterator[T]:
    """`items`, produced on a background thread at most `depth` items ahead of the caller."""
    box: queue.Queue[Any] = queue.Queue(maxsize=depth)
    stop = threading.Event()
    thread = threading.Thread(target=_produce, args=(items, box, stop), name="podium-read", daemon=True)
    thread.start()
    try:
        yield from _received(box)
    finally:
        stop.set()
        thread.join()


def drained(consume: Callable[[Iterator[T]], R], items: Iterator[T], depth: int = 1) -> R:
    """`consume(items)` run on a background thread while this thread makes the items; its result."""
    box: queue.Queue[Any] = queue.Queue(maxsize=depth)
    with ThreadPoolExecutor(1, thread_name_prefix="podium-write") as pool:
        future = pool.submit(consume, _received(box))
        try:
            for item in items:
                if not _put(box, item, future.done):
                    break  # the consumer stopped: its error is the result
            else:
                _put(box, _DONE, future.done)
        except BaseException as error:
            _put(box, _Failed(error), future.done)
            _wait(future)
            raise
        finally:
            getattr(items, "close", lambda: None)()
        return future.result()


def _produce(items: Iterator[Any], box: queue.Queue[Any], stop: threading.Event) -> None:
    """Put every item, then _DONE (or the error), unless the consumer stops first; close `items` here."""
    try:
        for item in items:
            if not _put(box, item, stop.is_set):
                return
        _put(box, _DONE, stop.is_set)
    except BaseException as error:
        _put(box, _Failed(error), stop.is_set)
    finally:
        getattr(items, "close", lambda: None)()


def _received(box: queue.Queue[Any]) -> Iterator[Any]:
    """The items put in `box`, until _DONE; a carried error is raised here."""
    while (item := box.get()) is not _DONE:
        if isinstance(item, _Failed):
            raise item.error
        yield item


def _put(box: queue.Queue[Any], item: Any, stopped: Callable[[], bool]) -> bool:
    """Put `item`, waiting for room; False if the other side stopped meanwhile."""
    while not stopped():
        try:
            box.put(item, timeout=POLL_SECONDS)
            return True
        except queue.Full:
            continue
    return False


def _wait(future: Future[Any]) -> None:
    """Let the consumer finish with the error it was handed (it rolls back); its own error is not ours."""
    future.exception()
