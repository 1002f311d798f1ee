"""Features stage: build the spec's feature table from ordered SQL models, then check it.

Inputs:  the raw tables; the spec's `features.sql` folder of `NN_name.sql` files, each one
         SELECT in Snowflake dialect, run in file-name order. A model may bind the spec's
         window as `:train_start` and `:holdout_start` (bound values, not text).
Outputs: `<features.schema>.<NAME>` per model (`20_f1_features.sql` -> ML.F1_FEATURES);
         one of them is the spec's `table`. A spec without a `features` section names a
         ready-made table: nothing is built, and the stage only checks that table.
Checks:  keys unique and not null, target within the spec's classes, row count within
         `features.expect_rows`, and the feature contract (`dataset.contract_breaches`: the
         spec's features typed as it lists them, none all NULL in the training window). A
         failed check fails the stage, and the tables stay as they were.
MLflow:  a run `features` with `rows.<TABLE>` metrics and `check.<name>` metrics (1 = pass).
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlflow
import sqlglot
from sqlglot import exp
from sqlglot.dialects.dialect import Dialect
from sqlglot.errors import ParseError
from sqlglot.tokens import TokenType

from pipelines import dataset, dbt_project
from pipelines.config import Profile, Spec
from pipelines.dbt_project import DbtBuild
from pipelines.errors import ConfigError, DataQualityError, WarehouseError
from pipelines.progress import progress
from pipelines.tracking import stage_run
from pipelines.warehouse import Warehouse, connect
from pipelines.warehouse.base import staged_name
from pipelines.warehouse.dialect import quote, split_table

log = logging.getLogger(__name__)

MODEL_FILE = re.compile(r"^(\d+)_([A-Za-z_][A-Za-z0-9_]*)\.sql$")
SPEC_VALUES = ("train_start", "holdout_start")  # what a SQL model may bind as :name


@dataclass(frozen=True)
class SqlModel:
    """One SQL model: a SELECT materialized as a table."""

    path: Path
    table: str

    def create_sql(self, target: str, renames: dict[str, str]) -> str:
        """CREATE `target` AS the model's SELECT, reading each table of `renames` under its new name."""
        select = self.path.read_text().strip().rstrip(";")
        if renames:
            try:
                select = _rename_tables(select, renames)
            except ParseError as exc:
                problem = str(exc).splitlines()[0].rstrip(".")
                raise ConfigError(
                    f"{self.path}: could not parse the SQL model as Snowflake dialect ({problem}): fix its "
                    "syntax."
                ) from None
        return f"CREATE OR REPLACE TABLE {quote(target)} AS\n{select}"


def _rename_tables(select: str, renames: dict[str, str]) -> str:
    """The SELECT with its references to earlier models pointed at their staged tables."""
    tree = sqlglot.parse_one(select, read="snowflake")
    for table in tree.find_all(exp.Table):
        name = ".".join(part for part in (table.db, table.name) if part).upper()
        if name in renames:
            schema, new = split_table(renames[name])
            table.set("this", exp.to_identifier(new))
            table.set("db", exp.to_identifier(schema) if schema else None)
    return tree.sql(dialect="snowflake", pretty=True)


@dataclass(frozen=True)
class QualityCheck:
    """One data-quality check on the spec's table, and what it found."""

    name: str
    passed: bool
    detail: str


@dataclass(frozen=True)
class FeaturesResult:
    rows: dict[str, int]
    checks: list[QualityCheck]


def main(profile: Profile, spec: Spec) -> FeaturesResult:
    """Build every model in order (none without a `features` section), then check the spec's table.

    With a dbt project, dbt builds first (into `features.schema`, before Podium opens the warehouse);
    the spec's table is then copied from dbt's model, with the build's lineage beside it.
    """
    config = spec.features
    with stage_run(profile, spec, "features"):
        built = dbt_project.build(profile, config.dbt, config.db_schema) if config and config.dbt else None
        models = discover_models(spec) if config and config.sql else []
        staged = {table: staged_name(table) for table in tables_written(spec)}
        with connect(profile) as warehouse:
            if config and config.sql:
                warehouse.ensure_schema(config.db_schema)
            warehouse.drop(list(staged.values()))  # what a killed run left
            try:
                if built:
                    rows = {spec.table: _copy_dbt_model(warehouse, spec, built, staged)}
                else:
                    rows = {
                        m.table: materialize(warehouse, m, spec, staged) for m in progress(models, "features")
                    }
                checks = check_quality(warehouse, spec, staged.get(spec.table, spec.table))
                _log(rows, checks, built)
                _require(checks, spec, published=not staged)
                warehouse.publish(staged)
            except BaseException:
                warehouse.drop(list(staged.values()))
                raise
    return FeaturesResult(rows, checks)


def _copy_dbt_model(warehouse: Warehouse, spec: Spec, built: DbtBuild, staged: dict[str, str]) -> int:
    """Stage dbt's model as the spec's table, and the build's lineage as its record; the row count."""
    target, record = staged[spec.table], staged[dataset.dbt_build_table(spec)]
    schema, _ = split_table(spec.table)
    if schema:
        warehouse.ensure_schema(schema)
    source = built.relation_of(spec.table)
    # every column named in upper case, as Snowflake names unquoted ones (dbt-duckdb keeps the SQL's case)
    named = ", ".join(f"{quote(c)} AS {quote(c)}" for c in warehouse.columns(source))
    warehouse.execute(f"CREATE OR REPLACE TABLE {quote(target)} AS SELECT {named} FROM {quote(source)}")
    columns = ", ".join(f"{quote(name)} VARCHAR" for name in dataset.DBT_BUILD_COLUMNS)
    warehouse.execute(f"CREATE OR REPLACE TABLE {quote(record)} ({columns})")
    tags = built.tags()
    values = [tags[f"podium.{name.lower()}"] for name in dataset.DBT_BUILD_COLUMNS]
    warehouse.execute(f"INSERT INTO {quote(record)} VALUES ({', '.join('?' for _ in values)})", values)
    rows = int(warehouse.query(f"SELECT COUNT(*) AS N FROM {quote(target)}").iloc[0, 0])
    log.info("built %s (%s rows) with dbt, invocation %s", spec.table, f"{rows:,}", built.invocation_id)
    return rows


def _log(rows: dict[str, int], checks: list[QualityCheck], built: DbtBuild | None) -> None:
    metrics = {f"rows.{table}": n for table, n in rows.items()}
    mlflow.log_metrics(metrics | {f"check.{c.name}": float(c.passed) for c in checks})
    if built:
        mlflow.set_tags(built.tags())
        mlflow.log_dict(dbt_project.describe(built), "dbt_build.json")


def _require(checks: list[QualityCheck], spec: Spec, published: bool) -> None:
    """Fail the stage on a failed check; what is published stays as it was."""
    failed = [c for c in checks if not c.passed]
    if failed:
        kept = "" if published else " Nothing was published: every table is as it was before."
        raise DataQualityError(
            f"{spec.table} failed data-quality checks: "
            + "; ".join(f"{c.name}: {c.detail}" for c in failed)
            + f".{kept} Fix the feature SQL or the raw data, then rerun `podium features`."
        )


def tables_written(spec: Spec) -> list[str]:
    """The tables this stage builds for the spec, in build order (with dbt: those it publishes)."""
    if spec.features and spec.features.dbt:
        return [spec.table, dataset.dbt_build_table(spec)]
    return [m.table for m in discover_models(spec)] if spec.features else []


def discover_models(spec: Spec) -> list[SqlModel]:
    """The spec's SQL models in run order; the spec's table must be one of them."""
    if spec.features is None:
        raise ConfigError(f"spec {spec.name} has no `features` section: nothing to build.")
    folder, schema = spec.features.sql, spec.features.db_schema
    if folder is None:
        raise ConfigError(f"spec {spec.name} builds its features with dbt: it has no SQL models.")
    files = sorted(folder.glob("*.sql")) if folder.is_dir() else []
    numbered: list[tuple[int, SqlModel]] = []  # each model with its file's NN, the run order
    for path in files:
        match = MODEL_FILE.match(path.name)
        if not match:
            raise ConfigError(
                f"{path}: SQL model files are named NN_name.sql (e.g. 10_features.sql): rename it, or move "
                "it out."
            )
        numbered.append((int(match.group(1)), SqlModel(path, f"{schema}.{match.group(2).upper()}")))
    models = [model for _, model in sorted(numbered, key=lambda pair: pair[0])]  # ties keep file order
    if spec.table not in {m.table for m in models}:
        raise ConfigError(
            f"no SQL model in {folder} builds {spec.table}: "
            f"add a file named NN_{spec.table.split('.')[-1].lower()}.sql."
        )
    return models


def materialize(warehouse: Warehouse, model: SqlModel, spec: Spec, staged: dict[str, str]) -> int:
    """Build one model under its staged name (reading earlier models' staged tables); its row count.

    A SQL error names the model's file.
    """
    target = staged.get(model.table, model.table)
    sql, params = bind_spec_values(model.create_sql(target, staged), spec)
    try:
        warehouse.execute(sql, params)
    except WarehouseError as exc:
        raise WarehouseError(f"the SQL model {model.path} failed to build {model.table}: {exc}") from None
    rows = int(warehouse.query(f"SELECT COUNT(*) AS N FROM {quote(target)}").iloc[0, 0])
    log.info("built %s (%s rows) from %s", model.table, f"{rows:,}", model.path.name)
    return rows


def bind_spec_values(sql: str, spec: Spec) -> tuple[str, list[Any]]:
    """Turn each `:train_start` / `:holdout_start` into a `?` placeholder; the spec's values, in order.

    A colon right after a name (Snowflake's `column:field` path) is left alone, as are strings and comments.
    """
    pieces, params, done = [], [], 0
    tokens = Dialect.get_or_raise("snowflake").tokenize(sql)
    for colon, name in zip(tokens, tokens[1:], strict=False):
        bindable = colon.token_type is TokenType.COLON and name.text.lower() in SPEC_VALUES
        if (
            bindable
            and name.start == colon.end + 1
            and (colon.start == 0 or sql[colon.start - 1] in " \t\n(,=")
        ):
            pieces.append(sql[done : colon.start] + "?")
            params.append(getattr(spec, name.text.lower()))
            done = name.end + 1
    return "".join(pieces) + sql[done:], params


def check_quality(warehouse: Warehouse, spec: Spec, table: str | None = None) -> list[QualityCheck]:
    """Keys unique and not null, target in the accepted classes, row count in bounds, the feature contract.

    `table` is where the spec's table stands now: its staged name while a build is checked.
    """
    return [*_row_checks(warehouse, spec, table), check_contract(warehouse, spec, table)]


def check_contract(warehouse: Warehouse, spec: Spec, table: str | None = None) -> QualityCheck:
    """The table fits the spec's feature schema and its contract (`dataset.contract_breaches`)."""
    try:
        schema = dataset.feature_schema(spec, warehouse.columns(table or spec.table))
        breaches = dataset.contract_breaches(warehouse, spec, schema, table)
    except ConfigError as exc:  # the spec's columns and the table's disagree: the table does not fit
        breaches = [str(exc).rstrip(".")]
    return QualityCheck("feature_contract", not breaches, "; ".join(breaches))


def _row_checks(warehouse: Warehouse, spec: Spec, table: str | None) -> list[QualityCheck]:
    """Keys unique and not null, target in the accepted classes, row count in bounds."""
    table, keys, target = quote(table or spec.table), [quote(k) for k in spec.keys], quote(spec.target)
    key_list = ", ".join(keys)
    null_keys = " OR ".join(f"{k} IS NULL" for k in keys)
    placeholders = ", ".join("?" for _ in spec.classes)
    stats = warehouse.query(
        f"SELECT COUNT(*) AS N_ROWS, COALESCE(COUNT_IF({null_keys}), 0) AS N_NULL_KEYS, "
        f"COALESCE(COUNT_IF({target} IS NULL OR {target} NOT IN ({placeholders})), 0) AS N_BAD_TARGET "
        f"FROM {table}",
        spec.classes,
    ).iloc[0]
    duplicates = warehouse.query(
        f"SELECT COUNT(*) AS N FROM (SELECT {key_list} FROM {table} GROUP BY {key_list} HAVING COUNT(*) > 1)"
    ).iloc[0, 0]
    n_rows, bounds = int(stats["N_ROWS"]), spec.features.expect_rows if spec.features else None
    low, high = (bounds.min, bounds.max) if bounds else (1, None)
    return [
        QualityCheck(
            "keys_not_null", stats["N_NULL_KEYS"] == 0, f"{int(stats['N_NULL_KEYS'])} rows have a null key"
        ),
        QualityCheck("keys_unique", duplicates == 0, f"{int(duplicates)} key values appear more than once"),
        QualityCheck(
            "target_accepted",
            stats["N_BAD_TARGET"] == 0,
            f"{int(stats['N_BAD_TARGET'])} rows have {spec.target} outside {spec.classes}",
        ),
        QualityCheck(
            "row_count",
            n_rows >= low and (high is None or n_rows <= high),
            f"{n_rows} rows, expected between {low} and {high if high is not None else 'any'}",
        ),
    ]
