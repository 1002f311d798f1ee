-- ML.F1_CONSTRUCTOR_FORM: one row per (RACE_ID, CONSTRUCTOR_ID), all history since 1950.
-- Point-in-time form of the constructor before the race, from its previous races only
-- (window frames end at 1 PRECEDING):
--   CONSTRUCTOR_POINTS_LAST5     points of all its cars, summed over its previous 5 races (0 if none)
--   CONSTRUCTOR_DNF_RATE_LAST10  DNF entries / entries over its previous 10 races (NULL if none)
--   CONSTRUCTOR_SEASON_POINTS_PER_RACE  its points per race this season, before this race (NULL in round 1)
--   CONSTRUCTOR_SEASON_BEST_FINISH  its best car's average finishing order this season, before this race
WITH constructor_races AS (
    SELECT
        e.RACE_ID,
        e.CONSTRUCTOR_ID,
        MIN(e.RACE_DATE) AS RACE_DATE,
        MIN(e.SEASON) AS SEASON,
        SUM(e.POINTS) AS POINTS,
        MIN(e.FINISH_ORDER) AS BEST_FINISH,
        SUM(e.IS_DNF) AS DNF_ENTRIES,
        COUNT(*) AS ENTRIES
    FROM ML.F1_RESULT_ENTRIES AS e
    GROUP BY e.RACE_ID, e.CONSTRUCTOR_ID
),

previous_races AS (
    SELECT
        cr.RACE_ID,
        cr.CONSTRUCTOR_ID,
        cr.RACE_DATE,
        SUM(cr.POINTS) OVER (
            PARTITION BY cr.CONSTRUCTOR_ID
            ORDER BY cr.RACE_DATE, cr.RACE_ID
            ROWS BETWEEN 5 PRECEDING AND 1 PRECEDING
        ) AS POINTS_LAST5,
        SUM(cr.DNF_ENTRIES) OVER (
            PARTITION BY cr.CONSTRUCTOR_ID
            ORDER BY cr.RACE_DATE, cr.RACE_ID
            ROWS BETWEEN 10 PRECEDING AND 1 PRECEDING
        ) AS DNF_ENTRIES_LAST10,
        SUM(cr.ENTRIES) OVER (
            PARTITION BY cr.CONSTRUCTOR_ID
            ORDER BY cr.RACE_DATE, cr.RACE_ID
            ROWS BETWEEN 10 PRECEDING AND 1 PRECEDING
        ) AS ENTRIES_LAST10,
        AVG(cr.POINTS) OVER (
            PARTITION BY cr.CONSTRUCTOR_ID, cr.SEASON
            ORDER BY cr.RACE_DATE, cr.RACE_ID
            ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING
        ) AS SEASON_POINTS_PER_RACE,
        AVG(cr.BEST_FINISH) OVER (
            PARTITION BY cr.CONSTRUCTOR_ID, cr.SEASON
            ORDER BY cr.RACE_DATE, cr.RACE_ID
            ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING
        ) AS SEASON_BEST_FINISH
    FROM constructor_races AS cr
)

SELECT
    p.RACE_ID,
    p.CONSTRUCTOR_ID,
    p.RACE_DATE,
    ROUND(COALESCE(p.POINTS_LAST5, 0), 2) AS CONSTRUCTOR_POINTS_LAST5,
    p.DNF_ENTRIES_LAST10 / NULLIF(p.ENTRIES_LAST10, 0) AS CONSTRUCTOR_DNF_RATE_LAST10,
    ROUND(p.SEASON_POINTS_PER_RACE, 3) AS CONSTRUCTOR_SEASON_POINTS_PER_RACE,
    ROUND(p.SEASON_BEST_FINISH, 3) AS CONSTRUCTOR_SEASON_BEST_FINISH
FROM previous_races AS p
