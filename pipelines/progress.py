"""Progress bars for long work, drawn by rich on stderr (quiet when not a terminal)."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import TypeVar

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

T = TypeVar("T")


def _progress() -> Progress:
    console = Console(stderr=True)
    columns = (TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    return Progress(*columns, console=console, transient=True, disable=not console.is_terminal)


def progress(items: Iterable[T], description: str, total: int | None = None) -> Iterator[T]:
    """Yield from `items`, showing a bar named `description` while a terminal watches."""
    with _progress() as bar:
        yield from bar.track(items, total=total, description=description)


@contextmanager
def counter(description: str, total: int | None) -> Iterator[Callable[..., None]]:
    """A bar advanced by calling the yielded function per finished unit of work (or with a count)."""
    with _progress() as bar:
        task = bar.add_task(description, total=total)
        yield lambda done=1: bar.advance(task, done)
