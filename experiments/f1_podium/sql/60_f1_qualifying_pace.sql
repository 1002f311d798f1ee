-- ML.F1_QUALIFYING_PACE: one row per (RACE_ID, DRIVER_ID) that set a qualifying lap time.
-- Qualifying runs before the race, so these are pre-race facts of the race itself.
--   QUALI_BEST_SECONDS  the driver's fastest lap over Q1, Q2 and Q3 ('1:26.572' -> 86.572)
--   QUALI_GAP_PCT       how far that lap is behind the race's fastest qualifying lap, in percent
WITH session_laps AS (
    SELECT q.RACE_ID, q.DRIVER_ID, q.Q1 AS LAP_TIME FROM RAW.QUALIFYING AS q
    UNION ALL
    SELECT q.RACE_ID, q.DRIVER_ID, q.Q2 AS LAP_TIME FROM RAW.QUALIFYING AS q
    UNION ALL
    SELECT q.RACE_ID, q.DRIVER_ID, q.Q3 AS LAP_TIME FROM RAW.QUALIFYING AS q
),

lap_seconds AS (
    SELECT
        l.RACE_ID,
        l.DRIVER_ID,
        TRY_CAST(SPLIT_PART(l.LAP_TIME, ':', 1) AS DOUBLE) * 60
        + TRY_CAST(SPLIT_PART(l.LAP_TIME, ':', 2) AS DOUBLE) AS SECONDS
    FROM session_laps AS l
    WHERE l.LAP_TIME LIKE '%:%'
),

best_laps AS (
    SELECT
        s.RACE_ID,
        s.DRIVER_ID,
        MIN(s.SECONDS) AS BEST_SECONDS
    FROM lap_seconds AS s
    WHERE s.SECONDS > 0
    GROUP BY s.RACE_ID, s.DRIVER_ID
)

SELECT
    b.RACE_ID,
    b.DRIVER_ID,
    b.BEST_SECONDS AS QUALI_BEST_SECONDS,
    ROUND(100 * (b.BEST_SECONDS / MIN(b.BEST_SECONDS) OVER (PARTITION BY b.RACE_ID) - 1), 3) AS QUALI_GAP_PCT
FROM best_laps AS b
