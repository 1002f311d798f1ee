"""Column types in one vocabulary, Snowflake SQL, whichever backend read them.

`Warehouse.columns` returns these names, so a table created from them (`ensure_table`) is
valid DDL on Snowflake as it is, and on DuckDB once translated like every other statement.
Each backend maps its own types here; a type with no Snowflake equivalent is one clear error.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import pandas as pd

from pipelines.errors import WarehouseError

# DuckDB's type names (information_schema.columns.data_type) -> the Snowflake type that holds them.
DUCKDB: dict[str, str] = {
    "BOOLEAN": "BOOLEAN",
    "TINYINT": "TINYINT",
    "SMALLINT": "SMALLINT",
    "INTEGER": "INTEGER",
    "BIGINT": "BIGINT",
    "HUGEINT": "NUMBER(38, 0)",
    "UTINYINT": "SMALLINT",
    "USMALLINT": "INTEGER",
    "UINTEGER": "BIGINT",
    "UBIGINT": "NUMBER(38, 0)",
    "FLOAT": "FLOAT",
    "DOUBLE": "DOUBLE",
    "VARCHAR": "VARCHAR",
    "DATE": "DATE",
    "TIME": "TIME",
    "TIMESTAMP": "TIMESTAMP_NTZ",
    "TIMESTAMP_NS": "TIMESTAMP_NTZ",
    "TIMESTAMP_MS": "TIMESTAMP_NTZ",
    "TIMESTAMP_S": "TIMESTAMP_NTZ",
    "TIMESTAMP WITH TIME ZONE": "TIMESTAMP_TZ",
    "BLOB": "BINARY",
    "JSON": "VARIANT",
}

# Snowpark's DataType class names -> Snowflake types (decimals, strings and timestamps take arguments).
SNOWPARK: dict[str, str] = {
    "BooleanType": "BOOLEAN",
    "ByteType": "TINYINT",
    "ShortType": "SMALLINT",
    "IntegerType": "INTEGER",
    "LongType": "BIGINT",
    "FloatType": "FLOAT",
    "DoubleType": "DOUBLE",
    "DateType": "DATE",
    "TimeType": "TIME",
    "BinaryType": "BINARY",
    "VariantType": "VARIANT",
    "ArrayType": "ARRAY",
    "MapType": "OBJECT",
    "StructType": "OBJECT",
}

MAX_VARCHAR = 16_777_216  # Snowflake reports a plain VARCHAR with its maximum length

_DECIMAL = re.compile(r"^DECIMAL\((\d+),\s*(\d+)\)$")


def from_duckdb(column: str, name: str) -> str:
    """The Snowflake type of a DuckDB column type (DECIMAL(p,s) -> NUMBER(p, s))."""
    upper = name.upper()
    if decimal := _DECIMAL.match(upper):
        return f"NUMBER({decimal[1]}, {decimal[2]})"
    if upper in DUCKDB:
        return DUCKDB[upper]
    raise _unsupported(column, name)


def from_snowpark(column: str, datatype: Any) -> str:
    """The Snowflake type of a Snowpark DataType (what `session.table(...).schema` reports)."""
    kind = type(datatype).__name__
    if kind == "DecimalType":
        return f"NUMBER({datatype.precision}, {datatype.scale})"
    if kind == "StringType":
        limited = datatype.length and datatype.length < MAX_VARCHAR
        return f"VARCHAR({datatype.length})" if limited else "VARCHAR"
    if kind == "TimestampType":
        zone = str(getattr(datatype, "tz", "")).rsplit(".", 1)[-1].upper()
        return f"TIMESTAMP_{zone}" if zone in ("NTZ", "LTZ", "TZ") else "TIMESTAMP_NTZ"
    if kind in SNOWPARK:
        return SNOWPARK[kind]
    raise _unsupported(column, kind)


def conform(frame: pd.DataFrame, columns: Mapping[str, str]) -> pd.DataFrame:
    """The frame with numeric columns in the dtypes their declared types hold, so a column of nothing but
    NULLs keeps its type when the frame creates a table (floats as float64 with NaN, integers as Int64)."""
    floats = ("DOUBLE", "FLOAT", "REAL")
    integers = ("BIGINT", "INTEGER", "SMALLINT", "TINYINT", "NUMBER(38, 0)")
    cast = {
        c: "float64" if kind.startswith(floats) else "Int64"
        for c, kind in columns.items()
        if c in frame.columns and (kind.startswith(floats) or kind in integers)
    }
    return frame.astype(cast)


def _unsupported(column: str, name: str) -> WarehouseError:
    return WarehouseError(
        f"column {column} has type {name}, which Podium cannot map to a Snowflake type: cast it in the "
        "SQL that builds the table (e.g. to VARCHAR or DOUBLE), or leave it out."
    )
