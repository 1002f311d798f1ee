"""P3: the DuckDB feature build against the same features in seed-style pandas, at two or more scales.

The point-in-time driver form (`50_f1_driver_form.sql`: rolling sums and means over the
driver's previous 5 or 10 races, the previous finish, career and per-circuit starts) is
the window-heavy model of the build. This module computes it the way a notebook would
(`groupby` + `rolling(...).apply`), checks that it equals the SQL model's table, and times
both on RAW tables scaled by `benchmarks.generate`. The whole DuckDB build (all six SQL
models) is timed too.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pandas as pd

from benchmarks.generate import scale_raw
from pipelines.config import Profile, Spec
from pipelines.config_files import load_spec
from pipelines.stages import features, ingest
from pipelines.warehouse import connect

FACTORS = (1, 10, 40)


def measure(root: Path, factors: tuple[int, ...] = FACTORS) -> list[dict[str, object]]:
    """One row per scale: rows, DuckDB driver-form and full-build seconds, pandas seconds, the ratio."""
    spec = _unbounded(load_spec("f1_podium"))
    results = []
    for factor in factors:
        profile = Profile.model_validate(
            {"name": "bench", "warehouse": {"backend": "duckdb", "path": root / f"scale{factor}.duckdb"}}
        )
        ingest.main(profile, spec)
        with connect(profile) as warehouse:
            results_rows = scale_raw(warehouse, spec, factor)["RAW.RESULTS"]
        started = time.perf_counter()
        features.main(profile, spec)
        full_build = time.perf_counter() - started
        results.append(_compare(profile, spec, factor, results_rows, full_build))
    return results


def driver_form_pandas(driver_races: pd.DataFrame) -> pd.DataFrame:
    """ML.F1_DRIVER_FORM, seed style: per driver, windows over the previous races via rolling apply."""
    dr = driver_races.sort_values(["DRIVER_ID", "RACE_DATE", "RACE_ID"]).reset_index(drop=True)
    by_driver = dr.groupby("DRIVER_ID", sort=False)

    def previous(column: str, window: int, how: object) -> pd.Series:
        return by_driver[column].transform(
            lambda s: s.shift(1).rolling(window, min_periods=1).apply(how, raw=True)
        )

    by_circuit = dr.groupby(["DRIVER_ID", "CIRCUIT_ID"], sort=False)
    return pd.DataFrame(
        {
            "RACE_ID": dr["RACE_ID"],
            "DRIVER_ID": dr["DRIVER_ID"],
            "DRIVER_POINTS_LAST5": previous("POINTS", 5, np.nansum).fillna(0).round(2),
            "DRIVER_AVG_FINISH_LAST5": previous("FINISH_ORDER", 5, np.nanmean),
            "DRIVER_DNF_RATE_LAST10": previous("IS_DNF", 10, np.nanmean),
            "DRIVER_PODIUMS_LAST10": previous("IS_PODIUM", 10, np.nansum).fillna(0),
            "DRIVER_PREV_FINISH": by_driver["FINISH_ORDER"].shift(1),
            "DRIVER_STARTS": by_driver.cumcount(),
            "DRIVER_CIRCUIT_STARTS": by_circuit.cumcount(),
            "DRIVER_CIRCUIT_AVG_FINISH": by_circuit["FINISH_ORDER"].transform(
                lambda s: s.shift(1).expanding().mean()
            ),
        }
    )


def _compare(
    profile: Profile, spec: Spec, factor: int, results_rows: int, full_build: float
) -> dict[str, object]:
    """Time the SQL model alone and the pandas version on the same input; check they agree."""
    sql = (spec.features.sql / "50_f1_driver_form.sql").read_text()
    with connect(profile) as warehouse:
        driver_races = warehouse.query("SELECT * FROM ML.F1_DRIVER_RACES")
        started = time.perf_counter()
        warehouse.execute(f"CREATE OR REPLACE TABLE ML.F1_DRIVER_FORM AS {sql}")
        duck = time.perf_counter() - started
        expected = warehouse.query("SELECT * FROM ML.F1_DRIVER_FORM")
    started = time.perf_counter()
    frame = driver_form_pandas(driver_races)
    seconds = time.perf_counter() - started
    _assert_same(frame, expected)
    return {
        "scale": factor,
        "RAW.RESULTS rows": f"{results_rows:,}",
        "driver-race rows": f"{len(driver_races):,}",
        "DuckDB driver form (s)": f"{duck:.2f}",
        "pandas groupby + rolling apply (s)": f"{seconds:.1f}",
        "pandas / DuckDB": f"{seconds / duck:.0f}x",
        "DuckDB full feature build (s)": f"{full_build:.2f}",
    }


def _assert_same(frame: pd.DataFrame, expected: pd.DataFrame) -> None:
    """The pandas table equals the SQL one, key by key, within float tolerance."""
    keys = ["RACE_ID", "DRIVER_ID"]
    left = frame.sort_values(keys, ignore_index=True)
    right = expected[left.columns].sort_values(keys, ignore_index=True)
    pd.testing.assert_frame_equal(
        left.astype("float64"), right.astype("float64"), check_exact=False, atol=1e-6
    )


def _unbounded(spec: Spec) -> Spec:
    """The spec without its row-count bounds, which describe the bundled data only."""
    bounds = spec.features.expect_rows.model_copy(update={"max": None})
    return spec.model_copy(update={"features": spec.features.model_copy(update={"expect_rows": bounds})})
