"""The stages a replay or a scheduled cycle runs, handed in as functions: a stage never imports another.

`pipeline.LIFECYCLE` binds them to the stages' `main`s; `backtest` and `cycle` call them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


def _absent(*args: Any, **kwargs: Any) -> Any:
    raise TypeError("this lifecycle has no such stage")


@dataclass(frozen=True)
class Lifecycle:
    """Each stage's `main`; ingest and features where the data is refreshed (a cycle), the cycle where it
    is replayed (a backtest)."""

    tune: Callable[..., Any]
    train: Callable[..., Any]
    promote: Callable[..., Any]
    score: Callable[..., Any]
    evaluate: Callable[..., Any]
    ingest: Callable[..., Any] = _absent
    features: Callable[..., Any] = _absent
    cycle: Callable[..., Any] = _absent  # the backtest replays it, period by period
