"""Score stage: a registered model's class probabilities, written back to the warehouse.

Inputs:  a model URI (`models:/name@alias`, `models:/name/Stage` or `models:/name/3`;
         default the spec's champion) and the feature rows of the spec's scoring window
         that this model version has not scored yet (all of them with `full`).
Outputs: the spec's scoring table: keys, time, PREDICTED_CLASS, P_<CLASS> per class,
         MODEL_NAME, MODEL_VERSION, MODEL_ALIAS, RUN_ID, SCORED_AT, BATCH_ID; at most one
         row per (keys, MODEL_VERSION).
MLflow:  one `score` run per batch: model URI, version, batch id, rescore_all and
         rows_per_chunk as params (and the shadow's URI and version); rows read, rows
         written and seconds as metrics.

Shadow scoring (`shadow`, or the spec's `scoring.shadow: challenger`) scores the champion and
the challenger on the same rows in one batch: each chunk is read once and written with both
versions' rows (MODEL_ALIAS `champion`, `challenger`), so every committed chunk holds whole
pairs. Its rows are those either version lacks, merged by (keys, MODEL_VERSION), read with the
union of both versions' inputs.

Before anything is written, the feature table must fit every version the batch scores: each
input its signature names present, typed as it was trained (categoricals text, numbers not), and
none all NULL in the training window (`dataset.contract_breaches`).

Rows stream through the warehouse seam in chunks of `chunk_rows`, read ahead and written
behind while the model predicts (`overlap`). An incremental batch appends (its rows are
new to the table), a `--full` one merges by (keys, MODEL_VERSION); either commits every
`commit_rows` rows. A crash leaves every committed interval intact, and a rerun
(incremental by default) scores only what is missing.
"""

from __future__ import annotations

import functools
import logging
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime

import mlflow
import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator

from pipelines import dataset, overlap, registry
from pipelines.config import Profile, ScoringConfig, Spec
from pipelines.dataset import FeatureSchema
from pipelines.errors import DataQualityError, PodiumError
from pipelines.processes import PROCESS_TAG, end_stale_stage_runs, process_gone
from pipelines.progress import counter
from pipelines.registry import CHALLENGER, CHAMPION, ResolvedModel
from pipelines.served import PREDICTED, NamedClassifier
from pipelines.tracking import configure, stage_run
from pipelines.warehouse import Warehouse, connect
from pipelines.warehouse.base import ScoringJob
from pipelines.warehouse.dialect import quote

log = logging.getLogger(__name__)

ENGINES = ("local", "warehouse")


@dataclass(frozen=True)
class ScoreResult:
    table: str
    model: ResolvedModel
    batch_id: str  # "" when there was nothing to score (no batch, no run)
    rows_read: int
    rows_written: int  # every version's rows
    shadow: ResolvedModel | None = None  # the challenger scored beside the model


@dataclass(frozen=True)
class Shadow:
    """The challenger a shadow batch scores beside the model, on the same rows."""

    model: ResolvedModel
    estimator: NamedClassifier


@dataclass(frozen=True)
class Batch:
    """One scoring batch: the model version, its fitted pipeline, and how rows are selected and cut."""

    model: ResolvedModel
    estimator: BaseEstimator
    batch_id: str
    full: bool
    chunk_rows: int
    resumed: bool = False  # a --full batch a killed run left unfinished, carried on under its id
    shadow: Shadow | None = None

    @property
    def models(self) -> list[ResolvedModel]:
        """The versions the batch scores: the model, then the shadow."""
        return [self.model, *([self.shadow.model] if self.shadow else [])]

    @property
    def versions(self) -> list[str]:
        """The versions whose rows the batch writes: the model's, then the shadow's."""
        return [model.version for model in self.models]


def main(
    profile: Profile,
    spec: Spec,
    model_uri: str | None = None,
    full: bool = False,
    chunk_rows: int | None = None,
    engine: str = "local",
    shadow: bool | None = None,
) -> ScoreResult:
    """Score the window's unscored rows (or all with `full`) with one model version.

    `engine="local"` streams chunks through this process; `"warehouse"` (Snowflake only) runs
    the model inside Snowflake as a vectorized UDF. `shadow` (default: the spec's
    `scoring.shadow`) scores the challenger beside the model on the same rows.
    """
    scoring: ScoringConfig = spec.scoring_section
    rows = chunk_rows if chunk_rows is not None else scoring.chunk_rows
    shadowed = shadow if shadow is not None else scoring.shadow == CHALLENGER
    _check_options(profile, rows, engine, shadowed)
    configure(profile)  # the registry the URI names is the profile's
    model = registry.resolve(model_uri or registry.alias_uri(spec.model_name, CHAMPION))
    unfinished = interrupted_rescore(spec, model) if full and engine == "local" else None
    estimator = registry.load_estimator(model.name, model.version)
    beside = shadow_of(model, required=shadow is not None) if shadowed else None
    shadow_model = beside.model if beside else None  # the challenger's version, when it scores beside
    batch = Batch(model, estimator, unfinished or uuid.uuid4().hex, full, rows, bool(unfinished), beside)
    with connect(profile) as warehouse:
        check_features(warehouse, spec, batch)
        ensure_table(warehouse, spec)
        pending = None if engine == "warehouse" else _pending(warehouse, spec, scoring, batch)
        if pending == 0 and not full:
            end_stale_stage_runs(spec, "score")  # a run killed after its last write still ends FAILED
            return ScoreResult(spec.scoring_table, model, "", 0, 0, shadow_model)
        with stage_run(profile, spec, "score"):
            read, written = _tracked(warehouse, spec, scoring, batch, engine, pending)
    log.info(
        "scored %s rows into %s with %s v%s (batch %s)", f"{written:,}", spec.scoring_table, *_who(batch)
    )
    return ScoreResult(spec.scoring_table, model, batch.batch_id, read, written, shadow_model)


def shadow_of(model: ResolvedModel, required: bool) -> Shadow | None:
    """The challenger of `model`'s registered model, when it is another version; else None.

    No challenger alias is an error when shadow scoring was asked for (`required`), and a
    warning when the spec's switch asked.
    """
    uri = registry.alias_uri(model.name, CHALLENGER)
    try:
        challenger = registry.resolve(uri)
    except PodiumError:
        if required:
            raise PodiumError(
                f"--shadow scores the challenger beside the champion, but {model.name} has no "
                f"{CHALLENGER!r} alias: train one (`podium train`), or score without --shadow."
            ) from None
        log.warning("no %s alias on %s: scoring without a shadow", CHALLENGER, model.name)
        return None
    if challenger.version == model.version:
        if required:
            raise PodiumError(
                f"--shadow scores the challenger beside v{model.version}, but the {CHALLENGER!r} alias of "
                f"{model.name} names v{model.version} itself: train a new challenger, or score without "
                "--shadow."
            )
        log.warning("the challenger is v%s itself: scoring without a shadow", model.version)
        return None
    return Shadow(challenger, registry.load_estimator(challenger.name, challenger.version))


def _tracked(
    warehouse: Warehouse, spec: Spec, scoring: ScoringConfig, batch: Batch, engine: str, pending: int | None
) -> tuple[int, int]:
    """Score the batch inside the active `score` run, logging what and how much: (rows read, written)."""
    mlflow.log_params(_params(batch) | {"engine": engine})
    started = time.perf_counter()
    if engine == "warehouse":
        read, written = warehouse.score_in_warehouse(_job(spec, scoring, batch))
    else:
        read, written = _stream(warehouse, spec, scoring, batch, pending or 0)
    mlflow.log_metrics({"rows_read": read, "rows_written": written, "seconds": time.perf_counter() - started})
    mlflow.set_tags({"podium.model_version": batch.model.version, "podium.batch_id": batch.batch_id})
    return read, written


def interrupted_rescore(spec: Spec, model: ResolvedModel) -> str | None:
    """The batch id of the latest `--full` rescore of this version if its run never finished (a kill)."""
    client = registry.client()
    experiment = client.get_experiment_by_name(spec.name)
    if experiment is None:
        return None
    where = (
        "tags.`podium.stage` = 'score' and params.rescore_all = 'True' "
        f"and params.model_version = '{model.version}'"
    )
    runs = client.search_runs(
        [experiment.experiment_id],
        filter_string=where,
        order_by=["attributes.start_time DESC"],
        max_results=1,
    )
    if not runs or runs[0].info.status == "FINISHED":
        return None
    run = runs[0]
    if run.info.status == "RUNNING" and not process_gone(run.data.tags.get(PROCESS_TAG)):
        return None  # still at work in another process
    log.info(
        "resuming the --full rescore of batch %s, which run %s left unfinished",
        run.data.params["batch_id"],
        run.info.run_id,
    )
    return run.data.params["batch_id"]


def _params(batch: Batch) -> dict[str, object]:
    model = batch.model
    beside = batch.shadow.model if batch.shadow else None
    shadow = {"shadow_uri": beside.uri, "shadow_version": beside.version} if beside else {}
    return {
        "model_uri": model.uri,
        "model_version": model.version,
        "batch_id": batch.batch_id,
        "rescore_all": batch.full,
        "rows_per_chunk": batch.chunk_rows,
        "resumed": batch.resumed,
    } | shadow


def _who(batch: Batch) -> tuple[str, str, str]:
    return batch.model.name, batch.model.version, batch.batch_id


def _check_options(profile: Profile, rows: int, engine: str, shadow: bool) -> None:
    if shadow and engine != "local":
        raise PodiumError(
            "shadow scoring runs with --engine local: drop --engine warehouse (or --shadow / scoring.shadow)."
        )
    if rows <= 0:
        raise PodiumError(f"--chunk-rows must be a positive number of rows, got {rows}.")
    if engine not in ENGINES:
        raise PodiumError(f"unknown engine {engine!r}: use one of {', '.join(ENGINES)}.")
    if engine == "warehouse" and profile.warehouse.backend != "snowflake":
        raise PodiumError(
            f"--engine warehouse runs the model inside Snowflake, but profile {profile.name} is "
            f"{profile.warehouse.backend}: use a Snowflake profile, or --engine local."
        )


def check_features(warehouse: Warehouse, spec: Spec, batch: Batch) -> None:
    """The feature table must fit each version the batch scores: every input its signature names,
    typed as it was trained, none all NULL in the training window. One error names the version."""
    available = warehouse.columns(spec.table)
    for model in batch.models:
        shadow = model is not batch.model
        role = " (the challenger, scored beside the champion by --shadow)" if shadow else ""
        fix = ", or score without --shadow" if shadow else ""
        missing = [c for c in model.features if c not in available]
        if missing:
            raise PodiumError(
                f"{spec.table} lacks columns {missing} that {model.name} v{model.version}'s signature needs"
                f"{role}: rebuild the features (`podium features`), or score with a model trained on this "
                f"table{fix}."
            )
        breaches = dataset.contract_breaches(warehouse, spec, trained_inputs(model))
        if breaches:
            raise DataQualityError(
                f"{spec.table} no longer fits the inputs {model.name} v{model.version} was trained on{role}: "
                + "; ".join(breaches)
                + ". Rebuild the features as they were (`podium features`), or score with a model trained "
                f"on this table{fix}."
            )


def trained_inputs(model: ResolvedModel) -> FeatureSchema:
    """A version's inputs as its signature types them: numbers, and the rest (categoricals)."""
    return FeatureSchema(model.numeric, [c for c in model.features if c not in model.numeric])


def ensure_table(warehouse: Warehouse, spec: Spec) -> None:
    """Create the scoring table with its explicit schema, or check an existing one; never drop it."""
    wanted = dataset.scoring_columns(spec, warehouse.columns(spec.table))
    existing = warehouse.ensure_table(spec.scoring_table, wanted)
    missing = [name for name in wanted if name not in existing]
    if missing:
        raise PodiumError(
            f"the scoring table {spec.scoring_table} exists with an incompatible schema (no "
            f"{', '.join(missing)}): "
            "Podium will not drop it. Rename or drop it yourself, or set scoring_table to another table."
        )


def _selection(spec: Spec, scoring: ScoringConfig, batch: Batch) -> tuple[str, list[object]]:
    """The WHERE clause (feature table `f`) of the batch's rows, and its values."""
    resumed = batch.batch_id if batch.resumed else None
    return dataset.scoring_selection(spec, scoring.start, scoring.end, batch.versions, batch.full, resumed)


def _pending(warehouse: Warehouse, spec: Spec, scoring: ScoringConfig, batch: Batch) -> int:
    """How many rows the batch has to score."""
    where, params = _selection(spec, scoring, batch)
    return int(
        warehouse.query(f"SELECT COUNT(*) AS N FROM {quote(spec.table)} AS f WHERE {where}", params).N[0]
    )


def _stream(
    warehouse: Warehouse, spec: Spec, scoring: ScoringConfig, batch: Batch, total: int
) -> tuple[int, int]:
    """Read, predict and write chunks, the three overlapped; return (rows read, rows written).

    The next chunk is read and the previous one written while this one is predicted: at most
    five chunks are in memory (one read, one waiting, one predicted, one waiting, one written).
    An incremental batch's rows are new to the table, so they are appended; `--full` and a
    shadow batch (which rewrites a pair when one side is missing) merge.
    """
    model = batch.model
    where, params = _selection(spec, scoring, batch)
    columns = _read_columns(spec, batch.models)
    sql = f"SELECT {columns} FROM {quote(spec.table)} AS f WHERE {where}"  # any order
    read = 0
    with counter(f"score {model.name} v{model.version}", total) as advance:

        def scored() -> Iterator[pd.DataFrame]:
            nonlocal read
            for chunk in overlap.prefetched(warehouse.batches(sql, batch.chunk_rows, params)):
                yield predict(chunk, spec, batch)
                read += len(chunk)
                advance(len(chunk))

        write = functools.partial(
            warehouse.write_chunks,
            table=spec.scoring_table,
            keys=[*spec.keys, "MODEL_VERSION"],
            new_only=not batch.full and batch.shadow is None,
            commit_rows=scoring.commit_rows or batch.chunk_rows,
            committed=lambda rows, seconds: log.debug(
                "%d rows committed (%d of %d read; %.4f s writing)", rows, read, total, seconds
            ),
        )
        written = overlap.drained(write, scored())
    return read, written


def _read_columns(spec: Spec, models: list[ResolvedModel]) -> str:
    """The id columns and the union of the versions' inputs, numbers cast to DOUBLE in the warehouse, as
    models take them (`check_features` saw to it that a column is a number to every version or to none)."""
    if not all(model.features for model in models):
        return "f.*"
    features = list(dict.fromkeys(c for model in models for c in model.features))
    numeric = {c for model in models for c in model.numeric}
    inputs = [
        f"CAST(f.{quote(c)} AS DOUBLE) AS {quote(c)}" if c in numeric else f"f.{quote(c)}"
        for c in features
        if c not in spec.id_columns
    ]
    return ", ".join([*(f"f.{quote(c)}" for c in spec.id_columns), *inputs])


def predict(chunk: pd.DataFrame, spec: Spec, batch: Batch) -> pd.DataFrame:
    """One chunk's scores, in the scoring table's column order: the model's rows, then the shadow's.

    The text columns are categoricals (PREDICTED_CLASS over the classes, one level for each of
    the batch's constants), which the warehouse reads as dictionaries, not a string per row.
    """
    scored_at = datetime.now(UTC).replace(tzinfo=None)
    ids = chunk[spec.id_columns].reset_index(drop=True)
    scorers = [(batch.model, batch.estimator, batch.model.alias)]
    if batch.shadow:
        scorers.append((batch.shadow.model, batch.shadow.estimator, CHALLENGER))
    frames = []
    for model, estimator, alias in scorers:
        scores = estimator.predict_frame(chunk[model.features] if model.features else chunk)
        constants = _lineage(model, batch.batch_id, scored_at) | {"MODEL_ALIAS": alias}
        out = pd.concat([ids, scores], axis=1)
        frames.append(out.assign(**{name: _constant(value, len(out)) for name, value in constants.items()}))
    return frames[0] if len(frames) == 1 else pd.concat(frames, ignore_index=True)


def _constant(value: object, rows: int) -> object:
    """A batch constant as a column: text as a one-level categorical, anything else as it is."""
    return (
        pd.Categorical.from_codes(np.zeros(rows, dtype="int8"), [value]) if isinstance(value, str) else value
    )


def _lineage(model: ResolvedModel, batch_id: str, scored_at: datetime) -> dict[str, object]:
    """The constant columns every score of one version in the batch carries."""
    return {
        "MODEL_NAME": model.name,
        "MODEL_VERSION": model.version,
        "MODEL_ALIAS": model.alias,
        "RUN_ID": model.run_id,
        "SCORED_AT": scored_at,
        "BATCH_ID": batch_id,
    }


def _job(spec: Spec, scoring: ScoringConfig, batch: Batch) -> ScoringJob:
    """The batch as a job the warehouse runs where the rows live."""
    model = batch.model
    return ScoringJob(
        source=spec.table,
        time=spec.time,
        start=scoring.start,
        end=scoring.end,
        full=batch.full,
        version=model.version,
        keys=list(spec.keys),
        id_columns=spec.id_columns,
        features=model.features,
        predict=batch.estimator.predict_frame,
        columns=[PREDICTED, *dataset.probability_columns(spec)],
        lineage=_lineage(model, batch.batch_id, datetime.now(UTC).replace(tzinfo=None)),
        table=spec.scoring_table,
    )
