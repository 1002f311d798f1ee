"""`podium dbt-sources`: the spec's output tables as dbt sources, with descriptions and tests.

The scores, monitoring and promotions tables (and the backtest and cycles tables, when the spec has
those sections) become sources grouped by schema, each column described, with dbt's generic tests:
every key and MODEL_VERSION not null and together unique, PREDICTED_CLASS among the spec's classes.
An exposure of type `ml` names the model, depending on the feature model (when dbt builds it) and on
those sources, so `dbt docs` draws the line from raw data to scores. The document is plain YAML for
dbt >= 1.8 (`data_tests`, test `arguments`); it needs no dbt package.
"""

from __future__ import annotations

from typing import Any, get_args

from pipelines import dataset, served
from pipelines.audit import COLUMNS as AUDIT_COLUMNS
from pipelines.audit import Outcome
from pipelines.config import Spec
from pipelines.stages.backtest import COLUMNS as BACKTEST_COLUMNS
from pipelines.stages.cycle import COLUMNS as CYCLE_COLUMNS
from pipelines.stages.evaluate import COLUMNS as MONITORING_COLUMNS
from pipelines.stages.evaluate import KEYS as MONITORING_KEYS
from pipelines.warehouse.dialect import split_table

DESCRIBED = {
    "PREDICTED_CLASS": "The class with the highest probability.",
    "MODEL_NAME": "The registered model that scored or was judged.",
    "MODEL_VERSION": "Its registered version.",
    "MODEL_ALIAS": "The alias it held when it scored (champion, or challenger in shadow).",
    "RUN_ID": "The MLflow run that wrote the row.",
    "SCORED_AT": "When the row was scored (UTC).",
    "BATCH_ID": "The scoring batch; a rerun of the same batch writes the same rows.",
    "PERIOD": "The monitoring period (a year, 2021Q3 or 2021-07).",
    "METRIC": "What was measured: log_loss, auc, accuracy, hit_rate, psi.<feature>, shadow gains.",
    "VALUE": "The metric's value.",
    "ROWS": "The labelled rows the value was measured on.",
    "AUDIT_ID": "One promotion decision.",
    "DECISION": "What the gate decided.",
    "REASON": "Why, in the gate's words.",
    "FORCED": "Whether a person overrode the gate.",
    "ACTOR": "Who decided.",
    "DECIDED_AT": "When (UTC).",
}
OUTCOMES = list(get_args(Outcome))  # every DECISION the audit writes


def document(spec: Spec) -> dict[str, Any]:
    """The `sources.yml` for the spec's output tables, and the exposure that ties them to the model."""
    tables = [_scores(spec), _monitoring(spec), _promotions(spec)]
    if spec.backtest:
        tables.append(_table(spec.backtest.table, "The walk-forward backtest.", list(BACKTEST_COLUMNS)))
    if spec.cycle:
        tables.append(_table(spec.cycle.table, "One row per retraining cycle.", list(CYCLE_COLUMNS)))
    sources: dict[str, dict[str, Any]] = {}
    for full_name, table in tables:
        schema, _ = split_table(full_name)
        where = {"schema": schema} if schema else {}
        sources.setdefault(schema or "", {"name": _source_name(schema), **where, "tables": []})[
            "tables"
        ].append(table)
    return {"version": 2, "sources": list(sources.values()), "exposures": [_exposure(spec, tables)]}


def _scores(spec: Spec) -> tuple[str, dict[str, Any]]:
    probabilities = dataset.probability_columns(spec)
    names = [*spec.id_columns, served.PREDICTED, *probabilities, *dataset.LINEAGE]
    about = {p: f"The probability of class {c}." for p, c in zip(probabilities, spec.classes, strict=True)}
    about |= {c: f"Identifies the scored row, as in {spec.table}." for c in spec.id_columns}
    name, table = _table(
        spec.scoring_table, f"{spec.name}'s scores, one row per key and model version.", names, about
    )
    _test(
        table,
        served.PREDICTED,
        "not_null",
        {"accepted_values": {"arguments": {"values": list(spec.classes)}}},
    )
    _unique_together(table, [*spec.id_columns, "MODEL_VERSION"])
    return name, table


def _monitoring(spec: Spec) -> tuple[str, dict[str, Any]]:
    monitoring = spec.monitoring_section
    names = list(dict.fromkeys([*MONITORING_KEYS, *MONITORING_COLUMNS]))
    name, table = _table(monitoring.table, f"{spec.name}'s metrics per period and version, and drift.", names)
    _unique_together(table, MONITORING_KEYS)
    return name, table


def _promotions(spec: Spec) -> tuple[str, dict[str, Any]]:
    audit = spec.registry.audit_table
    name, table = _table(
        audit, "Every promotion decision of every model (the audit trail).", list(AUDIT_COLUMNS)
    )
    _test(table, "AUDIT_ID", "unique")
    _test(table, "DECISION", {"accepted_values": {"arguments": {"values": OUTCOMES}}})
    return name, table


def _table(
    full_name: str, description: str, columns: list[str], about: dict[str, str] | None = None
) -> tuple[str, dict[str, Any]]:
    """A source table with its columns described; keys in `about` win over the shared descriptions."""
    _, name = split_table(full_name)
    described = DESCRIBED | (about or {})
    rows = [{"name": c, "description": described.get(c, c.lower().replace("_", " "))} for c in columns]
    return full_name, {"name": name.lower(), "identifier": name, "description": description, "columns": rows}


def _test(table: dict[str, Any], column: str, *tests: Any) -> None:
    for row in table["columns"]:
        if row["name"] == column:
            row.setdefault("data_tests", []).extend(tests)


def _unique_together(table: dict[str, Any], columns: list[str]) -> None:
    """Each column not null, and the columns together unique (one expression: no dbt package needed)."""
    for column in columns:
        _test(table, column, "not_null")
    key = " || '|' || ".join(f"CAST({c} AS VARCHAR)" for c in columns)
    table["columns"].append(
        {"name": key, "description": f"The key: {', '.join(columns)}.", "data_tests": ["unique"]}
    )


def _source_name(schema: str | None) -> str:
    return f"podium_{(schema or 'main').lower()}"


def _exposure(spec: Spec, tables: list[tuple[str, dict[str, Any]]]) -> dict[str, Any]:
    """The model as a dbt exposure of type ml, from its feature model to the tables it writes."""
    depends = [f"source('{_source_name(split_table(n)[0])}', '{t['name']}')" for n, t in tables]
    if spec.features and spec.features.dbt:
        depends.insert(0, f"ref('{split_table(spec.table)[1].lower()}')")
    return {
        "name": spec.model_name,
        "label": f"{spec.model_name} (Podium)",
        "type": "ml",
        "maturity": "medium",
        "owner": {"name": "Podium"},
        "description": f"{spec.description.strip() or spec.name} Registered as models:/{spec.model_name}.",
        "depends_on": depends,
    }
