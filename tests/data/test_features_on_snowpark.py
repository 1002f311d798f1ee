"""The features stage on the Snowpark backend: fakesnow's HTTP server behind a real Session.

`features.main` runs unchanged with a Snowflake profile: `connect` opens a SnowparkWarehouse
from SNOWFLAKE_* variables pointing at fakesnow on loopback, and every SQL model goes through
the real Snowflake connector as written. The feature table must match the DuckDB build of the
same data (`built_profile`) row for row.

Only the raw tables the SQL models read are loaded here, each parsed as ingest parses it
(`ingest.read_csv`, the manifest's types) and sent in one Snowflake statement,
`INSERT ... SELECT ... FROM TABLE(FLATTEN(PARSE_JSON(?)))`, with the rows as one bound JSON value:
quicker than ingesting all thirteen. `podium ingest` itself (uploads by PUT) runs through the
emulator in tests/snowflake/test_lifecycle.py.

fakesnow answers by translating the SQL to DuckDB, so this shows that the SQL models and the
stage's checks run through the Snowpark path as written, not what Snowflake itself returns.
"""

from __future__ import annotations

from collections.abc import Iterator

import pandas as pd
import pytest
import sqlglot
from sqlglot import exp

from pipelines.config import Profile, Spec
from pipelines.stages import features, ingest
from pipelines.warehouse import connect
from pipelines.warehouse.snowpark import ENV_KEYS, SnowparkWarehouse
from tests.helpers import tracking_store

DATABASE = "PODIUM"
FEATURE_ROWS = 5_517  # the DuckDB build of the bundled data


def raw_tables_read_by(spec: Spec) -> list[str]:
    """Lower-case names of the raw tables the spec's SQL models read (manifest keys)."""
    names = set()
    for model in features.discover_models(spec):
        for table in sqlglot.parse_one(model.path.read_text(), read="snowflake").find_all(exp.Table):
            if table.db.upper() == spec.ingest.db_schema:
                names.add(table.name.lower())
    return sorted(names)


def load_raw_table(warehouse: SnowparkWarehouse, spec: Spec, table: str) -> int:
    """Create RAW.<TABLE> with the manifest's types and fill it with one bound JSON value."""
    columns = ingest.read_manifest(spec.ingest.source)[table]
    frame = ingest.read_csv(ingest._find_file(spec.ingest.source, table), columns)  # noqa: SLF001
    typed = dict(zip(frame.columns, columns.values(), strict=True))
    name = f"{spec.ingest.db_schema}.{table.upper()}"
    warehouse.execute(f"CREATE OR REPLACE TABLE {name} ({', '.join(f'{c} {t}' for c, t in typed.items())})")
    select = ", ".join(f'r.VALUE:"{c}"::{t} AS {c}' for c, t in typed.items())
    warehouse.execute(
        f"INSERT INTO {name} SELECT {select} FROM TABLE(FLATTEN(INPUT => PARSE_JSON(?))) AS r",
        [frame.to_json(orient="records", date_format="iso")],
    )
    return len(frame)


@pytest.fixture(scope="module")
def snowpark_build(
    spec: Spec, built_profile: Profile, fakesnow_server: dict, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict]:
    """The raw tables loaded into fakesnow and `features.main` run on a Snowflake profile.

    Yields the profile (its server stays up for the session), the raw row counts and the result.
    """
    root = tmp_path_factory.mktemp("snowpark")
    with pytest.MonkeyPatch.context() as mp, tracking_store(f"sqlite:///{root}/mlflow.db"):
        for key in (*ENV_KEYS, "default_connection_name"):
            mp.delenv(f"SNOWFLAKE_{key.upper()}", raising=False)
        for key, value in {
            "ACCOUNT": "fakesnow",
            "USER": fakesnow_server["user"],
            "PASSWORD": "fakesnow-takes-any-password",
            "HOST": "127.0.0.1",
            "PORT": str(fakesnow_server["port"]),
            "PROTOCOL": "http",
            "SCHEMA": spec.features.db_schema,  # Snowpark's session objects land in the current schema
        }.items():
            mp.setenv(f"SNOWFLAKE_{key}", value)
        profile = Profile.model_validate(
            {"name": "snow", "warehouse": {"backend": "snowflake", "database": DATABASE}}
        )
        with connect(profile) as warehouse:
            warehouse.execute(f"CREATE DATABASE IF NOT EXISTS {DATABASE}")
            warehouse.execute(f"CREATE SCHEMA IF NOT EXISTS {DATABASE}.{spec.ingest.db_schema}")
            warehouse.execute(f"CREATE SCHEMA IF NOT EXISTS {DATABASE}.{spec.features.db_schema}")
            raw = {table: load_raw_table(warehouse, spec, table) for table in raw_tables_read_by(spec)}
        result = features.main(profile, spec)
        yield {"profile": profile, "raw": raw, "result": result}


def frame(profile: Profile, sql: str) -> pd.DataFrame:
    with connect(profile) as warehouse:
        return warehouse.query(sql)


def comparable(df: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    """Rows by key, dates as Timestamps and numbers as float64, so both backends' frames compare."""
    out = df.sort_values(keys).reset_index(drop=True)
    for column in out.columns:
        if column.endswith("_DATE"):
            out[column] = pd.to_datetime(out[column]).astype("datetime64[ns]")
        elif pd.api.types.is_numeric_dtype(out[column]):
            out[column] = out[column].astype("float64")
    return out


def test_raw_tables_match_what_ingest_loads_into_duckdb(snowpark_build: dict, built_profile: Profile) -> None:
    assert {"results", "races", "qualifying", "driver_standings"} <= set(snowpark_build["raw"])
    for table, rows in snowpark_build["raw"].items():
        sql = f"SELECT COUNT(*) AS N FROM RAW.{table.upper()}"
        assert frame(snowpark_build["profile"], sql).N[0] == frame(built_profile, sql).N[0] == rows


def test_features_stage_passes_its_checks(snowpark_build: dict, spec: Spec) -> None:
    result = snowpark_build["result"]
    assert [c.name for c in result.checks if not c.passed] == []
    assert set(result.rows) == {m.table for m in features.discover_models(spec)}
    assert result.rows[spec.table] == FEATURE_ROWS


def test_feature_table_matches_the_duckdb_build(
    snowpark_build: dict, built_profile: Profile, spec: Spec
) -> None:
    sql = f"SELECT * FROM {spec.table}"
    on_snowpark, on_duckdb = frame(snowpark_build["profile"], sql), frame(built_profile, sql)
    assert len(on_snowpark) == len(on_duckdb) == FEATURE_ROWS
    assert list(on_snowpark.columns) == list(on_duckdb.columns)
    assert not on_snowpark.duplicated(spec.keys).any()
    pd.testing.assert_frame_equal(comparable(on_snowpark, spec.keys), comparable(on_duckdb, spec.keys))


def test_aggregates_agree_with_the_duckdb_build(
    snowpark_build: dict, built_profile: Profile, spec: Spec
) -> None:
    sql = (
        f"SELECT {spec.target}, COUNT(*) AS N, SUM(GRID) AS GRID, ROUND(SUM(DRIVER_POINTS_LAST5), 2) AS PTS, "
        f"COUNT(QUALI_POSITION) AS QUALI FROM {spec.table} GROUP BY 1 ORDER BY 1"
    )
    on_snowpark, on_duckdb = frame(snowpark_build["profile"], sql), frame(built_profile, sql)
    assert on_snowpark[spec.target].tolist() == sorted(spec.classes)
    pd.testing.assert_frame_equal(
        comparable(on_snowpark, [spec.target]), comparable(on_duckdb, [spec.target])
    )


def test_every_model_table_has_the_duckdb_row_count(snowpark_build: dict, built_profile: Profile) -> None:
    duckdb_rows = {
        table: int(frame(built_profile, f"SELECT COUNT(*) AS N FROM {table}").N[0])
        for table in snowpark_build["result"].rows
    }
    assert snowpark_build["result"].rows == duckdb_rows
