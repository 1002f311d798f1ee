"""The warehouse seam: `connect(profile)` returns the backend the profile names."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

from pipelines.warehouse.base import Warehouse

if TYPE_CHECKING:
    from pipelines.config import Profile

__all__ = ["Warehouse", "connect"]


@contextmanager
def connect(profile: Profile, read_only: bool = False, wait: float | None = None) -> Iterator[Warehouse]:
    """Open the profile's warehouse for a `with` block; read-only lets processes share a DuckDB file.

    A read-only DuckDB open also has external access disabled (no other file, database or extension
    can be read or written) and its configuration locked: readers only query the file's tables.
    `wait`: how long to wait for another process's DuckDB write to end (default 120 s), then
    `WarehouseBusy`.
    """
    config = profile.warehouse
    if config.backend == "duckdb":
        from pipelines.warehouse.duckdb import DuckDBWarehouse

        warehouse: Warehouse = DuckDBWarehouse(
            config.path,
            read_only=read_only,
            memory_limit=config.memory_limit,
            external_access=not read_only,
            **({} if wait is None else {"wait": wait}),
        )
    else:
        from pipelines.warehouse.snowpark import SnowparkWarehouse

        warehouse = SnowparkWarehouse.connect(config)
    try:
        yield warehouse
    finally:
        warehouse.close()
