-- Two roles for a production database. Run once per database as its owner or an admin
-- (safe to run again), then give each role a password or your platform's IAM login:
--   psql "$ADMIN_URL" -v ON_ERROR_STOP=1 -f deploy/sql/roles.sql
--   psql "$ADMIN_URL" -c "ALTER ROLE lattice_writer PASSWORD '...'"
--
-- lattice_writer  the projectors and `lattice migrate`/`replay`: owns schemas `projections`
--                 (read models) and `lattice` (positions, migrations, dead letters), and
--                 may create the shadow schemas a replay builds before it swaps them in.
-- lattice_analyst analysts and downstream services: reads `projections`, nothing else,
--                 in read-only transactions.

DO $$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'lattice_writer') THEN
        CREATE ROLE lattice_writer LOGIN;
    END IF;
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'lattice_analyst') THEN
        CREATE ROLE lattice_analyst LOGIN;
    END IF;
    -- GRANT ... ON DATABASE needs the name; this script works in whichever database it runs.
    EXECUTE format('GRANT CONNECT, CREATE, TEMPORARY ON DATABASE %I TO lattice_writer',
                   current_database());
    EXECUTE format('GRANT CONNECT ON DATABASE %I TO lattice_analyst', current_database());
    -- A managed service's admin (RDS, Cloud SQL, Azure: CREATEROLE, not a superuser) may
    -- hand a schema to a role only as a member of it, and since PostgreSQL 16 creating a
    -- role no longer makes its creator one.
    IF NOT (SELECT rolsuper FROM pg_roles WHERE rolname = current_user) THEN
        EXECUTE format('GRANT lattice_writer TO %I', current_user);
    END IF;
END
$$;

CREATE SCHEMA IF NOT EXISTS projections;
CREATE SCHEMA IF NOT EXISTS lattice;
ALTER SCHEMA projections OWNER TO lattice_writer;
ALTER SCHEMA lattice OWNER TO lattice_writer;

-- Nobody else creates objects where readers look.
REVOKE CREATE ON SCHEMA projections FROM PUBLIC;
REVOKE ALL ON SCHEMA lattice FROM PUBLIC;

GRANT USAGE ON SCHEMA projections TO lattice_analyst;
GRANT SELECT ON ALL TABLES IN SCHEMA projections TO lattice_analyst;
-- Tables and views the writer creates later (new migrations, and the tables a replay
-- builds in a shadow schema and then moves into `projections`) are readable too. This is
-- not limited to one schema on purpose: a shadow schema's tables carry the grant with them.
-- Analysts still see only `projections`, the one schema they have USAGE on.
ALTER DEFAULT PRIVILEGES FOR ROLE lattice_writer GRANT SELECT ON TABLES TO lattice_analyst;

ALTER ROLE lattice_analyst SET default_transaction_read_only = on;
ALTER ROLE lattice_analyst SET search_path = projections;
ALTER ROLE lattice_analyst SET statement_timeout = '5min';
