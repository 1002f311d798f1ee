-- ML.F1_PACE_FORM: one row per (RACE_ID, DRIVER_ID), all history since 1950.
-- Qualifying pace before the race, from earlier races only (frames end at 1 PRECEDING): a
-- driver starting out of position (a grid penalty, a crash in Q1) still has the car's pace.
--   DRIVER_QUALI_GAP_LAST5       the driver's mean gap to pole (%) over the previous 5 races
--   CONSTRUCTOR_QUALI_GAP_LAST5  the constructor's best car's mean gap over its previous 5 races
--   CONSTRUCTOR_PACE_RANK        that constructor figure ranked within this race (1 = fastest)
--   GRID_MINUS_PACE_RANK         grid slot minus the pace rank (positive: starts behind its pace)
-- Gaps are capped at 10% so one lap without a time (a crash, rain) does not swamp the mean.
WITH entries AS (
    SELECT
        dr.RACE_ID,
        dr.DRIVER_ID,
        dr.CONSTRUCTOR_ID,
        dr.RACE_DATE,
        dr.START_SLOT AS GRID,
        LEAST(qp.QUALI_GAP_PCT, 10) AS GAP
    FROM ML.F1_DRIVER_RACES AS dr
    LEFT JOIN ML.F1_QUALIFYING_PACE AS qp
        ON qp.RACE_ID = dr.RACE_ID
        AND qp.DRIVER_ID = dr.DRIVER_ID
),

constructor_pace AS (
    SELECT
        e.RACE_ID,
        e.CONSTRUCTOR_ID,
        AVG(MIN(e.GAP)) OVER (
            PARTITION BY e.CONSTRUCTOR_ID
            ORDER BY MIN(e.RACE_DATE), e.RACE_ID
            ROWS BETWEEN 5 PRECEDING AND 1 PRECEDING
        ) AS GAP_LAST5
    FROM entries AS e
    GROUP BY e.RACE_ID, e.CONSTRUCTOR_ID
),

driver_pace AS (
    SELECT
        e.RACE_ID,
        e.DRIVER_ID,
        e.GRID,
        cp.GAP_LAST5 AS CONSTRUCTOR_GAP_LAST5,
        AVG(e.GAP) OVER (
            PARTITION BY e.DRIVER_ID
            ORDER BY e.RACE_DATE, e.RACE_ID
            ROWS BETWEEN 5 PRECEDING AND 1 PRECEDING
        ) AS DRIVER_GAP_LAST5
    FROM entries AS e
    LEFT JOIN constructor_pace AS cp
        ON cp.RACE_ID = e.RACE_ID
        AND cp.CONSTRUCTOR_ID = e.CONSTRUCTOR_ID
),

ranked AS (
    SELECT
        d.RACE_ID,
        d.DRIVER_ID,
        d.GRID,
        d.DRIVER_GAP_LAST5,
        d.CONSTRUCTOR_GAP_LAST5,
        CASE WHEN d.CONSTRUCTOR_GAP_LAST5 IS NOT NULL THEN RANK() OVER (
            PARTITION BY d.RACE_ID
            ORDER BY d.CONSTRUCTOR_GAP_LAST5 NULLS LAST
        ) END AS PACE_RANK
    FROM driver_pace AS d
)

SELECT
    r.RACE_ID,
    r.DRIVER_ID,
    ROUND(r.DRIVER_GAP_LAST5, 3) AS DRIVER_QUALI_GAP_LAST5,
    ROUND(r.CONSTRUCTOR_GAP_LAST5, 3) AS CONSTRUCTOR_QUALI_GAP_LAST5,
    r.PACE_RANK AS CONSTRUCTOR_PACE_RANK,
    r.GRID - r.PACE_RANK AS GRID_MINUS_PACE_RANK
FROM ranked AS r
