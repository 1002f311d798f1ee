"""Column types in one vocabulary: both backends report Snowflake SQL types, and DDL made from them works.

Before, the Snowpark backend reported Snowpark reprs (`LongType()`), and the scoring table's
`CREATE TABLE` carried them, which Snowflake (and its emulator) refuse.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pytest
from snowflake.snowpark import Session

from pipelines.errors import WarehouseError
from pipelines.warehouse import types
from pipelines.warehouse.base import Warehouse
from pipelines.warehouse.duckdb import DuckDBWarehouse
from pipelines.warehouse.snowpark import SnowparkWarehouse

# Every type a feature table may hold, declared in Snowflake SQL, and the type each backend reports.
DECLARED = {
    "ID": "BIGINT",
    "N": "INTEGER",
    "AMOUNT": "NUMBER(10, 2)",
    "X": "DOUBLE",
    "NAME": "VARCHAR",
    "CODE": "VARCHAR(3)",
    "FLAG": "BOOLEAN",
    "DAY": "DATE",
    "SEEN_AT": "TIMESTAMP_NTZ",
}
# DuckDB keeps no VARCHAR length, nor does the emulator (Snowflake would report VARCHAR(3)).
REPORTED = {
    "duckdb": DECLARED | {"CODE": "VARCHAR"},
    # Snowflake stores every integer as NUMBER(38, 0), which Snowpark reads as a long.
    "snowflake": DECLARED | {"CODE": "VARCHAR", "N": "BIGINT"},
}


@pytest.fixture(params=["duckdb", "snowflake"])
def warehouse(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Warehouse]:
    if request.param == "duckdb":
        wh: Warehouse = DuckDBWarehouse(tmp_path / "w.duckdb")
    else:
        server = request.getfixturevalue("fakesnow_server")
        session = Session.builder.configs(server | {"database": "TYPES", "schema": "PUBLIC"}).create()
        wh = SnowparkWarehouse(session)
        wh.execute("CREATE DATABASE IF NOT EXISTS TYPES")
    wh.execute("CREATE SCHEMA IF NOT EXISTS ML")
    wh.execute("DROP TABLE IF EXISTS ML.COPY")
    yield wh
    wh.close()


def test_columns_are_snowflake_types_and_make_valid_ddl(warehouse: Warehouse) -> None:
    ddl = ", ".join(f"{name} {kind}" for name, kind in DECLARED.items())
    warehouse.execute(f"CREATE OR REPLACE TABLE ML.EVERY ({ddl})")
    reported = warehouse.columns("ML.EVERY")
    assert reported == REPORTED[warehouse.backend]
    assert warehouse.ensure_table("ML.COPY", reported) == reported
    warehouse.execute("INSERT INTO ML.COPY SELECT * FROM ML.EVERY")  # the copy holds the original's rows


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("DECIMAL(18,3)", "NUMBER(18, 3)"),
        ("TIMESTAMP WITH TIME ZONE", "TIMESTAMP_TZ"),
        ("hugeint", "NUMBER(38, 0)"),
    ],
)
def test_duckdb_types_map_to_snowflake(name: str, expected: str) -> None:
    assert types.from_duckdb("C", name) == expected


def test_a_type_without_a_snowflake_equivalent_is_one_clear_error() -> None:
    with pytest.raises(WarehouseError, match=r"column TAGS has type INTEGER\[\].*cast it"):
        types.from_duckdb("TAGS", "INTEGER[]")


def test_a_column_of_nothing_but_nulls_is_typed_alike_on_both_backends(warehouse: Warehouse) -> None:
    declared = {"K": "BIGINT", "GAIN": "DOUBLE", "NOTE": "VARCHAR"}
    frame = pd.DataFrame({"K": [1, 2], "GAIN": [None, None], "NOTE": [None, None]})
    warehouse.write(types.conform(frame, declared), "ML.SPARSE", mode="replace")
    assert warehouse.columns("ML.SPARSE") == declared  # Snowpark types an untyped column as a string
