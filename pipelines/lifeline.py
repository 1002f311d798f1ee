"""A worker process that ends with the process that started it.

A SIGKILLed stage cannot stop its workers, so each worker watches its parent and exits once the
parent is gone: a killed `tune` leaves no cross-validation worker fitting, and a killed `features`
no dbt build writing into the warehouse behind the next run's back.
"""

from __future__ import annotations

import os
import threading
import time


def watch(parent: int) -> None:
    """Start a daemon thread that ends this process once `parent` (a pid) is no longer its parent."""
    threading.Thread(target=_exit_with, args=(parent,), daemon=True).start()


def _exit_with(parent: int) -> None:
    while os.getppid() == parent:
        time.sleep(1.0)
    os._exit(1)
