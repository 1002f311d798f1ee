"""`podium app`'s pages driven headless by Streamlit's AppTest, the numbers shown checked against the tables;
then served by `podium app` on loopback and rendered in headless Chromium (screenshots: test-artifacts/).

The script runs as `podium app` runs it (pipelines/app/main.py, with PODIUM_PROFILE and PODIUM_SPEC), on
a copy of a rehearsed lifecycle (tests/app/conftest.py): its scores, monitoring, drift bins, shadow gains,
promotions, cycles and backtest. The expected figures are read from the warehouse file with plain SQL.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import duckdb
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient
from streamlit.testing.v1 import AppTest

from pipelines.app.main import BUSY
from pipelines.app.pages import PAGES
from pipelines.config import LiveEvidence, Profile, Spec
from pipelines.config_files import load_spec
from tests.app.states import STORE_DEMAND, lifecycle_spec, write_settings
from tests.helpers import REPO, Snapshot, duckdb_profile, read, restore, worker_env
from tests.servers import app_server, rendered

SCRIPT = REPO / "pipelines" / "app" / "main.py"
ARTIFACTS = REPO / "test-artifacts"
pytestmark = pytest.mark.slow

Open = Callable[..., AppTest]


def opener(profile_file: Path, spec_file: Path, monkeypatch: pytest.MonkeyPatch) -> Open:
    """Open a page of the app for these settings, as a fresh browser tab would; it must raise nothing."""
    monkeypatch.setenv("PODIUM_PROFILE", str(profile_file))
    monkeypatch.setenv("PODIUM_SPEC", str(spec_file))

    def open_page(slug: str) -> AppTest:
        app = AppTest.from_file(str(SCRIPT), default_timeout=120)
        app.query_params["page"] = slug
        return run(app)

    return open_page


def run(app: AppTest) -> AppTest:
    """Rerun the app; no exception may reach the page."""
    app.run()
    assert not app.exception, [e.value for e in app.exception]
    return app


def choose(app: AppTest, key: str, value: Any) -> AppTest:
    """Pick `value` in the select box `key`, and rerun."""
    app.selectbox(key=key).set_value(value)
    return run(app)


def metrics(app: AppTest) -> dict[str, str]:
    return {m.label: m.value for m in app.metric}


@pytest.fixture
def rehearsed(
    lifecycle: Snapshot,
    tuned: tuple[Profile, Spec],
    tmp_path: Path,
    mlflow_store: str,
    monkeypatch: pytest.MonkeyPatch,
) -> tuple[Profile, Spec, Open]:
    profile = restore(lifecycle, tuned[0], tmp_path, mlflow_store)
    spec = lifecycle_spec(tuned[1])
    return profile, spec, opener(*write_settings(tmp_path / "settings", profile, spec), monkeypatch)


def test_predictions_show_each_key_s_probabilities_per_version_and_the_actual_class(
    rehearsed: tuple[Profile, Spec, Open],
) -> None:
    profile, spec, open_page = rehearsed
    app = open_page("predictions")
    races = app.selectbox(key="when").options
    race = next(r for r in races if r.startswith("2021-"))  # scored by the champion and, in shadow, v2
    choose(app, "when", pd.Timestamp(race))

    shown = app.dataframe[0].value.set_index(spec.keys)
    scores = read(profile, "SELECT * FROM ML.F1_SCORES WHERE RACE_DATE = ?", [race])
    actual = read(
        profile, "SELECT RACE_ID, DRIVER_ID, FINISH_CLASS FROM ML.F1_FEATURES WHERE RACE_DATE = ?", [race]
    )
    assert (
        sorted(set(scores.MODEL_VERSION)) == ["1", "2"]
        and len(shown) == len(actual) == scores.RACE_ID.size / 2
    )
    for row in scores.itertuples():
        label = f"v{row.MODEL_VERSION} ({row.MODEL_ALIAS})"
        mine = shown.loc[(row.RACE_ID, row.DRIVER_ID)]
        for column in ("P_PODIUM", "P_POINTS", "P_NONE"):
            assert mine[f"{column} · {label}"] == pytest.approx(getattr(row, column), abs=1e-12)
        assert mine[f"PREDICTED_CLASS · {label}"] == row.PREDICTED_CLASS
    expected = actual.set_index(spec.keys).FINISH_CLASS
    assert (shown.ACTUAL == expected.reindex(shown.index)).all()
    assert metrics(app)["Versions"] == "v1 (champion), v2 (challenger)"


def assert_log_losses_shown(app: AppTest, profile: Profile) -> None:
    """The health page's table is the monitoring table's log loss per (period, version)."""
    shown = app.dataframe[0].value.set_index("PERIOD")
    table = read(
        profile, "SELECT MODEL_VERSION, PERIOD, VALUE FROM ML.F1_MONITORING WHERE METRIC = 'log_loss'"
    )
    assert len(table) == shown.notna().sum().sum() > 2
    for row in table.itertuples():
        assert shown.loc[row.PERIOD, f"v{row.MODEL_VERSION}"] == pytest.approx(row.VALUE, abs=1e-12)


def test_model_health_shows_each_period_s_log_loss_against_the_holdout_figures(
    rehearsed: tuple[Profile, Spec, Open],
) -> None:
    profile, spec, open_page = rehearsed
    app = open_page("health")

    assert app.selectbox(key="metric").value == "log_loss"
    assert_log_losses_shown(app, profile)
    references = app.dataframe[1].value.set_index("REFERENCE").VALUE
    tags = MlflowClient().get_model_version(spec.model_name, "1").tags
    assert references["v1 holdout"] == pytest.approx(float(tags["podium.holdout_log_loss"]))
    assert references["baseline prior holdout"] > references["v1 holdout"]


def test_drift_shows_a_feature_s_psi_and_the_bins_that_moved_most(
    rehearsed: tuple[Profile, Spec, Open],
) -> None:
    profile, _, open_page = rehearsed
    app = open_page("drift")
    choose(app, "version", "1")
    choose(app, "feature", "GRID")

    psi = read(
        profile, "SELECT VALUE FROM ML.F1_MONITORING WHERE METRIC = 'psi.GRID' AND MODEL_VERSION = '1'"
    )
    assert metrics(app)["PSI of GRID"] == f"{psi.VALUE[0]:.4f}"
    listed = app.dataframe[0].value.set_index("FEATURE")
    assert listed.PSI["GRID"] == pytest.approx(psi.VALUE[0])
    bins = read(
        profile,
        "SELECT BIN, EXPECTED, ACTUAL, PSI FROM ML.F1_MONITORING_DRIFT_BINS "
        "WHERE MODEL_VERSION = '1' AND FEATURE = 'GRID' ORDER BY PSI DESC, BIN",
    )
    pd.testing.assert_frame_equal(app.dataframe[1].value.reset_index(drop=True), bins)
    assert bins.PSI.sum() == pytest.approx(psi.VALUE[0])


def test_champion_vs_challenger_shows_the_shadow_gains_and_what_the_live_gate_says(
    rehearsed: tuple[Profile, Spec, Open], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    profile, spec, open_page = rehearsed
    app = open_page("challenger")

    assert app.selectbox(key="pair").value == ("2", "1")
    gains = app.dataframe[0].value
    stored = read(
        profile,
        "SELECT PERIOD, METRIC, VALUE FROM ML.F1_MONITORING WHERE MODEL_VERSION = '2' "
        "AND METRIC LIKE 'shadow.vs_v1.log_loss_gain%'",
    ).pivot(index="PERIOD", columns="METRIC", values="VALUE")
    assert list(gains.PERIOD) == list(stored.index) == ["2021"]
    for column, metric in [("GAIN", ""), ("LOW", "_low"), ("HIGH", "_high")]:
        assert list(gains[column]) == pytest.approx(list(stored[f"shadow.vs_v1.log_loss_gain{metric}"]))
    assert metrics(app)["Live gate now"] == "no live gate"

    gain = float(stored.iloc[0]["shadow.vs_v1.log_loss_gain"])
    for live, verdict in [
        (LiveEvidence(periods=2), "waiting"),  # one period of evidence, two asked
        (LiveEvidence(periods=1, min_improvement=0.0), "won" if gain >= 0 else "lost"),
    ]:
        asked = spec.promotion.model_copy(update={"live": live})
        files = write_settings(tmp_path / f"live{live.periods}", profile, spec, promotion=asked)
        assert metrics(opener(*files, monkeypatch)("challenger"))["Live gate now"] == verdict


def test_backtest_shows_the_replay_and_its_decisions(rehearsed: tuple[Profile, Spec, Open]) -> None:
    profile, _, open_page = rehearsed
    app = open_page("backtest")

    table = read(profile, "SELECT * FROM ML.F1_BACKTEST ORDER BY PERIOD, ROLE")
    replay = app.dataframe[0].value
    assert list(replay.PERIOD) == list(table.PERIOD) and list(replay.ROLE) == list(table.ROLE)
    assert list(replay.LOG_LOSS) == pytest.approx(list(table.LOG_LOSS))
    assert metrics(app)["Periods replayed"] == "2"
    decisions = app.dataframe[1].value
    by_period = table.dropna(subset=["DECISION"]).drop_duplicates("PERIOD").set_index("PERIOD")
    assert dict(zip(decisions.PERIOD, decisions.DECISION, strict=True)) == by_period.DECISION.to_dict()
    assert list(decisions.REASON) == list(by_period.REASON)


def test_promotions_show_the_audit_timeline_and_the_champion_s_card(
    rehearsed: tuple[Profile, Spec, Open],
) -> None:
    profile, spec, open_page = rehearsed
    app = open_page("promotions")

    audited = read(profile, "SELECT * FROM ML.MODEL_PROMOTIONS ORDER BY DECIDED_AT DESC")
    timeline = app.dataframe[1].value
    assert len(timeline) == len(audited) and list(timeline.MODEL_VERSION) == list(audited.MODEL_VERSION)
    assert list(timeline.REASON) == list(audited.REASON)
    assert app.subheader[0].value == "Champion: v2"
    tags = MlflowClient().get_model_version(spec.model_name, "2").tags
    shown = metrics(app)
    assert shown["Family"] == tags["podium.family"]
    assert shown["Holdout log loss"] == f"{float(tags['podium.holdout_log_loss']):.4f}"
    assert shown["Trained on"] == f"{spec.train_start} to {tags['podium.trained_before']}"


def test_cycles_show_one_row_per_period(rehearsed: tuple[Profile, Spec, Open]) -> None:
    profile, _, open_page = rehearsed
    app = open_page("cycles")

    shown = app.dataframe[0].value
    table = read(profile, "SELECT PERIOD, DECISION, CHAMPION_AFTER FROM ML.F1_CYCLES ORDER BY PERIOD DESC")
    assert list(shown.PERIOD) == list(table.PERIOD) == ["2022", "2021", "2020"]
    assert list(shown.CHAMPION_AFTER) == list(table.CHAMPION_AFTER)


def test_every_page_of_a_spec_with_only_features_says_there_is_nothing_yet(
    built_profile: Profile, spec: Spec, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, mlflow_store: str
) -> None:
    open_page = opener(*write_settings(tmp_path, built_profile, spec), monkeypatch)
    for page in PAGES:
        app = open_page(page.slug)
        assert [t.value for t in app.title] == [page.title]
        assert [i.value for i in app.info][0].startswith("Nothing yet: "), page.slug
        assert not app.dataframe, f"{page.slug} shows a table of nothing"


def test_the_store_demand_example_gets_the_same_app(
    store_demand: Snapshot, tmp_path: Path, mlflow_store: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    spec = load_spec(str(STORE_DEMAND), root=REPO)
    profile = restore(store_demand, duckdb_profile(tmp_path / "unused.duckdb"), tmp_path, mlflow_store)
    open_page = opener(*write_settings(tmp_path / "settings", profile, spec), monkeypatch)

    app = open_page("predictions")
    shown = app.dataframe[0].value.set_index(spec.keys)
    week = app.selectbox(key="when").value
    scores = read(profile, f"SELECT * FROM {spec.scoring_table} WHERE {spec.time} = ?", [week])
    first = scores.iloc[0]
    key = tuple(first[k] for k in spec.keys)
    label = f"v{first.MODEL_VERSION} ({first.MODEL_ALIAS})"
    for column in [c for c in scores.columns if c.startswith("P_")]:
        assert shown.loc[key, f"{column} · {label}"] == pytest.approx(first[column], abs=1e-12)
    assert metrics(open_page("drift"))["PSI threshold"] == f"{spec.monitoring_section.psi_threshold:g}"
    for page in ("health", "challenger", "backtest", "promotions", "cycles"):
        open_page(page)  # no exception; the pages without rows say so
    assert open_page("challenger").info[0].value.startswith("Nothing yet: no challenger")


@contextmanager
def write_lock(path: Path) -> Iterator[None]:
    """Another process holds the DuckDB file's write lock, as a writing stage does, until the block ends."""
    code = (
        "import duckdb, sys; con = duckdb.connect(sys.argv[1]); print('held', flush=True); sys.stdin.read()"
    )
    holder = subprocess.Popen(
        [sys.executable, "-c", code, str(path)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        yield
    finally:
        holder.communicate("", timeout=30)


def test_a_stage_writes_while_the_app_is_open_and_a_busy_warehouse_is_a_note_until_the_next_rerun(
    rehearsed: tuple[Profile, Spec, Open], tmp_path: Path
) -> None:
    profile, _, open_page = rehearsed
    app = open_page("health")
    assert_log_losses_shown(app, profile)

    stage = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "pipelines.cli",
            "evaluate",
            "-p",
            str(tmp_path / "settings" / "profile.yaml"),
            "--spec",
            str(tmp_path / "settings" / "spec.yaml"),
        ],
        env=worker_env() | {"PYTHONPATH": str(REPO)},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    while stage.poll() is None:  # the page reruns all through the stage's write, as a reader clicking would
        run(app)
    assert stage.returncode == 0, stage.stdout.read() if stage.stdout else ""
    assert_log_losses_shown(run(app), profile)  # what the stage wrote: 2022's rows have landed since
    assert not app.warning
    after = app.dataframe[0].value

    with write_lock(Path(profile.warehouse.path)):
        run(app)
        assert [w.value for w in app.warning] == [BUSY] and not app.dataframe
    run(app)  # the lock is gone: the next rerun draws the page again
    assert not app.warning
    pd.testing.assert_frame_equal(app.dataframe[0].value, after)


# --- `podium app` served on loopback, each page rendered in headless Chromium ---------------------

NEWEST = "(SELECT MAX(RACE_DATE) FROM ML.F1_SCORES)"
FIGURES = {  # by page: a query for one figure it shows, and how the page prints it
    "predictions": (f"SELECT COUNT(DISTINCT DRIVER_ID) FROM ML.F1_SCORES WHERE RACE_DATE = {NEWEST}", str),
    "health": (
        "SELECT VALUE FROM ML.F1_MONITORING WHERE METRIC = 'log_loss' ORDER BY PERIOD, MODEL_VERSION LIMIT 1",
        repr,
    ),
    "drift": (
        "SELECT COUNT(*) FROM ML.F1_MONITORING WHERE METRIC LIKE 'psi.%' AND MODEL_VERSION = '2'",
        lambda n: f"of {n}",
    ),
    "challenger": (
        "SELECT VALUE FROM ML.F1_MONITORING WHERE METRIC = 'shadow.vs_v1.log_loss_gain'",
        lambda gain: f"{gain:+.4f}",
    ),
    "backtest": ("SELECT COUNT(DISTINCT PERIOD) FROM ML.F1_BACKTEST", str),
    "promotions": (
        "SELECT CHAMPION_AFTER FROM ML.F1_CYCLES ORDER BY PERIOD DESC LIMIT 1",
        lambda version: f"Champion: v{version}",
    ),
    "cycles": ("SELECT COUNT(*) FROM ML.F1_CYCLES", str),
}


def figures(warehouse: Path) -> dict[str, str]:
    """By page, a figure it must show, as the page prints it, read from the tables."""
    found = {}
    with duckdb.connect(str(warehouse), read_only=True) as con:
        for page, (sql, shown) in FIGURES.items():
            row = con.execute(sql).fetchone()
            assert row is not None, sql
            found[page] = shown(row[0])
    return found


@pytest.mark.browser
@pytest.mark.skipif(shutil.which("chromium") is None, reason="chromium is not installed (apt-get chromium)")
def test_every_page_renders_in_chromium_with_its_title_and_a_figure(
    lifecycle: Snapshot, tuned: tuple[Profile, Spec], tmp_path: Path, mlflow_store: str
) -> None:
    profile = restore(lifecycle, tuned[0], tmp_path, mlflow_store)
    files = write_settings(tmp_path / "settings", profile, lifecycle_spec(tuned[1]))
    expected = figures(Path(profile.warehouse.path))
    ARTIFACTS.mkdir(exist_ok=True)
    with app_server(tmp_path / "server", *files) as url:
        for page in PAGES:
            figure = expected[page.slug]
            shot = ARTIFACTS / f"app_{page.slug}.png"
            seen = rendered(
                f"{url}/?page={page.slug}",
                lambda p, title=page.title, figure=figure: title in p.text and figure in p.text,
                screenshot=shot,
                deadline=120,
            )
            assert page.title in seen.text, f"{page.slug}: no title in\n{seen.text[:1500]}"
            assert figure in seen.text, f"{page.slug}: {figure!r} is not shown:\n{seen.text[:3000]}"
            assert shot.stat().st_size > 20_000, f"{shot} looks blank"
