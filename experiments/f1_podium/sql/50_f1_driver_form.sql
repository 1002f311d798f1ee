-- ML.F1_DRIVER_FORM: one row per (RACE_ID, DRIVER_ID), all history since 1950.
-- Point-in-time form and experience of the driver before the race, from the driver's
-- previous races only (window frames end at 1 PRECEDING, ordered by race date then RACE_ID).
-- Counts and sums are 0 without history, averages and the previous finish are NULL.
WITH previous_races AS (
    SELECT
        dr.RACE_ID,
        dr.DRIVER_ID,
        dr.RACE_DATE,
        SUM(dr.POINTS) OVER (
            PARTITION BY dr.DRIVER_ID
            ORDER BY dr.RACE_DATE, dr.RACE_ID
            ROWS BETWEEN 5 PRECEDING AND 1 PRECEDING
        ) AS POINTS_LAST5,
        AVG(dr.FINISH_ORDER) OVER (
            PARTITION BY dr.DRIVER_ID
            ORDER BY dr.RACE_DATE, dr.RACE_ID
            ROWS BETWEEN 5 PRECEDING AND 1 PRECEDING
        ) AS AVG_FINISH_LAST5,
        AVG(dr.IS_DNF) OVER (
            PARTITION BY dr.DRIVER_ID
            ORDER BY dr.RACE_DATE, dr.RACE_ID
            ROWS BETWEEN 10 PRECEDING AND 1 PRECEDING
        ) AS DNF_RATE_LAST10,
        SUM(dr.IS_PODIUM) OVER (
            PARTITION BY dr.DRIVER_ID
            ORDER BY dr.RACE_DATE, dr.RACE_ID
            ROWS BETWEEN 10 PRECEDING AND 1 PRECEDING
        ) AS PODIUMS_LAST10,
        LAG(dr.FINISH_ORDER) OVER (
            PARTITION BY dr.DRIVER_ID
            ORDER BY dr.RACE_DATE, dr.RACE_ID
        ) AS PREV_FINISH,
        COUNT(*) OVER (
            PARTITION BY dr.DRIVER_ID
            ORDER BY dr.RACE_DATE, dr.RACE_ID
            ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING
        ) AS STARTS,
        COUNT(*) OVER (
            PARTITION BY dr.DRIVER_ID, dr.CIRCUIT_ID
            ORDER BY dr.RACE_DATE, dr.RACE_ID
            ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING
        ) AS CIRCUIT_STARTS,
        AVG(dr.FINISH_ORDER) OVER (
            PARTITION BY dr.DRIVER_ID, dr.CIRCUIT_ID
            ORDER BY dr.RACE_DATE, dr.RACE_ID
            ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING
        ) AS CIRCUIT_AVG_FINISH
    FROM ML.F1_DRIVER_RACES AS dr
)

SELECT
    p.RACE_ID,
    p.DRIVER_ID,
    p.RACE_DATE,
    ROUND(COALESCE(p.POINTS_LAST5, 0), 2) AS DRIVER_POINTS_LAST5,
    p.AVG_FINISH_LAST5 AS DRIVER_AVG_FINISH_LAST5,
    p.DNF_RATE_LAST10 AS DRIVER_DNF_RATE_LAST10,
    CAST(COALESCE(p.PODIUMS_LAST10, 0) AS INTEGER) AS DRIVER_PODIUMS_LAST10,
    p.PREV_FINISH AS DRIVER_PREV_FINISH,
    COALESCE(p.STARTS, 0) AS DRIVER_STARTS,
    COALESCE(p.CIRCUIT_STARTS, 0) AS DRIVER_CIRCUIT_STARTS,
    p.CIRCUIT_AVG_FINISH AS DRIVER_CIRCUIT_AVG_FINISH
FROM previous_races AS p
