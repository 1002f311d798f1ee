"""`podium app`: each page's render time on the demo's tables, and with the scores table grown to 10M rows.

Runs the demo (`podium run` on the bundled data, at the spec's budget) in its own folder, then times each
page with Streamlit's AppTest: one rerun of the script as the server runs it (open the warehouse read-only,
query, build the frames and elements), not the browser's drawing. The figure is the median of five reruns
after a warm-up one. Then ML.F1_SCORES is tiled to 10M rows (copies of the scored rows under new race ids,
each copy a week earlier, so every race date holds about as many rows as a scored season's date) and every
page is timed again in the same run.
"""

from __future__ import annotations

import os
import statistics
import time
from pathlib import Path

import duckdb
import yaml
from streamlit.testing.v1 import AppTest

from benchmarks.demo_stages import bench_profile
from pipelines import pipeline
from pipelines.app.pages import PAGES
from pipelines.config import Profile
from pipelines.config_files import load_spec

SCRIPT = Path(__file__).resolve().parent.parent / "pipelines" / "app" / "main.py"
RERUNS = 5
TARGET_ROWS = 10_000_000


def measure(root: Path) -> list[dict[str, object]]:
    """One row per page: its render time on the demo's tables and on a 10M-row scores table."""
    spec = load_spec("f1_podium")
    profile = bench_profile(root)
    pipeline.run(profile, spec, show=lambda result: None)
    os.environ["PODIUM_PROFILE"] = str(profile_file(root, profile))
    os.environ["PODIUM_SPEC"] = "f1_podium"
    demo = {page.slug: render_seconds(page.slug) for page in PAGES}
    rows = grow(Path(profile.warehouse.path), spec.scoring_table, TARGET_ROWS)
    large = {page.slug: render_seconds(page.slug) for page in PAGES}
    return [
        {
            "page": page.title,
            "demo (s)": f"{demo[page.slug]:.2f}",
            f"{rows / 1e6:.1f}M scored rows (s)": f"{large[page.slug]:.2f}",
        }
        for page in PAGES
    ]


def profile_file(root: Path, profile: Profile) -> Path:
    """The benchmark's profile as a file, for the app's PODIUM_PROFILE."""
    path = root / "profile.yaml"
    path.write_text(yaml.safe_dump({"warehouse": {"backend": "duckdb", "path": str(profile.warehouse.path)}}))
    return path


def render_seconds(slug: str) -> float:
    """The median wall time of one rerun of the page, after a warm-up rerun."""
    app = AppTest.from_file(str(SCRIPT), default_timeout=600)
    app.query_params["page"] = slug
    app.run()
    assert not app.exception, [e.value for e in app.exception]
    times = []
    for _ in range(RERUNS):
        started = time.perf_counter()
        app.run()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def grow(warehouse: Path, table: str, rows: int) -> int:
    """Tile the scores table to about `rows` rows: copy k under race ids + k * 100000, k weeks earlier."""
    with duckdb.connect(str(warehouse)) as con:
        found = con.execute(f"SELECT COUNT(*) FROM {table}").fetchone()
        assert found is not None and found[0], f"{table} is empty: the demo scored nothing"
        copies = -(-rows // found[0])
        con.execute(
            f"INSERT INTO {table} SELECT s.* REPLACE (RACE_ID + k * 100000 AS RACE_ID, "
            f"RACE_DATE - INTERVAL (7 * k) DAY AS RACE_DATE) FROM {table} AS s, range(1, {copies}) AS r(k)"
        )
        total = con.execute(f"SELECT COUNT(*) FROM {table}").fetchone()
    assert total is not None
    return int(total[0])
