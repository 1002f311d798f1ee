-- ML.F1_RESULT_ENTRIES: one row per race result entry (RAW.RESULTS row), all history.
-- Early seasons can have several entries per (race, driver) because of shared cars.
-- IS_DNF = 1 when the status is neither 'Finished' nor a lapped finish ('+1 Lap', '+2 Laps', ...).
SELECT
    res.RESULT_ID,
    res.RACE_ID,
    res.DRIVER_ID,
    res.CONSTRUCTOR_ID,
    ra.RACE_DATE,
    ra.SEASON,
    ra.ROUND,
    ra.CIRCUIT_ID,
    res.GRID,
    res.POSITION AS CLASSIFIED_POSITION,
    res.POSITION_ORDER AS FINISH_ORDER,
    CAST(res.POINTS AS DOUBLE) AS POINTS,
    st.STATUS,
    CASE
        WHEN st.STATUS = 'Finished' THEN 0
        WHEN st.STATUS LIKE '+% Lap' OR st.STATUS LIKE '+% Laps' THEN 0
        ELSE 1
    END AS IS_DNF
FROM RAW.RESULTS AS res
INNER JOIN ML.F1_RACES AS ra
    ON ra.RACE_ID = res.RACE_ID
LEFT JOIN RAW.STATUS AS st
    ON st.STATUS_ID = res.STATUS_ID
