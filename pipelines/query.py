"""`podium sql`: one Snowflake-dialect statement on a profile's warehouse, read-only unless asked.

A read must be a query with no write anywhere inside it, and runs on a read-only connection; `--write`
runs exactly one statement. Each refusal is one error naming the fix.
"""

from __future__ import annotations

import pandas as pd

from pipelines.config import Profile
from pipelines.errors import PodiumError
from pipelines.warehouse import Warehouse, connect
from pipelines.warehouse.dialect import check_one, check_read, reads_only, shown


def run(settings: Profile, query: str, write: bool) -> pd.DataFrame | None:
    """The query's rows; None for a `write` statement that returns none (it ran)."""
    if write:
        check_one(query)
    else:
        check_read(query)
    _check_readable(settings, query, write)
    with connect(settings, read_only=not write) as warehouse:
        if write and not reads_only(query):
            warehouse.execute(query)
            return None
        return _read(warehouse, query, write)


def _check_readable(settings: Profile, query: str, write: bool) -> None:
    """A read of a DuckDB file that is not there fails at once: a read creates no file."""
    where = settings.warehouse
    if not write and where.backend == "duckdb" and not where.path.exists():
        raise PodiumError(
            f"`{shown(query)}` has nothing to read: the DuckDB warehouse {where.path} does not exist. "
            "Build it first (`podium ingest`, then `podium features`), or fix warehouse.path in the profile."
        )


READ_ONLY_REFUSALS = (
    "Permission Error",
    "read-only mode",
    "has been locked",
    "disabled through configuration",
)


def _read(warehouse: Warehouse, query: str, write: bool) -> pd.DataFrame:
    """The query's rows; DuckDB's own refusal on the read-only connection (a file, extension, setting or
    write) as one error naming the fix."""
    try:
        return warehouse.query(query)
    except PodiumError as exc:
        if write or not any(sign in str(exc) for sign in READ_ONLY_REFUSALS):
            raise
        raise PodiumError(
            f"`{shown(query)}` was refused by the read-only warehouse ({exc}): podium sql opens the "
            "DuckDB file read-only, with no access to other files, databases or extensions; query its "
            "tables, or pass --write to run it on purpose (one statement per call)."
        ) from None
