-- The Cool Farm Tool seed: application keys and user keys, two-key requests, callback hashes
-- (SHA-256 of app key + URL), the recommended HMAC, and recoverable keys sealed under a server key.
\set VERBOSITY terse
SET apikey.creation_limit = 0;
CREATE EXTENSION IF NOT EXISTS pgcrypto;
SELECT apikey.alter_format('cft', true);
SELECT id AS app_id, api_key AS app FROM apikey.create('farm-app', 'Farm planner', format => 'cft', kind => 'app') \gset
SELECT id AS user_id, api_key AS usr FROM apikey.create('farmer-jo', 'Jo', format => 'cft') \gset
SELECT api_key AS other_app FROM apikey.create('other-app', 'Other', format => 'cft', kind => 'app') \gset

-- Both keys valid and of the right kind: the user is the identity, the app is recorded.
BEGIN;
SELECT apikey.authenticate(:'app', :'usr');
SELECT apikey.current_owner(), apikey.current_app();
COMMIT;
-- Missing, swapped or invalid keys are 28000.
\set VERBOSITY sqlstate
SELECT apikey.authenticate(NULL::apikey.api_key, :'usr');
\set VERBOSITY terse
SELECT apikey.authenticate(NULL::apikey.api_key, :'usr');
SELECT apikey.authenticate(:'app', NULL::apikey.api_key);
SELECT apikey.authenticate(:'usr', :'app');
SELECT apikey.authenticate(:'app', :'other_app');
SELECT apikey.authenticate(:'app', repeat('A', 43));
SELECT apikey.current_owner() AS nobody;

-- Callback hash: hex SHA-256 of the app key followed by the URL, checked in constant time for
-- the application's id. The server can check it because cft keys are now stored sealed.
SELECT apikey.callback_signature(:'app', 'https://farm.example/cb') = encode(sha256(convert_to(:'app' || 'https://farm.example/cb', 'UTF8')), 'hex') AS seed_formula;
SELECT apikey.verify_callback_signature(:app_id, 'https://farm.example/cb', apikey.callback_signature(:'app', 'https://farm.example/cb')) AS good;
SELECT apikey.verify_callback_signature(:app_id, 'https://farm.example/cb', upper(apikey.callback_signature(:'app', 'https://farm.example/cb'))) AS uppercase_ok;
SELECT apikey.verify_callback_signature(:app_id, 'https://evil.example/cb', apikey.callback_signature(:'app', 'https://farm.example/cb')) AS other_url;
SELECT apikey.verify_callback_signature(:app_id, 'https://farm.example/cb', apikey.callback_signature(:'other_app', 'https://farm.example/cb')) AS other_app;
SELECT apikey.verify_callback_signature(:user_id, 'https://farm.example/cb', apikey.callback_signature(:'usr', 'https://farm.example/cb')) AS user_key_is_no_app;
SELECT apikey.verify_callback_signature(987654, 'https://farm.example/cb', '00') AS unknown_app;
SELECT apikey.verify_callback_signature(:app_id, 'https://farm.example/cb', apikey.callback_signature_hmac_sha256(:'app', 'https://farm.example/cb'), 'hmac') AS hmac_ok;
SELECT apikey.callback_signature_hmac_sha256(:'app', 'u') = encode(hmac('u', :'app', 'sha256'), 'hex') AS matches_pgcrypto_hmac;
SELECT apikey.verify_callback_signature(:app_id, 'u', 'x', 'md5');

-- Recoverable keys: stored sealed (never in the clear), shown again to their owner only.
SELECT sealed IS NOT NULL AS sealed, strpos(encode(sealed, 'escape'), :'usr') = 0 AS not_in_clear
  FROM apikey.keys WHERE id = :user_id;
BEGIN;
SELECT apikey.authenticate(:'usr');
SELECT apikey.reveal(:user_id)::text = :'usr' AS revealed_to_owner;
COMMIT;
BEGIN;
SELECT apikey.authenticate(:'usr');
SELECT apikey.reveal(:app_id);
ROLLBACK;
SELECT apikey.reveal(:user_id);
SELECT action, key_id = :user_id AS same_key, actor FROM apikey.audit_log WHERE action = 'reveal';
-- Keys of non-recoverable formats exist only as digests.
SELECT id AS cfk_id, api_key AS cfk FROM apikey.create('farmer-jo', 'digest only') \gset
BEGIN;
SELECT apikey.authenticate(:'cfk');
SELECT apikey.reveal(:cfk_id);
ROLLBACK;
-- Rotation keeps a recoverable key recoverable.
SELECT id AS rot_id FROM apikey.rotate(:user_id) \gset
SELECT sealed IS NOT NULL AS rotated_key_sealed FROM apikey.keys WHERE id = :rot_id;
SELECT apikey.alter_format('cft', false);
