"""Real processes killed with SIGKILL at many instants of each stage, invariants checked after each kill.

Every test first times one uninterrupted run, then kills the same command at instants spread over
that time, checks what the kill left, and (where the guarantee is about the next run) runs the
stage again and checks that it completes the work.
"""

from __future__ import annotations

import gzip
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from datetime import date
from multiprocessing.context import BaseContext
from pathlib import Path
from typing import Any

import optuna
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from pipelines import audit, pipeline, registry, status
from pipelines.config import BacktestConfig, Profile, Spec
from pipelines.stages import backtest, promote, score, train, tune
from pipelines.studies import open_storage
from pipelines.warehouse import connect
from tests.helpers import (
    FAST_SPACE,
    REPO,
    Snapshot,
    assert_children_mirror_trials,
    profile_file,
    restore,
    snapshot,
    spec_file,
    worker_env,
)
from tests.reliability.child import context, instants, run, timed

KILLS = 8
RESCORE_KILLS = 10  # a --full rescore writes over part of its run only, and two kills must land there
BACKTEST_KILLS = 4  # each followed by a whole backtest
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def ctx() -> Iterator[BaseContext]:
    yield context()


def count(profile: Profile, table: str) -> int | None:
    with connect(profile, read_only=True) as warehouse:
        if not warehouse.exists(table):
            return None
        return int(warehouse.query(f"SELECT COUNT(*) AS N FROM {table}").N[0])


def counts(profile: Profile, tables: list[str]) -> tuple[int | None, ...]:
    return tuple(count(profile, t) for t in tables)


def staged_left(profile: Profile) -> int:
    with connect(profile, read_only=True) as warehouse:
        found = warehouse.query(
            "SELECT COUNT(*) AS N FROM information_schema.tables WHERE table_name LIKE '%STAGED'"
        )
        return int(found.N[0])


@pytest.mark.timed
def test_ingest_publishes_all_tables_or_none(
    ctx: BaseContext, spec: Spec, profile: Profile, tmp_path: Path
) -> None:
    """Two versions of the raw data; a kill during either ingest leaves every table of one version."""
    smaller = tmp_path / "f1_smaller"
    shutil.copytree(REPO / "experiments" / "f1_podium" / "data", smaller)
    for table, keep in (("results", 20000), ("circuits", 60)):
        lines = gzip.decompress((smaller / f"{table}.csv.gz").read_bytes()).decode().splitlines()[: keep + 1]
        (smaller / f"{table}.csv.gz").write_bytes(gzip.compress(("\n".join(lines) + "\n").encode()))
    specs = [
        spec_file(spec, tmp_path / "full.yaml"),
        spec_file(
            spec.model_copy(update={"ingest": spec.ingest.model_copy(update={"source": smaller})}),
            tmp_path / "small.yaml",
        ),
    ]
    local, env, tables = profile_file(tmp_path, profile), worker_env(), ["RAW.RESULTS", "RAW.CIRCUITS"]
    versions, durations = [], []
    for path in specs * 2:  # each version timed twice, on warm caches the second time
        durations.append(timed(ctx, ["ingest", "-p", local, "--spec", path], env, str(REPO)))
        versions.append(counts(profile, tables))
    assert versions == [(25840, 77), (20000, 60)] * 2
    killed = 0  # instants spread over the quicker of the two ingests, so both versions are cut short
    for i, instant in enumerate(instants(min(durations), KILLS)):
        before = counts(profile, tables)
        killed += run(ctx, ["ingest", "-p", local, "--spec", specs[i % 2]], env, str(REPO), instant) == -9
        after = counts(profile, tables)
        assert after in versions, f"kill {i} at {instant:.2f}s left a mix: {after}"
        assert after in (before, versions[i % 2])
    assert killed >= KILLS - 1, f"only {killed} of {KILLS} runs were killed before they ended"
    assert (
        timed(ctx, ["ingest", "-p", local, "--spec", specs[0]], env, str(REPO)) and staged_left(profile) == 0
    )


def test_features_swap_in_whole_or_not_at_all(
    ctx: BaseContext, built_profile: Profile, spec: Spec, tmp_path: Path
) -> None:
    """A kill at any instant of `features` leaves every ML table of the old build or of the new one."""
    copy = tmp_path / "warehouse.duckdb"
    shutil.copyfile(built_profile.warehouse.path, copy)
    profile = built_profile.model_copy(
        update={"warehouse": built_profile.warehouse.model_copy(update={"path": copy})}
    )
    local, env, path = profile_file(tmp_path, profile), worker_env(), spec_file(spec, tmp_path / "spec.yaml")
    tables = ["ML.F1_FEATURES", "ML.F1_DRIVER_RACES", "ML.F1_RESULT_ENTRIES"]
    with connect(profile) as warehouse:
        warehouse.execute("CREATE OR REPLACE TABLE RAW.RESULTS_ALL AS SELECT * FROM RAW.RESULTS")
    full = counts(profile, tables)
    less = "RACE_ID NOT IN (SELECT RACE_ID FROM RAW.RACES WHERE YEAR = 2022)"

    def raw(version: int) -> None:
        with connect(profile) as warehouse:
            where = less if version else "TRUE"
            warehouse.execute(
                f"CREATE OR REPLACE TABLE RAW.RESULTS AS SELECT * FROM RAW.RESULTS_ALL WHERE {where}"
            )

    raw(1)
    duration = timed(ctx, ["features", "-p", local, "--spec", path], env, str(REPO))
    versions = [full, counts(profile, tables)]
    assert versions[0] != versions[1] and versions[1][0] > 5000
    for i, instant in enumerate(instants(duration, KILLS)):
        before = counts(profile, tables)
        raw(i % 2)
        run(ctx, ["features", "-p", local, "--spec", path], env, str(REPO), instant)
        after = counts(profile, tables)
        assert after in (before, versions[i % 2]), f"kill {i} at {instant:.2f}s left a mix: {after}"


def test_tune_loses_no_trial_and_leaves_none_running(
    ctx: BaseContext, built_profile: Profile, spec: Spec, tmp_path: Path
) -> None:
    (tmp_path / "space.yaml").write_text(FAST_SPACE)
    tuning = spec.tuning.model_copy(update={"search_space": tmp_path / "space.yaml", "timeout": None})
    small = spec.model_copy(update={"tuning": tuning})
    journal = tmp_path / "studies.journal"
    profile = built_profile.model_copy(update={"optuna_storage": str(journal)})
    local = tmp_path / "profile.yaml"
    local.write_text(
        f"warehouse: {{backend: duckdb, path: {built_profile.warehouse.path}}}\noptuna_storage: {journal}\n"
    )
    args = [
        "tune",
        "-f",
        "decision_tree",
        "-n",
        "8",
        "-p",
        str(local),
        "--spec",
        spec_file(small, tmp_path / "s.yaml"),
    ]
    duration = timed(ctx, args, worker_env(), str(REPO))
    study = "f1_podium-decision_tree"
    for i, instant in enumerate(instants(duration, KILLS)):
        finished = _finished(journal, study)
        run(ctx, args, worker_env(), str(REPO), instant)
        assert _finished(journal, study)[: len(finished)] == finished, f"kill {i} lost a finished trial"
        tune.main(profile, small, family="decision_tree", n_trials=1)  # the next run
        trials = optuna.load_study(study_name=study, storage=open_storage(str(journal))).trials
        assert [t.number for t in trials] == list(range(len(trials))), "numbering has a gap or a repeat"
        assert not [t.number for t in trials if t.state.name == "RUNNING"], f"kill {i}: a trial stays RUNNING"
        assert_children_mirror_trials(str(journal))
    runs = MlflowClient().search_runs(
        [MlflowClient().get_experiment_by_name(spec.name).experiment_id],
        filter_string="tags.`podium.stage` = 'tune' and attributes.status = 'RUNNING'",
    )
    assert not runs, "a killed tune run stays RUNNING after the next tune"


def _finished(journal: Path, study: str) -> list[tuple[int, str, float | None]]:
    try:
        trials = optuna.load_study(study_name=study, storage=open_storage(str(journal), mend=False)).trials
    except KeyError:
        return []
    return [(t.number, t.state.name, t.value) for t in trials if t.state.is_finished()]


@pytest.fixture(scope="module")
def crowned(tmp_path_factory: pytest.TempPathFactory, tuned: tuple[Profile, Spec]) -> Snapshot:
    """Two versions trained and registered, the first champion and in Production: once for this module."""
    _, spec = tuned

    def build(profile: Profile) -> list[str]:
        first = train.main(profile, spec, family="decision_tree").champion.version
        second = train.main(profile, spec, family="logreg").champion.version
        promote.main(profile, spec, version=first, stage="Production", force=True)
        return [first, second]

    return snapshot(tmp_path_factory.mktemp("crowned"), tuned[0], build)


@pytest.fixture
def champion(
    crowned: Snapshot, tuned: tuple[Profile, Spec], tmp_path: Path, mlflow_store: str
) -> tuple[Profile, Spec, list[str]]:
    """This test's copy of the trained warehouse and store: two versions; the first holds champion and
    Production."""
    return restore(crowned, tuned[0], tmp_path, mlflow_store), tuned[1], list(crowned.value)


def score_rows(profile: Profile, spec: Spec) -> pd.DataFrame:
    with connect(profile, read_only=True) as warehouse:
        if not warehouse.exists(spec.scoring_table):
            return pd.DataFrame(columns=[*spec.keys, "MODEL_VERSION", "BATCH_ID"])
        return warehouse.query(f"SELECT * FROM {spec.scoring_table}")


def window_rows(profile: Profile, spec: Spec) -> int:
    with connect(profile, read_only=True) as warehouse:
        return int(
            warehouse.query(
                f"SELECT COUNT(*) AS N FROM {spec.table} WHERE {spec.time} >= ?", [spec.scoring.start]
            ).N[0]
        )


@pytest.mark.parametrize(
    "full", [False, pytest.param(True, marks=pytest.mark.timed)], ids=["incremental", "full"]
)
def test_scoring_keeps_one_row_per_key_and_version_and_a_rerun_completes(
    full: bool, ctx: BaseContext, champion: tuple[Profile, Spec, list[str]], tmp_path: Path
) -> None:
    profile, spec, _ = champion
    local, env = profile_file(tmp_path, profile), worker_env()
    args = ["score", "--chunk-rows", "10", "-p", local, "--spec", spec_file(spec, tmp_path / "s.yaml")]
    args += ["--full"] if full else []
    expected = window_rows(profile, spec)
    duration = timed(ctx, args, env, str(REPO))
    resumed = 0
    for i, instant in enumerate(instants(duration, RESCORE_KILLS)):
        if not full:
            with connect(profile) as warehouse:
                warehouse.execute(f"DELETE FROM {spec.scoring_table}")
        earlier = set(score_rows(profile, spec)["BATCH_ID"])
        run(ctx, args, env, str(REPO), instant)
        rows = score_rows(profile, spec)
        assert not rows.duplicated([*spec.keys, "MODEL_VERSION"]).any(), f"kill {i}: a duplicated score"
        rewritten = rows["BATCH_ID"].value_counts()
        cut_short = set(rows["BATCH_ID"]) - earlier  # the killed run's batch, if it wrote any chunk
        result = score.main(profile, spec, full=full, chunk_rows=10)  # the next run
        rows = score_rows(profile, spec)
        assert len(rows) == expected and not rows.duplicated([*spec.keys, "MODEL_VERSION"]).any()
        killed_batch = next(iter(cut_short), None)
        if full and killed_batch and rewritten[killed_batch] < expected:  # killed in the middle of a rescore
            assert result.batch_id == killed_batch, "the rerun carries the killed batch on"
            assert result.rows_read == expected - rewritten[killed_batch], (
                "it skips the rows already rewritten"
            )
            resumed += 1
        if full:
            assert set(rows["BATCH_ID"]) == {result.batch_id}, "a rerun of --full finishes the whole rescore"
        assert not _running_score_runs(spec), f"kill {i}: a killed score run stays RUNNING after the next run"
    assert not full or resumed >= 2, f"only {resumed} kills landed inside a --full rescore's writes"


@pytest.mark.timed
def test_a_killed_shadow_batch_keeps_only_whole_pairs_and_a_rerun_completes(
    ctx: BaseContext, champion: tuple[Profile, Spec, list[str]], tmp_path: Path
) -> None:
    """`score --shadow` killed at eight instants: each key has both rows, from one batch, or neither."""
    profile, spec, versions = champion
    args = ["score", "--shadow", "--chunk-rows", "10", "-p", profile_file(tmp_path, profile)]
    args += ["--spec", spec_file(spec, tmp_path / "s.yaml")]
    env, expected = worker_env(), window_rows(profile, spec)
    duration = timed(ctx, args, env, str(REPO))
    cut_short = 0
    for i, instant in enumerate(instants(duration, KILLS)):
        with connect(profile) as warehouse:
            warehouse.execute(f"DELETE FROM {spec.scoring_table}")
        run(ctx, args, env, str(REPO), instant)
        survived = score_rows(profile, spec)
        assert_whole_pairs(survived, spec, versions, f"kill {i}")
        cut_short += 0 < len(survived) < 2 * expected
        result = score.main(profile, spec, chunk_rows=10, shadow=True)  # the next run
        complete = score_rows(profile, spec)
        assert result.shadow is not None and len(complete) == 2 * expected, f"kill {i}: not completed"
        assert_whole_pairs(complete, spec, versions, f"after kill {i}")
    assert cut_short >= 2, f"only {cut_short} kills landed inside the batch's writes"


def assert_whole_pairs(rows: pd.DataFrame, spec: Spec, versions: list[str], when: str) -> None:
    """No duplicate; every scored key has both versions' rows, written by one batch."""
    assert not rows.duplicated([*spec.keys, "MODEL_VERSION"]).any(), f"{when}: a duplicated score"
    if rows.empty:
        return
    batches = rows.pivot_table(index=spec.keys, columns="MODEL_VERSION", values="BATCH_ID", aggfunc="first")
    assert sorted(batches.columns) == sorted(versions) and batches.notna().all().all(), f"{when}: half a pair"
    assert (batches[versions[0]] == batches[versions[1]]).all(), f"{when}: a pair split over two batches"


def test_a_kill_with_chunks_in_flight_keeps_only_whole_committed_chunks(
    champion: tuple[Profile, Spec, list[str]], tmp_path: Path
) -> None:
    """Killed right after its k-th commit, while later chunks are read or predicted but not written."""
    profile, spec, _ = champion
    args = ["score", "--chunk-rows", "10", "-p", profile_file(tmp_path, profile)]
    args += ["--spec", spec_file(spec, tmp_path / "s.yaml")]
    env = worker_env() | {"PODIUM_LOG_LEVEL": "DEBUG"}
    expected, ahead = window_rows(profile, spec), []
    for commits in (1, 2, 4, 8, 16, 32, 64):
        with connect(profile) as warehouse:
            if warehouse.exists(spec.scoring_table):
                warehouse.execute(f"DELETE FROM {spec.scoring_table}")
        committed, read = _kill_after_commits(args, env, commits)
        ahead.append(read - committed)
        survived = score_rows(profile, spec)
        assert len(survived) % 10 == 0 and committed <= len(survived) < expected, f"after {commits} commits"
        assert not survived.duplicated([*spec.keys, "MODEL_VERSION"]).any()
        score.main(profile, spec, chunk_rows=10)
        complete = score_rows(profile, spec)
        assert len(complete) == expected and not complete.duplicated([*spec.keys, "MODEL_VERSION"]).any()
        kept = complete.merge(survived, on=[*spec.keys, "MODEL_VERSION"], suffixes=("", "_before"))
        assert len(kept) == len(survived) and (kept.BATCH_ID == kept.BATCH_ID_before).all()
    assert max(ahead) > 0, f"no kill found a chunk read ahead of the writes (rows ahead: {ahead})"


def _kill_after_commits(args: list[str], env: dict[str, str], commits: int) -> tuple[int, int]:
    """Run `podium ARGS`; SIGKILL it as soon as it logs its `commits`-th commit: (rows committed, read)."""
    worker = subprocess.Popen(
        [sys.executable, "-m", "pipelines.cli", *args], cwd=REPO, env=env, stderr=subprocess.PIPE, text=True
    )
    seen = 0
    for line in worker.stderr:
        if found := re.search(r"(\d+) rows committed \((\d+) of", line):
            seen += 1
            if seen == commits:
                os.kill(worker.pid, signal.SIGKILL)
                worker.wait(timeout=60)
                return int(found.group(1)), int(found.group(2))
    raise AssertionError(f"podium {' '.join(args)} ended after {seen} commits, before the kill")


def _running_score_runs(spec: Spec) -> list[str]:
    client = MlflowClient()
    runs = client.search_runs(
        [client.get_experiment_by_name(spec.name).experiment_id],
        filter_string="tags.`podium.stage` = 'score' and attributes.status = 'RUNNING'",
    )
    return [r.info.run_id for r in runs]


def _copy_version(client: MlflowClient, model: str, version: str) -> str:
    """A new registered version of the same model files, run and tags (a fresh candidate, quickly)."""
    original = client.get_model_version(model, version)
    copy = client.create_model_version(model, original.source, run_id=original.run_id, tags=original.tags)
    return str(copy.version)


def test_promotion_audit_and_registry_agree_after_the_next_command(
    ctx: BaseContext, champion: tuple[Profile, Spec, list[str]], tmp_path: Path
) -> None:
    """Finding 4's command, killed at many instants; the next promote finds any gap and closes it."""
    profile, spec, versions = champion
    local, env, path = profile_file(tmp_path, profile), worker_env(), spec_file(spec, tmp_path / "s.yaml")
    client = MlflowClient()

    def args(version: str) -> list[str]:
        return [
            "promote",
            "--version",
            version,
            "--force",
            "--stage",
            "Production",
            "-p",
            local,
            "--spec",
            path,
        ]

    duration = timed(ctx, args(versions[1]), env, str(REPO))
    for i, instant in enumerate(instants(duration, KILLS)):
        version = _copy_version(client, spec.model_name, versions[1])  # Production archives the others
        run(ctx, args(version), env, str(REPO), instant)
        promote.main(profile, spec, version=version, stage="Production", force=True)  # the next command
        with connect(profile, read_only=True) as warehouse:
            assert audit.drift(client, warehouse, spec) == [], f"kill {i} at {instant:.2f}s"
        for target in (registry.Target("alias", "champion"), registry.Target("stage", "Production")):
            assert str(registry.holder(client, spec.model_name, target).version) == version
    (decision,) = promote.main(profile, spec, rollback=True, alias="champion")
    assert decision.promoted, "rollback still works after the kills"


@pytest.mark.timed
def test_the_next_backtest_ends_every_run_a_killed_one_left_running_and_removes_its_studies(
    ctx: BaseContext, champion: tuple[Profile, Spec, list[str]], tmp_path: Path
) -> None:
    """`podium backtest` (one season, one family, one trial) killed at a few instants; after each kill,
    `status` shows every run it left RUNNING as stale, nested ones included, and the next backtest ends
    them all and removes the killed one's studies, leaving the real model, scores and audit as they were."""
    profile, spec, _ = champion
    score.main(profile, spec)
    journal = tmp_path / "optuna" / "studies.journal"
    profile = profile.model_copy(update={"optuna_storage": str(journal)})
    config = BacktestConfig(table="ML.F1_BACKTEST", start=date(2020, 1, 1), end=date(2021, 1, 1), trials=1)
    small = spec.model_copy(update={"backtest": config.model_copy(update={"families": ["decision_tree"]})})
    local = tmp_path / "profile.yaml"
    local.write_text(
        f"warehouse: {{backend: duckdb, path: {profile.warehouse.path}}}\noptuna_storage: {journal}\n"
    )
    args = ["backtest", "-p", str(local), "--spec", spec_file(small, tmp_path / "s.yaml")]
    before, temps = _real_state(profile, spec), _temp_studies()
    duration = timed(ctx, args, worker_env(), str(REPO))
    nested = killed = 0
    for i, instant in enumerate(instants(duration, BACKTEST_KILLS)):
        killed += run(ctx, args, worker_env(), str(REPO), instant) == -9
        left = {r.info.run_id: r for r in _running_runs(spec)}
        shown = {s["run_id"] for s in status.stale_stage_runs(small)}
        assert set(left) <= shown, f"kill {i} at {instant:.1f}s: status hides runs it left RUNNING"
        nested += any(r.data.tags.get("mlflow.parentRunId") for r in left.values())
        backtest.main(profile, small, pipeline.LIFECYCLE)  # the next backtest
        assert not _running_runs(spec), f"kill {i} at {instant:.1f}s: a run stays RUNNING"
        assert not [r for r in left if MlflowClient().get_run(r).info.status != "FAILED"]
        folders = journal.parent / "backtests"
        assert not folders.exists() or not list(folders.iterdir()), f"kill {i}: a studies folder is left"
        assert _temp_studies() <= temps, f"kill {i}: a temporary folder of studies is left"
        _assert_same(_real_state(profile, spec), before, f"kill {i}")
    assert killed >= BACKTEST_KILLS - 1, (
        f"only {killed} of {BACKTEST_KILLS} backtests were killed before they ended"
    )
    assert nested >= 1, "no kill landed after the backtest's nested runs started"


def _running_runs(spec: Spec) -> list[Any]:
    client = MlflowClient()
    found = client.get_experiment_by_name(spec.name)
    return client.search_runs([found.experiment_id], "attributes.status = 'RUNNING'") if found else []


def _temp_studies() -> set[Path]:
    """Folders of per-period journals in the temporary folder (where backtests used to keep them)."""
    return {p.parent for p in Path(tempfile.gettempdir()).glob("*/20[0-9][0-9].journal")}


def _real_state(
    profile: Profile, spec: Spec
) -> tuple[list[tuple], dict[str, str], pd.DataFrame, pd.DataFrame]:
    """What a backtest must leave alone: the real model's versions, stages and aliases, scores, audit."""
    client = MlflowClient()
    versions = client.search_model_versions(f"name = '{spec.model_name}'")
    with connect(profile, read_only=True) as warehouse:
        audit = warehouse.query(f"SELECT * FROM {spec.registry.audit_table}")
    keys = [*spec.keys, "MODEL_VERSION"]
    return (
        sorted((v.version, v.current_stage, tuple(sorted(v.aliases))) for v in versions),
        client.get_registered_model(spec.model_name).aliases,
        score_rows(profile, spec).sort_values(keys).reset_index(drop=True),
        audit,
    )


def _assert_same(after: tuple, before: tuple, when: str) -> None:
    assert after[:2] == before[:2], f"{when}: the real model's versions or aliases changed"
    pd.testing.assert_frame_equal(after[2], before[2], obj=f"{when}: the real scores")
    pd.testing.assert_frame_equal(after[3], before[3], obj=f"{when}: the real audit")
