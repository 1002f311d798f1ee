"""Feature-table expectations on the bundled F1 data, and the proof of no leakage."""

from __future__ import annotations

import shutil
from datetime import date
from pathlib import Path

import duckdb
import pandas as pd
import pytest
import sqlglot
from sqlglot import exp

from pipelines.config import Profile, Spec
from pipelines.stages import features
from pipelines.warehouse import connect
from pipelines.warehouse.dialect import to_duckdb
from tests.helpers import duckdb_profile, with_sql

CUTOFF = date(2016, 1, 1)


def frame(profile: Profile, sql: str, params: list | tuple = ()) -> pd.DataFrame:
    with connect(profile) as warehouse:
        return warehouse.query(sql, params)


def known_before_race(profile: Profile, spec: Spec, cutoff: date) -> pd.DataFrame:
    """Rows of races before `cutoff`, plus the first race on or after it without its label.

    None of these values may depend on a result from `cutoff` on: earlier rows only see
    earlier races, and the cutoff race's features are known before it starts.
    """
    keys = ", ".join(spec.keys)
    first = f"(SELECT MIN({spec.time}) FROM {spec.table} WHERE {spec.time} >= ?)"
    rows = frame(
        profile, f"SELECT * FROM {spec.table} WHERE {spec.time} <= {first} ORDER BY {keys}", [cutoff]
    )
    is_cutoff_race = rows[spec.time] >= pd.Timestamp(cutoff)
    rows[spec.target] = rows[spec.target].where(~is_cutoff_race, None)
    return rows


def rebuild_after_changing_results(source: Profile, spec: Spec, cutoff: date, tmp: Path) -> Profile:
    """A copy of the warehouse whose results and standings from `cutoff` on are scrambled, rebuilt.

    Pre-race facts (grid, qualifying) stay: they are known before the race.
    """
    target = tmp / f"changed_{len(list(tmp.glob('changed_*')))}.duckdb"
    shutil.copy(source.warehouse.path, target)
    changed = duckdb_profile(target)
    later = "SELECT RACE_ID FROM RAW.RACES WHERE DATE >= ?"
    with connect(changed) as warehouse:
        warehouse.execute(
            "UPDATE RAW.RESULTS SET POSITION = IFF(POSITION IS NULL, 1, NULL), POSITION_ORDER = 30 - "
            "POSITION_ORDER, "
            f"POINTS = POINTS * 3 + 7, STATUS_ID = IFF(STATUS_ID = 1, 5, 1) WHERE RACE_ID IN ({later})",
            [cutoff],
        )
        for table in ("RAW.DRIVER_STANDINGS", "RAW.CONSTRUCTOR_STANDINGS"):
            warehouse.execute(f"DELETE FROM {table} WHERE RACE_ID IN ({later})", [cutoff])
    features.main(changed, spec)
    return changed


@pytest.mark.parametrize(
    "model",
    sorted((Path(__file__).parents[2] / "experiments" / "f1_podium" / "sql").glob("*.sql")),
    ids=lambda p: p.name,
)
def test_every_sql_model_transpiles_and_runs_on_duckdb(
    built_profile: Profile, spec: Spec, model: Path
) -> None:
    assert isinstance(sqlglot.parse_one(model.read_text(), read="snowflake"), exp.Query), (
        "one SELECT per model"
    )
    sql, params = features.bind_spec_values(model.read_text(), spec)
    (statement,) = to_duckdb(sql)
    with duckdb.connect(str(built_profile.warehouse.path), read_only=True) as con:
        counted = con.execute(f"SELECT COUNT(*) FROM ({statement})", params).fetchone()[0]
    assert counted > 0


def test_one_row_per_race_and_driver_since_2010(built_profile: Profile, spec: Spec) -> None:
    stats = frame(
        built_profile,
        "SELECT COUNT(*) AS N, COUNT(DISTINCT RACE_ID, DRIVER_ID) AS KEYS, MIN(RACE_DATE) AS FIRST FROM "
        f"{spec.table}",
    ).iloc[0]
    results = frame(
        built_profile,
        "SELECT COUNT(DISTINCT r.RACE_ID, r.DRIVER_ID) AS N "
        "FROM RAW.RESULTS r JOIN RAW.RACES ra ON ra.RACE_ID = r.RACE_ID "
        "WHERE ra.DATE >= '2010-01-01'",
    ).N[0]
    assert stats.N == stats.KEYS == results
    assert 5_400 <= stats.N <= 5_700
    assert stats.FIRST >= pd.Timestamp(2010, 1, 1)


def test_finish_class_follows_the_classified_position(built_profile: Profile, spec: Spec) -> None:
    mismatches = frame(
        built_profile,
        f"""SELECT COUNT(*) AS N FROM {spec.table} f JOIN RAW.RESULTS r USING (RACE_ID, DRIVER_ID)
        WHERE f.FINISH_CLASS <> CASE WHEN r.POSITION <= 3 THEN 'podium'
                                     WHEN r.POSITION <= 10 THEN 'points' ELSE 'none' END""",
    ).N[0]
    counts = (
        frame(built_profile, f"SELECT FINISH_CLASS, COUNT(*) AS N FROM {spec.table} GROUP BY 1")
        .set_index("FINISH_CLASS")
        .N
    )
    assert mismatches == 0
    assert set(counts.index) == set(spec.classes)
    assert counts["podium"] == pytest.approx(
        3 * frame(built_profile, f"SELECT COUNT(DISTINCT RACE_ID) AS N FROM {spec.table}").N[0], abs=3
    )


def test_at_least_twelve_features_besides_keys_time_and_target(built_profile: Profile, spec: Spec) -> None:
    with connect(built_profile) as warehouse:
        columns = set(warehouse.columns(spec.table))
    features_only = columns - {*spec.keys, spec.time, spec.target}
    assert len(features_only) >= 12
    assert {
        "GRID",
        "QUALI_POSITION",
        "DRIVER_POINTS_LAST5",
        "CONSTRUCTOR_POINTS_LAST5",
        "CHAMPIONSHIP_POSITION_BEFORE",
    } <= features_only


def test_standings_come_from_the_previous_round(built_profile: Profile, spec: Spec) -> None:
    first_rounds = frame(
        built_profile,
        "SELECT COUNT(*) AS N, COUNT(CHAMPIONSHIP_POSITION_BEFORE) AS KNOWN, "
        "SUM(CHAMPIONSHIP_POINTS_BEFORE) AS PTS "
        f"FROM {spec.table} WHERE ROUND = 1",
    ).iloc[0]
    assert first_rounds.N > 200 and first_rounds.KNOWN == 0 and first_rounds.PTS == 0
    leader_before_final = frame(
        built_profile,
        f"""SELECT f.CHAMPIONSHIP_POINTS_BEFORE + r.POINTS AS AFTER, s.POINTS AS STANDING
        FROM {spec.table} f JOIN RAW.RESULTS r USING (RACE_ID, DRIVER_ID)
        JOIN RAW.DRIVER_STANDINGS s USING (RACE_ID, DRIVER_ID) WHERE f.ROUND = 5""",
    )
    sprint_free = leader_before_final[leader_before_final.AFTER == leader_before_final.STANDING]
    assert len(sprint_free) / len(leader_before_final) > 0.95


def test_later_results_leave_earlier_features_unchanged(
    built_profile: Profile, spec: Spec, tmp_path: Path
) -> None:
    before = known_before_race(built_profile, spec, CUTOFF)
    changed = rebuild_after_changing_results(built_profile, spec, CUTOFF, tmp_path)
    pd.testing.assert_frame_equal(known_before_race(changed, spec, CUTOFF), before)
    later = f"SELECT * FROM {spec.table} WHERE {spec.time} >= ? ORDER BY RACE_ID, DRIVER_ID"
    assert not frame(changed, later, [CUTOFF]).equals(frame(built_profile, later, [CUTOFF])), (
        "the change must reach later rows"
    )


@pytest.mark.parametrize(
    ("leak", "by"),
    [("1 PRECEDING", "CURRENT ROW"), ("1 PRECEDING", "1 FOLLOWING")],
    ids=["window includes the race itself", "window looks ahead"],
)
def test_the_leakage_check_catches_a_leaky_window(
    leak: str, by: str, built_profile: Profile, spec: Spec, tmp_path: Path
) -> None:
    leaky = with_sql(spec, leak, by, tmp_path)
    leaky_profile = duckdb_profile(tmp_path / "leaky.duckdb")
    shutil.copy(built_profile.warehouse.path, leaky_profile.warehouse.path)
    features.main(leaky_profile, leaky)
    changed = rebuild_after_changing_results(leaky_profile, leaky, CUTOFF, tmp_path)
    assert not known_before_race(changed, spec, CUTOFF).equals(known_before_race(leaky_profile, spec, CUTOFF))
