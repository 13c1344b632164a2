-- apikey.pre_request without PostgREST: request.headers set the way PostgREST sets it, the
-- role switch, and the HTTP answers it raises (SQLSTATE PGRST, JSON message and detail).
\set VERBOSITY terse
\set SHOW_CONTEXT never
SET apikey.creation_limit = 0;
CREATE ROLE regress_api NOLOGIN;
SELECT api_key AS k FROM apikey.create('pr', 'k') \gset
SELECT api_key AS lim FROM apikey.create('pr', 'limited', rate_limit => 1, rate_period => '1 hour') \gset
SELECT api_key AS own_role FROM apikey.create('pr', 'own role', db_role => 'regress_attacker') \gset
SET apikey.default_role = 'regress_api';

-- A valid key: the owner is authenticated and the role switched for this transaction only.
BEGIN;
SELECT set_config('request.headers', json_build_object('x-api-key', :'k')::text, true) IS NOT NULL AS headers_set;
SELECT apikey.pre_request();
SELECT current_user, apikey.current_owner(), apikey.current_db_role();
COMMIT;
SELECT current_user AS after_commit, apikey.current_owner() AS owner_after_commit;
-- A key with its own role.
BEGIN;
SELECT set_config('request.headers', json_build_object('x-api-key', :'own_role')::text, true) IS NOT NULL AS headers_set;
SELECT apikey.pre_request();
SELECT current_user;
ROLLBACK;
-- No key: 401 "API key required", secure by default.
BEGIN;
SELECT set_config('request.headers', '{"accept": "*/*"}', true) IS NOT NULL AS headers_set;
SELECT set_config('request.path', '/surveys', true) IS NOT NULL AS path_set;
SELECT apikey.pre_request();
ROLLBACK;
-- ... unless the path is listed in apikey.anonymous_paths (then it stays PostgREST's anon role),
BEGIN;
SET LOCAL apikey.anonymous_paths = '/rpc/user_key, /rpc/health';
SELECT set_config('request.headers', '{"accept": "*/*"}', true) IS NOT NULL AS headers_set;
SELECT set_config('request.path', '/rpc/user_key', true) IS NOT NULL AS path_set;
SELECT apikey.pre_request();
SELECT current_user, apikey.current_owner();
SELECT set_config('request.path', '/rpc/user_keys', true) IS NOT NULL AS other_path;
SELECT apikey.pre_request();
ROLLBACK;
-- ... or PostgREST authenticated the request with a JWT (it rejects a bad one itself). What it
-- verified is in request.jwt.claims; the header alone proves nothing (PostgREST checks the first
-- Authorization header and shows the last).
BEGIN;
SELECT set_config('request.headers', '{"authorization": "Bearer eyJh.eyJyb2xlIjoiand0X3VzZXIifQ.c2ln"}', true) IS NOT NULL AS headers_set;
SELECT set_config('request.jwt.claims', '{"role":"jwt_user"}', true) IS NOT NULL AS claims_set;
SELECT apikey.pre_request();
SELECT apikey.current_owner();
ROLLBACK;
-- A JWT-shaped header PostgREST did not verify (its claims are the anonymous role's): 401.
BEGIN;
SELECT set_config('request.headers', '{"authorization": "Bearer eyJh.eyJyb2xlIjoiand0X3VzZXIifQ.c2ln"}', true) IS NOT NULL AS headers_set;
SELECT set_config('request.jwt.claims', '{"role":"web_anon"}', true) IS NOT NULL AS claims_set;
SELECT apikey.pre_request();
ROLLBACK;
-- With PostgREST's anonymous role known (pgrst.db_anon_role), claims naming it are anonymous.
BEGIN;
SELECT set_config('pgrst.db_anon_role', 'web_anon', true) IS NOT NULL AS anon_set;
SELECT set_config('request.headers', '{"authorization": "Bearer eyJh.eyJyb2xlIjoid2ViX2Fub24ifQ.c2ln"}', true) IS NOT NULL AS headers_set;
SELECT set_config('request.jwt.claims', '{"role":"web_anon"}', true) IS NOT NULL AS claims_set;
SELECT apikey.pre_request();
ROLLBACK;
-- Only a superuser sets it.
SET ROLE regress_attacker;
SET apikey.anonymous_paths = '*';
RESET ROLE;

\set VERBOSITY default
-- Invalid, malformed and expired keys are 401 with a JSON body; the key is never in it.
BEGIN;
SELECT set_config('request.headers', json_build_object('x-api-key', 'cfk_' || repeat('0', 64))::text, true) IS NOT NULL AS headers_set;
SELECT apikey.pre_request();
ROLLBACK;
BEGIN;
SELECT set_config('request.headers', '{"x-api-key": "cfk_typo"}', true) IS NOT NULL AS headers_set;
SELECT apikey.pre_request();
ROLLBACK;
-- The two-key pair: 403, as the Cool Farm Tool documents.
BEGIN;
SELECT set_config('request.headers', json_build_object('x-api-authorization', :'k')::text, true) IS NOT NULL AS headers_set;
SELECT apikey.pre_request();
ROLLBACK;
-- Rate limited: 429 with Retry-After.
BEGIN;
SELECT set_config('request.headers', json_build_object('x-api-key', :'lim')::text, true) IS NOT NULL AS headers_set;
SELECT apikey.pre_request();
ROLLBACK;
BEGIN;
SELECT set_config('request.headers', json_build_object('x-api-key', :'lim')::text, true) IS NOT NULL AS headers_set;
SELECT apikey.pre_request();
ROLLBACK;
-- The other mappings.
SELECT apikey.raise_http('42501', 'API key lacks the scope "surveys:write"');
SELECT apikey.raise_http('P0002', 'survey 9 does not exist');
SELECT apikey.raise_http('22023', 'name must not be empty');
SELECT apikey.raise_http('XX000', 'boom');
\set VERBOSITY terse

-- Only administrators give a key its own role: a key owner cannot mint one that escalates.
BEGIN;
SELECT apikey.authenticate(:'k');
SET LOCAL ROLE regress_attacker;
SELECT * FROM apikey.create('pr', 'escalate', db_role => 'postgres');
ROLLBACK;
RESET apikey.default_role;
DROP ROLE regress_api;
