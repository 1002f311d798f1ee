"""Run the benchmarks and write benchmarks/results.md: `python -m benchmarks [SECTION ...]`.

With no argument every section runs; with names (p1, p1-critical-path, p2, p3, peer, throughput,
demo, backtest, app) only those run and replace their own sections of results.md, the others kept.
Each section says when and where it was measured; the figures inside one table come from one run.
"""

from __future__ import annotations

import os
import platform
import re
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date
from pathlib import Path

import mlflow

from benchmarks import (
    app_pages,
    backtest_replay,
    demo_stages,
    feature_build,
    peer,
    score_throughput,
    tune_overhead,
    tune_throughput,
)
from pipelines.config_files import load_spec

RESULTS = Path(__file__).parent / "results.md"
HEADER = """# Benchmarks

Measured by `python -m benchmarks` (or `python -m benchmarks SECTION`, which reruns one section).
Each section names the machine and the day it was measured on; the ratios inside a table compare
figures measured in that same run.
"""


@dataclass(frozen=True)
class Section:
    """One table of results.md: its heading, what it measures, and the measurement."""

    name: str
    title: str
    text: str
    measure: Callable[[Path], list[dict[str, object]]]


def _demo_seconds() -> float:
    budget = load_spec("f1_podium").tuning_section.budget
    assert budget.seconds, "the demo spec states its tuning budget in seconds"
    return budget.seconds


SECTIONS = [
    Section(
        "p1",
        "P1: per-trial overhead (sampler + storage + tracking) vs fit time",
        """
Budget: overhead <= 5% of the median fit, and <= 30 ms per trial for short fits. Journal-file Optuna
storage, MLflow SQLite store, bundled F1 features (4 season folds); scale k repeats the training
window k times (`benchmarks.generate.tile_window`), so fits grow with the rows.
""",
        tune_overhead.measure,
    ),
    Section(
        "p1-critical-path",
        "P1: the critical path of a trial, tracking in the background vs in line",
        """
Budget: <= 5 ms per trial on the critical path (trial start to the next trial's start, minus the
objective's own time) at the demo's stores (journal file, MLflow SQLite). One study per way of
tracking; see `benchmarks/tune_overhead.py`.
""",
        tune_overhead.measure_critical_path,
    ),
    Section(
        "throughput",
        "Tune throughput: one core vs every core",
        """
Budget: >= 1.8x the trials per minute on 2 cores as on 1, same family, space, seed and trials
(`podium tune --family F --n-trials N --n-jobs J`). The seeded sampler and the fixed fold order make
both runs sample and prune the same trials (the benchmark checks it); throughput is counted from
the second trial's start to the last trial's end (the first may wait for the workers to start).
""",
        tune_throughput.measure,
    ),
    Section(
        "peer",
        "Podium vs an AutoML peer (FLAML) at the demo's budget",
        """
Budget: Podium's champion at or below FLAML's holdout log loss and at or above its macro AUC, at the
same time budget (the demo's `tuning.budget.seconds`), on the same training window (2010-2020), the
same four season folds and the same 2021-22 holdout, both on every core, in one run. Podium is
`tune` then `train` (wall includes the refit and the registration); FLAML is `AutoML.fit` (its own
refit included) with those folds as its splitter and log loss as its metric. Needs `pip install -e
'.[bench]'`.
""",
        lambda root: peer.measure(root, _demo_seconds()),
    ),
    Section(
        "p2",
        "P2: end-to-end scoring vs raw predict_proba, peak memory",
        """
Budget: end to end >= 80% of raw `predict_proba` throughput for tree models at 1M rows; memory
bounded by the chunk size (peak RSS at 10M rows within 10% of 1M's); the write of a chunk as cheap
at the end of a 10M-row run as at its start (last tenth of the chunks within 1.5x the first). The
2021-22 feature rows tiled to the row count in DuckDB; end to end is `podium score` in a child
process (read ahead, predict, write behind, each chunk a committed append), timed by the stage; raw
is `predict_proba` over the same rows already in memory, same chunks. Peak RSS is the child's; the
write per chunk is the seam's insert and commit, as the stage logs it.
""",
        lambda root: [
            *[
                row
                for rows in (100_000, 1_000_000)
                for row in score_throughput.measure(root / str(rows), rows)
            ],
            *score_throughput.measure(root / "10m", 10_000_000, families=("decision_tree",)),
        ],
    ),
    Section(
        "p2-evaluate",
        "P2: evaluate over the scored rows",
        """
Budget: `podium evaluate` over 10M scored rows in seconds, peak RSS within 10% of 1M's. The rows
scored by a decision tree as in P2; evaluate computes the join with the actual classes, the
per-period figures and the PSI bins in the warehouse; timed by its MLflow run, in a child process.
""",
        lambda root: [score_throughput.measure_evaluate(root / str(n), n) for n in (1_000_000, 10_000_000)],
    ),
    Section(
        "p3",
        "P3: DuckDB feature build vs seed-style pandas",
        """
Budget: DuckDB >= 5x faster than the same features in pandas (groupby + rolling apply) at 1M rows,
and linear in rows. RAW tables scaled by `benchmarks.generate.scale_raw` (copies of the history
under new ids, each later in time); the point-in-time driver form is computed both ways and checked
equal; the full DuckDB build runs every SQL model.
""",
        feature_build.measure,
    ),
    Section(
        "demo",
        "`make demo`'s stages",
        """The stages of `podium run` on the bundled data, in one process (tune: the spec's budget).""",
        demo_stages.measure,
    ),
    Section(
        "backtest",
        "`podium backtest` over 2016-2022",
        """
Budget: within 10 minutes on 2 cores at the spec's stated budget (`backtest.trials` per family per
season, fresh studies). One row per season: its champion after the gate, the champion's log loss on
the season, the gate's decision; the last row is the whole backtest's wall time and peak RSS (ingest
and features excluded).
""",
        backtest_replay.measure,
    ),
    Section(
        "app",
        "`podium app`: each page's render time",
        """
Budget: the Predictions page under 2 s at 10M scored rows on 2 cores. One rerun of each page's script
as the Streamlit server runs it (Streamlit's AppTest: open the warehouse read-only, query, build the
elements; the browser's drawing is not counted), median of five after a warm-up, on the demo's tables
and then with ML.F1_SCORES tiled to 10M rows (`benchmarks/app_pages.py`), in the same run.
""",
        app_pages.measure,
    ),
]


def table(rows: list[dict[str, object]]) -> str:
    header = list(rows[0])
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(r[h]) for h in header) + " |" for r in rows]
    return "\n".join(lines)


def main(names: list[str]) -> None:
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    unknown = sorted(set(names) - {s.name for s in SECTIONS})
    if unknown:
        raise SystemExit(f"unknown sections {unknown}: choose from {', '.join(s.name for s in SECTIONS)}")
    kept = _sections(RESULTS.read_text()) if RESULTS.exists() else {}
    machine = f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}"
    parts = [HEADER]
    for section in SECTIONS:
        if names and section.name not in names:
            parts.append(kept.get(section.title, ""))
            continue
        rows = _in_tmp(section.measure)
        measured = f"Measured on {machine}, {date.today()}."
        text = f"## {section.title}\n\n{measured}\n\n{section.text.strip()}\n\n{table(rows)}\n"
        print(text)
        parts.append(text)
    RESULTS.write_text("\n".join(p for p in parts if p))


def _sections(text: str) -> dict[str, str]:
    """The sections of an existing results.md, by heading."""
    chunks = re.split(r"(?m)^(?=## )", text)
    found = [c for c in chunks if c.startswith("## ")]
    return {c.splitlines()[0].removeprefix("## ").strip(): c.rstrip() + "\n" for c in found}


def _in_tmp(measure: Callable[[Path], list[dict[str, object]]]) -> list[dict[str, object]]:
    """Run one measurement in a fresh temporary folder, with its own MLflow store."""
    with tempfile.TemporaryDirectory() as tmp:
        uri = f"sqlite:///{Path(tmp) / 'mlflow.db'}"
        os.environ["MLFLOW_TRACKING_URI"] = uri
        mlflow.set_tracking_uri(uri)
        return measure(Path(tmp))


if __name__ == "__main__":
    main(sys.argv[1:])
