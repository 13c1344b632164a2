-- Who may do what. Ordinary roles cannot read the keys table or its digests; they manage only
-- the keys of the owner they authenticated as; administrators (apikey.grant_admin) manage every key.
\set VERBOSITY terse
SET apikey.creation_limit = 0;
SELECT id AS a_id, api_key AS a_key FROM apikey.create('alice', 'alice key') \gset
SELECT id AS b_id, api_key AS b_key FROM apikey.create('bob', 'bob key') \gset
SELECT id AS s_id, api_key AS s_key FROM apikey.create('alice', 'scoped', scopes => '{surveys:read}', resource => 'agency-1') \gset

SET ROLE regress_attacker;
SELECT * FROM apikey.keys;
SELECT digest FROM apikey.keys;
SELECT * FROM apikey.audit_log;
SELECT * FROM apikey.rate_limits;
SELECT count(*) AS visible_without_a_key FROM apikey.key_list;
SELECT * FROM apikey.create('bob', 'mine now');
SELECT apikey.revoke(:b_id);
SELECT apikey.delete(:b_id);
SELECT * FROM apikey.rotate(:b_id);
-- Holding a key is what verify asks for; any role may verify.
SELECT owner FROM apikey.verify(:'a_key');

-- Authenticated as alice: alice's keys only, and never more rights than the key holds.
-- (ON_ERROR_ROLLBACK runs each statement in a savepoint, so one refusal does not end the test.)
\set ON_ERROR_ROLLBACK on
BEGIN;
SELECT apikey.authenticate(:'a_key') AS owner;
SELECT name FROM apikey.key_list ORDER BY id;
SELECT name FROM apikey.verify((SELECT api_key FROM apikey.create('alice', 'self-service')));
SELECT apikey.revoke(:b_id);
SELECT * FROM apikey.create('bob', 'not mine');
ROLLBACK;
BEGIN;
SELECT apikey.authenticate(:'s_key') AS owner;
-- What the key does not say is inherited from the key that creates it.
SELECT id AS inh_id FROM apikey.create('alice', 'inherits') \gset
SELECT scopes, resource FROM apikey.key_list WHERE id = :inh_id;
SELECT * FROM apikey.create('alice', 'wider', scopes => '{surveys:*}', resource => 'agency-1');
SELECT * FROM apikey.create('alice', 'elsewhere', scopes => '{surveys:read}', resource => 'agency-2');
SELECT count(*) AS narrower_ok FROM apikey.create('alice', 'narrow', scopes => '{surveys:read}', resource => 'agency-1');
SELECT * FROM apikey.create('alice', 'app', scopes => '{surveys:read}', resource => 'agency-1', kind => 'app');
ROLLBACK;
\set ON_ERROR_ROLLBACK off
SELECT apikey.current_owner() AS owner_after_rollback;
RESET ROLE;

-- Administrators manage every key; the audit log names the real caller, not the definer.
SET ROLE regress_admin;
SELECT count(*) AS admin_sees FROM apikey.key_list WHERE owner IN ('alice', 'bob');
SELECT apikey.revoke(:b_id) AS revoked_by_admin;
SELECT actor, session_actor FROM apikey.audit_log WHERE key_id = :b_id AND action = 'revoke';
RESET ROLE;

-- Catalog hygiene: no SECURITY DEFINER function with a mutable search_path, nothing LEAKPROOF.
SELECT count(*) AS definer_without_search_path
  FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
 WHERE n.nspname = 'apikey' AND p.prosecdef
   AND NOT coalesce(array_to_string(p.proconfig, ',') LIKE '%search_path=%', false);
SELECT count(*) AS leakproof FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
 WHERE n.nspname = 'apikey' AND p.proleakproof;
SELECT has_table_privilege('regress_attacker', 'apikey.keys', 'SELECT') AS attacker_reads_keys,
       has_table_privilege('regress_admin', 'apikey.keys', 'SELECT') AS admin_reads_keys,
       has_table_privilege('regress_admin', 'apikey.audit_log', 'SELECT') AS admin_reads_audit;

-- A hostile search_path: shadow tables in pg_temp and an operator that makes every bytea equal.
CREATE SCHEMA regress_evil AUTHORIZATION regress_attacker;
SET ROLE regress_attacker;
CREATE FUNCTION regress_evil.always(bytea, bytea) RETURNS boolean LANGUAGE sql AS 'SELECT true';
CREATE OPERATOR regress_evil.= (LEFTARG = bytea, RIGHTARG = bytea, FUNCTION = regress_evil.always);
CREATE FUNCTION regress_evil.always_lt(text, text) RETURNS boolean LANGUAGE sql AS 'SELECT true';
CREATE OPERATOR regress_evil.< (LEFTARG = text, RIGHTARG = text, FUNCTION = regress_evil.always_lt);
CREATE TEMP TABLE keys (id bigint, owner text, digest bytea);
CREATE TEMP TABLE formats (name text);
SET search_path = pg_temp, regress_evil, pg_catalog, apikey;
SELECT owner FROM apikey.verify(:'a_key');
SELECT * FROM apikey.verify('cfk_' || repeat('1', 64));
SELECT apikey.revoke(:a_id);
RESET search_path;
RESET ROLE;
DROP SCHEMA regress_evil CASCADE;

-- The management functions run as the extension owner only for their own queries: an error
-- inside one leaves the caller's identity untouched.
SET ROLE regress_attacker;
DO $$ BEGIN PERFORM apikey.revoke(1); EXCEPTION WHEN OTHERS THEN NULL; END $$;
SELECT current_user, has_table_privilege('apikey.keys', 'SELECT') AS can_read_keys;
RESET ROLE;
