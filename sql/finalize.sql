-- pg_apikey finalize: presets, triggers, the admin view, privileges, dump registration.

INSERT INTO apikey.formats (name, prefix, alphabet, body_length, checksum, builtin, description)
SELECT name, prefix, alphabet, body_length, checksum, true, description
  FROM apikey.builtin_formats();

-- Backends cache formats and keys. A change to apikey.formats drops every backend's format cache
-- at commit (statement trigger); a change to one key drops that key from every backend's key
-- cache at commit (row trigger, a per-key invalidation that standbys replay too). Creating a key
-- drops nothing. The usage worker's last_used_at updates change nothing a backend caches.
CREATE TRIGGER formats_invalidate_caches
    AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON apikey.formats
    FOR EACH STATEMENT EXECUTE FUNCTION apikey.invalidate_caches();
CREATE TRIGGER keys_invalidate_key
    AFTER DELETE ON apikey.keys
    FOR EACH ROW EXECUTE FUNCTION apikey.invalidate_key_trigger();
CREATE TRIGGER keys_invalidate_key_on_update
    AFTER UPDATE OF id, owner, name, format, kind, scopes, resource, display_prefix, last4, digest,
                    expires_in, created_at, created_by, expires_at, revoked_at, disabled_at, allowed_ips, rotated_from, sealed,
                    rate_limit, rate_period, rate_burst, db_role, metadata,
                    refill_amount, refill_interval, limits, lineage ON apikey.keys
    FOR EACH ROW EXECUTE FUNCTION apikey.invalidate_key_trigger();
-- The balance itself changes with every flush and is not cached; whether a key has one is.
CREATE TRIGGER keys_invalidate_key_on_metering
    AFTER UPDATE OF credits ON apikey.keys
    FOR EACH ROW WHEN ((OLD.credits IS NULL) IS DISTINCT FROM (NEW.credits IS NULL))
    EXECUTE FUNCTION apikey.invalidate_key_trigger();
CREATE TRIGGER keys_invalidate_caches
    AFTER TRUNCATE ON apikey.keys
    FOR EACH STATEMENT EXECUTE FUNCTION apikey.invalidate_caches();
-- Even under session_replication_role = replica (logical replication's apply workers): a change
-- that reaches the table must reach the caches.
ALTER TABLE apikey.keys ENABLE ALWAYS TRIGGER keys_invalidate_key;
ALTER TABLE apikey.keys ENABLE ALWAYS TRIGGER keys_invalidate_key_on_update;
ALTER TABLE apikey.keys ENABLE ALWAYS TRIGGER keys_invalidate_key_on_metering;
ALTER TABLE apikey.keys ENABLE ALWAYS TRIGGER keys_invalidate_caches;
ALTER TABLE apikey.formats ENABLE ALWAYS TRIGGER formats_invalidate_caches;
-- Backends remember whether bcrypt imports wait for their first use (a miss then costs a
-- bcrypt); a change to that table tells them again.
CREATE TRIGGER key_imports_invalidate_caches
    AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON apikey.key_imports
    FOR EACH STATEMENT EXECUTE FUNCTION apikey.invalidate_caches();
ALTER TABLE apikey.key_imports ENABLE ALWAYS TRIGGER key_imports_invalidate_caches;
CREATE TRIGGER owner_limits_invalidate_caches
    AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON apikey.owner_limits
    FOR EACH STATEMENT EXECUTE FUNCTION apikey.invalidate_caches();
ALTER TABLE apikey.owner_limits ENABLE ALWAYS TRIGGER owner_limits_invalidate_caches;

CREATE FUNCTION apikey.audit_log_is_append_only() RETURNS trigger
    LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS
$$
BEGIN
    RAISE EXCEPTION 'apikey.audit_log is append-only' USING ERRCODE = '42501';
END
$$;
COMMENT ON FUNCTION apikey.audit_log_is_append_only() IS 'Refuses UPDATE, DELETE and TRUNCATE on apikey.audit_log.';
CREATE TRIGGER audit_log_append_only
    BEFORE UPDATE OR DELETE ON apikey.audit_log
    FOR EACH ROW EXECUTE FUNCTION apikey.audit_log_is_append_only();
CREATE TRIGGER audit_log_no_truncate
    BEFORE TRUNCATE ON apikey.audit_log
    FOR EACH STATEMENT EXECUTE FUNCTION apikey.audit_log_is_append_only();
ALTER TABLE apikey.audit_log ENABLE ALWAYS TRIGGER audit_log_append_only;
ALTER TABLE apikey.audit_log ENABLE ALWAYS TRIGGER audit_log_no_truncate;

-- Usage still in shared memory (not flushed yet), for this database.
CREATE VIEW apikey.usage_live AS SELECT * FROM apikey.usage_pending();
COMMENT ON VIEW apikey.usage_live IS 'Usage in shared memory not yet written to apikey.usage: exact last use between flushes and on a standby.';

-- The psql admin view: keys masked to prefix and last four, never the digest. Administrators see
-- every key; anyone else sees the keys of the owner they authenticated as.
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

-- What the shared-memory limiter holds for this database. Bucket names may name users
-- ("login:bob"), so only administrators see them.
CREATE VIEW apikey.rate_limit_state AS SELECT * FROM apikey.rate_limit_buckets();
COMMENT ON VIEW apikey.rate_limit_state IS 'Buckets of the shared-memory rate limiter in this database, with seconds until each is full again.';

-- Privileges. Tables: none for ordinary roles (the functions switch to the extension owner).
REVOKE ALL ON ALL TABLES IN SCHEMA apikey FROM PUBLIC;
REVOKE ALL ON ALL SEQUENCES IN SCHEMA apikey FROM PUBLIC;
GRANT USAGE ON SCHEMA apikey TO PUBLIC;
GRANT SELECT ON apikey.formats TO PUBLIC;
GRANT SELECT ON apikey.key_list TO PUBLIC;
-- audit_log, usage, usage_live, rate_limit_state and events: apikey.grant_admin(role) grants SELECT.
REVOKE ALL ON apikey.usage_live, apikey.rate_limit_state FROM PUBLIC;
-- The functions behind those views check for administrator rights themselves (a view calls a
-- function with the invoker's EXECUTE right), so EXECUTE stays with PUBLIC.
REVOKE ALL ON FUNCTION apikey.grant_admin(text), apikey.revoke_admin(text) FROM PUBLIC;
REVOKE ALL ON FUNCTION apikey.audit_log_is_append_only() FROM PUBLIC;
REVOKE ALL ON FUNCTION apikey.invalidate_caches(), apikey.invalidate_key_trigger() FROM PUBLIC;

-- pg_dump keeps the keys, their history and admin-added formats.
SELECT pg_catalog.pg_extension_config_dump('apikey.admins', '');
SELECT pg_catalog.pg_extension_config_dump('apikey.owner_limits', '');
SELECT pg_catalog.pg_extension_config_dump('apikey.keys', '');
SELECT pg_catalog.pg_extension_config_dump('apikey.held_balances', '');
SELECT pg_catalog.pg_extension_config_dump('apikey.keys_id_seq', '');
SELECT pg_catalog.pg_extension_config_dump('apikey.audit_log', '');
SELECT pg_catalog.pg_extension_config_dump('apikey.audit_log_id_seq', '');
SELECT pg_catalog.pg_extension_config_dump('apikey.formats', 'WHERE NOT builtin');
SELECT pg_catalog.pg_extension_config_dump('apikey.rate_limits', '');
SELECT pg_catalog.pg_extension_config_dump('apikey.usage', '');
SELECT pg_catalog.pg_extension_config_dump('apikey.key_imports', '');
SELECT pg_catalog.pg_extension_config_dump('apikey.events', '');
SELECT pg_catalog.pg_extension_config_dump('apikey.events_id_seq', '');
SELECT pg_catalog.pg_extension_config_dump('apikey.announcements', '');

-- Text converts to api_key implicitly (through the checking input function), so callers can pass
-- a text column, a header value or an untyped parameter straight to verify/authenticate.
CREATE CAST (text AS apikey.api_key) WITH INOUT AS IMPLICIT;

-- The PostgREST adapter. PL/pgSQL because PostgREST's custom statuses need
-- RAISE SQLSTATE 'PGRST', a code only PL/pgSQL can raise (pgrx raises standard codes only).

-- Raise an HTTP answer through PostgREST: a JSON body {code, message, details, hint} (details
-- carries the short error title, as the seeds' {"error": …} does) and headers such as
-- Retry-After. Never includes a key.
CREATE FUNCTION apikey.http_error(status integer, error text, message text, retry_after integer DEFAULT NULL)
    RETURNS void LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS
$$
BEGIN
    RAISE SQLSTATE 'PGRST' USING
        message = json_build_object('code', 'APIKEY' || status, 'message', message,
                                    'details', error, 'hint', NULL)::text,
        detail = json_build_object('status', status, 'headers',
                                   CASE WHEN retry_after IS NULL THEN '{}'::json
                                        ELSE json_build_object('Retry-After', retry_after::text) END)::text;
END
$$;
COMMENT ON FUNCTION apikey.http_error(integer, text, text, integer) IS
    'Raise an HTTP error through PostgREST (RAISE SQLSTATE ''PGRST''): status, JSON body and Retry-After.';

-- Turn one of pg_apikey's (or the application's) errors into the HTTP answer the seeds document:
-- 28000 / 22P02 → 401 (403 for two-key requests), 42501 → 403, P0002 → 404, 22023 / 22004 → 400,
-- 25006 (a change on a standby) → 503,
-- 53400 → 429 with Retry-After from the DETAIL. Anything else becomes a 500.
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

-- PostgREST's db-pre-request: authenticate from the request headers and switch to the key's
-- database role. x-api-key carries one key; x-api-app-authorization + x-api-authorization carry
-- the Cool Farm Tool pair. Without a key the request is refused with 401 "API key required",
-- unless PostgREST authenticated it with a JWT or its path is listed in apikey.anonymous_paths. An invalid or expired key is 401 (403 for the
-- two-key pair), a rate-limited key 429 with Retry-After. The work is in
-- apikey.authenticate_request, which reports failures instead of raising them, so the common path
-- runs without an exception block (a subtransaction per request).
CREATE FUNCTION apikey.pre_request() RETURNS void
    LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS
$$
DECLARE
    failure json := apikey.authenticate_request()::json;
BEGIN
    IF failure IS NOT NULL THEN
        PERFORM apikey.raise_http(failure ->> 'sqlstate', failure ->> 'message', failure ->> 'detail',
                                  (failure ->> 'two_key')::boolean);
    END IF;
END
$$;
COMMENT ON FUNCTION apikey.pre_request() IS
    'PostgREST db-pre-request: authenticate from x-api-key (or the x-api-app-authorization + x-api-authorization pair) and SET LOCAL ROLE to the key''s role.';
