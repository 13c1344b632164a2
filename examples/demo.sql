-- A walk through the key lifecycle in psql. Run by `make demo`.
\set ECHO queries
\pset footer off

\echo '\n== 1. Create named keys. The plaintext is returned once and never stored.'
SELECT id AS ci_id, api_key AS ci_key FROM apikey.create('alice@example.com', 'CI pipeline', '90 days') \gset
\echo 'CI pipeline key (copy it now):' :ci_key
SELECT id AS etl_id, api_key AS etl_key FROM apikey.create('alice@example.com', 'ETL script', format => 'ct_live') \gset
SELECT id AS cft_id, api_key AS cft_key FROM apikey.create('farm-app', 'Cool Farm client', format => 'cft', kind => 'app') \gset

\echo '\n== 2. List keys, masked (prefix and last four), with their status.'
SELECT id, owner, name, key, format, status, expires_at::date AS expires FROM apikey.key_list ORDER BY id;

\echo '\n== 3. Verify a key: its record, or SQLSTATE 28000.'
SELECT id, owner, name, kind, expires_at::date AS expires FROM apikey.verify(:'ci_key');
\set ON_ERROR_STOP 0
SELECT * FROM apikey.verify('cfk_0000000000000000000000000000000000000000000000000000000000000000');
\echo '-- a malformed key is refused by the api_key type itself (22P02), without a lookup:'
SELECT * FROM apikey.verify('cfk_not-a-key');

\echo '\n== 4. Rotate: a new key with the same settings; the old one works for the grace period.'
SELECT id AS new_ci_id, api_key AS new_ci_key FROM apikey.rotate(:ci_id, '1 hour') \gset
SELECT id, name, key, status, revoked_at IS NOT NULL AS ends_after_grace FROM apikey.key_list WHERE name = 'CI pipeline' ORDER BY id;

\echo '\n== 5. Revoke and delete: effective for every session at commit.'
SELECT apikey.revoke(:new_ci_id);
SELECT * FROM apikey.verify(:'new_ci_key');
SELECT apikey.delete(:etl_id);
SELECT * FROM apikey.verify(:'etl_key');

\echo '\n== 6. Expired keys say so (and stay listed until deleted).'
UPDATE apikey.keys SET expires_at = now() - interval '1 second' WHERE id = :ci_id;
SELECT * FROM apikey.verify(:'ci_key');
SELECT id, name, key, status FROM apikey.key_list ORDER BY id;

\echo '\n== 7. The audit log: every change, who made it, never a secret.'
SELECT id, at::time(0) AS at, action, key_id, owner, key_name, actor FROM apikey.audit_log ORDER BY id;
