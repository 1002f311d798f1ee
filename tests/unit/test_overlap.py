"""Reading ahead and writing behind: items arrive in order, at most `depth` wait, an error stops both."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import pytest

from pipelines.overlap import drained, prefetched


def test_prefetched_yields_every_item_in_order_read_on_another_thread() -> None:
    readers: set[str] = set()

    def items() -> Iterator[int]:
        for i in range(20):
            readers.add(threading.current_thread().name)
            yield i

    assert list(prefetched(items())) == list(range(20))
    assert readers == {"podium-read"}


def test_drained_consumes_on_another_thread_and_returns_its_result() -> None:
    writers: set[str] = set()

    def consume(items: Iterator[int]) -> int:
        writers.add(threading.current_thread().name)
        return sum(items)

    assert drained(consume, iter(range(100))) == sum(range(100))
    assert len(writers) == 1 and next(iter(writers)).startswith("podium-write")


def test_at_most_depth_items_wait_between_the_sides() -> None:
    made = []

    def items() -> Iterator[int]:
        for i in range(50):
            made.append(i)
            yield i

    def consume(received: Iterator[int]) -> int:
        ahead = []
        for i in received:
            time.sleep(0.002)  # a slow writer: the producer must wait for it
            ahead.append(len(made) - 1 - i)
        return max(ahead)

    # made past the one being written: one waiting for the writer, one being predicted, one read
    # and waiting, one being read
    assert 2 <= drained(consume, prefetched(items())) <= 4


def test_an_error_while_producing_reaches_the_caller_and_the_consumer() -> None:
    seen: list[str] = []

    def items() -> Iterator[int]:
        yield 1
        raise ValueError("bad chunk")

    def consume(received: Iterator[int]) -> int:
        try:
            return sum(received)
        except ValueError as error:
            seen.append(str(error))  # the consumer hears it: it rolls back what it has not committed
            raise

    with pytest.raises(ValueError, match="bad chunk"):
        drained(consume, prefetched(items()))
    assert seen == ["bad chunk"]


def test_an_error_while_consuming_stops_the_producer() -> None:
    made = []

    def items() -> Iterator[int]:
        for i in range(10_000):
            made.append(i)
            yield i

    def consume(received: Iterator[int]) -> int:
        next(received)
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        drained(consume, prefetched(items()))
    assert len(made) < 100, "the producer went on after the writer failed"
    assert not [t for t in threading.enumerate() if t.name == "podium-read"], "the reader thread is left"
