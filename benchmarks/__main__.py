"""Run the benchmarks and write benchmarks/results.md: `python -m benchmarks`."""

from __future__ import annotations

import os
import platform
import tempfile
from collections.abc import Callable
from datetime import date
from pathlib import Path

import mlflow

from benchmarks import demo_stages, feature_build, score_throughput, tune_overhead

RESULTS = Path(__file__).parent / "results.md"


def table(rows: list[dict[str, object]]) -> str:
    header = list(rows[0])
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(r[h]) for h in header) + " |" for r in rows]
    return "\n".join(lines)


def main() -> None:
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    machine = (
        f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}, {date.today()}"
    )
    p1 = _in_tmp(tune_overhead.measure)
    p2 = [row for rows in (100_000, 1_000_000) for row in _in_tmp(score_throughput.measure, rows)]
    p3 = _in_tmp(feature_build.measure)
    demo = _in_tmp(demo_stages.measure)
    text = f"""# Benchmarks

Measured by `python -m benchmarks` on {machine}. Each table comes from one run; the ratios compare
figures measured in that same run.

## P1: per-trial overhead (sampler + storage + tracking) vs fit time

Budget: overhead <= 5% of the median fit, and <= 30 ms per trial for short fits. Journal-file Optuna
storage, MLflow SQLite store, bundled F1 features (4 season folds); scale k repeats the training window
k times (`benchmarks.generate.tile_window`), so fits grow with the rows.

{table(p1)}

## P2: end-to-end scoring vs raw predict_proba, peak memory

Budget: end to end >= 80% of raw `predict_proba` throughput for tree models at 1M rows; memory bounded by
the chunk size. The 2021-22 feature rows tiled to the row count in DuckDB; end to end is `podium score` in a
child process (read through the seam, predict, merge per chunk, each chunk a committed transaction), timed
by the stage; raw is `predict_proba` over the same rows already in memory, same chunks. Peak RSS is the
child's.

{table(p2)}

## P3: DuckDB feature build vs seed-style pandas

Budget: DuckDB >= 5x faster than the same features in pandas (groupby + rolling apply) at 1M rows, and
linear in rows. RAW tables scaled by `benchmarks.generate.scale_raw` (copies of the history under new ids,
each later in time); the point-in-time driver form is computed both ways and checked equal; the full
DuckDB build runs all six SQL models.

{table(p3)}

## `make demo`'s stages

The stages of `podium run` on the bundled data, in one process (tune: the spec's 12 trials or 20 s per
family).

{table(demo)}
"""
    RESULTS.write_text(text)
    print(text)


def _in_tmp(measure: Callable[..., list[dict[str, object]]], *args: object) -> list[dict[str, object]]:
    """Run one measurement in a fresh temporary folder, with its own MLflow store."""
    with tempfile.TemporaryDirectory() as tmp:
        uri = f"sqlite:///{Path(tmp) / 'mlflow.db'}"
        os.environ["MLFLOW_TRACKING_URI"] = uri
        mlflow.set_tracking_uri(uri)
        return measure(Path(tmp), *args)


if __name__ == "__main__":
    main()
