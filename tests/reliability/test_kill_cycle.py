"""`podium cycle` killed with SIGKILL at several instants of a retraining cycle; the next run completes it.

The rehearsal of tests/cycles.py, retraining one family on one trial: the 2020 cycle runs, then the
2021 one (age fires: tune, train, shadow, gate) runs once uninterrupted, and is killed at instants
spread over that run, each time from a fresh copy of the state the 2020 cycle left. After each kill
the next `cycle` must leave the same end state as the uninterrupted run: the cycles row, the registry,
the scores and the promotions.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from multiprocessing.context import BaseContext
from pathlib import Path
from typing import Any

import mlflow
import pandas as pd
import pytest
import yaml
from mlflow.tracking import MlflowClient

from pipelines import audit, pipeline
from pipelines.config import Profile, Spec, TuningBudget
from pipelines.stages import cycle
from pipelines.warehouse import connect
from tests.cycles import SEASONS, rehearsal_spec
from tests.helpers import REPO, Snapshot, restore, with_warehouse, worker_env
from tests.reliability.child import context, instants, run, timed

KILLS = 3
LINEAGE = ["RUN_ID", "STAGE_RUN_IDS", "FINISHED_AT"]
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def ctx() -> Iterator[BaseContext]:
    yield context()


@pytest.mark.timed
def test_a_retraining_cycle_killed_at_any_instant_is_completed_to_the_same_end_state(
    ctx: BaseContext,
    crowned_2018: Snapshot,
    tuned: tuple[Profile, Spec],
    tmp_path: Path,
    mlflow_store: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    spec = _one_trial(rehearsal_spec(tuned[1]))
    profile = restore(crowned_2018, tuned[0], tmp_path, mlflow_store)
    cycle.main(profile, spec, pipeline.LIFECYCLE, as_of=SEASONS[0])
    after_2020 = (Path(profile.warehouse.path), Path(mlflow_store.removeprefix("sqlite:///")))
    args = ["cycle", "--as-of", str(SEASONS[1])]

    def fresh(name: str) -> tuple[Profile, list[str]]:
        """A copy of the state after 2020 in tmp_path/name, this process and its children pointed at it."""
        profile_now = _copy(after_2020, profile, tmp_path / name, monkeypatch)
        return profile_now, [*args, *_files(profile_now, spec, tmp_path / name)]

    reference_profile, command = fresh("uninterrupted")
    duration = timed(ctx, command, worker_env(), str(REPO))
    reference = end_state(reference_profile, spec)
    assert reference["cycle"]["ACTIONS"] == "score,evaluate,tune,train,shadow,gate"
    killed = 0
    for i, instant in enumerate(instants(duration, KILLS)):
        killed_profile, command = fresh(f"kill{i}")
        killed += run(ctx, command, worker_env(), str(REPO), instant) == -9
        cycle.main(killed_profile, spec, pipeline.LIFECYCLE, as_of=SEASONS[1])  # the next run
        assert end_state(killed_profile, spec) == reference, f"kill {i} at {instant:.1f}s"
        assert not _running(spec), f"kill {i} at {instant:.1f}s: a run stays RUNNING"
    assert killed >= KILLS - 1, f"only {killed} of {KILLS} cycles were killed before they ended"


def _one_trial(spec: Spec) -> Spec:
    """The rehearsal's spec retraining one family (logreg, the champion's) on one trial: a shorter cycle."""
    tuning = spec.tuning_section.model_copy(update={"families": ["logreg"]})
    retrain = spec.cycle_section.retrain.model_copy(update={"tune": TuningBudget(trials=1)})
    cycle_config = spec.cycle_section.model_copy(update={"retrain": retrain})
    return spec.model_copy(update={"tuning": tuning, "cycle": cycle_config})


def _copy(state: tuple[Path, Path], profile: Profile, root: Path, monkeypatch: pytest.MonkeyPatch) -> Profile:
    """Copies of the warehouse and MLflow store in `root`; MLflow (here and in children) tracks the copy."""
    root.mkdir()
    shutil.copyfile(state[0], root / "warehouse.duckdb")
    shutil.copyfile(state[1], root / "mlflow.db")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    mlflow.set_tracking_uri(uri)
    copied = with_warehouse(profile, root / "warehouse.duckdb")
    return copied.model_copy(update={"optuna_storage": str(root / "optuna" / "studies.journal")})


def _files(profile: Profile, spec: Spec, root: Path) -> list[str]:
    """The profile and spec as files, for the child `podium cycle`: its -p and --spec options."""
    (root / "profile.yaml").write_text(
        yaml.safe_dump(
            {
                "warehouse": {"backend": "duckdb", "path": str(profile.warehouse.path)},
                "optuna_storage": profile.optuna_storage,
            }
        )
    )
    (root / "spec.yaml").write_text(
        yaml.safe_dump(spec.model_dump(mode="json", by_alias=True, exclude_none=True))
    )
    return ["-p", str(root / "profile.yaml"), "--spec", str(root / "spec.yaml")]


def end_state(profile: Profile, spec: Spec) -> dict[str, Any]:
    """What the cycle leaves, lineage (run ids, batch ids, times) aside."""
    client = MlflowClient()
    with connect(profile, read_only=True) as warehouse:
        row = warehouse.query(f"SELECT * FROM {spec.cycle_section.table} WHERE PERIOD = '2021'")
        scores = warehouse.query(f"SELECT * FROM {spec.scoring_table}")
        audited = audit.rows(warehouse, spec)
    assert len(row) == 1, f"{len(row)} cycle rows for 2021"
    probabilities = [c for c in scores.columns if c.startswith("P_")]
    scored = scores[[*spec.keys, "MODEL_VERSION", "PREDICTED_CLASS", *probabilities]]
    promoted = audited[audited.DECISION == "promoted"]
    return {
        "cycle": {k: (None if pd.isna(v) else v) for k, v in row.drop(columns=LINEAGE).iloc[0].items()},
        "versions": sorted(
            (v.version, v.current_stage, tuple(sorted(v.aliases)), v.tags.get("podium.family"))
            for v in client.search_model_versions(f"name = '{spec.model_name}'")
        ),
        "scores": scored.sort_values([*spec.keys, "MODEL_VERSION"]).round(12).to_csv(index=False),
        "promoted": sorted(set(zip(promoted.MODEL_VERSION, promoted.TARGET, strict=True))),
    }


def _running(spec: Spec) -> list[str]:
    client = MlflowClient()
    experiment = client.get_experiment_by_name(spec.name)
    return [
        r.info.run_id for r in client.search_runs([experiment.experiment_id], "attributes.status = 'RUNNING'")
    ]
