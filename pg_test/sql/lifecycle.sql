-- Key lifecycle: create (shown once, stored as SHA-256), verify, revoke, delete, rotate, expiry,
-- the masked admin view and the append-only audit log.
\set VERBOSITY terse
SET apikey.creation_limit = 0;

-- Bad arguments get 22004 / 22023 with a clear message.
\set VERBOSITY sqlstate
SELECT * FROM apikey.create(NULL, 'n');
\set VERBOSITY terse
SELECT * FROM apikey.create(NULL, 'n');
SELECT * FROM apikey.create('alice', '');
SELECT * FROM apikey.create('alice', '   ');
SELECT * FROM apikey.create('alice', NULL);
SELECT * FROM apikey.create('alice', 'n', '-1 day');
SELECT * FROM apikey.create('alice', 'n', '0');
SELECT * FROM apikey.create('alice', 'n', kind => 'robot');
SELECT * FROM apikey.create('alice', 'n', metadata => '[1]');

-- Create: the only moment the plaintext exists.
SELECT id AS k1_id, api_key AS k1 FROM apikey.create('alice', 'CI pipeline', '90 days', metadata => '{"team": "data"}') \gset
SELECT id = :k1_id AS same_id, owner, name, kind, format, expires_at - created_at AS lifetime, metadata
  FROM apikey.verify(:'k1');
-- Stored: the SHA-256 of the key, its display prefix and last four; the plaintext nowhere.
SELECT digest = sha256(convert_to(:'k1', 'UTF8')) AS digest_is_sha256,
       display_prefix = left(:'k1', 8) AS prefix_ok,
       last4 = right(:'k1', 4) AS last4_ok,
       strpos(k::text, substr(:'k1', 5)) = 0 AS row_has_no_secret
  FROM apikey.keys k WHERE id = :k1_id;

-- Unknown, revoked and deleted keys get the same 28000 "invalid API key".
\set VERBOSITY sqlstate
SELECT * FROM apikey.verify('cfk_' || repeat('0', 64));
\set VERBOSITY terse
SELECT * FROM apikey.verify('cfk_' || repeat('0', 64));
SELECT apikey.revoke(:k1_id) AS revoked;
SELECT apikey.revoke(:k1_id) AS revoked_again;
SELECT * FROM apikey.verify(:'k1');
SELECT id AS k2_id, api_key AS k2 FROM apikey.create('alice', 'ETL script') \gset
SELECT apikey.delete(:k2_id) AS deleted;
SELECT * FROM apikey.verify(:'k2');
SELECT apikey.delete(:k2_id);
SELECT apikey.revoke(999999);

-- Expired keys: "API key has expired" (only to the holder of the key), and still listed.
SELECT id AS k3_id, api_key AS k3 FROM apikey.create('alice', 'short-lived', '30 days') \gset
UPDATE apikey.keys SET expires_at = now() - interval '1 second' WHERE id = :k3_id;
\set VERBOSITY sqlstate
SELECT * FROM apikey.verify(:'k3');
\set VERBOSITY terse
SELECT * FROM apikey.verify(:'k3');
SELECT name, status, key ~ '^cfk_[0-9a-f]{4}…[0-9a-f]{4}$' AS masked, expires_at IS NOT NULL AS has_expiry
  FROM apikey.key_list WHERE owner = 'alice' ORDER BY id;

-- The seeds' expiry presets.
SELECT count(*) AS created FROM unnest(ARRAY['30 days', '60 days', '90 days', '180 days', '365 days', NULL]::interval[]) p,
       LATERAL apikey.create('presets', coalesce(p::text, 'never'), p) c;
SELECT name, expires_in, expires_at = created_at + expires_in AS expiry_matches, expires_at IS NULL AS never_expires
  FROM apikey.keys WHERE owner = 'presets' ORDER BY id;

-- Rotation: same owner, name and settings; the old key works through the grace period.
SELECT id AS k4_id, api_key AS k4 FROM apikey.create('alice', 'rotating', '60 days', scopes => '{surveys:read}', resource => 'agency-1') \gset
SELECT id AS k5_id, api_key AS k5 FROM apikey.rotate(:k4_id, '1 hour') \gset
SELECT owner, name, scopes, resource, expires_at - created_at AS lifetime FROM apikey.verify(:'k5');
SELECT name AS old_key_still_works FROM apikey.verify(:'k4');
SELECT o.revoked_at - n.created_at AS grace, n.rotated_from = o.id AS linked
  FROM apikey.keys o, apikey.keys n WHERE o.id = :k4_id AND n.id = :k5_id;
-- Zero grace (the default) ends the old key at once.
SELECT id AS k6_id, api_key AS k6 FROM apikey.rotate(:k5_id) \gset
SELECT * FROM apikey.verify(:'k5');
SELECT name FROM apikey.verify(:'k6');
-- An expired key cannot be rotated (it would come back to life as a new key).
UPDATE apikey.keys SET expires_at = now() - interval '1 second' WHERE id = :k6_id;
SELECT * FROM apikey.rotate(:k6_id, '1 day');
SELECT * FROM apikey.verify(:'k6');
-- Refusals: a revoked key, a negative grace, a grace past apikey.max_rotation_grace (7 days).
SELECT * FROM apikey.rotate(:k1_id);
SELECT * FROM apikey.rotate(:k6_id, '-1 hour');
SELECT * FROM apikey.rotate(:k6_id, '8 days');

-- The audit log: one row per change, in order, with the caller, never a secret.
SELECT action, key_id, owner, key_name, actor, session_actor, detail ? 'new_key_id' AS names_successor
  FROM apikey.audit_log WHERE owner = 'alice' ORDER BY id;
SELECT count(*) AS audit_rows_with_a_secret FROM apikey.audit_log a
 WHERE strpos(a::text, substr(:'k1', 5, 16)) > 0 OR strpos(a::text, substr(:'k5', 5, 16)) > 0;
UPDATE apikey.audit_log SET owner = 'mallory';
DELETE FROM apikey.audit_log;
TRUNCATE apikey.audit_log;
SELECT count(*) > 0 AS audit_kept FROM apikey.audit_log;
