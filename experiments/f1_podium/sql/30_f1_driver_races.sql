-- ML.F1_DRIVER_RACES: one row per (RACE_ID, DRIVER_ID), all history since 1950.
-- Entries of a driver in one race are combined: points summed, best classified position
-- and best finishing order kept, DNF only if no entry finished. The car (constructor, grid)
-- is the one of the best-placed entry. FINISH_CLASS is this race's label. GRID 0 is a pit-lane
-- start; START_SLOT is the grid slot with that case NULL, the form the other models compare.
WITH ranked_entries AS (
    SELECT
        e.RACE_ID,
        e.DRIVER_ID,
        e.CONSTRUCTOR_ID,
        e.GRID,
        ROW_NUMBER() OVER (
            PARTITION BY e.RACE_ID, e.DRIVER_ID
            ORDER BY e.FINISH_ORDER, e.RESULT_ID
        ) AS ENTRY_RANK
    FROM ML.F1_RESULT_ENTRIES AS e
),

main_entry AS (
    SELECT
        re.RACE_ID,
        re.DRIVER_ID,
        re.CONSTRUCTOR_ID,
        re.GRID
    FROM ranked_entries AS re
    WHERE re.ENTRY_RANK = 1
),

race_totals AS (
    SELECT
        e.RACE_ID,
        e.DRIVER_ID,
        MIN(e.RACE_DATE) AS RACE_DATE,
        MIN(e.SEASON) AS SEASON,
        MIN(e.ROUND) AS ROUND,
        MIN(e.CIRCUIT_ID) AS CIRCUIT_ID,
        SUM(e.POINTS) AS POINTS,
        MIN(e.CLASSIFIED_POSITION) AS BEST_CLASSIFIED_POSITION,
        MIN(e.FINISH_ORDER) AS FINISH_ORDER,
        MIN(e.IS_DNF) AS IS_DNF,
        COUNT(*) AS ENTRIES
    FROM ML.F1_RESULT_ENTRIES AS e
    GROUP BY e.RACE_ID, e.DRIVER_ID
)

SELECT
    t.RACE_ID,
    t.DRIVER_ID,
    t.RACE_DATE,
    t.SEASON,
    t.ROUND,
    t.CIRCUIT_ID,
    m.CONSTRUCTOR_ID,
    m.GRID,
    CASE WHEN m.GRID = 0 THEN NULL ELSE m.GRID END AS START_SLOT,
    t.POINTS,
    t.BEST_CLASSIFIED_POSITION,
    t.FINISH_ORDER,
    t.IS_DNF,
    t.ENTRIES,
    CASE WHEN t.BEST_CLASSIFIED_POSITION BETWEEN 1 AND 3 THEN 1 ELSE 0 END AS IS_PODIUM,
    CASE
        WHEN t.BEST_CLASSIFIED_POSITION BETWEEN 1 AND 3 THEN 'podium'
        WHEN t.BEST_CLASSIFIED_POSITION BETWEEN 4 AND 10 THEN 'points'
        ELSE 'none'
    END AS FINISH_CLASS
FROM race_totals AS t
INNER JOIN main_entry AS m
    ON m.RACE_ID = t.RACE_ID
    AND m.DRIVER_ID = t.DRIVER_ID
