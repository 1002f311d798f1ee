"""What the app's tests share: the rehearsed lifecycle's spec, the store-demand spec, settings files."""

from __future__ import annotations

from datetime import date
from pathlib import Path
from typing import Any

import yaml

from pipelines.config import BacktestConfig, Profile, Spec
from tests.cycles import rehearsal_spec
from tests.helpers import REPO

STORE_DEMAND = REPO / "examples" / "store_demand" / "store_demand.yaml"


def lifecycle_spec(spec: Spec) -> Spec:
    """The cycles' rehearsal spec with a backtest of 2019 and 2020 at one trial per family."""
    config = BacktestConfig(table="ML.F1_BACKTEST", start=date(2019, 1, 1), end=date(2021, 1, 1), trials=1)
    return rehearsal_spec(spec).model_copy(update={"backtest": config})


def write_settings(root: Path, profile: Profile, spec: Spec, **changes: Any) -> tuple[Path, Path]:
    """The profile and spec as files in `root` (what PODIUM_PROFILE and PODIUM_SPEC name for the app)."""
    root.mkdir(parents=True, exist_ok=True)
    settings = {"warehouse": {"backend": "duckdb", "path": str(profile.warehouse.path)}}
    profile_file, spec_file = root / "profile.yaml", root / "spec.yaml"
    profile_file.write_text(yaml.safe_dump(settings))
    dumped = spec.model_copy(update=changes).model_dump(mode="json", by_alias=True, exclude_none=True)
    spec_file.write_text(yaml.safe_dump(dumped))
    return profile_file, spec_file
