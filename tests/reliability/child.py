"""The processes the kill tests kill: `podium <args>` forked from a server that has imported Podium once.

Forking from `multiprocessing`'s fork server (which preloads Podium, MLflow and scikit-learn)
starts a real, separate process in milliseconds, with no connection inherited from the test.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import sys
import tempfile
import time
from multiprocessing.context import BaseContext
from pathlib import Path

PRELOAD = ["pipelines.cli", "pipelines.pipeline", "pipelines.warehouse.duckdb", "tests.reliability.child"]


def context() -> BaseContext:
    """A fork-server context whose server has imported the pipeline (start it once per session)."""
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(PRELOAD)
    return ctx


def podium(args: list[str], env: dict[str, str], cwd: str, log: str = os.devnull) -> None:
    """The console entry point, as `podium ARGS` would run it, with this environment and folder; its
    output goes to the file `log`."""
    os.environ.clear()
    os.environ.update(env)
    os.chdir(cwd)
    output = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    os.dup2(output, 1)
    os.dup2(output, 2)
    sys.argv = ["podium", *args]
    from pipelines import cli

    cli.main()


def run(
    ctx: BaseContext,
    args: list[str],
    env: dict[str, str],
    cwd: str,
    kill_after: float | None,
    log: str = os.devnull,
) -> int:
    """`podium ARGS` in a child, SIGKILLed after `kill_after` s (None: let it end); its exit code."""
    child = ctx.Process(target=podium, args=(args, env, cwd, log))
    child.start()
    child.join(kill_after)
    if child.is_alive():
        os.kill(child.pid, signal.SIGKILL)
        child.join()
    return child.exitcode


def timed(ctx: BaseContext, args: list[str], env: dict[str, str], cwd: str) -> float:
    """Seconds one uninterrupted run takes (to spread kill instants over it); it must succeed."""
    with tempfile.NamedTemporaryFile(suffix=".log") as log:
        started = time.perf_counter()
        code = run(ctx, args, env, cwd, None, log.name)
        took = time.perf_counter() - started
        said = Path(log.name).read_text(errors="replace")[-3000:]
    assert code == 0, f"podium {' '.join(args)} exited {code}:\n{said}"
    return took


def instants(duration: float, count: int) -> list[float]:
    """`count` kill instants spread evenly over the first 90% of a run of `duration` seconds.

    The last tenth is left out: a rerun on warm caches can end sooner than the timed run did.
    """
    return [0.9 * duration * (i + 1) / (count + 1) for i in range(count)]
