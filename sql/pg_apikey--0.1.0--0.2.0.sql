-- pg_apikey 0.1.0 → 0.2.0. Run by ALTER EXTENSION pg_apikey UPDATE, after the 0.2.0 library is
-- installed (and the server restarted, since the library is preloaded). Keys, formats, usage and
-- the audit log are kept; afterwards the schema is exactly a fresh 0.2.0 install's
-- (tests/test_upgrade.py compares the catalogs).
--
-- Administrators: 0.1.0 made (or adopted) a cluster-wide role apikey_admin whose members managed
-- every key in every database. 0.2.0 keeps administrators per database (apikey.admins, changed by
-- apikey.grant_admin); this script takes apikey_admin's rights on the extension's objects away
-- and makes no one an administrator. A superuser grants again, per database, with
-- SELECT apikey.grant_admin('apikey_admin'). The role itself is left alone: other databases may
-- still use it.

DO $$
DECLARE
    big bigint;
BEGIN
    SELECT k.id INTO big FROM apikey.keys k
     WHERE pg_catalog.octet_length(k.metadata::pg_catalog.text) OPERATOR(pg_catalog.>) 65536 LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION 'API key % has more than 64 KiB of metadata, the 0.2.0 limit', big
            USING ERRCODE = '22023', HINT = 'Shrink its metadata (UPDATE apikey.keys SET metadata = ...), then update again.';
    END IF;
END
$$;

DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname OPERATOR(pg_catalog.=) 'apikey_admin') THEN
        REVOKE ALL ON apikey.audit_log, apikey.usage, apikey.usage_live, apikey.rate_limit_state FROM apikey_admin;
        RAISE WARNING 'pg_apikey 0.2.0 keeps administrators per database: role apikey_admin no longer manages keys here'
            USING HINT = 'To keep it as an administrator of this database: SELECT apikey.grant_admin(''apikey_admin'');';
    END IF;
END
$$;

-- The api_key type sorts with strings (psql and drivers treat it as text). ALTER TYPE cannot
-- change a category.
UPDATE pg_catalog.pg_type SET typcategory = 'S'
 WHERE oid OPERATOR(pg_catalog.=) 'apikey.api_key'::pg_catalog.regtype;

-- Tables.
CREATE TABLE apikey.admins (
    role       oid PRIMARY KEY,
    role_name  name NOT NULL,
    granted_by text NOT NULL,
    granted_at timestamptz NOT NULL DEFAULT pg_catalog.now()
);
COMMENT ON TABLE apikey.admins IS 'pg_apikey administrators of this database: these roles and their members manage every key here. Use apikey.grant_admin(role) and apikey.revoke_admin(role).';
COMMENT ON COLUMN apikey.admins.role IS 'The role''s OID. The entry counts only while that role still has role_name: it is never adopted by a new role of the same name. After a restore into another cluster, grant again.';

ALTER TABLE apikey.keys
    ADD CONSTRAINT keys_metadata_check CHECK (pg_catalog.octet_length(metadata::text) <= 65536),
    ADD COLUMN disabled_at    timestamptz,
    ADD COLUMN allowed_ips    cidr[],
    ADD COLUMN credits        bigint CONSTRAINT keys_credits_check CHECK (credits >= 0),
    ADD COLUMN refill_amount  bigint CONSTRAINT keys_refill_amount_check CHECK (refill_amount > 0),
    ADD COLUMN refill_interval interval CONSTRAINT keys_refill_interval_check CHECK (refill_interval > interval '0'),
    ADD COLUMN credits_refilled_at timestamptz,
    ADD COLUMN credits_peak   bigint,
    ADD COLUMN limits         jsonb NOT NULL DEFAULT '{}' CONSTRAINT keys_limits_check CHECK (pg_catalog.jsonb_typeof(limits) = 'object'),
    ADD CONSTRAINT keys_check2 CHECK ((refill_amount IS NULL) = (refill_interval IS NULL)),
    ADD CONSTRAINT keys_check3 CHECK (refill_amount IS NULL OR credits IS NOT NULL);
CREATE INDEX keys_expires_at_idx ON apikey.keys (expires_at) WHERE expires_at IS NOT NULL;
CREATE INDEX keys_digest_hash ON apikey.keys USING hash (digest);
COMMENT ON COLUMN apikey.keys.limits IS 'Named limits: {"name": {"max": N, "per": interval, "per_us": microseconds, "burst": N}}. "requests" is charged by apikey.authenticate, any name by apikey.charge(name).';
COMMENT ON COLUMN apikey.keys.credits IS 'Credits left (NULL: not usage-limited), as last written by the usage worker; the live balance is in shared memory (apikey.credits(id)).';
COMMENT ON COLUMN apikey.keys.allowed_ips IS 'Addresses the key may be used from (NULL: any). Checked before anything is charged.';
COMMENT ON COLUMN apikey.keys.disabled_at IS 'Set while the key is disabled (apikey.disable); apikey.enable clears it. Unlike a revoke, reversible.';
COMMENT ON COLUMN apikey.keys.credits_peak IS 'The most credits the key has held (at creation or after apikey.add_credits): what the credits_low event measures against when the key has no refill.';

ALTER TABLE apikey.audit_log DROP CONSTRAINT audit_log_action_check,
    ADD CONSTRAINT audit_log_action_check
        CHECK (action IN ('create', 'revoke', 'delete', 'rotate', 'reveal', 'disable', 'enable', 'add_credits',
                          'import', 'rehash', 'leaked'));

CREATE TABLE apikey.owner_limits (
    owner      text NOT NULL CHECK (owner <> ''),
    name       text NOT NULL CHECK (name <> ''),
    max        integer NOT NULL CHECK (max > 0),
    per        interval NOT NULL CHECK (per > interval '0'),
    burst      integer CHECK (burst > 0),
    set_by     text NOT NULL,
    set_at     timestamptz NOT NULL DEFAULT pg_catalog.now(),
    PRIMARY KEY (owner, name)
);
COMMENT ON TABLE apikey.owner_limits IS 'Limits shared by all keys of an owner: owner is an owner, a pattern with * (team-*), or * for every owner; exact beats pattern (longer first) beats *. Set with apikey.set_owner_limit.';

-- Keys imported with a bcrypt hash, until they are first presented. Their row in apikey.keys has
-- a random digest that no key hashes to; the first successful verify stores the real SHA-256 and
-- deletes the row here ("rehash"). lookup is the public beginning of the key; no lookup part is a
-- prefix of another, so a presented key has at most one candidate.
CREATE TABLE apikey.key_imports (
    key_id      bigint PRIMARY KEY REFERENCES apikey.keys (id) ON DELETE CASCADE,
    lookup      text COLLATE "C" NOT NULL UNIQUE,
    hash        text NOT NULL,
    cost        integer NOT NULL CHECK (cost BETWEEN 4 AND 31),
    imported_at timestamptz NOT NULL DEFAULT pg_catalog.now()
);
COMMENT ON TABLE apikey.key_imports IS 'bcrypt-hashed keys imported with apikey.import, waiting for their first use to be rehashed to SHA-256. Never readable by ordinary roles.';

-- What happened, for those who poll rather than LISTEN on apikey_events. Bounded: the usage worker
-- (or, without one, every thousandth event) deletes events older than apikey.event_retention.
CREATE SEQUENCE apikey.events_id_seq;
CREATE TABLE apikey.events (
    id       bigint PRIMARY KEY DEFAULT pg_catalog.nextval('apikey.events_id_seq'),
    at       timestamptz NOT NULL DEFAULT pg_catalog.now(),
    event    text NOT NULL,
    key_id   bigint,
    owner    text,
    key_name text,
    detail   jsonb NOT NULL DEFAULT '{}'
);
ALTER SEQUENCE apikey.events_id_seq OWNED BY apikey.events.id;
CREATE INDEX events_at_idx ON apikey.events (at);
COMMENT ON TABLE apikey.events IS 'Recent key events (created, rotated, disabled, revoked, deleted, leaked, imported, expiring, credits_low, limited, ...). The NOTIFY on channel apikey_events carries only id, event and key_id; the rest is here, for administrators. Never holds a secret.';

-- Worker announcements made once per key and threshold (expiring within N days, credits low).
CREATE TABLE apikey.announcements (
    key_id    bigint NOT NULL REFERENCES apikey.keys (id) ON DELETE CASCADE,
    event     text NOT NULL,
    threshold text NOT NULL,
    at        timestamptz NOT NULL DEFAULT pg_catalog.now(),
    PRIMARY KEY (key_id, event, threshold)
);
COMMENT ON TABLE apikey.announcements IS 'Which expiring and credits_low events the worker has already sent, so each is sent once per key and threshold.';

-- Functions new in 0.2.0, and create with its new arguments.
DROP FUNCTION apikey."create"(text, text, interval, text[], text, text, text, jsonb, integer, interval, integer, text);

CREATE FUNCTION "add_credits"(
	"id" bigint, /* i64 */
	"n" bigint /* i64 */
) RETURNS bigint /* i64 */
STRICT VOLATILE PARALLEL UNSAFE
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'add_credits_wrapper';

CREATE FUNCTION "authenticate"(
	"key" apikey.api_key, /* ApiKey */
	"cost" bigint /* i64 */
) RETURNS TEXT /* String */
STRICT VOLATILE PARALLEL UNSAFE  
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'authenticate_cost_wrapper';

CREATE FUNCTION "bcrypt_checks"() RETURNS bigint /* i64 */
STRICT VOLATILE PARALLEL RESTRICTED
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'bcrypt_checks_wrapper';

CREATE FUNCTION "charge"(
	"name" TEXT, /* Option < & str > */
	"cost" INT DEFAULT 1 /* Option < i32 > */
) RETURNS bool /* bool */
VOLATILE PARALLEL UNSAFE
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'charge_wrapper';

CREATE FUNCTION "clear_owner_limit"(
	"owner" TEXT, /* & str */
	"name" TEXT /* & str */
) RETURNS bool /* bool */
STRICT VOLATILE PARALLEL UNSAFE
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'clear_owner_limit_wrapper';

CREATE FUNCTION "create"(
	"owner" TEXT, /* Option < & str > */
	"name" TEXT, /* Option < & str > */
	"expires_in" interval DEFAULT NULL, /* Option < Interval > */
	"scopes" TEXT[] DEFAULT NULL, /* :: std :: option :: Option < Vec < Option < String > > > */
	"resource" TEXT DEFAULT NULL, /* Option < & str > */
	"kind" TEXT DEFAULT 'user', /* Option < & str > */
	"format" TEXT DEFAULT NULL, /* Option < & str > */
	"metadata" jsonb DEFAULT NULL, /* Option < JsonB > */
	"rate_limit" INT DEFAULT NULL, /* Option < i32 > */
	"rate_period" interval DEFAULT NULL, /* Option < Interval > */
	"rate_burst" INT DEFAULT NULL, /* Option < i32 > */
	"db_role" TEXT DEFAULT NULL, /* Option < & str > */
	"allowed_ips" TEXT[] DEFAULT NULL, /* :: std :: option :: Option < Vec < Option < String > > > */
	"credits" bigint DEFAULT NULL, /* Option < i64 > */
	"refill_amount" bigint DEFAULT NULL, /* Option < i64 > */
	"refill_interval" interval DEFAULT NULL, /* Option < Interval > */
	"limits" jsonb DEFAULT NULL /* Option < JsonB > */
) RETURNS TABLE (
	"id" bigint,  /* i64 */
	"api_key" apikey.api_key  /* ApiKey */
)
VOLATILE PARALLEL UNSAFE 
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'create_wrapper';

CREATE FUNCTION "credits"(
	"id" bigint /* i64 */
) RETURNS bigint /* Option < i64 > */
STRICT VOLATILE PARALLEL RESTRICTED
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'credits_wrapper';

CREATE FUNCTION "disable"(
	"id" bigint /* i64 */
) RETURNS bool /* bool */
STRICT VOLATILE PARALLEL UNSAFE
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'disable_wrapper';

CREATE FUNCTION "enable"(
	"id" bigint /* i64 */
) RETURNS bool /* bool */
STRICT VOLATILE PARALLEL UNSAFE
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'enable_wrapper';

CREATE FUNCTION "grant_admin"(
	"role_name" TEXT /* & str */
) RETURNS bool /* bool */
STRICT VOLATILE PARALLEL UNSAFE
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'grant_admin_wrapper';

CREATE FUNCTION "has_permissions"(
	"expression" TEXT /* & str */
) RETURNS bool /* bool */
STRICT STABLE PARALLEL RESTRICTED
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'has_permissions_wrapper';

CREATE FUNCTION "import"(
	"owner" TEXT, /* Option < & str > */
	"name" TEXT, /* Option < & str > */
	"hash" TEXT, /* Option < & str > */
	"algorithm" TEXT, /* Option < & str > */
	"lookup" TEXT DEFAULT NULL, /* Option < & str > */
	"last4" TEXT DEFAULT NULL, /* Option < & str > */
	"expires_at" timestamp with time zone DEFAULT NULL, /* Option < TimestampWithTimeZone > */
	"expires_in" interval DEFAULT NULL, /* Option < Interval > */
	"scopes" TEXT[] DEFAULT NULL, /* :: std :: option :: Option < Vec < Option < String > > > */
	"resource" TEXT DEFAULT NULL, /* Option < & str > */
	"kind" TEXT DEFAULT 'user', /* Option < & str > */
	"format" TEXT DEFAULT NULL, /* Option < & str > */
	"metadata" jsonb DEFAULT NULL, /* Option < JsonB > */
	"rate_limit" INT DEFAULT NULL, /* Option < i32 > */
	"rate_period" interval DEFAULT NULL, /* Option < Interval > */
	"rate_burst" INT DEFAULT NULL, /* Option < i32 > */
	"db_role" TEXT DEFAULT NULL, /* Option < & str > */
	"allowed_ips" TEXT[] DEFAULT NULL, /* :: std :: option :: Option < Vec < Option < String > > > */
	"credits" bigint DEFAULT NULL, /* Option < i64 > */
	"refill_amount" bigint DEFAULT NULL, /* Option < i64 > */
	"refill_interval" interval DEFAULT NULL, /* Option < Interval > */
	"limits" jsonb DEFAULT NULL /* Option < JsonB > */
) RETURNS bigint /* i64 */
VOLATILE PARALLEL UNSAFE
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'import_wrapper';

CREATE FUNCTION "import_keys"(
	"source" regclass /* RegClass */
) RETURNS TABLE (
	"ordinal" bigint,  /* i64 */
	"owner" TEXT,  /* Option < String > */
	"name" TEXT,  /* Option < String > */
	"status" TEXT,  /* String */
	"key_id" bigint,  /* Option < i64 > */
	"reason" TEXT  /* Option < String > */
)
STRICT VOLATILE PARALLEL UNSAFE
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'import_keys_wrapper';

CREATE FUNCTION "invalidate_key_trigger"()
	RETURNS TRIGGER
	LANGUAGE c
	AS 'MODULE_PATHNAME', 'invalidate_key_trigger_wrapper';

CREATE FUNCTION "is_admin"() RETURNS bool /* bool */
STRICT STABLE PARALLEL RESTRICTED
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'is_admin_wrapper';

CREATE FUNCTION "key_cache_stats"() RETURNS TABLE (
	"entries" bigint,  /* i64 */
	"bytes" bigint,  /* i64 */
	"hits" bigint,  /* i64 */
	"misses" bigint  /* i64 */
)
STRICT VOLATILE PARALLEL RESTRICTED
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'key_cache_stats_wrapper';

CREATE FUNCTION "prewarm_key_cache"() RETURNS bigint /* i64 */
STRICT VOLATILE PARALLEL UNSAFE
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'prewarm_key_cache_wrapper';

CREATE FUNCTION "shared_key_cache_stats"() RETURNS TABLE (
	"entries" bigint,  /* i64 */
	"capacity" bigint,  /* i64 */
	"hits" bigint,  /* i64 */
	"misses" bigint  /* i64 */
)
STRICT VOLATILE PARALLEL RESTRICTED
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'shared_key_cache_stats_wrapper';

CREATE FUNCTION "report_leaked"(
	"keys" TEXT[], /* :: std :: option :: Option < Vec < Option < String > > > */
	"source" TEXT DEFAULT NULL /* Option < & str > */
) RETURNS TABLE (
	"token_hash" TEXT,  /* String */
	"label" TEXT  /* String */
)
VOLATILE PARALLEL UNSAFE
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'report_leaked_wrapper';

CREATE FUNCTION "revoke_admin"(
	"role_name" TEXT /* & str */
) RETURNS bool /* bool */
STRICT VOLATILE PARALLEL UNSAFE
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'revoke_admin_wrapper';

CREATE FUNCTION "secret_scanning"(
	"payload" jsonb /* JsonB */
) RETURNS jsonb /* JsonB */
STRICT VOLATILE PARALLEL UNSAFE
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'secret_scanning_wrapper';

CREATE FUNCTION "set_owner_limit"(
	"owner" TEXT, /* & str */
	"name" TEXT, /* & str */
	"max" INT, /* i32 */
	"per" interval, /* pgrx :: datum :: Interval */
	"burst" INT DEFAULT NULL /* Option < i32 > */
) RETURNS bool /* bool */
VOLATILE PARALLEL UNSAFE
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'set_owner_limit_wrapper';

CREATE FUNCTION "usage_dropped"() RETURNS bigint /* i64 */
STRICT VOLATILE PARALLEL RESTRICTED
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'usage_dropped_wrapper';

DROP FUNCTION apikey.raise_http(text, text, text, boolean);
CREATE FUNCTION apikey.raise_http(sqlstate text, message text, detail text DEFAULT NULL, two_key boolean DEFAULT false)
    RETURNS void LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS
$$
DECLARE
    retry integer;
BEGIN
    CASE
        WHEN sqlstate IN ('28000', '22P02') THEN
            PERFORM apikey.http_error(CASE WHEN two_key THEN 403 ELSE 401 END,
                                      CASE WHEN two_key THEN 'Forbidden' ELSE 'Unauthorized' END,
                                      CASE WHEN sqlstate = '22P02' THEN 'invalid API key' ELSE message END);
        WHEN sqlstate = '42501' THEN
            PERFORM apikey.http_error(403, 'Forbidden', message);
        WHEN sqlstate = 'P0002' THEN
            PERFORM apikey.http_error(404, 'Not Found', message);
        WHEN sqlstate IN ('22023', '22004') THEN
            PERFORM apikey.http_error(400, 'Bad Request', message);
        WHEN sqlstate = '25006' THEN
            PERFORM apikey.http_error(503, 'Service Unavailable', message);
        WHEN sqlstate = '53400' THEN
            -- Clamped, and parsed defensively: a limit's retry-after is at most 31 days, but
            -- DETAIL is text from anywhere and must never turn a 429 into a 500. (The exception
            -- block costs a subtransaction on this path only.)
            -- No retry_after (credits that never refill): 429 without Retry-After.
            BEGIN
                retry := least(greatest(1, (detail::json ->> 'retry_after')::numeric), 2147483647)::integer;
                IF (detail::json ->> 'retry_after') IS NULL THEN
                    retry := NULL;
                END IF;
            EXCEPTION WHEN OTHERS THEN
                retry := 1;
            END;
            PERFORM apikey.http_error(429, 'Rate limit exceeded', message, retry);
        ELSE
            RAISE SQLSTATE '58000' USING message = message;  -- 500, without the original detail
    END CASE;
END
$$;
COMMENT ON FUNCTION apikey.raise_http(text, text, text, boolean) IS
    'Map a pg_apikey SQLSTATE to the documented HTTP answer through PostgREST.';

-- rate_limit_buckets checks administrator rights itself now, so EXECUTE goes back to PUBLIC as
-- on a fresh install (re-created, with the view over it, to get the default privileges).
DROP VIEW apikey.rate_limit_state;
DROP FUNCTION apikey.rate_limit_buckets();
CREATE FUNCTION "rate_limit_buckets"() RETURNS TABLE (
	"bucket" TEXT,  /* String */
	"reset_after_seconds" double precision  /* f64 */
)
STRICT VOLATILE PARALLEL RESTRICTED
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'rate_limit_buckets_wrapper';
-- What the shared-memory limiter holds for this database. Bucket names may name users
-- ("login:bob"), so only administrators see them.
CREATE VIEW apikey.rate_limit_state AS SELECT * FROM apikey.rate_limit_buckets();
COMMENT ON VIEW apikey.rate_limit_state IS 'Buckets of the shared-memory rate limiter in this database, with seconds until each is full again.';

-- Triggers: per-key invalidation replaces 0.1.0's statement triggers, and every cache trigger
-- fires even under session_replication_role = replica.
DROP TRIGGER keys_invalidate_caches ON apikey.keys;
DROP TRIGGER keys_invalidate_caches_on_update ON apikey.keys;
CREATE TRIGGER keys_invalidate_key
    AFTER DELETE ON apikey.keys
    FOR EACH ROW EXECUTE FUNCTION apikey.invalidate_key_trigger();
CREATE TRIGGER keys_invalidate_key_on_update
    AFTER UPDATE OF id, owner, name, format, kind, scopes, resource, display_prefix, last4, digest,
                    expires_in, created_at, created_by, expires_at, revoked_at, disabled_at, allowed_ips, rotated_from, sealed,
                    rate_limit, rate_period, rate_burst, db_role, metadata,
                    refill_amount, refill_interval, limits ON apikey.keys
    FOR EACH ROW EXECUTE FUNCTION apikey.invalidate_key_trigger();
CREATE TRIGGER keys_invalidate_caches
    AFTER TRUNCATE ON apikey.keys
    FOR EACH STATEMENT EXECUTE FUNCTION apikey.invalidate_caches();
-- Even under session_replication_role = replica (logical replication's apply workers): a change
-- that reaches the table must reach the caches.
ALTER TABLE apikey.keys ENABLE ALWAYS TRIGGER keys_invalidate_key;
ALTER TABLE apikey.keys ENABLE ALWAYS TRIGGER keys_invalidate_key_on_update;
ALTER TABLE apikey.keys ENABLE ALWAYS TRIGGER keys_invalidate_caches;
ALTER TABLE apikey.formats ENABLE ALWAYS TRIGGER formats_invalidate_caches;
ALTER TABLE apikey.audit_log ENABLE ALWAYS TRIGGER audit_log_append_only;
ALTER TABLE apikey.audit_log ENABLE ALWAYS TRIGGER audit_log_no_truncate;
CREATE TRIGGER key_imports_invalidate_caches
    AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON apikey.key_imports
    FOR EACH STATEMENT EXECUTE FUNCTION apikey.invalidate_caches();
ALTER TABLE apikey.key_imports ENABLE ALWAYS TRIGGER key_imports_invalidate_caches;
CREATE TRIGGER owner_limits_invalidate_caches
    AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON apikey.owner_limits
    FOR EACH STATEMENT EXECUTE FUNCTION apikey.invalidate_caches();
ALTER TABLE apikey.owner_limits ENABLE ALWAYS TRIGGER owner_limits_invalidate_caches;

-- The admin view: new columns and status, administrators per database.
DROP VIEW apikey.key_list;
CREATE VIEW apikey.key_list WITH (security_barrier) AS
SELECT k.id,
       k.owner,
       k.name,
       k.display_prefix || '…' || k.last4 AS key,
       k.format,
       k.kind,
       CASE
           WHEN k.revoked_at IS NOT NULL AND k.revoked_at <= pg_catalog.now() THEN 'revoked'
           WHEN k.disabled_at IS NOT NULL THEN 'disabled'
           WHEN k.expires_at IS NOT NULL AND k.expires_at <= pg_catalog.now() THEN 'expired'
           ELSE 'active'
       END AS status,
       k.scopes,
       k.resource,
       k.created_at,
       k.expires_at,
       -- Live (unflushed) usage is for administrators; owners see the last flush (seconds old).
       CASE WHEN (SELECT apikey.is_admin())
            THEN GREATEST(k.last_used_at, (SELECT u.last_used_at FROM apikey.usage_live u WHERE u.key_id = k.id))
            ELSE k.last_used_at
       END AS last_used_at,
       k.revoked_at,
       k.disabled_at,
       k.allowed_ips,
       k.credits,
       k.limits,
       k.refill_amount,
       k.refill_interval,
       k.rotated_from,
       k.rate_limit,
       k.rate_period,
       k.rate_burst,
       k.db_role,
       k.metadata
  FROM apikey.keys k
 WHERE (SELECT apikey.is_admin())
    OR k.owner = (SELECT apikey.current_owner());
COMMENT ON VIEW apikey.key_list IS 'Keys masked as prefix…last4 with status active/expired/revoked. Admins see all keys, others the keys of the owner they authenticated as.';

-- Privileges, as a fresh install sets them.
REVOKE ALL ON ALL TABLES IN SCHEMA apikey FROM PUBLIC;
REVOKE ALL ON ALL SEQUENCES IN SCHEMA apikey FROM PUBLIC;
GRANT SELECT ON apikey.formats TO PUBLIC;
GRANT SELECT ON apikey.key_list TO PUBLIC;
REVOKE ALL ON apikey.usage_live, apikey.rate_limit_state FROM PUBLIC;
REVOKE ALL ON FUNCTION apikey.grant_admin(text), apikey.revoke_admin(text) FROM PUBLIC;
REVOKE ALL ON FUNCTION apikey.invalidate_caches(), apikey.invalidate_key_trigger() FROM PUBLIC;

SELECT pg_catalog.pg_extension_config_dump('apikey.admins', '');
SELECT pg_catalog.pg_extension_config_dump('apikey.owner_limits', '');
SELECT pg_catalog.pg_extension_config_dump('apikey.key_imports', '');
SELECT pg_catalog.pg_extension_config_dump('apikey.events', '');
SELECT pg_catalog.pg_extension_config_dump('apikey.events_id_seq', '');
SELECT pg_catalog.pg_extension_config_dump('apikey.announcements', '');
