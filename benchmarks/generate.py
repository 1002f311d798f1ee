"""Scale generator: F1-shaped raw tables at a scale factor, for the benchmarks.

`scale_raw(warehouse, factor)` turns the ingested RAW tables into `factor` copies of
themselves. Copy c is its own world: every id is offset by c * ID_OFFSET (drivers,
races, circuits, constructors, statuses, ... so joins stay inside the copy) and every
year and date moves c * YEARS_PER_COPY years later. So the history gets longer (more
seasons, races and drivers) while keeping its shape; at factor 40 RAW.RESULTS holds
just over 1M rows, and every copy after the first lands in the feature window.
"""

from __future__ import annotations

from datetime import date

import yaml

from pipelines.config import Spec
from pipelines.stages.ingest import snake_upper
from pipelines.warehouse import Warehouse

ID_OFFSET = 1_000_000
YEARS_PER_COPY = 80  # the bundled history spans 73 seasons


def scale_raw(warehouse: Warehouse, spec: Spec, factor: int) -> dict[str, int]:
    """Replace each RAW table by `factor` shifted copies; return the new row counts."""
    manifest = yaml.safe_load((spec.ingest.source / "tables.yaml").read_text())["tables"]
    schema = spec.ingest.db_schema
    counts = {}
    for name, columns in manifest.items():
        table = f"{schema}.{name.upper()}"
        shifted = [_shift(snake_upper(c), kind) for c, kind in columns.items()]
        replace = ", ".join(s for s in shifted if s)
        select = f"SELECT t.* REPLACE ({replace})" if replace else "SELECT t.*"
        warehouse.execute(
            f"CREATE OR REPLACE TABLE {table} AS {select} FROM {table} AS t "
            f"CROSS JOIN (SELECT SEQ4() AS I FROM TABLE(GENERATOR(ROWCOUNT => {factor}))) AS c"
        )
        counts[table] = int(warehouse.query(f"SELECT COUNT(*) AS N FROM {table}").N[0])
    return counts


def _shift(column: str, kind: str) -> str | None:
    """The expression that moves one column into copy c, or None to keep it."""
    if column.endswith("_ID"):
        return f"t.{column} + c.I * {ID_OFFSET} AS {column}"
    if column == "YEAR":
        return f"t.{column} + c.I * {YEARS_PER_COPY} AS {column}"
    if kind == "DATE":
        return f"DATEADD(YEAR, c.I * {YEARS_PER_COPY}, t.{column}) AS {column}"
    return None


def tile_window(warehouse: Warehouse, spec: Spec, start: date, end: date | None, copies: int) -> int:
    """Repeat the rows with time in [start, end) `copies` times under new race ids; the rows now there.

    Tiling keeps the rows' shape and dates, so a window grows without changing what a model
    sees per row: more rows to fit (P1) or to score (P2).
    """
    window = f"{spec.time} >= ?" + (f" AND {spec.time} < ?" if end else "")
    params = [start, end] if end else [start]
    warehouse.execute(
        f"CREATE OR REPLACE TABLE ML.TILED AS SELECT f.* REPLACE (f.RACE_ID + c.I * {ID_OFFSET} AS RACE_ID) "
        f"FROM {spec.table} AS f CROSS JOIN (SELECT SEQ4() AS I FROM TABLE(GENERATOR(ROWCOUNT => "
        f"{copies}))) AS c "
        f"WHERE f.{window}",
        params,
    )
    warehouse.execute(f"DELETE FROM {spec.table} WHERE {window}", params)
    warehouse.execute(f"INSERT INTO {spec.table} SELECT * FROM ML.TILED")
    warehouse.execute("DROP TABLE ML.TILED")
    return int(warehouse.query(f"SELECT COUNT(*) AS N FROM {spec.table} WHERE {window}", params).N[0])
