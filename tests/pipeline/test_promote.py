"""Promotion: the policy gate, dry runs, forced moves, rollback, stages, races and user errors."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import warnings
from datetime import UTC, datetime
from pathlib import Path

import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from pipelines import audit
from pipelines.config import Profile, Spec
from pipelines.stages import promote
from pipelines.warehouse import connect
from tests.helpers import REPO, Snapshot, bad_spec, podium, profile_file, restore


@pytest.fixture
def registered(
    two_versions: Snapshot, tuned: tuple[Profile, Spec], tmp_path: Path, mlflow_store: str
) -> tuple[Profile, Spec, str, str]:
    """Two registered versions: (profile, spec, better, worse) by holdout log loss."""
    profile, spec = tuned
    ranked = sorted(two_versions.value.trained, key=lambda t: t.holdout["log_loss"])
    assert ranked[0].holdout["log_loss"] < ranked[1].holdout["log_loss"]
    return restore(two_versions, profile, tmp_path, mlflow_store), spec, ranked[0].version, ranked[1].version


def audited(profile: Profile, spec: Spec) -> pd.DataFrame:
    with connect(profile, read_only=True) as warehouse:
        return audit.rows(warehouse, spec)


def holder(spec: Spec, alias: str = "champion") -> str | None:
    try:
        return str(MlflowClient().get_model_version_by_alias(spec.model_name, alias).version)
    except Exception:
        return None


def in_stage(spec: Spec, stage: str) -> list[str]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        versions = MlflowClient().search_model_versions(f"name = '{spec.model_name}'")
    return sorted(str(v.version) for v in versions if v.current_stage == stage)


def test_first_champion_passes_on_the_baseline_check(registered: tuple[Profile, Spec, str, str]) -> None:
    profile, spec, better, _ = registered
    (decision,) = promote.main(profile, spec, version=better)
    assert decision.promoted and decision.from_version is None
    assert decision.checks == {"beats_baseline": True, "signature_matches": True}
    assert holder(spec) == better
    rows = audited(profile, spec)
    assert rows[["MODEL_VERSION", "TARGET", "DECISION", "FORCED"]].values.tolist() == [
        [better, "alias:champion", "promoted", False]
    ]
    version = MlflowClient().get_model_version(spec.model_name, better)
    assert version.tags["podium.decision.alias:champion"].startswith("promoted")


def test_gate_refuses_a_worse_challenger(registered: tuple[Profile, Spec, str, str]) -> None:
    profile, spec, better, worse = registered
    promote.main(profile, spec, version=better)
    (decision,) = promote.main(profile, spec, version=worse)
    assert decision.decision == "refused"
    assert "min_improvement" in decision.reason and decision.candidate_value > decision.incumbent_value
    assert holder(spec) == better
    assert audited(profile, spec)["DECISION"].tolist() == ["promoted", "refused"]


def test_dry_run_changes_nothing(registered: tuple[Profile, Spec, str, str]) -> None:
    profile, spec, better, _ = registered
    (decision,) = promote.main(profile, spec, version=better, stage="Production", alias=None, dry_run=True)
    assert decision.decision == "dry-run: would be promoted"
    assert in_stage(spec, "Production") == [] and holder(spec) is None
    assert audited(profile, spec).empty
    assert not any(
        k.startswith("podium.decision")
        for k in MlflowClient().get_model_version(spec.model_name, better).tags
    )


def test_force_skips_the_gate_and_is_recorded(registered: tuple[Profile, Spec, str, str]) -> None:
    profile, spec, better, worse = registered
    promote.main(profile, spec, version=better)
    (decision,) = promote.main(profile, spec, version=worse, force=True)
    assert decision.promoted and decision.forced and decision.reason.startswith("forced")
    assert holder(spec) == worse
    last = audited(profile, spec).iloc[-1]
    assert (last.MODEL_VERSION, last.FROM_VERSION, bool(last.FORCED)) == (worse, better, True)


def test_rollback_restores_the_previous_champion(registered: tuple[Profile, Spec, str, str]) -> None:
    profile, spec, better, worse = registered
    promote.main(profile, spec, version=better)
    promote.main(profile, spec, version=worse, force=True)
    (decision,) = promote.main(profile, spec, rollback=True)
    assert decision.action == "rollback" and decision.promoted
    assert holder(spec) == better
    assert audited(profile, spec)["ACTION"].tolist() == ["promote", "promote", "rollback"]


def test_stage_promotion_archives_the_previous_production_version(
    registered: tuple[Profile, Spec, str, str],
) -> None:
    profile, spec, better, worse = registered
    promote.main(profile, spec, version=worse, alias=None, stage="production")
    assert in_stage(spec, "Production") == [worse]
    promote.main(profile, spec, version=better, alias=None, stage="Production")
    assert in_stage(spec, "Production") == [better]
    assert in_stage(spec, "Archived") == [worse]
    promote.main(profile, spec, alias=None, stage="Production", rollback=True)
    assert (in_stage(spec, "Production"), in_stage(spec, "Archived")) == ([worse], [better])


@pytest.mark.slow
def test_racing_promotions_leave_one_champion_and_a_whole_audit(
    registered: tuple[Profile, Spec, str, str], tmp_path: Path
) -> None:
    profile, spec, better, worse = registered
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_RUN")}
    racers = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "pipelines.cli",
                "promote",
                "--version",
                version,
                "--force",
                "--stage",
                "Production",
                "--profile",
                profile_file(tmp_path, profile),
            ],
            cwd=REPO,
            env=env,
            stderr=subprocess.PIPE,
            text=True,
        )
        for version in (better, worse)
    ]
    for racer in racers:
        assert racer.wait(timeout=300) == 0, racer.stderr.read()[-2000:]

    rows = audited(profile, spec)
    assert len(rows) == 4 and set(rows["DECISION"]) == {"promoted"}
    for target, taken in rows.groupby("TARGET", sort=False):
        first, second = taken.itertuples()
        assert pd.isna(first.FROM_VERSION) and second.FROM_VERSION == first.MODEL_VERSION, target
    winner = rows.iloc[-1].MODEL_VERSION
    assert holder(spec) == winner
    assert in_stage(spec, "Production") == [winner]


def test_unknown_model_name(
    registered: tuple[Profile, Spec, str, str], tmp_path: Path, capsys, monkeypatch
) -> None:
    profile, *_ = registered
    spec = bad_spec(tmp_path, "model_name: f1_podium", "model_name: nope")
    code, _, err = podium(
        ["promote", "--spec", spec, "--profile", profile_file(tmp_path, profile)], capsys, monkeypatch
    )
    assert code == 1 and "error: unknown model 'nope'" in err and "Traceback" not in err


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--version", "99"], r"unknown version 99 of model f1_podium \(its versions: 1, 2\)"),
        (["--stage", "Prod"], r"unknown stage 'Prod': promote to one of Staging, Production"),
        (["--version", "ARCHIVED"], r"version \d is archived"),
        (["--version", "FAILED"], r"comes from run \w+, which FAILED"),
    ],
)
def test_promotion_user_errors(
    args: list[str],
    message: str,
    registered: tuple[Profile, Spec, str, str],
    tmp_path: Path,
    capsys,
    monkeypatch,
) -> None:
    profile, spec, better, worse = registered
    client = MlflowClient()
    if "ARCHIVED" in args:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            client.transition_model_version_stage(spec.model_name, worse, "Archived")
        args = ["--version", worse]
    if "FAILED" in args:
        failed = client.create_run(client.get_experiment_by_name(spec.name).experiment_id).info.run_id
        client.set_terminated(failed, status="FAILED")
        source = client.get_model_version(spec.model_name, better).source
        args = ["--version", str(client.create_model_version(spec.model_name, source, run_id=failed).version)]
    code, _, err = podium(
        ["promote", *args, "--profile", profile_file(tmp_path, profile)], capsys, monkeypatch
    )
    assert code == 1 and "Traceback" not in err
    assert err.strip().startswith("error:")
    assert re.search(message, " ".join(err.split())), err
    assert holder(spec) is None and audited(profile, spec).empty


def test_unknown_policy_key(tmp_path: Path, profile: Profile, capsys, monkeypatch) -> None:
    spec = bad_spec(tmp_path, "min_improvement: 0.002", "min_improvment: 0.002")
    code, _, err = podium(
        ["promote", "--spec", spec, "--profile", profile_file(tmp_path, profile)], capsys, monkeypatch
    )
    assert code == 1 and "unknown key 'promotion.min_improvment'" in err


def test_an_audited_move_the_registry_lacks_is_reported_then_completed(
    registered: tuple[Profile, Spec, str, str],
) -> None:
    """Finding 4: a promote that stopped after its audit row and before its registry move."""
    from pipelines import status

    profile, spec, better, worse = registered
    promote.main(profile, spec, version=better)
    stopped = audit.Decision(
        spec.model_name,
        worse,
        "alias:champion",
        better,
        "promote",
        decision="promoted",
        forced=True,
        reason="forced",
        decided_at=datetime.now(UTC).isoformat(timespec="milliseconds"),
    )
    with connect(profile) as warehouse:
        audit.append(warehouse, spec, stopped)  # what the killed process had written
    assert holder(spec) == better
    (drift,) = status.main(profile, spec).promotion_drift
    assert "held by v" + better in drift and "recorded v" + worse in drift

    decisions = promote.main(profile, spec, version=worse, force=True)
    (fixed,) = decisions.reconciled
    assert (fixed.action, fixed.version, fixed.from_version) == ("reconcile", worse, better)
    assert holder(spec) == worse and decisions[0].reason.startswith("version")  # it already held champion
    with connect(profile, read_only=True) as warehouse:
        assert audit.drift(MlflowClient(), warehouse, spec) == []
    assert audited(profile, spec)["ACTION"].tolist() == ["promote", "promote", "reconcile", "promote"]
    (back,) = promote.main(profile, spec, rollback=True)
    assert back.promoted and holder(spec) == better
