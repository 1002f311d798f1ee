-- =====================================================================================
-- Podium on Snowflake: one-time account setup.
--
-- Run once by an administrator who holds USERADMIN, SYSADMIN and SECURITYADMIN, e.g.
--     snow sql -c <your admin connection> -f setup/snowflake.sql
-- Never ACCOUNTADMIN: each step switches to the narrowest system role that can do it,
-- and Podium itself only ever runs as PODIUM_ROLE. Safe to re-run: every object is
-- created IF NOT EXISTS and grants are idempotent.
--
-- Names match conf/snowflake.yaml (connection_name podium, database PODIUM,
-- role PODIUM_ROLE, warehouse PODIUM_WH) and experiments/f1_podium/spec.yaml (raw tables in
-- schema RAW, features / scores / monitoring / audit tables in schema ML).
--
-- What Podium runs as PODIUM_ROLE, and so what the grants below must allow:
--   podium ingest    CREATE SCHEMA IF NOT EXISTS RAW (only when it is missing), then
--                    CREATE OR REPLACE TABLE RAW.<TABLE> AS SELECT ... from a temporary
--                    table that Snowpark's create_dataframe fills through write_pandas
--                    (a temporary stage + PUT in the session's current schema).
--   podium features  CREATE SCHEMA IF NOT EXISTS ML (only when missing), then CREATE OR REPLACE TABLE
--                    ML.<MODEL> AS SELECT ... per SQL model, reading RAW.* and ML.*.
--   podium score     CREATE SCHEMA IF NOT EXISTS ML (only when missing), CREATE TABLE IF NOT EXISTS
--                    ML.F1_SCORES, MERGE INTO it from a temporary table; with
--                    --engine warehouse also a temporary vectorized (pandas) UDF, whose
--                    code Snowpark uploads to a temporary session stage.
--   podium evaluate  MERGE INTO ML.F1_MONITORING.
--   podium promote   CREATE SCHEMA IF NOT EXISTS ML (only when missing), CREATE TABLE IF NOT EXISTS
--                    ML.MODEL_PROMOTIONS, INSERT into it (Snowpark append); with
--                    registry.snowflake, a model version and alias in Snowflake's registry.
-- =====================================================================================


-- -------------------------------------------------------------------------------------
-- 1. Role and service user (USERADMIN creates and owns roles and users).
-- -------------------------------------------------------------------------------------
USE ROLE USERADMIN;

CREATE ROLE IF NOT EXISTS PODIUM_ROLE
    COMMENT = 'Podium ML pipeline: reads and writes PODIUM.RAW and PODIUM.ML, nothing else';

-- Roll the role up to SYSADMIN, as Snowflake recommends for custom roles: admins can then
-- see and manage the tables PODIUM_ROLE owns, and can USE ROLE PODIUM_ROLE (section 4).
GRANT ROLE PODIUM_ROLE TO ROLE SYSADMIN;

-- The service identity Podium runs as (CI, schedulers). TYPE = SERVICE: no password and
-- no interactive login; it authenticates with a key pair. Only PODIUM_ROLE is active in
-- its sessions (no secondary roles), so it can never act with more than the grants below.
CREATE USER IF NOT EXISTS PODIUM_SVC
    TYPE = SERVICE
    DEFAULT_ROLE = PODIUM_ROLE
    DEFAULT_WAREHOUSE = PODIUM_WH
    DEFAULT_NAMESPACE = PODIUM.ML
    DEFAULT_SECONDARY_ROLES = ()
    COMMENT = 'Podium service user (key-pair auth)';

GRANT ROLE PODIUM_ROLE TO USER PODIUM_SVC;

-- Key-pair authentication. No secret belongs in this file: generate the pair on the
-- machine that runs Podium, keep the private key there (or in your secret store), and
-- paste only the PUBLIC key body (without the BEGIN/END lines) into the statement below.
--     openssl genrsa 2048 | openssl pkcs8 -topk8 -v2 aes256 -inform PEM -out podium_svc_key.p8
--     openssl rsa -in podium_svc_key.p8 -pubout -out podium_svc_key.pub
-- ALTER USER PODIUM_SVC SET RSA_PUBLIC_KEY = '<public key body from podium_svc_key.pub>';
-- Rotate later with RSA_PUBLIC_KEY_2, then UNSET RSA_PUBLIC_KEY.
--
-- Then the `podium` entry of ~/.snowflake/connections.toml (what conf/snowflake.yaml names):
--     [podium]
--     account = "<orgname>-<account_name>"
--     user = "PODIUM_SVC"
--     authenticator = "SNOWFLAKE_JWT"
--     private_key_file = "/path/to/podium_svc_key.p8"
--     # private_key_file_pwd: from the environment (SNOWFLAKE_PRIVATE_KEY_FILE_PWD), not here
--     role = "PODIUM_ROLE"
--     warehouse = "PODIUM_WH"
--     database = "PODIUM"
--     schema = "ML"
-- Keep schema = "ML": Snowpark creates its temporary stage, tables and UDFs in the
-- session's current schema, and PODIUM_ROLE may create objects only in RAW and ML.


-- -------------------------------------------------------------------------------------
-- 2. Warehouse, database and schemas (SYSADMIN creates and owns them).
-- -------------------------------------------------------------------------------------
USE ROLE SYSADMIN;

CREATE WAREHOUSE IF NOT EXISTS PODIUM_WH
    WAREHOUSE_SIZE = XSMALL
    AUTO_SUSPEND = 60
    AUTO_RESUME = TRUE
    INITIALLY_SUSPENDED = TRUE
    STATEMENT_TIMEOUT_IN_SECONDS = 3600
    COMMENT = 'Podium: feature SQL, scoring UDFs, loads';

CREATE DATABASE IF NOT EXISTS PODIUM
    COMMENT = 'Podium ML pipeline';

-- Plain (not MANAGED ACCESS) schemas: the owner of a table (PODIUM_ROLE for the tables
-- Podium creates) may grant on it, e.g. SELECT to a reporting role.
CREATE SCHEMA IF NOT EXISTS PODIUM.RAW
    COMMENT = 'Podium raw inputs: the F1 CSVs, one table per file (podium ingest or COPY)';
CREATE SCHEMA IF NOT EXISTS PODIUM.ML
    COMMENT = 'Podium features, scores, monitoring and promotion audit';


-- -------------------------------------------------------------------------------------
-- 3. Least-privilege grants to PODIUM_ROLE.
-- -------------------------------------------------------------------------------------
-- Object grants: SYSADMIN owns these objects, so it grants on them.

-- Run queries; USAGE is enough for AUTO_RESUME. No OPERATE / MODIFY: Podium never
-- resizes, suspends or alters the warehouse.
GRANT USAGE ON WAREHOUSE PODIUM_WH TO ROLE PODIUM_ROLE;

GRANT USAGE ON DATABASE PODIUM TO ROLE PODIUM_ROLE;

-- No CREATE SCHEMA on the database: Podium looks a schema up before it creates one, and
-- this script makes both RAW and ML.

GRANT USAGE ON SCHEMA PODIUM.RAW TO ROLE PODIUM_ROLE;
GRANT USAGE ON SCHEMA PODIUM.ML TO ROLE PODIUM_ROLE;

-- RAW: ingest replaces each raw table (CREATE TABLE); the COPY route below needs a stage
-- and a file format.
GRANT CREATE TABLE, CREATE STAGE, CREATE FILE FORMAT ON SCHEMA PODIUM.RAW TO ROLE PODIUM_ROLE;

-- ML: the feature / scoring / monitoring / audit tables (CREATE TABLE), Snowpark's
-- temporary session stage for write_pandas uploads and UDF code (CREATE STAGE), and the
-- temporary vectorized UDF of `podium score --engine warehouse` (CREATE FUNCTION).
GRANT CREATE TABLE, CREATE STAGE, CREATE FUNCTION ON SCHEMA PODIUM.ML TO ROLE PODIUM_ROLE;

-- ML: the champion mirrored into Snowflake's model registry (`registry.snowflake` in the spec:
-- `podium promote` logs the native pipeline as a model version and moves its alias).
GRANT CREATE MODEL ON SCHEMA PODIUM.ML TO ROLE PODIUM_ROLE;

-- Temporary tables (Snowpark's staging tables, scoring's PODIUM_SCORES_* table) need no
-- grant of their own: Snowflake has no CREATE TEMPORARY TABLE privilege, and creating a
-- temporary table does not require CREATE TABLE, only USAGE on the database and schema.
-- A temporary table may not take the name of a permanent table the role does not own.

-- Table grants: future grants need MANAGE GRANTS, i.e. SECURITYADMIN.
USE ROLE SECURITYADMIN;

-- Tables PODIUM_ROLE creates are owned by it and need no grant. These cover tables created
-- in RAW and ML by any other role (an admin's COPY, a dbt job, ...), so Podium can still
-- read and maintain them. Future grants also reach tables re-created by CREATE OR REPLACE.
GRANT SELECT, INSERT, UPDATE, DELETE, TRUNCATE ON FUTURE TABLES IN SCHEMA PODIUM.RAW TO ROLE PODIUM_ROLE;
GRANT SELECT, INSERT, UPDATE, DELETE, TRUNCATE ON FUTURE TABLES IN SCHEMA PODIUM.ML TO ROLE PODIUM_ROLE;
-- ... and tables that already exist when this script runs (a no-op on empty schemas).
GRANT SELECT, INSERT, UPDATE, DELETE, TRUNCATE ON ALL TABLES IN SCHEMA PODIUM.RAW TO ROLE PODIUM_ROLE;
GRANT SELECT, INSERT, UPDATE, DELETE, TRUNCATE ON ALL TABLES IN SCHEMA PODIUM.ML TO ROLE PODIUM_ROLE;

-- Ownership. Podium rebuilds tables with CREATE OR REPLACE TABLE (ingest, features,
-- Snowpark's save_as_table "overwrite"), and replacing a table requires OWNERSHIP of it:
-- SELECT/INSERT/... grants are not enough. Tables PODIUM_ROLE creates are owned by it, so
-- reruns work. A RAW or ML table created by another role (e.g. a COPY run as SYSADMIN)
-- makes the next `podium ingest` / `podium features` fail with "Insufficient privileges";
-- hand such tables over, keeping the grants other roles have on them:
--     GRANT OWNERSHIP ON TABLE PODIUM.RAW.RESULTS TO ROLE PODIUM_ROLE COPY CURRENT GRANTS;
--     GRANT OWNERSHIP ON ALL TABLES IN SCHEMA PODIUM.RAW TO ROLE PODIUM_ROLE COPY CURRENT GRANTS;
-- CREATE OR REPLACE drops grants made on the old table (Podium does not use COPY GRANTS):
-- give readers future grants, e.g.
--     GRANT SELECT ON FUTURE TABLES IN SCHEMA PODIUM.ML TO ROLE <REPORTING_ROLE>;
-- That is why section 4 loads as PODIUM_ROLE: the tables it creates are Podium's own.

-- Not granted, on purpose: any account-level privilege, CREATE DATABASE / WAREHOUSE /
-- ROLE / USER, CREATE VIEW / TASK / PIPE / PROCEDURE, anything on other databases, and
-- any system role. Podium never needs ACCOUNTADMIN.
--
-- `podium score --engine warehouse` also needs Anaconda packages (scikit-learn, pandas,
-- numpy, xgboost, skops) in UDFs: an ORGADMIN must have acknowledged the Snowflake
-- third-party terms once (Snowsight: Admin > Billing & Terms > Anaconda). No grant is
-- involved, so it is not part of this script.


-- -------------------------------------------------------------------------------------
-- 4. Loading the raw data with PUT + COPY (optional).
-- -------------------------------------------------------------------------------------
-- Two routes fill PODIUM.RAW; use one:
--   a) `podium ingest --profile snowflake` (from the repo root): reads each experiments/f1_podium/data/*.csv.gz
--      with the types of experiments/f1_podium/data/tables.yaml and replaces RAW.<TABLE> through Snowpark.
--      Nothing in this section is needed for it.
--   b) PUT the files to a stage and COPY them in, below. Runs as PODIUM_ROLE, so the stage,
--      the file format and the tables are owned by Podium's role and `podium ingest` or
--      `podium features` can replace or read them later.
USE ROLE PODIUM_ROLE;
USE WAREHOUSE PODIUM_WH;
USE SCHEMA PODIUM.RAW;

-- The F1 files: gzipped CSV, one header row, comma-separated, a few quoted fields; empty
-- fields and \N are NULL (as in `podium ingest`). Dates are ISO (YYYY-MM-DD).
CREATE FILE FORMAT IF NOT EXISTS PODIUM.RAW.F1_CSV
    TYPE = CSV
    COMPRESSION = GZIP
    FIELD_DELIMITER = ','
    SKIP_HEADER = 1
    FIELD_OPTIONALLY_ENCLOSED_BY = '"'
    NULL_IF = ('', '\\N')
    EMPTY_FIELD_AS_NULL = TRUE
    DATE_FORMAT = 'YYYY-MM-DD'
    ERROR_ON_COLUMN_COUNT_MISMATCH = TRUE
    COMMENT = 'experiments/f1_podium/data/*.csv.gz: header row, empty fields and \\N as NULL';

CREATE STAGE IF NOT EXISTS PODIUM.RAW.F1_STAGE
    FILE_FORMAT = (FORMAT_NAME = 'PODIUM.RAW.F1_CSV')
    COMMENT = 'Internal stage for the F1 raw files (PUT from experiments/f1_podium/data)';

-- Upload from the repo root with a client that can PUT (SnowSQL or `snow sql`; not a
-- Snowsight worksheet). The files are already gzipped, so no recompression:
--     snow sql -c podium -q "PUT file://experiments/f1_podium/data/*.csv.gz @PODIUM.RAW.F1_STAGE AUTO_COMPRESS = FALSE OVERWRITE = TRUE"
-- or, inside SnowSQL:
--     PUT file://experiments/f1_podium/data/*.csv.gz @PODIUM.RAW.F1_STAGE AUTO_COMPRESS = FALSE OVERWRITE = TRUE;
-- Check with: LIST @PODIUM.RAW.F1_STAGE;

-- One table as the example: RAW.RESULTS, columns as `podium ingest` names and types them
-- (experiments/f1_podium/data/tables.yaml, in CSV header order; resultId -> RESULT_ID, INTEGER -> NUMBER(38,0)).
-- The other tables follow the same pattern.
CREATE OR REPLACE TABLE PODIUM.RAW.RESULTS (
    RESULT_ID NUMBER(38, 0),
    RACE_ID NUMBER(38, 0),
    DRIVER_ID NUMBER(38, 0),
    CONSTRUCTOR_ID NUMBER(38, 0),
    NUMBER NUMBER(38, 0),
    GRID NUMBER(38, 0),
    POSITION NUMBER(38, 0),
    POSITION_TEXT VARCHAR,
    POSITION_ORDER NUMBER(38, 0),
    POINTS FLOAT,
    LAPS NUMBER(38, 0),
    TIME VARCHAR,
    MILLISECONDS NUMBER(38, 0),
    FASTEST_LAP NUMBER(38, 0),
    RANK NUMBER(38, 0),
    FASTEST_LAP_TIME VARCHAR,
    FASTEST_LAP_SPEED FLOAT,
    STATUS_ID NUMBER(38, 0)
);

-- Columns load by position: the table's columns are in the CSV's header order. Not
-- MATCH_BY_COLUMN_NAME = CASE_INSENSITIVE: the headers are camelCase (raceId) while Podium's
-- columns are UPPER_SNAKE_CASE (RACE_ID), so a name match would leave those columns NULL.
-- ON_ERROR = ABORT_STATEMENT: a bad row fails the load instead of being skipped.
COPY INTO PODIUM.RAW.RESULTS
    FROM @PODIUM.RAW.F1_STAGE
    FILES = ('results.csv.gz')
    FILE_FORMAT = (FORMAT_NAME = 'PODIUM.RAW.F1_CSV')
    ON_ERROR = ABORT_STATEMENT;

-- Expect 25,840 rows (experiments/f1_podium/data/README.md).
SELECT COUNT(*) AS N_RESULTS FROM PODIUM.RAW.RESULTS;


-- -------------------------------------------------------------------------------------
-- 5. Check what was granted (as SECURITYADMIN).
-- -------------------------------------------------------------------------------------
USE ROLE SECURITYADMIN;
SHOW GRANTS TO ROLE PODIUM_ROLE;
SHOW FUTURE GRANTS IN SCHEMA PODIUM.RAW;
SHOW FUTURE GRANTS IN SCHEMA PODIUM.ML;
SHOW GRANTS TO USER PODIUM_SVC;


-- -------------------------------------------------------------------------------------
-- 6. A read-only role for analysts and `podium sql` (optional).
-- -------------------------------------------------------------------------------------
-- On Snowflake, `podium sql` without --write refuses a statement unless sqlglot parses it
-- as one query with no write anywhere in its tree: that check is Podium's guard. This role
-- is the warehouse's: whatever the SQL text, a session as PODIUM_READER can only read
-- RAW and ML. Give analysts this role, not PODIUM_ROLE, and point their profile's
-- warehouse.role (or the connection's role) at it, e.g. a conf/reader.yaml with
-- role: PODIUM_READER. `podium sql --write` then fails with "Insufficient privileges".
USE ROLE USERADMIN;
CREATE ROLE IF NOT EXISTS PODIUM_READER
    COMMENT = 'Podium read-only: SELECT on PODIUM.RAW and PODIUM.ML, nothing else';
GRANT ROLE PODIUM_READER TO ROLE SYSADMIN;
-- GRANT ROLE PODIUM_READER TO USER <ANALYST>;

USE ROLE SYSADMIN;
GRANT USAGE ON WAREHOUSE PODIUM_WH TO ROLE PODIUM_READER;
GRANT USAGE ON DATABASE PODIUM TO ROLE PODIUM_READER;
GRANT USAGE ON SCHEMA PODIUM.RAW TO ROLE PODIUM_READER;
GRANT USAGE ON SCHEMA PODIUM.ML TO ROLE PODIUM_READER;

-- SELECT only, on the tables there now and on every table created later: Podium rebuilds
-- tables with CREATE OR REPLACE, which drops grants on the old table; future grants reach
-- the new one. Future grants need MANAGE GRANTS, hence SECURITYADMIN.
USE ROLE SECURITYADMIN;
GRANT SELECT ON ALL TABLES IN SCHEMA PODIUM.RAW TO ROLE PODIUM_READER;
GRANT SELECT ON ALL TABLES IN SCHEMA PODIUM.ML TO ROLE PODIUM_READER;
GRANT SELECT ON FUTURE TABLES IN SCHEMA PODIUM.RAW TO ROLE PODIUM_READER;
GRANT SELECT ON FUTURE TABLES IN SCHEMA PODIUM.ML TO ROLE PODIUM_READER;
SHOW GRANTS TO ROLE PODIUM_READER;


-- -------------------------------------------------------------------------------------
-- Teardown (commented out; drops Podium's data):
--     USE ROLE SYSADMIN;    DROP DATABASE IF EXISTS PODIUM; DROP WAREHOUSE IF EXISTS PODIUM_WH;
--     USE ROLE USERADMIN;   DROP USER IF EXISTS PODIUM_SVC; DROP ROLE IF EXISTS PODIUM_ROLE;
--                           DROP ROLE IF EXISTS PODIUM_READER;
-- -------------------------------------------------------------------------------------
