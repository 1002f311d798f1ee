"""SQL dialect helpers: identifier checks and quoting, Snowflake -> DuckDB translation.

SQL in Podium is written once, in Snowflake dialect. Identifiers that come from config
are checked against a strict pattern and then quoted; values are always bound parameters.
"""

from __future__ import annotations

import re
from functools import lru_cache

import sqlglot
from sqlglot import exp
from sqlglot.errors import ParseError, SqlglotError
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


READING = (exp.Query, exp.Values, exp.Pivot, exp.Describe, exp.Show)

# Nodes that write, or change the session, the configuration or what the connection can reach; one anywhere
# in a statement's tree (a CTE's UPDATE ... RETURNING, a SELECT ... INTO) makes it no read. DML is INSERT,
# UPDATE, DELETE, MERGE and COPY; DDL is CREATE. A Command is text sqlglot could not parse (CALL, EXPLAIN,
# LOAD, EXECUTE IMMEDIATE): it could hold anything, so it is no read. Names this sqlglot lacks are skipped.
WRITING: tuple[type[exp.Expression], ...] = tuple(
    getattr(exp, name)
    for name in (
        "DML DDL Drop Alter AlterRename TruncateTable Undrop Comment Analyze Into Returning Lock Command "
        "Set SetItem Use Transaction Commit Rollback Pragma Attach Detach Install Load LoadData Export Put "
        "Get Grant Revoke Refresh Cache Uncache Kill Declare Execute"
    ).split()
    if isinstance(getattr(exp, name, None), type)
)

SHOWN = 80  # characters of the SQL an error message quotes


def reads_only(sql: str) -> bool:
    """Whether every statement only reads: a query, VALUES, PIVOT, DESCRIBE or SHOW with no write inside."""
    return all(_write_in(statement) is None for statement in _parse(sql))


def check_read(sql: str) -> None:
    """Raise unless the SQL is one statement that only reads: what `podium sql` runs without --write.

    The statement's parsed type must be a query (SELECT, WITH, UNION, VALUES, PIVOT, DESCRIBE, SHOW) and no
    node anywhere in its tree may write (`WRITING`). On Snowflake this is Podium's guard (the PODIUM_READER
    role of setup/snowflake.sql is the warehouse's); on DuckDB the read-only connection is the guarantee.
    """
    statement = check_one(sql)
    problem = _write_in(statement)
    if problem:
        raise WarehouseError(
            f"podium sql is read-only, and `{shown(sql)}` {problem}: pass --write to run it on purpose "
            "(one statement per call)."
        )


def check_one(sql: str) -> exp.Expr:
    """The SQL's one statement; several (or none) is an error: `podium sql` runs exactly one per call."""
    statements = _parse(sql)
    if len(statements) != 1:
        raise WarehouseError(
            f"podium sql runs exactly one statement per call, and `{shown(sql)}` holds {len(statements)}: "
            "run them one at a time (with --write for one that changes data)."
        )
    return statements[0]


def shown(sql: str) -> str:
    """The SQL on one line, cut to `SHOWN` characters, for an error message to quote."""
    line = " ".join(sql.split())
    return line if len(line) <= SHOWN else line[: SHOWN - 1] + "…"


def _write_in(statement: exp.Expr) -> str | None:
    """Why a parsed statement is no read ('is not a query (DROP)', 'holds a write (UPDATE)'), or None."""
    if isinstance(statement, exp.Command):
        return f"is not a query Podium can check ({_word(statement)})"
    if not isinstance(statement, READING):
        return f"is not a query ({_word(statement)})"
    for node in statement.walk():
        if isinstance(node, WRITING):
            return f"holds a write ({_word(node)})"
        if isinstance(node, exp.Anonymous) and str(node.name).upper().startswith("SYSTEM$"):
            return f"calls {node.name.upper()}, a Snowflake system function that may change state"
    return None


def _word(node: exp.Expr) -> str:
    """The statement or clause as the user wrote it: DROP, CALL, SELECT ... INTO, FOR UPDATE."""
    if isinstance(node, exp.Command):
        return str(node.this).upper()
    if isinstance(node, exp.Into):
        return "SELECT ... INTO"
    if isinstance(node, exp.Lock):
        return "FOR UPDATE"
    try:
        return node.sql(dialect="snowflake").split(maxsplit=1)[0].upper()
    except (SqlglotError, IndexError):
        return node.key.upper()


@lru_cache(maxsize=512)
def to_duckdb(sql: str) -> tuple[str, ...]:
    """Translate Snowflake-dialect SQL into DuckDB statements (cached per text).

    Unquoted identifiers are upper-cased first, as Snowflake resolves them, so result
    columns are named alike on both backends (`count(*) AS n` gives column N).
    """
    return tuple(normalize_identifiers(e, dialect="snowflake").sql(dialect="duckdb") for e in _parse(sql))


def _parse(sql: str) -> list[exp.Expr]:
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
