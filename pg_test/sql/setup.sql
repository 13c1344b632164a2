-- Roles used by every test file: an administrator, two ordinary key owners' roles and an
-- application role. None is superuser.
\set VERBOSITY terse
CREATE EXTENSION pg_apikey;
DO $$ BEGIN
  CREATE ROLE regress_admin LOGIN;
  CREATE ROLE regress_app LOGIN;
  CREATE ROLE regress_attacker LOGIN;
EXCEPTION WHEN duplicate_object THEN NULL; END $$;
SELECT apikey.grant_admin('regress_admin');
SELECT extname, extversion, extrelocatable FROM pg_extension WHERE extname = 'pg_apikey';
-- The control file fixes the schema.
SELECT n.nspname FROM pg_extension e JOIN pg_namespace n ON n.oid = e.extnamespace WHERE e.extname = 'pg_apikey';
-- Every object of the extension carries a comment for \dx+ readers? Tables, view and type do.
SELECT c.relname, obj_description(c.oid, 'pg_class') IS NOT NULL AS has_comment
  FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
 WHERE n.nspname = 'apikey' AND c.relkind IN ('r', 'v') ORDER BY 1;
