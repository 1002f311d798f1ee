"""Identifier checks and the Snowflake -> DuckDB translation."""

from __future__ import annotations

import duckdb
import pytest

from pipelines.errors import WarehouseError
from pipelines.warehouse.dialect import check_identifier, check_table, quote, split_table, to_duckdb


@pytest.mark.parametrize("name", ["RACE_ID", "race_id", "_x", "A$1"])
def test_plain_identifiers_pass_upper_cased(name: str) -> None:
    assert check_identifier(name) == name.upper()


@pytest.mark.parametrize(
    "name",
    ["x;drop table t", 'a"b', "a'b", "a b", "1abc", "", "a.b", "a--b", "a)b"],
)
def test_identifiers_with_quotes_or_separators_are_refused(name: str) -> None:
    with pytest.raises(WarehouseError, match="not a valid SQL identifier"):
        check_identifier(name)


@pytest.mark.parametrize("name", ["ML.F1_FEATURES;", 'ML."X"', "ML.X Y", "a.b.c.d", "ML..X"])
def test_table_names_are_checked(name: str) -> None:
    with pytest.raises(WarehouseError, match="not a valid table name"):
        check_table(name)


def test_quote_upper_cases_and_quotes_each_part() -> None:
    assert quote("ml.f1_features") == '"ML"."F1_FEATURES"'
    assert split_table("ml.t") == ("ML", "T")
    assert split_table("t") == (None, "T")


@pytest.mark.parametrize(
    ("snowflake", "expected"),
    [
        ("SELECT IFF(1 > 0, 'a', 'b')", [("a",)]),
        ("SELECT ZEROIFNULL(NULL)", [(0,)]),
        ("SELECT COUNT_IF(x > 1) FROM (SELECT 1 AS x UNION ALL SELECT 2)", [(1,)]),
        ("SELECT DATEDIFF('day', '2020-01-01'::DATE, '2020-01-31'::DATE)", [(30,)]),
        (
            "SELECT x, SUM(x) OVER (ORDER BY x ROWS BETWEEN 2 PRECEDING AND 1 PRECEDING) AS s "
            "FROM (SELECT 1 AS x UNION ALL SELECT 2 UNION ALL SELECT 3) ORDER BY x",
            [(1, None), (2, 1), (3, 3)],
        ),
        (
            "SELECT x FROM (SELECT 1 AS x UNION ALL SELECT 2) QUALIFY ROW_NUMBER() OVER (ORDER BY x DESC) "
            "= 1",
            [(2,)],
        ),
    ],
)
def test_snowflake_sql_runs_on_duckdb(snowflake: str, expected: list[tuple]) -> None:
    (statement,) = to_duckdb(snowflake)
    assert duckdb.connect().execute(statement).fetchall() == expected


def test_unparseable_sql_is_a_clear_error() -> None:
    with pytest.raises(WarehouseError, match="could not parse"):
        to_duckdb("SELECT FROM WHERE (")


def test_unparseable_sql_error_is_one_line_with_the_place_and_the_fix() -> None:
    with pytest.raises(WarehouseError) as caught:
        to_duckdb("selec 1 frm")
    message = str(caught.value)
    assert "\n" not in message and "\x1b" not in message
    assert "Line 1, Col: 7 near 'selec 1 frm'. Fix the SQL's syntax." in message
