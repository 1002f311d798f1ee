"""P2: end-to-end scoring (read, predict, write) against raw `predict_proba`, with peak memory.

Builds the F1 features, then a synthetic scoring window of about `rows` rows by tiling the
2021-22 rows under fresh race ids. For each tree family it fits one model on the training
window and registers it; then it times, in the same run:
- raw: `predict_proba` over the whole window, already in memory, in chunks of the same size;
- end to end: `podium score` in a child process (read through the seam, predict, write into
  the scoring table), timed by the stage itself, with the child's peak RSS and the write time
  of each chunk (the first tenth of the chunks against the last tenth);
- `podium evaluate` over the scored rows in a child process, timed by its run, with peak RSS.

`python -m benchmarks.score_throughput 10000000 decision_tree` measures one family.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import mlflow
from mlflow.tracking import MlflowClient

from benchmarks.generate import tile_window
from pipelines import served
from pipelines.config import Profile, Spec
from pipelines.config_files import load_spec
from pipelines.models import make_estimator
from pipelines.served import NamedClassifier
from pipelines.stages import features, ingest, train, tune
from pipelines.warehouse import connect

REPO = Path(__file__).resolve().parent.parent
FAMILIES = {  # the demo's champion (random_forest), a mid-space xgboost, and the cheapest tree
    "random_forest": {"n_estimators": 100, "max_depth": 4, "min_samples_leaf": 2, "max_features": 0.9},
    "xgboost": {"n_estimators": 200, "max_depth": 5, "learning_rate": 0.1},
    "decision_tree": {"max_depth": 6, "min_samples_leaf": 20},
}
TARGET_ROWS = 1_000_000
# A fresh parent per measurement, so RUSAGE_CHILDREN's peak is this one scoring process's.
PEAK = (
    "import resource, subprocess, sys; subprocess.run(sys.argv[1:], check=True, stdout=subprocess.DEVNULL, "
    "stderr=sys.stderr); "
    "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)"
)


def measure(
    root: Path,
    rows: int = TARGET_ROWS,
    chunk_rows: int = 131_072,
    families: tuple[str, ...] = tuple(FAMILIES),
) -> list[dict[str, object]]:
    """One row per family: raw and end-to-end throughput, their ratio, peak memory, write time per chunk."""
    root.mkdir(parents=True, exist_ok=True)
    spec = load_spec("f1_podium")
    profile = Profile.model_validate(
        {"name": "bench", "warehouse": {"backend": "duckdb", "path": root / "w.duckdb"}}
    )
    uri = f"sqlite:///{root / 'mlflow.db'}"
    os.environ["MLFLOW_TRACKING_URI"] = uri
    mlflow.set_tracking_uri(uri)
    ingest.main(profile, spec)
    features.main(profile, spec)
    with connect(profile) as warehouse:
        data = tune.load_training_data(warehouse, spec)
        start = spec.scoring.start
        n = int(
            warehouse.query(f"SELECT COUNT(*) AS N FROM {spec.table} WHERE {spec.time} >= ?", [start]).N[0]
        )
        tile_window(warehouse, spec, start, None, -(-rows // n))
        window = warehouse.query(f"SELECT * FROM {spec.table} WHERE {spec.time} >= ?", [start])
    results = []
    for family in families:
        version = _register(spec, family, FAMILIES[family], data)
        raw = _raw_seconds(f"models:/{spec.model_name}/{version}", window, chunk_rows)
        end_to_end, peak_mb, writes = _score_in_child(root, spec, version, chunk_rows)
        tenth = max(1, len(writes) // 10)
        first, last = sum(writes[:tenth]) / tenth, sum(writes[-tenth:]) / tenth
        results.append(
            {
                "family": family,
                "rows": f"{len(window):,}",
                "chunk rows": f"{chunk_rows:,}",
                "raw predict_proba (rows/s)": f"{len(window) / raw:,.0f}",
                "end to end (rows/s)": f"{len(window) / end_to_end:,.0f}",
                "end to end / raw": f"{raw / end_to_end:.0%}",
                "peak RSS (MB)": f"{peak_mb:,.0f}",
                "write per chunk, first / last tenth (ms)": f"{first * 1000:.0f} / {last * 1000:.0f}",
                "last / first": f"{last / first:.2f}",
            }
        )
    return results


def measure_evaluate(root: Path, rows: int = TARGET_ROWS) -> dict[str, object]:
    """`podium evaluate` over `rows` scored rows (a decision tree's, scored first): seconds and peak RSS."""
    [scored] = measure(root, rows, families=("decision_tree",))
    seconds, peak_mb = _evaluate_in_child(root, load_spec("f1_podium"))
    return {
        "scored rows": scored["rows"],
        "evaluate (s)": f"{seconds:.1f}",
        "peak RSS (MB)": f"{peak_mb:,.0f}",
    }


def _register(spec: Spec, family: str, params: dict, data: tune.TrainingData) -> str:
    """Fit one model on the training window and register it as train would (minus the plots)."""
    X, y = data.window.X, data.window.y
    model = make_estimator(family, params, data.schema, seed=42).fit(X, y)
    mlflow.set_experiment("p2-scoring")
    with mlflow.start_run(run_name=f"bench-{family}"):
        named = NamedClassifier.of(model, spec.classes, data.schema.numeric)
        info = served.log_model(named, X, train.pip_requirements(family), {"classes": spec.classes})
    return str(mlflow.register_model(info.model_uri, spec.model_name).version)


def _raw_seconds(uri: str, window, chunk_rows: int) -> float:  # noqa: ANN001
    model = mlflow.sklearn.load_model(uri).estimator_  # the fitted pipeline, without the float64 cast
    features = window[list(model.feature_names_in_)]
    X = served.model_input(features, list(features.select_dtypes(include="number").columns))
    started = time.perf_counter()
    for i in range(0, len(X), chunk_rows):
        model.predict_proba(X.iloc[i : i + chunk_rows])
    return time.perf_counter() - started


def _score_in_child(
    root: Path, spec: Spec, version: str, chunk_rows: int
) -> tuple[float, float, list[float]]:
    """Run `podium score` in a child: the stage's seconds, the child's peak RSS (MB), each chunk's write."""
    args = ["score", "--model", f"models:/{spec.model_name}/{version}", "--chunk-rows", str(chunk_rows)]
    log, peak = _child(root, args)
    writes = [float(s) for s in re.findall(r"rows committed \(.*?; ([\d.]+) s writing\)", log)]
    client = MlflowClient()
    (run,) = client.search_runs(
        [client.get_experiment_by_name(spec.name).experiment_id],
        f"params.model_version = '{version}' and tags.`podium.stage` = 'score'",
    )
    return float(run.data.metrics["seconds"]), peak, writes


def _evaluate_in_child(root: Path, spec: Spec) -> tuple[float, float]:
    """Run `podium evaluate` in a child: its run's seconds and the child's peak RSS (MB)."""
    _, peak = _child(root, ["evaluate"])
    client = MlflowClient()
    run = client.search_runs(
        [client.get_experiment_by_name(spec.name).experiment_id],
        "tags.`podium.stage` = 'evaluate'",
        order_by=["attributes.start_time DESC"],
        max_results=1,
    )[0]
    return (run.info.end_time - run.info.start_time) / 1000, peak


def _child(root: Path, args: list[str]) -> tuple[str, float]:
    """`podium ARGS` on the benchmark's warehouse in a fresh child (DEBUG log): its log and peak RSS in MB."""
    profile = root / "profile.yaml"
    profile.write_text(f"warehouse:\n  backend: duckdb\n  path: {root / 'w.duckdb'}\n")
    command = [sys.executable, "-m", "pipelines.cli", *args, "--profile", str(profile)]
    env = os.environ | {"MLFLOW_DISABLE_TELEMETRY": "true", "PODIUM_LOG_LEVEL": "DEBUG"}
    done = subprocess.run(
        [sys.executable, "-c", PEAK, *command], cwd=REPO, check=True, capture_output=True, text=True, env=env
    )
    return done.stderr, int(done.stdout.strip().splitlines()[-1]) / 1024


if __name__ == "__main__":
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        if sys.argv[1:2] == ["evaluate"]:
            print(measure_evaluate(Path(tmp), int(sys.argv[2])))
        else:
            rows = int(sys.argv[1]) if len(sys.argv) > 1 else TARGET_ROWS
            for row in measure(Path(tmp), rows, families=tuple(sys.argv[2:]) or tuple(FAMILIES)):
                print(row)
