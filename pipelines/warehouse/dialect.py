"""SQL dialect helpers: identifier checks and quoting, Snowflake -> DuckDB translation.

SQL in Podium is written once, in Snowflake dialect. Identifiers that come from config
are checked against a strict pattern and then quoted; values are always bound parameters.
"""

from __future__ import annotations

import re
from functools import lru_cache

import sqlglot
from sqlglot import exp
from sqlglot.errors import ParseError
from sqlglot.optimizer.normalize_identifiers import normalize_identifiers

from pipelines.errors import WarehouseError

_PART = r"[A-Za-z_][A-Za-z0-9_$]{0,254}"
IDENTIFIER = re.compile(rf"^{_PART}$")
TABLE_NAME = re.compile(rf"^{_PART}(\.{_PART}){{0,2}}$")


def check_identifier(name: str) -> str:
    """Return `name` upper-cased if it is a plain SQL identifier, else raise."""
    if not isinstance(name, str) or not IDENTIFIER.match(name):
        raise WarehouseError(
            f"{name!r} is not a valid SQL identifier: use letters, digits and _ "
            "(starting with a letter or _), no quotes, spaces or ';'."
        )
    return name.upper()


def check_table(name: str) -> str:
    """Return a [DATABASE.][SCHEMA.]TABLE name upper-cased, or raise."""
    if not isinstance(name, str) or not TABLE_NAME.match(name):
        raise WarehouseError(
            f"{name!r} is not a valid table name: use SCHEMA.TABLE made of letters, "
            "digits and _, no quotes, spaces or ';'."
        )
    return name.upper()


def quote(name: str) -> str:
    """Check and double-quote an identifier or dotted table name: ml.t -> "ML"."T"."""
    return ".".join(f'"{part}"' for part in check_table(name).split("."))


def split_table(name: str) -> tuple[str | None, str]:
    """Split a checked table name into (schema or None, table)."""
    parts = check_table(name).split(".")
    return (parts[-2] if len(parts) > 1 else None), parts[-1]


READING = (exp.Query, exp.Describe, exp.Show)


def reads_only(sql: str) -> bool:
    """Whether every statement only reads (SELECT, WITH, UNION, DESCRIBE, SHOW)."""
    return all(isinstance(statement, READING) for statement in _parse(sql))


@lru_cache(maxsize=512)
def to_duckdb(sql: str) -> tuple[str, ...]:
    """Translate Snowflake-dialect SQL into DuckDB statements (cached per text).

    Unquoted identifiers are upper-cased first, as Snowflake resolves them, so result
    columns are named alike on both backends (`count(*) AS n` gives column N).
    """
    return tuple(normalize_identifiers(e, dialect="snowflake").sql(dialect="duckdb") for e in _parse(sql))


def _parse(sql: str) -> list[exp.Expression]:
    """The statements of Snowflake-dialect SQL; a syntax error is one clear message."""
    try:
        parsed = sqlglot.parse(sql, read="snowflake")
    except ParseError as exc:
        first = exc.errors[0] if exc.errors else {}
        near = "".join(str(first.get(k) or "") for k in ("start_context", "highlight", "end_context")).strip()
        where = f" near {near!r}" if near else ""
        problem = str(exc).splitlines()[0].rstrip(".")
        raise WarehouseError(
            f"could not parse the SQL as Snowflake dialect: {problem}{where}. Fix the SQL's syntax."
        ) from None
    return [e for e in parsed if e is not None]
