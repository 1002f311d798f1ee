"""A Snowflake emulator for tests: fakesnow's HTTP server on loopback, with a few gaps closed.

fakesnow (0.12.1) answers the Snowflake REST protocol by translating each statement to DuckDB, so a
real Snowpark `Session` over the real connector can log in to it. Out of the box it cannot take an
upload: `write_pandas` (which `Session.create_dataframe(pandas_frame)` and `save_as_table` of such a
frame go through) and `Table.merge` fail on statements fakesnow does not translate. `apply_patches()`
closes those gaps, in this process only, with the small patches below, each named after the
Snowflake behaviour it stands in for:

- `_identifier`: `IDENTIFIER(?)` bound to a dotted, quoted name names a qualified object.
- `_create_table_if_not_exists_after_name`: `CREATE TABLE <name> IF NOT EXISTS` parses.
- `_infer_schema`: `TABLE(INFER_SCHEMA(LOCATION => '@stage', ...))` over staged parquet files.
- `_copy_from_quoted_stage`: `COPY INTO t FROM (SELECT $1:"A" ... FROM '@"DB"."S"."STAGE"')`.
- `_put_to_quoted_stage`: `PUT 'file://...' '@stage'` (Snowpark's `session.file.put`).
- `_qualified_temporary_tables`: temporary tables created and read under a qualified name.
- `_alias_merge_source`: `MERGE INTO t USING (SELECT ...)` with an unaliased source.
- `_cancel_all_queries`: `SYSTEM$CANCEL_ALL_QUERIES(...)` (sent by `Session.close`).
- `_null_timestamps`: a NULL timestamp reads back as NULL, not 1970-01-01.
- `_server_errors_as_sql_errors`: an unhandled error is a SQL error, not an HTTP 500 the
  connector would retry for minutes.
- `_login_master_token`: a login returns a master token, so `Session.close()` logs out.

and `fakesnow.server()` stays callable after its first call (`_keep_server_callable`), so
tests/conftest.py's `fakesnow_server` fixture and `emulator()` work in one process, either first.

It stays an emulator: DuckDB runs the SQL, so this shows that the client-side calls go through
and what DuckDB computes, not Snowflake's exact types or messages. Python UDFs are not emulated.

One server process keeps every table in one in-memory DuckDB shared by all its sessions, so
processes that connect to the same server over HTTP see each other's (permanent) tables.

    with emulator() as kwargs:
        session = Session.builder.configs(kwargs | {"database": "PODIUM", "schema": "ML"}).create()

or, for other processes, `python -m tests.snowflake.emulator --port 8765` (prints the connection
kwargs as one JSON line) and `snowflake_env(kwargs)` for their SNOWFLAKE_* variables.

tests/snowflake/ has no __init__.py on purpose: with one, pytest's default (prepend) import mode
names its test modules `snowflake.test_*`, looks them up in the installed `snowflake` namespace
package, and fails to collect them. As a namespace package, `tests.snowflake.emulator` imports.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import re
import signal
import socket
import sys
import threading
import time
import types
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import fakesnow
import pyarrow as pa
import pyarrow.parquet as pq
from sqlglot import Expr, exp

# fakesnow.server() imports its submodule `fakesnow.server`, and that import rebinds the package's
# `server` attribute from the function to the submodule: the function can be called once per process.
# Keep it while we can; `_keep_server_callable` makes the attribute callable again.
_FAKESNOW_SERVER: Callable[..., Any] | None = (
    fakesnow.__dict__["server"] if isinstance(fakesnow.__dict__.get("server"), types.FunctionType) else None
)

_patch_lock = threading.Lock()


# --- the patches -------------------------------------------------------------------------------


def _identifier(original: Callable[..., Expr]) -> Callable[..., Expr]:
    """`IDENTIFIER(?)` bound to `'"DB"."SCHEMA"."NAME"'` names NAME in DB.SCHEMA.

    Snowflake parses the bound string as an object name, quoted parts and all. fakesnow takes a
    string that starts and ends with a double quote for one quoted identifier, so the temporary
    stage `write_pandas` creates as `"PODIUM"."ML"."SNOWPARK_TEMP_STAGE_X"` got the one-part name
    `PODIUM"."ML"."SNOWPARK_TEMP_STAGE_X` and its PUT then failed ("Stage ... does not exist").
    Such a name (the inside still holds a double quote) is parsed again as a qualified name.
    """

    def identifier(expression: Expr, params: Any) -> Expr:
        result = original(expression, params)
        ident = result.this if result is not expression and isinstance(result, exp.Table) else None
        if isinstance(ident, exp.Identifier) and ident.quoted and '"' in ident.this:
            return exp.to_table(f'"{ident.this}"', dialect="snowflake")
        return result

    return identifier


# CREATE [OR REPLACE] [LOCAL|GLOBAL] [TEMP|TEMPORARY|VOLATILE|TRANSIENT] TABLE <name> IF NOT EXISTS
_NAME_PART = r'(?:"(?:[^"]|"")*"|[A-Za-z_][A-Za-z0-9_$]*)'
_CREATE_TABLE_NAME_IF_NOT_EXISTS = re.compile(
    r"^(\s*CREATE\s+(?:OR\s+REPLACE\s+)?(?:(?:LOCAL|GLOBAL)\s+)?(?:(?:TEMP|TEMPORARY|VOLATILE|TRANSIENT)\s+)?"
    rf"TABLE\s+)({_NAME_PART}(?:\s*\.\s*{_NAME_PART}){{0,2}})\s+IF\s+NOT\s+EXISTS\b",
    re.IGNORECASE,
)


def _create_table_if_not_exists_after_name(original: Callable[[str], Expr]) -> Callable[[str], Expr]:
    """`CREATE [TEMPORARY] TABLE <name> IF NOT EXISTS (...)` is `CREATE ... TABLE IF NOT EXISTS <name>`.

    Snowflake accepts IF NOT EXISTS after the table name too, and Snowpark writes it there
    (`save_as_table(..., table_type="temporary")`, `create_dataframe` of a schema). sqlglot only
    parses it before the name, so the statement failed to parse. This moves the clause, with a
    regular expression anchored at the start of the statement, before fakesnow parses it.
    """

    def parse_one(command: str) -> Expr:
        return original(_CREATE_TABLE_NAME_IF_NOT_EXISTS.sub(r"\1IF NOT EXISTS \2", command, count=1))

    return parse_one


INFER_SCHEMA_COLUMNS = ("COLUMN_NAME", "TYPE", "NULLABLE", "EXPRESSION", "FILENAMES", "ORDER_ID")
_TIME_PRECISION = {"s": 0, "ms": 3, "us": 6, "ns": 9}


def snowflake_type(arrow_type: pa.DataType) -> str:
    """The Snowflake type INFER_SCHEMA reports for a parquet column of this Arrow type."""
    t = arrow_type
    if pa.types.is_dictionary(t):
        return snowflake_type(t.value_type)
    if pa.types.is_boolean(t):
        return "BOOLEAN"
    if pa.types.is_integer(t):
        return "NUMBER(38, 0)"
    if pa.types.is_floating(t):
        return "REAL"
    if pa.types.is_decimal(t):
        return f"NUMBER({t.precision}, {t.scale})"
    if pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_null(t):
        return "TEXT"
    if pa.types.is_binary(t) or pa.types.is_large_binary(t) or pa.types.is_fixed_size_binary(t):
        return "BINARY"
    if pa.types.is_date(t):
        return "DATE"
    if pa.types.is_time(t):
        return f"TIME({_TIME_PRECISION[t.unit]})"
    if pa.types.is_timestamp(t):
        return f"TIMESTAMP_{'LTZ' if t.tz else 'NTZ'}({_TIME_PRECISION[t.unit]})"
    if pa.types.is_list(t) or pa.types.is_large_list(t):
        return "ARRAY"
    if pa.types.is_struct(t) or pa.types.is_map(t):
        return "OBJECT"
    raise NotImplementedError(f"INFER_SCHEMA of a parquet column of type {t}")


def _bound(root: Expr, values: list[Expr], params: Any) -> list[Any]:
    """The Python values of `values`, taking each `?` from `params` (and out of it, as fakesnow does)."""
    from fakesnow.params import index_of_placeholder

    placeholders = [v for v in values if isinstance(v, exp.Placeholder)]
    indices = {id(p): index_of_placeholder(root, p) for p in placeholders}
    taken = {id(p): params[indices[id(p)]] for p in placeholders}
    for index in sorted(indices.values(), reverse=True):
        del params[index]
    return [taken[id(v)] if id(v) in taken else v.name for v in values]


def _infer_schema(cursor: Any, expression: Expr, params: Any) -> Expr:
    """`TABLE(INFER_SCHEMA(LOCATION => '@stage', FILE_FORMAT => 'fmt'))`: the columns of staged parquet.

    Snowflake reads the schema of the staged files. fakesnow has no INFER_SCHEMA, which
    `write_pandas(auto_create_table=True)` (and so `create_dataframe` of a pandas frame) calls to
    type the table it creates. This replaces the table function with the rows it would return:
    one per column of the parquet files in the stage (read with pyarrow), typed by
    `snowflake_type` from the Arrow logical types (every integer NUMBER(38, 0), every float REAL).
    Parquet in internal stages only; the file format (so USE_LOGICAL_TYPE) and the FILES and
    IGNORE_CASE arguments are ignored.
    """
    if not (
        isinstance(expression, exp.TableFromRows)
        and isinstance(expression.this, exp.Anonymous)
        and expression.this.name.upper() == "INFER_SCHEMA"
    ):
        return expression

    from fakesnow.copy_into import _source_glob, stage_url_from_var
    from fakesnow.transforms import stage

    kwargs = [k for k in expression.this.expressions if isinstance(k, exp.Kwarg)]
    bound = _bound(expression.root(), [k.expression for k in kwargs], params)
    location = str(dict(zip([k.this.name.upper() for k in kwargs], bound, strict=True)).get("LOCATION") or "")
    if not location.startswith("@"):
        raise NotImplementedError(f"INFER_SCHEMA with LOCATION {location!r}")
    conn, duck_conn = cursor._conn, cursor._duck_conn  # noqa: SLF001
    catalog, schema, name = stage.parts_from_var(location[1:].partition("/")[0], conn.database, conn.schema)
    owner = exp.table_(name.lstrip("%"), db=schema, catalog=catalog)  # a table stage (@%T) is T's
    url = stage_url_from_var(location[1:], duck_conn, conn.database, conn.schema, conn.table_stages, owner)
    files = sorted(_source_glob(url, duck_conn))

    columns: dict[str, list[Any]] = {}  # name -> [type, nullable, file names]
    for path in files:
        if not stage.is_internal(path):
            raise NotImplementedError(f"INFER_SCHEMA of the external file {path}")
        for field in pq.read_schema(path):
            column = columns.setdefault(field.name, [snowflake_type(field.type), field.nullable, []])
            column[1] = column[1] or field.nullable
            column[2].append(stage.internal_file_name(path))
    rows = [
        (name, type_, nullable, f'$1:"{name}"::{type_}', ", ".join(names), order)
        for order, (name, (type_, nullable, names)) in enumerate(columns.items())
    ]
    select = exp.select(*INFER_SCHEMA_COLUMNS).from_(
        exp.values(
            rows or [(None,) * len(INFER_SCHEMA_COLUMNS)], alias="_INFER_SCHEMA", columns=INFER_SCHEMA_COLUMNS
        )
    )
    return (select if rows else select.where(exp.false())).subquery("_INFER_SCHEMA")


def _copy_from_quoted_stage(expression: Expr) -> Expr:
    """`COPY INTO t FROM (SELECT $1:"A" ... FROM '@"DB"."S"."STAGE"')` loads from that stage.

    Snowflake takes the stage of a transforming COPY as a quoted string too, which is how
    `write_pandas` writes it. fakesnow only takes a bare `@stage` there and rejected the string
    ("invalid URL prefix"). The string is turned into the bare reference fakesnow resolves.
    """
    if (
        isinstance(expression, exp.Table)
        and isinstance(expression.this, exp.Literal)
        and expression.this.is_string
        and expression.this.this.startswith("@")
        and isinstance(select := expression.parent and expression.parent.parent, exp.Select)
        and isinstance(select.parent, exp.Subquery)
        and isinstance(select.parent.parent, exp.Copy)
    ):
        expression.set("this", exp.Var(this=expression.this.this))
    return expression


def _put_to_quoted_stage(expression: Expr) -> Expr:
    """`PUT 'file://...' '@stage/path'`: a PUT to a stage named by a quoted string.

    Snowflake takes the stage of a PUT quoted too, which is how Snowpark's `session.file.put`
    writes it. sqlglot keeps the quotes in the target, and fakesnow then refused it ("'@stage'
    does not start with @"). The quotes (and the escapes of any inside) are removed.
    """
    target = expression.args.get("target") if isinstance(expression, exp.Put) else None
    text = target.this if isinstance(target, exp.Var) else None
    if isinstance(text, str) and len(text) > 1 and text[0] == text[-1] == "'":
        target.set("this", text[1:-1].replace("\\'", "'"))
    return expression


def _cancel_all_queries(expression: Expr) -> Expr:
    """`SYSTEM$CANCEL_ALL_QUERIES(<session id>)` returns a status string.

    Snowpark's `Session.close` sends it first; fakesnow has no such function, so `close()` raised
    (SnowparkSessionException 1405). Nothing runs in the background here, so nothing to cancel.
    """
    if isinstance(expression, exp.Anonymous) and expression.name.upper() == "SYSTEM$CANCEL_ALL_QUERIES":
        status = exp.Literal.string("0 queries cancelled.")
        if isinstance(expression.parent, exp.Select):  # the column is named after the call
            return exp.alias_(status, expression.sql(dialect="snowflake"), quoted=True)
        return status
    return expression


MERGE_SOURCE = "_FS_MERGE_SOURCE"


def _alias_merge_source(original: Callable[[Expr], list[Expr]]) -> Callable[[Expr], list[Expr]]:
    """`MERGE INTO t USING (SELECT ...) ON ...` with an unaliased source subquery.

    Snowflake accepts a source without an alias, read by unqualified column names: Snowpark's
    `Table.merge` writes `USING (SELECT "ID" AS "r_0001_ID", ...) ON ("ID" = "r_0001_ID")`.
    fakesnow splits a MERGE into statements that name the source by its alias, and asserted one,
    so the statement failed (an HTTP 500). The source gets the alias `_FS_MERGE_SOURCE`, and the
    unqualified columns that read one of its output columns (in ON, WHEN conditions, SET values
    and INSERT values) are qualified with it, as fakesnow expects of source columns.
    """

    def merge(expression: Expr) -> list[Expr]:
        source = expression.args.get("using") if isinstance(expression, exp.Merge) else None
        if isinstance(source, exp.Subquery) and not source.alias:
            alias = exp.to_identifier(MERGE_SOURCE)
            source.set("alias", exp.TableAlias(this=alias))
            names = set(source.this.named_selects) if isinstance(source.this, exp.Query) else set()
            reads = [expression.args.get("on")]
            whens = expression.args.get("whens")
            for when in whens.expressions if isinstance(whens, exp.Whens) else []:
                then = when.args.get("then")
                reads.append(when.args.get("condition"))
                if isinstance(then, exp.Update):
                    reads.extend(set_.expression for set_ in then.expressions)
                elif isinstance(then, exp.Insert):
                    reads.append(then.expression)
            for read in filter(None, reads):
                for column in read.find_all(exp.Column):
                    if not column.table and column.name in names:
                        column.set("table", alias.copy())
        return original(expression)

    return merge


def _qualified_name(table: exp.Table, conn: Any) -> tuple[str | None, str | None, str | None]:
    """(database, schema, name) of a table reference, as Snowflake resolves and stores them."""

    def normalised(ident: Any) -> str | None:
        return (
            (ident.this if ident.quoted else ident.this.upper())
            if isinstance(ident, exp.Identifier)
            else None
        )

    return (
        normalised(table.args.get("catalog")) or conn.database,
        normalised(table.args.get("db")) or conn.schema,
        normalised(table.this),
    )


def _qualified_temporary_tables(cursor: Any, expression: Expr) -> Expr:
    """Temporary tables under a qualified name: `CREATE TEMPORARY TABLE DB.S.T`, then `DB.S.T`.

    A Snowflake temporary table lives in a schema (for its session only) and shadows a permanent
    table of that name there. DuckDB keeps a connection's temporary tables in its own catalog
    `temp` and refuses to create one elsewhere, so `write_pandas`' temporary table (always
    qualified) failed. The table is created unqualified, so in `temp`, and the schema it was named
    in is recorded with fakesnow's registry of temporary tables (`TableStages`, which its table
    stages use too). A qualified name of a live temporary table recorded in that schema then reads
    as `temp.main.<name>`, except as the target of a CREATE (of a permanent table).
    Runs before fakesnow's own transforms, as some of them (CREATE TABLE AS) query the tables.
    """
    conn, duck_conn = cursor._conn, cursor._duck_conn  # noqa: SLF001
    target = None
    if isinstance(expression, exp.Create) and expression.kind == "TABLE":
        target = expression.this.this if isinstance(expression.this, exp.Schema) else expression.this
        if expression.find(exp.TemporaryProperty) and isinstance(target, exp.Table) and target.args.get("db"):
            expression.args["temporary_owner"] = _qualified_name(target, conn)[:2]
            target.set("catalog", None)
            target.set("db", None)

    owners = conn.table_stages._temporary  # noqa: SLF001  table oid -> (database, schema)
    qualified = [t for t in expression.find_all(exp.Table) if t.args.get("db") and t is not target]
    if not (owners and qualified):
        return expression
    live = duck_conn.execute("SELECT table_name, table_oid FROM duckdb_tables() WHERE temporary").fetchall()
    temporary = {(*owners[oid], name) for name, oid in live if oid in owners}
    for table in qualified:
        if _qualified_name(table, conn) in temporary:
            table.set("catalog", exp.to_identifier("temp"))
            table.set("db", exp.to_identifier("main"))
    return expression


def _record_temporary_owner(original: Callable[..., None]) -> Callable[..., None]:
    """Record a temporary table created by `_qualified_temporary_tables` in the schema it was named in."""

    def record_temporary_table(self: Any, expression: Expr, catalog: str | None, schema: str | None) -> None:
        if owner := expression.args.get("temporary_owner"):
            catalog, schema = owner
        original(self, expression, catalog, schema)

    return record_temporary_table


def _null_timestamps(original: Callable[[Any], pa.Array]) -> Callable[[Any], pa.Array]:
    """A NULL timestamp in a query result reads back as NULL.

    Snowflake sends a timestamp column of an Arrow result as a struct (epoch, fraction[, timezone])
    that is null where the value is. fakesnow builds the structs without their nulls, so every
    NULL timestamp (NTZ, LTZ or TZ) read back as 1970-01-01 00:00:00. The structs get the
    column's nulls.
    """

    def timestamp_to_sf_struct(ts: Any) -> pa.Array:
        struct = original(ts)
        ts = ts.combine_chunks() if isinstance(ts, pa.ChunkedArray) else ts
        if not ts.null_count:
            return struct
        children = [struct.field(i) for i in range(struct.type.num_fields)]
        return pa.StructArray.from_arrays(children, fields=list(struct.type), mask=ts.is_null())

    return timestamp_to_sf_struct


def _wrap_route(path: str, after: Callable[[Any], Any]) -> None:
    """Pass every response of fakesnow's server route `path` through `after`."""
    from fakesnow import server
    from starlette.routing import Route, request_response

    route = next(r for r in server.app.routes if isinstance(r, Route) and r.path == path)
    endpoint = route.endpoint

    async def wrapped(request: Any) -> Any:
        return after(await endpoint(request))

    route.endpoint = wrapped
    route.app = request_response(wrapped)


def _server_errors_as_sql_errors() -> None:
    """An unhandled error answers the query as a SQL error (000603, XX000), not an HTTP 500.

    Snowflake answers a failed statement with a SQL error. fakesnow answers a statement it cannot
    translate with HTTP 500, which the connector retries until its network timeout: for minutes
    when none is set, as for a client configured by `snowflake_env`. Two layers: the cursor, run by the
    server, turns an unexpected exception into a ProgrammingError naming it (the server answers
    those as SQL errors), and the query route turns any remaining 5xx into a SQL error.
    """
    import snowflake.connector.errors
    from fakesnow.cursor import FakeSnowflakeCursor

    execute = FakeSnowflakeCursor.execute

    def execute_as_snowflake(self: Any, command: str, *args: Any, **kwargs: Any) -> Any:
        try:
            return execute(self, command, *args, **kwargs)
        except snowflake.connector.errors.Error:
            raise
        except Exception as e:
            if not kwargs.get("server"):
                raise
            raise snowflake.connector.errors.ProgrammingError(
                msg=f"SQL execution internal error: {type(e).__name__}: {e}", errno=603, sqlstate="XX000"
            ) from e

    FakeSnowflakeCursor.execute = execute_as_snowflake

    _wrap_route("/queries/v1/query-request", _as_sql_error)


def _as_sql_error(response: Any) -> Any:
    """A query's HTTP 5xx answer as the SQL error 000603 (XX000) carrying its message, else the answer."""
    from starlette.responses import JSONResponse

    if response.status_code < 500:
        return response
    message = json.loads(response.body).get("message") or "unhandled exception"
    return JSONResponse(
        {
            "data": {"errorCode": "000603", "sqlState": "XX000"},
            "code": "000603",
            "message": f"SQL execution internal error: {message}",
            "success": False,
        }
    )


def _login_master_token() -> None:
    """A login answers with a master token, so the client can log out.

    Snowflake's login returns a session token and a master token. fakesnow's returns no master
    token, and the connector logs out only with one: `Session.close()` left the connection open,
    so Snowpark's exit handler closed it again at interpreter exit, when the server may be gone,
    and the process then retried that query until its network timeout. The session token serves
    as the master token too (fakesnow checks neither).
    """
    from starlette.responses import JSONResponse

    def with_master_token(response: Any) -> Any:
        body = json.loads(response.body)
        if body.get("success") and isinstance(data := body.get("data"), dict) and "token" in data:
            data.setdefault("masterToken", data["token"])
            return JSONResponse(body, status_code=response.status_code)
        return response

    _wrap_route("/session/v1/login-request", with_master_token)


# --- applying them -----------------------------------------------------------------------------


class _CallableServerModule(types.ModuleType):
    """The submodule `fakesnow.server`, callable like the `fakesnow.server()` function it replaced."""

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return (_FAKESNOW_SERVER or _serve)(*args, **kwargs)


def _keep_server_callable() -> None:
    """Let `fakesnow.server()` be called again (by tests/conftest.py's fixture too) after the import."""
    import fakesnow.server  # noqa: F401  (rebinds fakesnow.server to the submodule)

    module = sys.modules["fakesnow.server"]
    if not isinstance(module, _CallableServerModule):
        module.__class__ = _CallableServerModule
    fakesnow.server = module  # type: ignore[assignment]


def apply_patches() -> None:
    """Patch fakesnow, in this process, to close the gaps listed in the module docstring. Idempotent."""
    with _patch_lock:
        if getattr(fakesnow, "_emulator_patches", False):  # on fakesnow: once, even if this file loads twice
            return
        _keep_server_callable()

        import fakesnow.arrow as fs_arrow
        import fakesnow.cursor as fs_cursor
        import fakesnow.server as fs_server
        import fakesnow.transforms as fs_transforms
        from fakesnow.cursor import FakeSnowflakeCursor
        from fakesnow.transforms.stage import TableStages

        fs_transforms.identifier = _identifier(fs_transforms.identifier)
        fs_transforms.merge = _alias_merge_source(fs_transforms.merge)
        for module in (fs_cursor, fs_server):
            module.parse_one = _create_table_if_not_exists_after_name(module.parse_one)  # type: ignore[attr-defined]

        transform = FakeSnowflakeCursor._transform  # noqa: SLF001

        def patched_transform(self: Any, expression: Expr, params: Any) -> Expr:
            # first the steps that need the names that IDENTIFIER(?) binds, before fakesnow's own
            expression = expression.transform(lambda e: fs_transforms.identifier(e, params), copy=False)
            expression = expression.transform(lambda e: _infer_schema(self, e, params), copy=False)
            expression = _qualified_temporary_tables(self, _put_to_quoted_stage(expression))
            transformed = transform(self, expression, params)
            return transformed.transform(_copy_from_quoted_stage, copy=False).transform(
                _cancel_all_queries, copy=False
            )

        FakeSnowflakeCursor._transform = patched_transform  # noqa: SLF001
        TableStages.record_temporary_table = _record_temporary_owner(TableStages.record_temporary_table)
        fs_arrow.timestamp_to_sf_struct = _null_timestamps(fs_arrow.timestamp_to_sf_struct)
        _server_errors_as_sql_errors()
        _login_master_token()
        fakesnow._emulator_patches = True  # type: ignore[attr-defined]


# --- the server --------------------------------------------------------------------------------


@contextmanager
def _serve(
    port: int | None = None, host: str = "127.0.0.1", session_parameters: dict[str, Any] | None = None
) -> Iterator[dict]:
    """fakesnow.server()'s body, for when that function was already replaced before this module loaded."""
    import uvicorn
    from fakesnow import server

    if not port:
        with contextlib.closing(socket.socket(type=socket.SOCK_STREAM)) as sock:
            sock.bind((host, 0))
            port = sock.getsockname()[1]
    uv = uvicorn.Server(uvicorn.Config(server.app, host=host, port=port, log_level="info"))
    thread = threading.Thread(target=uv.run, name="fakesnow server", daemon=True)
    thread.start()
    while thread.is_alive() and not uv.started:
        time.sleep(0.1)
    if not uv.started:
        raise RuntimeError("Failed to start server")
    try:
        yield dict(
            user="fake",
            password="snow",
            account="fakesnow",
            host=host,
            port=port,
            protocol="http",
            session_parameters={"CLIENT_OUT_OF_BAND_TELEMETRY_ENABLED": False} | (session_parameters or {}),
            network_timeout=1,
        )
    finally:
        uv.should_exit = True
        thread.join()


@contextmanager
def emulator(port: int | None = None, host: str = "127.0.0.1") -> Iterator[dict]:
    """Patch fakesnow, start its server on `host` (loopback) and yield the connection kwargs.

    The kwargs (user, password, account, host, port, protocol, session_parameters,
    network_timeout=1) go to `Session.builder.configs(...)` or `snowflake.connector.connect(**...)`.
    Servers in one process share fakesnow's one in-memory DuckDB, this one and tests/conftest.py's
    `fakesnow_server` too.
    """
    apply_patches()
    with fakesnow.server(port=port, host=host) as kwargs:  # type: ignore[operator]
        yield kwargs


def snowflake_env(kwargs: dict, database: str = "PODIUM", schema: str = "ML") -> dict[str, str]:
    """The SNOWFLAKE_* environment variables that point a client (another process) at the emulator."""
    return {
        "SNOWFLAKE_ACCOUNT": str(kwargs["account"]),
        "SNOWFLAKE_USER": str(kwargs["user"]),
        "SNOWFLAKE_PASSWORD": str(kwargs["password"]),
        "SNOWFLAKE_HOST": str(kwargs["host"]),
        "SNOWFLAKE_PORT": str(kwargs["port"]),
        "SNOWFLAKE_PROTOCOL": str(kwargs["protocol"]),
        "SNOWFLAKE_DATABASE": database,
        "SNOWFLAKE_SCHEMA": schema,
    }


def main(argv: list[str] | None = None) -> None:
    """Run a patched server in the foreground until SIGINT/SIGTERM; print its kwargs as one JSON line.

    stdout carries that line only (uvicorn's access log would go there too, and fill the pipe of a
    parent that reads one line): everything else this process prints goes to stderr.
    """
    parser = argparse.ArgumentParser(prog="python -m tests.snowflake.emulator", description=main.__doc__)
    parser.add_argument("--port", type=int, default=0, help="TCP port on 127.0.0.1 (default: a free one)")
    args = parser.parse_args(argv)

    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    out, sys.stdout = sys.stdout, sys.stderr
    with emulator(port=args.port or None) as kwargs:
        print(json.dumps(kwargs), file=out, flush=True)
        stop.wait()


if __name__ == "__main__":
    main()
