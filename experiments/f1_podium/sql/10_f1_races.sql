-- ML.F1_RACES: the race calendar, one row per race (all seasons since 1950).
-- Adds the circuit reference and PREV_ROUND_RACE_ID, the race of the previous round of
-- the same season (NULL for round 1), used to read championship standings before a race.
WITH races AS (
    SELECT
        r.RACE_ID,
        r.YEAR AS SEASON,
        r.ROUND AS ROUND,
        r.DATE AS RACE_DATE,
        r.CIRCUIT_ID,
        c.CIRCUIT_REF
    FROM RAW.RACES AS r
    LEFT JOIN RAW.CIRCUITS AS c
        ON c.CIRCUIT_ID = r.CIRCUIT_ID
)

SELECT
    races.RACE_ID,
    races.SEASON,
    races.ROUND,
    races.RACE_DATE,
    races.CIRCUIT_ID,
    races.CIRCUIT_REF,
    LAG(races.RACE_ID) OVER (
        PARTITION BY races.SEASON
        ORDER BY races.ROUND, races.RACE_ID
    ) AS PREV_ROUND_RACE_ID
FROM races
