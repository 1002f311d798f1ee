"""`podium backtest` on the bundled data at the spec's budget: wall time, peak memory, the decisions."""

from __future__ import annotations

import resource
import time
from pathlib import Path

from benchmarks.demo_stages import bench_profile
from pipelines import pipeline
from pipelines.config_files import load_spec
from pipelines.stages import backtest, features, ingest


def measure(root: Path) -> list[dict[str, object]]:
    """One row per replayed period (the champion's figures), then the whole backtest's time and peak RSS."""
    spec = load_spec("f1_podium")
    profile = bench_profile(root)
    ingest.main(profile, spec)
    features.main(profile, spec)
    config = spec.backtest_section
    started = time.perf_counter()
    result = backtest.main(profile, spec, pipeline.LIFECYCLE)
    seconds = time.perf_counter() - started
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    rows = [
        {
            "period": r.PERIOD,
            "champion": f"v{r.MODEL_VERSION} {r.MODEL_FAMILY}",
            "log loss": f"{r.LOG_LOSS:.4f}",
            "gate": r.DECISION,
        }
        for r in result.rows[result.rows.ROLE == "champion"].itertuples()
    ]
    budget = f"{config.trials} trials x {len(config.families or [])} families per period"
    return [
        *rows,
        {"period": "all", "champion": budget, "log loss": f"{seconds:.0f} s", "gate": f"{peak:.0f} MB"},
    ]
