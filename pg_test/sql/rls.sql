-- Row-level security driven by the key: the seeds' surveys and sub-agencies (examples/), queried
-- as api_user (neither superuser nor table owner) and as the tables' owner (held by FORCE).
-- 401 / 403 / 404 become 28000 / 42501 / P0002.
\set VERBOSITY terse
SET apikey.creation_limit = 0;
\getenv examples PG_APIKEY_EXAMPLES
\set ECHO none
\i :examples/surveys_rls.sql
\i :examples/surveys_data.sql
\set ECHO all
SELECT api_key AS alice FROM apikey.create('alice', 'alice all') \gset
SELECT api_key AS alice_noscope FROM apikey.create('alice', 'alice metrics only', scopes => '{metrics:read}') \gset
SELECT api_key AS carol FROM apikey.create('carol', 'carol surveys', scopes => '{surveys:read}') \gset
SELECT api_key AS bob FROM apikey.create('bob', 'bob') \gset
SELECT api_key AS alice_mkt FROM apikey.create('alice', 'marketing only', resource => 'marketing') \gset

-- No key: nothing visible; lookups say 28000.
SET ROLE api_user;
SELECT count(*) AS surveys_without_key FROM app.surveys;
SELECT * FROM app.get_survey(1);
SELECT * FROM app.sub_agency_users('marketing');
RESET ROLE;

-- alice: her own surveys; bob's is 403, a missing one 404; metrics hold no personal data.
BEGIN;
SELECT apikey.authenticate(:'alice');
SET LOCAL ROLE api_user;
SELECT id, title, owner FROM app.surveys ORDER BY id;
SELECT id, title FROM app.get_survey(1);
SELECT * FROM app.survey_metrics(1);
SELECT respondent_email FROM app.responses;
ROLLBACK;
BEGIN; SELECT apikey.authenticate(:'alice'); SET LOCAL ROLE api_user;
\set VERBOSITY sqlstate
SELECT * FROM app.get_survey(2);
ROLLBACK;
BEGIN; SELECT apikey.authenticate(:'alice'); SET LOCAL ROLE api_user;
SELECT * FROM app.get_survey(99);
ROLLBACK;
\set VERBOSITY terse
BEGIN; SELECT apikey.authenticate(:'alice'); SET LOCAL ROLE api_user;
SELECT * FROM app.get_survey(2);
ROLLBACK;
-- Writes are refused: the API is read-only.
BEGIN; SELECT apikey.authenticate(:'alice'); SET LOCAL ROLE api_user;
UPDATE app.surveys SET title = 'mine' WHERE id = 2;
ROLLBACK;

-- A key without the surveys:read scope sees no survey, and is told which scope it lacks.
BEGIN; SELECT apikey.authenticate(:'alice_noscope'); SET LOCAL ROLE api_user;
SELECT count(*) AS surveys_visible FROM app.surveys;
SELECT * FROM app.get_survey(1);
ROLLBACK;

-- carol is an ADMIN of Acme: she reads Acme's surveys. Removing her ADMIN role takes effect on
-- the next statement, without touching her key.
BEGIN; SELECT apikey.authenticate(:'carol'); SET LOCAL ROLE api_user;
SELECT id, title FROM app.surveys ORDER BY id;
RESET ROLE;
UPDATE app.memberships SET role = 'MEMBER' WHERE username = 'carol';
SET LOCAL ROLE api_user;
SELECT count(*) AS surveys_after_demotion FROM app.surveys;
ROLLBACK;

-- bob sees only his own survey, also as the tables' owner (FORCE ROW LEVEL SECURITY).
BEGIN; SELECT apikey.authenticate(:'bob'); SET LOCAL ROLE app_owner;
SELECT id, title FROM app.surveys ORDER BY id;
ROLLBACK;
SET ROLE app_owner;
SELECT count(*) AS owner_without_key FROM app.surveys;
RESET ROLE;

-- Sub-agencies: an unscoped key lists every sub-agency its owner owns; a key scoped to one
-- sub-agency sees only that one and gets 42501 naming the other.
BEGIN; SELECT apikey.authenticate(:'alice'); SET LOCAL ROLE api_user;
SELECT slug FROM app.sub_agencies ORDER BY slug;
ROLLBACK;
BEGIN; SELECT apikey.authenticate(:'alice_mkt'); SET LOCAL ROLE api_user;
SELECT slug FROM app.sub_agencies ORDER BY slug;
SELECT name FROM app.sub_agency_users('marketing');
SELECT count(*) AS sales_users_visible FROM app.agency_users WHERE sub_agency = 'sales';
ROLLBACK;
BEGIN; SELECT apikey.authenticate(:'alice_mkt'); SET LOCAL ROLE api_user;
\set VERBOSITY sqlstate
SELECT * FROM app.sub_agency_users('sales');
ROLLBACK;
\set VERBOSITY terse
BEGIN; SELECT apikey.authenticate(:'alice_mkt'); SET LOCAL ROLE api_user;
SELECT * FROM app.sub_agency_users('sales');
ROLLBACK;
BEGIN; SELECT apikey.authenticate(:'alice_mkt'); SET LOCAL ROLE api_user;
SELECT * FROM app.sub_agency_users('nowhere');
ROLLBACK;
-- bob does not own alice's sub-agencies.
BEGIN; SELECT apikey.authenticate(:'bob'); SET LOCAL ROLE api_user;
SELECT * FROM app.sub_agency_users('marketing');
ROLLBACK;
-- Policies call only functions that are not LEAKPROOF, so a leaky qual cannot be pushed below them.
SELECT count(*) AS leakproof_in_policies FROM pg_proc WHERE proleakproof AND pronamespace = 'apikey'::regnamespace;
