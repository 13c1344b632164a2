-- Errors on the key path must not put the statement (which contains the key) in the server log.
-- Postgres logs failing statements by default (log_min_error_statement = error).
\set VERBOSITY terse
SET apikey.creation_limit = 0;
SHOW log_min_error_statement;
SELECT id AS lk_id, api_key AS lk FROM apikey.create('log-owner', 'revoked key') \gset
SELECT id AS ek_id, api_key AS ek FROM apikey.create('log-owner', 'expired key') \gset
SELECT apikey.revoke(:lk_id) AS revoked;
UPDATE apikey.keys SET expires_at = now() - interval '1 minute' WHERE id = :ek_id;
SELECT * FROM apikey.verify(:'lk');
SELECT * FROM apikey.verify(:'ek');
SELECT apikey.authenticate(:'lk');
SELECT (:'lk' || 'f')::apikey.api_key;
SELECT (upper(:'ek'))::apikey.api_key;
SELECT * FROM apikey.rotate(:lk_id);
SELECT pg_sleep(0.5);
-- Neither key's secret part appears anywhere in the log; our error messages do.
SELECT strpos(log, substr(:'lk', 5, 24)) = 0 AS revoked_key_not_logged,
       strpos(log, substr(:'ek', 5, 24)) = 0 AS expired_key_not_logged,
       strpos(log, 'API key has expired') > 0 AS errors_were_logged
  FROM (SELECT pg_read_file(current_setting('log_directory') || '/' || current_setting('log_filename')) AS log) l;
