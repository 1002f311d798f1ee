"""Typed configuration: a profile says where Podium runs, a spec says what it learns.

Profiles live in `conf/<name>.yaml`, specs in `experiments/<name>/spec.yaml`; either may also
be given as a path to a YAML file. Both are strict: an unknown key fails fast. Relative
paths inside them are relative to the project root (the current directory). Secrets
never live here: Snowflake credentials come from connections.toml or SNOWFLAKE_* vars.
"""

from __future__ import annotations

import re
from datetime import date
from pathlib import Path
from typing import Annotated, Literal, TypeVar

from pydantic import (
    AfterValidator,
    BaseModel,
    Field,
    StrictInt,
    field_validator,
    model_validator,
)

from pipelines.alerts import AlertChannel
from pipelines.config_types import Identifier, Name, Strict, TableName, class_name
from pipelines.errors import ConfigError
from pipelines.secrets import refuse_password

DEFAULT_PROFILE = "local"
MIN_TUNE_SECONDS = 5.0  # a seconds budget keeps 2 s to close the studies: less leaves no time for a trial
WEEK = 7 * 86_400.0
MAX_CHUNK_ROWS = 10_000_000  # rows per scoring chunk: beyond this one chunk's frames outgrow memory
MIN_MEMORY = 32 * 2**20  # DuckDB's buffer cap below which scoring and evaluation cannot run


def size_in_bytes(size: str) -> float:
    """A DuckDB memory size (512MB, 1.5GiB) in bytes: KB, MB are powers of 1000, KiB, MiB of 1024."""
    number, unit, binary = re.fullmatch(r"(\d+(?:\.\d+)?)\s*([KMGT])(i?)B", size.strip()).groups()  # type: ignore[union-attr]
    return float(number) * (1024 if binary else 1000) ** ("KMGT".index(unit) + 1)


# --- profile: where it runs -------------------------------------------------------


class DuckDBConfig(Strict):
    """The embedded warehouse: one DuckDB file."""

    backend: Literal["duckdb"]
    path: Path = Path("warehouse/podium.duckdb")
    memory_limit: str | None = Field(
        "512MB",
        pattern=r"^\d+(\.\d+)?\s*([KMGT]i?B)$",
        description="DuckDB's buffer cap, e.g. 1GB or 512MiB (joins and sorts spill past it); null: 80% RAM",
    )

    @field_validator("memory_limit")
    @classmethod
    def _enough_memory(cls, value: str | None) -> str | None:
        if value is not None and size_in_bytes(value) < MIN_MEMORY:
            raise ValueError(f"{value} is too little for DuckDB to score or evaluate: give it at least 32MB")
        return value


class SnowflakeConfig(Strict):
    """Snowflake through Snowpark. Only non-secret session defaults live here."""

    backend: Literal["snowflake"]
    connection_name: str | None = Field(
        None, description="entry in connections.toml; else SNOWFLAKE_* environment variables"
    )
    database: Identifier | None = None
    role: Identifier | None = None
    warehouse: Identifier | None = None
    login_timeout: StrictInt = Field(
        60, ge=1, le=3600, description="seconds to log in; also how long one request waits for an answer"
    )
    network_timeout: StrictInt = Field(
        300, ge=1, le=86_400, description="seconds a request may take, the connector's retries included"
    )
    statement_timeout: StrictInt = Field(
        3600, ge=1, le=604_800, description="seconds a statement may run (STATEMENT_TIMEOUT_IN_SECONDS)"
    )


class Profile(Strict):
    """Where Podium runs: the warehouse backend, the MLflow tracking store and where alerts go."""

    name: str
    warehouse: DuckDBConfig | SnowflakeConfig = Field(discriminator="backend")
    tracking_uri: str | None = Field(
        None,
        description="MLflow tracking URI; MLFLOW_TRACKING_URI wins; default the project's sqlite:///mlflow.db",
    )
    optuna_storage: str = Field(
        "optuna/studies.journal",
        description="Optuna storage: a journal file path, or a URL (sqlite:///..., postgresql://...)",
    )
    alerts: list[AlertChannel] = Field(
        [],
        description="the channels told of a promotion, a refusal, drift or a failed cycle (pipelines.alerts)",
    )

    @field_validator("tracking_uri", "optuna_storage")
    @classmethod
    def _no_password(cls, value: str | None) -> str | None:
        try:
            return value if value is None else refuse_password(value, "the URL")
        except ConfigError as exc:
            raise ValueError(str(exc)) from None


# --- spec: what it learns ----------------------------------------------------------


class IngestConfig(Strict):
    """Raw files to load: a folder of CSVs described by its tables.yaml manifest."""

    source: Path
    db_schema: Identifier = Field("RAW", alias="schema")


class RowBounds(Strict):
    min: StrictInt = Field(1, ge=0)
    max: StrictInt | None = Field(None, ge=0)

    @model_validator(mode="after")
    def _ordered(self) -> RowBounds:
        if self.max is not None and self.max < self.min:
            raise ValueError(f"max ({self.max}) is below min ({self.min}): swap them, or raise max")
        return self


class DbtFeatures(Strict):
    """A dbt project that builds the feature table: `dbt build --select <select>`."""

    project_dir: Path
    select: str = Field(min_length=1, description="dbt's node selection, e.g. +store_demand_features")
    target: Name = Field("podium", description="the target name of the profile Podium writes for dbt")
    vars: dict[str, str | int | float | bool] = Field({}, description="dbt's --vars")


class FeaturesConfig(Strict):
    """What builds the feature table: ordered SQL models (Snowflake dialect), or a dbt project.

    `schema` is where the SQL models' tables go, or dbt's target schema (then not the spec table's own).
    """

    sql: Path | None = None
    dbt: DbtFeatures | None = None
    db_schema: Identifier = Field("ML", alias="schema")
    expect_rows: RowBounds = RowBounds()

    @model_validator(mode="after")
    def _one_builder(self) -> FeaturesConfig:
        if (self.sql is None) == (self.dbt is None):
            raise ValueError("give one of `sql` (a folder of NN_name.sql models) or `dbt` (a dbt project)")
        return self


class ColumnsConfig(Strict):
    """How the feature table's columns feed the models; the rest are numeric features."""

    categorical: list[Identifier] = []
    exclude: list[Identifier] = Field([], description="informational columns that are not features")


class CVConfig(Strict):
    """Expanding-window CV by season inside the training window."""

    folds: StrictInt = Field(4, ge=2, le=50)
    gap: StrictInt = Field(
        0, ge=0, le=50, description="seasons left out between a fold's training part and its season"
    )


class BaselineConfig(Strict):
    """The domain heuristic: class frequencies per value of one column."""

    column: Identifier


class TuningBudget(Strict):
    """What one `podium tune` call spends: wall-clock seconds for the whole stage, a trial cap, or both."""

    seconds: float | None = Field(
        None, ge=MIN_TUNE_SECONDS, le=WEEK, description="the whole stage, spread over families by halving"
    )
    trials: StrictInt | None = Field(
        None, ge=1, le=100_000, description="at most this many new trials per family"
    )

    @model_validator(mode="after")
    def _bounded(self) -> TuningBudget:
        if self.seconds is None and self.trials is None:
            raise ValueError("set seconds, trials or both: a budget without either never ends")
        return self


class TuningConfig(Strict):
    """Optuna search: which families, what budget, which seed."""

    search_space: Path
    families: list[str] = Field(min_length=1)
    budget: TuningBudget = TuningBudget(trials=20)
    seed: StrictInt = Field(42, ge=0, le=2**32 - 1)
    sampler_startup_trials: StrictInt = Field(
        5, ge=1, le=10_000, description="random trials before TPE models it"
    )
    pruner_startup_trials: StrictInt = Field(5, ge=0, le=10_000)


class SnowflakeRegistryConfig(Strict):
    """Mirror promotions into Snowflake's model registry (Snowflake profiles), so SQL can call the model."""

    model_name: Identifier | None = Field(None, description="the Snowflake model; default: the MLflow name")
    aliases: list[Identifier] = Field(["CHAMPION"], min_length=1, description="the aliases mirrored")


class RegistryConfig(Strict):
    """Where trained models are registered and promotions are audited."""

    model_name: Name | None = Field(None, description="registered model name; default: the spec's name")
    audit_table: TableName = "ML.MODEL_PROMOTIONS"
    snowflake: SnowflakeRegistryConfig | None = Field(
        None, description="mirror each promotion into Snowflake's model registry (`snowflake: {}`)"
    )


PolicyCheck = Literal["beats_baseline", "signature_matches"]


class LiveEvidence(Strict):
    """Live evidence the gate asks for: the challenger beat the holder in shadow on the last `periods`."""

    periods: StrictInt = Field(
        ge=1, le=100, description="evaluated shadow periods, the latest, that must all be won"
    )
    min_improvement: float = Field(0.0, ge=0, le=1, description="by at least this much in each (paired gain)")


class PromotionPolicy(Strict):
    """The gate a challenger must pass to take a target (an alias or a stage) from its holder."""

    metric: Literal["log_loss", "auc", "balanced_accuracy"] = "log_loss"
    min_improvement: float = Field(
        0.0, ge=0, le=1, description="over the current holder, on the same holdout"
    )
    checks: list[PolicyCheck] = ["beats_baseline", "signature_matches"]
    baseline: str = Field("heuristic", description="the baseline `beats_baseline` compares with")
    live: LiveEvidence | None = Field(None, description="shadow periods the challenger must have won too")

    @model_validator(mode="after")
    def _live_metric_adds_up(self) -> PromotionPolicy:
        if self.live and self.metric == "auc":
            raise ValueError(
                "live evidence compares shadow pairs race by race, which AUC does not allow: set "
                "promotion.metric to log_loss or balanced_accuracy, or drop promotion.live"
            )
        return self


class ScoringConfig(Strict):
    """Which rows `score` selects: time in [start, end); rows per chunk and per commit; a shadow."""

    start: date
    end: date | None = None
    chunk_rows: StrictInt = Field(
        131_072, gt=0, le=MAX_CHUNK_ROWS, description="rows per read-predict-write chunk: bounds memory"
    )
    commit_rows: StrictInt | None = Field(
        None,
        gt=0,
        le=100 * MAX_CHUNK_ROWS,
        description="rows per commit (one MERGE each on Snowflake); default: every chunk",
    )
    shadow: Literal["challenger"] | None = Field(
        None, description="challenger: score it beside the champion on the same rows (`score --shadow`)"
    )

    @model_validator(mode="after")
    def _ordered(self) -> ScoringConfig:
        if self.end is not None and self.end <= self.start:
            raise ValueError(f"end ({self.end}) must be after start ({self.start}): fix or drop scoring.end")
        return self


class HitRateConfig(Strict):
    """Top-k hit rate: per group, do the k rows with the highest P(class) hold the actual class?"""

    group: Identifier
    target_class: str = Field(alias="class")
    k: StrictInt = Field(3, ge=1, le=1000)


class MonitoringConfig(Strict):
    """What `evaluate` writes and when it warns."""

    table: TableName
    period: Literal["year", "quarter", "month"] = "year"
    psi_threshold: float = Field(0.2, gt=0, le=10)
    hit_rate: HitRateConfig | None = None

    @property
    def bins_table(self) -> str:
        """Where evaluate keeps each drift bin's shares: the table's name plus `_DRIFT_BINS`."""
        return f"{self.table}_DRIFT_BINS"


class BacktestConfig(Strict):
    """`podium backtest`: the lifecycle replayed period by period (the monitoring period) over past data."""

    table: TableName = Field(description="one row per (period, model); its scratch tables share the prefix")
    start: date = Field(description="the first period replayed")
    end: date = Field(description="the replay stops before this")
    families: list[str] | None = Field(None, min_length=1, description="default: tuning.families")
    trials: StrictInt = Field(
        4,
        ge=1,
        le=10_000,
        description="new trials per family per period (trials, not seconds: a replay is repeatable)",
    )

    @model_validator(mode="after")
    def _ordered(self) -> BacktestConfig:
        if self.end <= self.start:
            raise ValueError(f"end ({self.end}) must be after start ({self.start}): fix backtest.end")
        return self


class DriftTrigger(Strict):
    """Retrain when this many features of the champion's scored rows drifted past `psi` (vs its training)."""

    features: StrictInt = Field(ge=1, le=10_000, description="features past the threshold that fire it")
    psi: float = Field(0.2, gt=0, le=10, description="a feature's PSI threshold")


class LiveTrigger(Strict):
    """Retrain when the champion's latest evaluated period is worse than its holdout by more than this."""

    metric: Literal["log_loss", "auc"] = "log_loss"
    worse_than_holdout_by: float = Field(ge=0, le=100)


class AgeTrigger(Strict):
    """Retrain when this many periods (the monitoring period) passed since the champion's training ended."""

    periods: StrictInt = Field(ge=1, le=1000)


class RetrainTriggers(Strict):
    """The triggers of a retrain policy: any one that fires retrains (those left out never fire)."""

    drift: DriftTrigger | None = None
    live: LiveTrigger | None = None
    age: AgeTrigger | None = None
    new_rows: StrictInt | None = Field(
        None, ge=1, description="labelled rows since the champion's training ended (rows it never fit)"
    )

    @model_validator(mode="after")
    def _some(self) -> RetrainTriggers:
        if not any((self.drift, self.live, self.age, self.new_rows)):
            raise ValueError("name at least one trigger: drift, live, age or new_rows")
        return self


class RetrainPolicy(Strict):
    """When a cycle retrains, and the tuning budget it spends when it does."""

    when_any: RetrainTriggers
    tune: TuningBudget = TuningBudget(seconds=120)


class CycleConfig(Strict):
    """`podium cycle`: one period of the lifecycle, run on a schedule; one row per period in `table`."""

    table: TableName = Field(description="one row per cycle: triggers, actions, the gate, the champion")
    retrain: RetrainPolicy


class Spec(Strict):
    """One use case: its feature table, keys, time, target and holdout."""

    name: Name = Field(description="names the MLflow experiment, the Optuna studies and the model")
    description: str = ""
    table: TableName
    keys: list[Identifier] = Field(min_length=1)
    time: Identifier
    target: Identifier
    classes: list[Annotated[str, AfterValidator(class_name)]] = Field(min_length=2)
    train_start: date
    holdout_start: date
    holdout_end: date | None = Field(None, description="the holdout is time in [holdout_start, holdout_end)")
    scoring_table: TableName
    ingest: IngestConfig | None = None
    features: FeaturesConfig | None = None
    columns: ColumnsConfig = ColumnsConfig()
    cv: CVConfig = CVConfig()
    baseline: BaselineConfig | None = None
    tuning: TuningConfig | None = None
    scoring: ScoringConfig | None = None
    monitoring: MonitoringConfig | None = None
    registry: RegistryConfig = RegistryConfig()
    promotion: PromotionPolicy = PromotionPolicy()
    backtest: BacktestConfig | None = None
    cycle: CycleConfig | None = None

    @property
    def model_name(self) -> str:
        return self.registry.model_name or self.name

    @property
    def tuning_section(self) -> TuningConfig:
        """The `tuning` section, which tune, train and backtest need."""
        return _required(self.name, "tuning", self.tuning)

    @property
    def scoring_section(self) -> ScoringConfig:
        """The `scoring` section, which score needs."""
        return _required(self.name, "scoring", self.scoring)

    @property
    def monitoring_section(self) -> MonitoringConfig:
        """The `monitoring` section, which evaluate and backtest need."""
        return _required(self.name, "monitoring", self.monitoring)

    @property
    def backtest_section(self) -> BacktestConfig:
        """The `backtest` section, which backtest needs."""
        return _required(self.name, "backtest", self.backtest)

    @property
    def cycle_section(self) -> CycleConfig:
        """The `cycle` section, which cycle needs."""
        return _required(self.name, "cycle", self.cycle)

    @property
    def id_columns(self) -> list[str]:
        """The keys, then the time column unless it is one of them: what identifies a scored row."""
        return list(dict.fromkeys([*self.keys, self.time]))

    @model_validator(mode="after")
    def _window_is_ordered(self) -> Spec:
        if len(set(self.classes)) != len(self.classes):
            twice = sorted({c for c in self.classes if self.classes.count(c) > 1})
            raise ValueError(f"classes lists {twice} more than once: list each class once")
        if self.train_start >= self.holdout_start:
            raise ValueError(
                f"train_start ({self.train_start}) must be before holdout_start ({self.holdout_start})"
            )
        if self.holdout_end is not None and self.holdout_end <= self.holdout_start:
            raise ValueError(
                f"holdout_end ({self.holdout_end}) must be after holdout_start ({self.holdout_start}): "
                "fix or drop holdout_end"
            )
        return self

    @model_validator(mode="after")
    def _dbt_builds_elsewhere(self) -> Spec:
        dbt_schema = self.features.db_schema if self.features and self.features.dbt else None
        parts = self.table.upper().split(".")  # [DATABASE.]SCHEMA.TABLE, or TABLE alone
        if dbt_schema and len(parts) > 1 and parts[-2] == dbt_schema.upper():
            raise ValueError(
                f"features.schema ({dbt_schema}) is where dbt builds, and {self.table} is where Podium "
                "publishes the checked table: give them different schemas (e.g. features.schema: "
                f"{dbt_schema}_DBT)"
            )
        return self


SECTION_HINTS = {
    "tuning": "search_space and families",
    "scoring": "scoring.start (and optionally end)",
    "monitoring": "monitoring.table",
    "backtest": "backtest.table, start and end",
    "cycle": "cycle.table and cycle.retrain.when_any (docs/scheduling.md)",
}


S = TypeVar("S", bound=BaseModel)


def _required(spec: str, section: str, value: S | None) -> S:
    """An optional section a stage needs, or one clear error saying what to add to the spec."""
    if value is None:
        raise ConfigError(f"spec {spec} has no `{section}` section: add {SECTION_HINTS[section]}.")
    return value
