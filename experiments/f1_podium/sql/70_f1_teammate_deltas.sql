-- ML.F1_TEAMMATE_DELTAS: one row per (RACE_ID, DRIVER_ID) whose car had a teammate in the race.
-- The driver against the other drivers of the same constructor in the same race, from
-- pre-race facts (grid, qualifying pace) and point-in-time form only:
--   TEAMMATE_GRID_DELTA        grid slot minus the teammates' average grid slot (negative: ahead)
--   TEAMMATE_QUALI_GAP_DELTA   qualifying gap to pole (%) minus the teammates' average
--   TEAMMATE_POINTS_LAST5_DELTA  points over the previous 5 races minus the teammates' average
WITH entries AS (
    SELECT
        dr.RACE_ID,
        dr.DRIVER_ID,
        dr.CONSTRUCTOR_ID,
        dr.START_SLOT AS GRID,
        qp.QUALI_GAP_PCT,
        df.DRIVER_POINTS_LAST5
    FROM ML.F1_DRIVER_RACES AS dr
    INNER JOIN ML.F1_DRIVER_FORM AS df
        ON df.RACE_ID = dr.RACE_ID
        AND df.DRIVER_ID = dr.DRIVER_ID
    LEFT JOIN ML.F1_QUALIFYING_PACE AS qp
        ON qp.RACE_ID = dr.RACE_ID
        AND qp.DRIVER_ID = dr.DRIVER_ID
),

teammates AS (
    SELECT
        e.RACE_ID,
        e.DRIVER_ID,
        AVG(m.GRID) AS GRID,
        AVG(m.QUALI_GAP_PCT) AS QUALI_GAP_PCT,
        AVG(m.DRIVER_POINTS_LAST5) AS DRIVER_POINTS_LAST5
    FROM entries AS e
    INNER JOIN entries AS m
        ON m.RACE_ID = e.RACE_ID
        AND m.CONSTRUCTOR_ID = e.CONSTRUCTOR_ID
        AND m.DRIVER_ID <> e.DRIVER_ID
    GROUP BY e.RACE_ID, e.DRIVER_ID
)

SELECT
    e.RACE_ID,
    e.DRIVER_ID,
    e.GRID - t.GRID AS TEAMMATE_GRID_DELTA,
    ROUND(e.QUALI_GAP_PCT - t.QUALI_GAP_PCT, 3) AS TEAMMATE_QUALI_GAP_DELTA,
    ROUND(e.DRIVER_POINTS_LAST5 - t.DRIVER_POINTS_LAST5, 2) AS TEAMMATE_POINTS_LAST5_DELTA
FROM entries AS e
INNER JOIN teammates AS t
    ON t.RACE_ID = e.RACE_ID
    AND t.DRIVER_ID = e.DRIVER_ID
