"""How `make test` spreads the suite over pytest-xdist workers (`-n 2 --dist loadgroup`).

- Order: the heaviest modules are handed out first, so the long tests start early and the workers
  end together; tests marked `timed` go last (see below); the rest keep their usual order.
- Shared modules: a module whose tests share a module-scoped server, session or run goes to one
  worker as a whole, so that fixture is built once. xdist's own `xdist_group` mark cannot do this
  with pytest 9.2 (xdist 3.8 renames the test ids through an attribute pytest 9.2 no longer reads),
  so the modules are listed here and `Scheduling` groups them by path.
- Timed tests: a test marked `timed` measures one uninterrupted run and spreads kills (or a time
  budget) over it, so it needs the CPU it measured with. Every test holds a lock while it runs:
  shared for most, exclusive for a timed one, which therefore runs with no other test beside it.
"""

from __future__ import annotations

import fcntl
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

# Longest first, from `pytest --durations` (a module named here runs before any module listed after it).
HEAVIEST_FIRST = [
    "tests/snowflake/test_lifecycle.py",
    "tests/pipeline/test_env_managers.py",
    "tests/reliability/test_kill.py",
    "tests/pipeline/test_mlproject.py",
    "tests/pipeline/test_secrets.py",
    "tests/pipeline/test_tune.py",
    "tests/pipeline/test_backtest.py",
    "tests/pipeline/test_cycle.py",
    "tests/app/test_pages.py",
    "tests/dbt_example/test_dbt.py",
    "tests/pipeline/test_postgres_workers.py",
    "tests/pipeline/test_serve.py",
    "tests/pipeline/test_tracking_writer.py",
    "tests/ui/test_mlflow_ui.py",
    "tests/pipeline/test_mlflow_server.py",
    "tests/pipeline/test_score.py",
    "tests/pipeline/test_hostile_input.py",
]

# Modules whose tests share one module-scoped fixture that is slow to build or holds state between tests.
SHARED_MODULES = {
    "tests/snowflake/test_lifecycle.py",  # the emulated account and both lifecycles (minutes)
    "tests/snowflake/test_emulator.py",  # the emulator and its session
    "tests/pipeline/test_secrets.py",  # a whole `podium run`
    "tests/pipeline/test_serve.py",  # the served champion
    "tests/pipeline/test_postgres_workers.py",  # the PostgreSQL cluster
    "tests/data/test_features_on_snowpark.py",  # the features built on Snowpark
    "tests/unit/test_snowpark_warehouse.py",  # the Snowpark session on the emulator
    "tests/app/test_pages.py",  # the rehearsed lifecycle and the store-demand example the pages read
    "tests/dbt_example/test_dbt.py",  # one `podium run` of the dbt example
}


def module_of(nodeid: str) -> str:
    return nodeid.split("::", 1)[0]


def order(items: list[pytest.Item]) -> None:
    """Sort in place: HEAVIEST_FIRST modules in that order, then the rest, then the `timed` tests."""
    rank = {path: i for i, path in enumerate(HEAVIEST_FIRST)}

    def key(item: pytest.Item) -> int:
        if item.get_closest_marker("timed"):
            return len(rank) + 1
        return rank.get(module_of(item.nodeid), len(rank))

    items.sort(key=key)


def make_scheduler(config: pytest.Config, log: object) -> object:
    """xdist's loadscope scheduler with each test its own scope, but a SHARED_MODULES module one scope."""
    from xdist.scheduler import LoadScopeScheduling

    class Scheduling(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            module = module_of(nodeid)
            return module if module in SHARED_MODULES else nodeid

    return Scheduling(config, log)


@contextmanager
def running(item: pytest.Item) -> Iterator[None]:
    """Hold the workers' lock while `item` runs: exclusively for a `timed` test, shared for any other."""
    basetemp = getattr(item.config.option, "basetemp", None)
    if not hasattr(item.config, "workerinput") or not basetemp:
        yield
        return
    path = Path(basetemp).parent / "podium-timed.lock"  # the workers' basetemps share this folder
    with path.open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX if item.get_closest_marker("timed") else fcntl.LOCK_SH)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
