"""Tune throughput on one core and on every core: the same family, space, seed and trials.

Each run is `podium tune --family F --n-trials N --n-jobs J` on a fresh study of the bundled F1
features. The sampler is seeded and cross-validation reports its folds in a fixed order, so
both runs sample and prune the same trials; only the cores differ. Throughput is trials per
minute from the second trial's start to the last trial's end (the first may wait for the worker
pool to start, which the stage pays once: it is in the stage's wall time beside).
"""

from __future__ import annotations

import time
from pathlib import Path

import optuna

from benchmarks.demo_stages import bench_profile
from pipelines.config_files import load_spec
from pipelines.crossval import available_cores
from pipelines.registry import study_name
from pipelines.stages import features, ingest, tune
from pipelines.studies import open_storage

CASES = (("extra_trees", 12), ("decision_tree", 40))


def measure(root: Path) -> list[dict[str, object]]:
    """Per family: trials per minute on 1 core and on all cores, and their ratio."""
    spec = load_spec("f1_podium")
    base = bench_profile(root)
    ingest.main(base, spec)
    features.main(base, spec)
    rows = []
    for family, trials in CASES:
        rates, searched = {}, []
        for cores in (1, available_cores()):
            profile = base.model_copy(update={"optuna_storage": str(root / f"{family}-{cores}.journal")})
            started = time.perf_counter()
            tune.main(profile, spec, family=family, n_trials=trials, n_jobs=cores)
            stage = time.perf_counter() - started
            storage = open_storage(profile.optuna_storage)
            study = optuna.load_study(study_name=study_name(spec, family), storage=storage)
            rates[cores] = (_per_minute(study), stage)
            searched.append([(t.params, t.state, t.value) for t in study.trials])
        assert searched[0] == searched[-1], f"{family}: the runs on 1 and on all cores searched differently"
        (one, one_stage), (many, many_stage) = rates[1], rates[available_cores()]
        rows.append(
            {
                "family": family,
                "trials": trials,
                "cores": available_cores(),
                "trials/min, 1 core": f"{one:.1f}",
                f"trials/min, {available_cores()} cores": f"{many:.1f}",
                "speed-up": f"{many / one:.2f}x",
                "stage wall, 1 core (s)": round(one_stage, 1),
                f"stage wall, {available_cores()} cores (s)": round(many_stage, 1),
            }
        )
    return rows


def _per_minute(study: optuna.Study) -> float:
    """Finished trials per minute after the first (which may wait for the workers to start)."""
    done = sorted((t for t in study.trials if t.datetime_complete is not None), key=lambda t: t.number)[1:]
    span = done[-1].datetime_complete - done[0].datetime_start
    return 60 * len(done) / span.total_seconds()
