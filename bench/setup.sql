-- Benchmark fixtures: 1000 pg_apikey keys, the same keys in a hand-rolled PL/pgSQL recipe table
-- (built-in sha256() + unique index) and 20 in a bcrypt table (pgcrypto crypt(), cost 10, looked up
-- by a 12-character prefix as bcrypt digests cannot be indexed).
\set ON_ERROR_STOP 1
SET apikey.creation_limit = 0;
CREATE EXTENSION IF NOT EXISTS pgcrypto;
CREATE SCHEMA bench;
CREATE TABLE bench.keys AS
SELECT c.id, c.api_key::text AS api_key
  FROM generate_series(1, 1000) g, LATERAL apikey.create('bench-owner-' || g, 'bench key') c;

CREATE TABLE bench.plain_keys (
    id bigint PRIMARY KEY, owner text NOT NULL, digest bytea NOT NULL UNIQUE,
    expires_at timestamptz, revoked_at timestamptz);
INSERT INTO bench.plain_keys
SELECT k.id, 'bench-owner-' || k.id, sha256(convert_to(k.api_key, 'UTF8')), NULL, NULL FROM bench.keys k;

CREATE FUNCTION bench.plpgsql_verify(key text) RETURNS TABLE (id bigint, owner text)
    LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS
$$
DECLARE r record;
BEGIN
    SELECT k.id, k.owner, k.expires_at, k.revoked_at INTO r
      FROM bench.plain_keys k WHERE k.digest = sha256(convert_to(key, 'UTF8'));
    IF NOT FOUND OR r.revoked_at IS NOT NULL THEN
        RAISE EXCEPTION 'invalid API key' USING ERRCODE = '28000';
    END IF;
    IF r.expires_at <= now() THEN
        RAISE EXCEPTION 'API key has expired' USING ERRCODE = '28000';
    END IF;
    RETURN QUERY SELECT r.id, r.owner;
END
$$;

CREATE TABLE bench.bcrypt_keys (prefix text PRIMARY KEY, id bigint NOT NULL, owner text NOT NULL, hash text NOT NULL);
INSERT INTO bench.bcrypt_keys
SELECT left(k.api_key, 12), k.id, 'bench-owner-' || k.id, crypt(k.api_key, gen_salt('bf', 10))
  FROM bench.keys k ORDER BY k.id LIMIT 20;

CREATE FUNCTION bench.bcrypt_verify(key text) RETURNS TABLE (id bigint, owner text)
    LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS
$$
DECLARE r record;
BEGIN
    SELECT b.id, b.owner, b.hash INTO r FROM bench.bcrypt_keys b WHERE b.prefix = left(key, 12);
    IF NOT FOUND OR public.crypt(key, r.hash) <> r.hash THEN
        RAISE EXCEPTION 'invalid API key' USING ERRCODE = '28000';
    END IF;
    RETURN QUERY SELECT r.id, r.owner;
END
$$;
GRANT USAGE ON SCHEMA bench TO PUBLIC;

-- The table-counter baseline for the limiter: one row per bucket, one UPDATE per decision.
CREATE TABLE bench.counters (bucket text PRIMARY KEY, n bigint NOT NULL DEFAULT 0);
INSERT INTO bench.counters SELECT 'b' || g, 0 FROM generate_series(0, 99) g;
CREATE FUNCTION bench.counter_hit(b text) RETURNS bigint LANGUAGE sql AS
$$ UPDATE bench.counters SET n = n + 1 WHERE bucket = b RETURNING n $$;
