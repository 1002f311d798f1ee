"""Run the benchmarks and write benchmarks/results.md: `python -m benchmarks`."""

from __future__ import annotations

import os
import platform
import tempfile
from datetime import date
from pathlib import Path

from benchmarks import tune_overhead

RESULTS = Path(__file__).parent / "results.md"


def table(rows: list[dict[str, object]]) -> str:
    header = list(rows[0])
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(r[h]) for h in header) + " |" for r in rows]
    return "\n".join(lines)


def main() -> None:
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    machine = f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}, {date.today()}"
    with tempfile.TemporaryDirectory() as tmp:
        p1 = tune_overhead.measure(Path(tmp))
    text = (
        "# Benchmarks\n\n"
        f"Measured by `python -m benchmarks` on {machine}.\n\n"
        "## P1: per-trial overhead (sampler + storage + tracking) vs fit time\n\n"
        "Budget: overhead <= 5% of the median fit, and <= 30 ms per trial for short fits. "
        "Journal-file Optuna storage, MLflow SQLite store, bundled F1 features (4 season folds).\n\n"
        f"{table(p1)}\n"
    )
    RESULTS.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
