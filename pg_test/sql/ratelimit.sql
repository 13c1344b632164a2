-- Request limits in shared memory: per-key limits checked by authenticate, and apikey.rate_limit
-- for the application's own buckets. Both work in READ ONLY transactions.
\set VERBOSITY terse
SET apikey.creation_limit = 0;
SELECT id AS k_id, api_key AS k FROM apikey.create('limited', 'three per hour', rate_limit => 3, rate_period => '1 hour') \gset
SELECT rate_limit, rate_period, rate_burst FROM apikey.keys WHERE id = :k_id;
-- Three requests pass, the fourth is refused with the seconds to wait; nothing else changes.
SELECT apikey.authenticate(:'k') FROM generate_series(1, 3);
\set VERBOSITY default
SELECT apikey.authenticate(:'k');
\set VERBOSITY terse
SELECT apikey.current_owner() AS identity_after_refusal;
-- verify does not charge (it is a lookup, not a request).
SELECT owner FROM apikey.verify(:'k');
-- Limits hold in READ ONLY transactions.
BEGIN READ ONLY;
SELECT apikey.authenticate(:'k');
ROLLBACK;
BEGIN READ ONLY;
SELECT apikey.rate_limit('ro-bucket', 2, '1 minute') AS remaining;
SELECT apikey.rate_limit('ro-bucket', 2, '1 minute') AS remaining;
COMMIT;
SELECT apikey.rate_limit('ro-bucket', 2, '1 minute');
-- A burst larger than the sustained rate.
SELECT apikey.rate_limit('bursty', 1, '1 hour', burst => 3) AS remaining FROM generate_series(1, 3) g;
SELECT apikey.rate_limit('bursty', 1, '1 hour', burst => 3) AS remaining;
-- Buckets are per name.
SELECT apikey.rate_limit('other', 1, '1 hour') AS remaining;
-- Bad arguments.
SELECT * FROM apikey.rate_limit(NULL, 1, '1 hour');
SELECT * FROM apikey.rate_limit('b', 0, '1 hour');
SELECT * FROM apikey.rate_limit('b', -5, '1 hour');
SELECT * FROM apikey.rate_limit('b', 1, '0');
SELECT * FROM apikey.rate_limit('b', 1, '-1 hour');
SELECT * FROM apikey.rate_limit('b', 1, '1 hour', burst => 0);
SELECT * FROM apikey.rate_limit('', 1, '1 hour');
SELECT * FROM apikey.create('limited', 'bad', rate_limit => 0, rate_period => '1 hour');
SELECT * FROM apikey.create('limited', 'bad', rate_limit => 5);
-- The state view shows what shared memory holds for this database.
SELECT regexp_replace(bucket, '^key:[0-9]+$', 'key:<id>') AS bucket, reset_after_seconds > 0 AS busy
  FROM apikey.rate_limit_state ORDER BY bucket;
SET ROLE regress_attacker;
SELECT * FROM apikey.rate_limit_state;
RESET ROLE;
-- A refused request leaves the bucket as it was: waiting is enough, retrying does not extend it.
SELECT apikey.rate_limit('steady', 1, '1 hour') AS remaining;
SELECT apikey.rate_limit('steady', 1, '1 hour');
SELECT apikey.rate_limit('steady', 1, '1 hour');
SELECT round(reset_after_seconds / 60) AS minutes_to_full FROM apikey.rate_limit_state WHERE bucket = 'app:steady';
