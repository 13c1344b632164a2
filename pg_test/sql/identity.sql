-- The transaction identity: set only by a successful apikey.authenticate, cleared at commit and
-- rollback, taken back by a rolled-back subtransaction, and impossible to forge from SQL.
\set VERBOSITY terse
SET apikey.creation_limit = 0;
SELECT id AS k_id, api_key AS k FROM apikey.create('ida', 'identity key', scopes => '{surveys:read,metrics:*}', resource => 'agency-1') \gset
SELECT id AS u_id, api_key AS u FROM apikey.create('ulf', 'unscoped key') \gset

-- Nobody authenticated: everything is NULL / false.
SELECT apikey.current_owner(), apikey.current_key_id(), apikey.current_scopes(), apikey.current_resource(), apikey.current_app();
SELECT apikey.has_scope('surveys:read') AS has_scope, apikey.in_resource('agency-1') AS in_resource;
\set VERBOSITY sqlstate
SELECT apikey.require_scope('surveys:read');
\set VERBOSITY terse
SELECT apikey.require_scope('surveys:read');

-- Within a transaction: the key's owner, scopes and resource; checks that name what is missing.
BEGIN;
SELECT apikey.authenticate(:'k');
SELECT apikey.current_owner(), apikey.current_key_id() = :k_id AS key_id_ok, apikey.current_scopes(), apikey.current_resource();
SELECT s AS scope, apikey.has_scope(s) FROM unnest(ARRAY['surveys:read', 'surveys:write', 'metrics:responses', 'metrics:*', 'x']) s;
SELECT r AS resource, apikey.in_resource(r) FROM unnest(ARRAY['agency-1', 'agency-2']) r;
SELECT apikey.require_scope('surveys:read') AND apikey.require_resource('agency-1') AS allowed;
\set VERBOSITY sqlstate
SAVEPOINT s;
SELECT apikey.require_scope('surveys:write');
ROLLBACK TO s;
\set VERBOSITY terse
SELECT apikey.require_scope('surveys:write');
ROLLBACK;
BEGIN;
SELECT apikey.authenticate(:'k');
SELECT apikey.require_resource('agency-2');
ROLLBACK;
-- An unscoped key holds every scope and reaches every resource.
BEGIN;
SELECT apikey.authenticate(:'u');
SELECT apikey.has_scope('anything:at:all') AND apikey.in_resource('anywhere') AS unscoped_reaches_all;
COMMIT;
-- Cleared at COMMIT and at ROLLBACK.
SELECT apikey.current_owner() AS after_commit;
BEGIN; SELECT apikey.authenticate(:'u'); ROLLBACK;
SELECT apikey.current_owner() AS after_rollback;
-- Cleared on error.
BEGIN; SELECT apikey.authenticate(:'u'); SELECT 1/0; ROLLBACK;
SELECT apikey.current_owner() AS after_error;

-- Subtransactions: an authenticate that rolls back takes its identity with it; one that is
-- released stays; the outer identity survives an inner failed authenticate.
BEGIN;
SAVEPOINT a;
SELECT apikey.authenticate(:'k');
ROLLBACK TO a;
SELECT apikey.current_owner() AS after_rollback_to_savepoint;
SAVEPOINT b;
SELECT apikey.authenticate(:'k');
RELEASE b;
SELECT apikey.current_owner() AS after_release;
SAVEPOINT c;
SELECT apikey.authenticate(:'u');
SELECT apikey.current_owner() AS inner_identity;
ROLLBACK TO c;
SELECT apikey.current_owner() AS outer_identity_restored;
COMMIT;
DO $$
BEGIN
    BEGIN
        PERFORM apikey.authenticate((SELECT api_key FROM apikey.create('eve', 'in a block')));
        RAISE EXCEPTION 'undo';
    EXCEPTION WHEN raise_exception THEN NULL;
    END;
    RAISE NOTICE 'owner after the failed block: %', coalesce(apikey.current_owner(), '(none)');
END $$;

-- Attacks: no setting, placeholder or GUC carries identity.
CREATE ROLE regress_forger LOGIN;
CREATE SCHEMA regress_shadow AUTHORIZATION regress_forger;
SET ROLE regress_forger;
SELECT set_config('apikey.owner', 'ida', false);
SELECT set_config('apikey.current_owner', 'ida', true);
SET apikey.key_id = 1;
SELECT set_config('request.jwt.claims', '{"sub": "ida", "role": "ida"}', true);
SELECT set_config('pg_apikey.owner', 'ida', false);
SELECT apikey.current_owner() AS forged_owner, apikey.has_scope('surveys:read') AS forged_scope;
-- A function earlier on search_path can shadow only unqualified calls; apikey.* is unaffected.
CREATE FUNCTION regress_shadow.current_owner() RETURNS text LANGUAGE sql AS $$ SELECT 'ida' $$;
CREATE FUNCTION regress_shadow.has_scope(text) RETURNS boolean LANGUAGE sql AS $$ SELECT true $$;
SET search_path = regress_shadow, apikey, public;
SELECT current_owner() AS unqualified_is_shadowed, apikey.current_owner() AS qualified;
RESET search_path;
-- Internal functions cannot be called to set identity.
SELECT apikey.invalidate_caches();
RESET ROLE;
DROP SCHEMA regress_shadow CASCADE;
-- Every function of the extension, for review: only authenticate sets the identity.
SELECT p.proname, pg_get_function_identity_arguments(p.oid) AS args, p.provolatile, p.proparallel, p.prosecdef
  FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
 WHERE n.nspname = 'apikey' ORDER BY 1, 2;

-- The readers work inside SECURITY DEFINER callers (identity does not depend on current_user)
-- and (SELECT apikey.current_owner()) becomes an InitPlan, evaluated once per query.
CREATE FUNCTION regress_definer_owner() RETURNS text LANGUAGE sql SECURITY DEFINER SET search_path = pg_catalog
    AS $$ SELECT apikey.current_owner() $$;
BEGIN;
SELECT apikey.authenticate(:'u');
SET LOCAL ROLE regress_forger;
SELECT regress_definer_owner() AS owner_in_definer, current_user;
COMMIT;
EXPLAIN (COSTS OFF) SELECT * FROM apikey.formats WHERE name = (SELECT apikey.current_owner());
DROP FUNCTION regress_definer_owner();
DROP ROLE regress_forger;
