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

-- Cumulative statistics in PostgreSQL's own style (pg_stat_database): one row per database.
-- apikey.stat_rows() decides who sees which rows, so the view is PUBLIC.
CREATE VIEW apikey.stat AS
SELECT s.datid, d.datname,
       s.verifications, s.refused_invalid, s.refused_malformed, s.refused_expired,
       s.refused_disabled, s.refused_address, s.refused_rate_limited, s.refused_credits,
       s.refused_scope, s.refused_other,
       s.backend_cache_hits, s.shared_cache_hits, s.cache_misses,
       s.usage_slots_used, s.usage_slots, s.usage_dropped, s.balances_held, s.balances,
       s.limiter_buckets_used, s.limiter_buckets,
       s.worker_pid, s.last_flush, pg_catalog.now() OPERATOR(pg_catalog.-) s.last_flush AS flush_lag,
       s.stats_reset
  FROM apikey.stat_rows() s
  LEFT JOIN pg_catalog.pg_database d ON d.oid OPERATOR(pg_catalog.=) s.datid;
COMMENT ON VIEW apikey.stat IS 'Cumulative statistics per database: keys presented, refusals by reason, where lookups were answered, how full the shared tables are, the worker''s last flush. pg_read_all_stats members see every database, pg_apikey administrators theirs.';

-- Privileges. Tables: none for ordinary roles (the functions switch to the extension owner).
REVOKE ALL ON ALL TABLES IN SCHEMA apikey FROM PUBLIC;
REVOKE ALL ON ALL SEQUENCES IN SCHEMA apikey FROM PUBLIC;
GRANT USAGE ON SCHEMA apikey TO PUBLIC;
GRANT SELECT ON apikey.formats TO PUBLIC;
GRANT SELECT ON apikey.key_list TO PUBLIC;
GRANT SELECT ON apikey.stat TO PUBLIC;
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

-- Raise an HTTP answer through PostgREST: PostgREST's JSON body {code, message, details, hint}
-- with Coldflow's {"error": …} beside it (the short title its clients read; details carries it
-- too), and headers: Retry-After, and on a 401 the challenge RFC 6750 §3 asks for. Never
-- includes a key.
CREATE FUNCTION apikey.http_error(status integer, error text, message text, retry_after integer DEFAULT NULL,
                                  hint text DEFAULT NULL, challenge text DEFAULT NULL)
    RETURNS void LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS
$$
DECLARE
    headers jsonb := '{}';
BEGIN
    IF retry_after IS NOT NULL THEN
        headers := headers || jsonb_build_object('Retry-After', retry_after::text);
    END IF;
    IF status = 401 THEN
        headers := headers || jsonb_build_object('WWW-Authenticate', coalesce(challenge, 'Bearer realm="api"'));
    END IF;
    RAISE SQLSTATE 'PGRST' USING
        message = json_build_object('code', 'APIKEY' || status, 'message', message,
                                    'details', error, 'hint', hint, 'error', error)::text,
        detail = json_build_object('status', status, 'headers', headers)::text;
END
$$;
COMMENT ON FUNCTION apikey.http_error(integer, text, text, integer, text, text) IS
    'Raise an HTTP error through PostgREST (RAISE SQLSTATE ''PGRST''): status, JSON body {code, message, details, hint, error}, Retry-After, and a WWW-Authenticate challenge on 401.';

-- Turn one of pg_apikey's (or the application's) errors into the HTTP answer the seeds document:
-- 28000 / 22P02 → 401 (403 for two-key requests), 42501 → 403, P0002 → 404, 22023 / 22004 → 400,
-- 25006 (a change on a standby) and 57P03 (a standby that cannot reach the primary for credits) → 503,
-- 53400 → 429 with Retry-After from the DETAIL. Anything else becomes a 500.
CREATE FUNCTION apikey.raise_http(sqlstate text, message text, detail text DEFAULT NULL, two_key boolean DEFAULT false,
                                 hint text DEFAULT NULL, key_sent boolean DEFAULT NULL)
    RETURNS void LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS
$$
DECLARE
    retry integer;
BEGIN
    CASE
        WHEN sqlstate IN ('28000', '22P02') THEN
            -- RFC 6750 §3.1: error="invalid_token" when a key was presented and refused; a request
            -- that sent none gets the bare challenge.
            PERFORM apikey.http_error(CASE WHEN two_key THEN 403 ELSE 401 END,
                                      CASE WHEN two_key THEN 'Forbidden' ELSE 'Unauthorized' END,
                                      CASE WHEN sqlstate = '22P02' THEN 'invalid API key' ELSE message END,
                                      hint => CASE WHEN sqlstate = '22P02' THEN NULL ELSE hint END,
                                      challenge => CASE WHEN key_sent OR sqlstate = '22P02'
                                                        THEN 'Bearer realm="api", error="invalid_token"'
                                                        ELSE 'Bearer realm="api"' END);
        WHEN sqlstate = '42501' THEN
            PERFORM apikey.http_error(403, 'Forbidden', message, hint => hint);
        WHEN sqlstate = 'P0002' THEN
            PERFORM apikey.http_error(404, 'Not Found', message, hint => hint);
        WHEN sqlstate IN ('22023', '22004') THEN
            PERFORM apikey.http_error(400, 'Bad Request', message, hint => hint);
        WHEN sqlstate = '25006' THEN
            PERFORM apikey.http_error(503, 'Service Unavailable', message);
        WHEN sqlstate = '57P03' THEN
            -- A standby that cannot reach the primary leasing it credits: try again shortly.
            PERFORM apikey.http_error(503, 'Service Unavailable', message, 1, hint => hint);
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
COMMENT ON FUNCTION apikey.raise_http(text, text, text, boolean, text, boolean) IS
    'Map a pg_apikey SQLSTATE to the documented HTTP answer through PostgREST (with the error''s HINT, and whether a key was sent for the 401 challenge).';

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
                                  (failure ->> 'two_key')::boolean, failure ->> 'hint',
                                  (failure ->> 'key_sent')::boolean);
    END IF;
END
$$;
COMMENT ON FUNCTION apikey.pre_request() IS
    'PostgREST db-pre-request: authenticate from x-api-key (or the x-api-app-authorization + x-api-authorization pair) and SET LOCAL ROLE to the key''s role.';

-- Descriptions: every function and type says what it does (\df+, pgAdmin).
COMMENT ON FUNCTION apikey.add_credits IS
    'Add n credits to key id (a negative n takes some away, never below zero) and return the new balance. Administrators only (42501); audited; 22023 for a key created without credits.';
COMMENT ON FUNCTION apikey.add_format IS
    'Add a key format: prefix (empty, or ending in _), alphabet hex or base62, body_length (at least 128 random bits), checksum none or crc32, recoverable. Administrators only (42501); returns its name.';
COMMENT ON FUNCTION apikey.alter_format IS
    'Mark format name recoverable (its new keys are also stored sealed under apikey.encryption_key) or not; existing keys keep what they have. Administrators only (42501).';
COMMENT ON FUNCTION apikey.api_key_in IS
    'Input function of type apikey.api_key: accepts only the shape of a known format (prefix, length, alphabet, checksum), else 22P02 saying what is wrong without echoing the input. Reads no key.';
COMMENT ON FUNCTION apikey.api_key_out IS
    'Output function of type apikey.api_key: the key text unchanged.';
COMMENT ON FUNCTION apikey.api_key_recv IS
    'Binary input function of type apikey.api_key: the checks of apikey.api_key_in (22P02).';
COMMENT ON FUNCTION apikey.api_key_send IS
    'Binary output function of type apikey.api_key: the bytes of the key text.';
COMMENT ON FUNCTION apikey.authenticate(apikey.api_key) IS
    'Verify key (errors as apikey.verify), charge its request limits and one credit (53400 when refused, charges final), and make its owner the identity of the current transaction until it ends. Returns the owner; anyone may call.';
COMMENT ON FUNCTION apikey.authenticate(apikey.api_key, bigint) IS
    'apikey.authenticate(key), spending cost credits of a usage-limited key (at least 1; administrators may pass 0 to check without spending). Credits spent are not given back on ROLLBACK.';
COMMENT ON FUNCTION apikey.authenticate(apikey.api_key, apikey.api_key) IS
    'Two-key request: app_key must be a valid key of kind app and user_key one of kind user (28000 otherwise), both within their limits. The identity is the user''s and apikey.current_app() names the application; returns the user.';
COMMENT ON FUNCTION apikey.authenticate_request IS
    'The work of apikey.pre_request: authenticate from PostgREST''s request.headers and SET LOCAL ROLE to the key''s role. NULL when authenticated or anonymous and allowed; otherwise the failure as JSON {sqlstate, message, detail, two_key}, not raised.';
COMMENT ON FUNCTION apikey.bcrypt_checks IS
    'bcrypt computations (or waits as long) this backend has spent verifying keys not found by digest whose format has bcrypt imports waiting.';
COMMENT ON FUNCTION apikey.builtin_formats IS
    'The preset key formats (cfk, ct_live, ct_test, cft, pak) as rows; the install script copies them into apikey.formats.';
COMMENT ON FUNCTION apikey.callback_signature IS
    'The seed''s callback hash: hex SHA-256 of the application key followed by the URL. Prefer apikey.callback_signature_hmac_sha256, which allows no length extension.';
COMMENT ON FUNCTION apikey.callback_signature_hmac_sha256 IS
    'The recommended callback signature: hex HMAC-SHA256 of the URL keyed by the application key.';
COMMENT ON FUNCTION apikey.charge IS
    'Charge cost (default 1) against limit name of the authenticated key and its owner (in a two-key request, of the application''s too), all or nothing. A name none of them defines is 22023, or false with if_defined => true; 53400 with the seconds to wait when refused, 28000 without a key.';
COMMENT ON FUNCTION apikey.clear_owner_limit IS
    'Remove the owner limit name set for owner (an owner, a pattern or *); false if there was none. Administrators only (42501).';
COMMENT ON FUNCTION apikey.create IS
    'Create a key and return its id and the key, shown only here: only its SHA-256 is stored (and a sealed copy for a recoverable format). Administrators create for any owner, an authenticated key holder for its own owner within its key''s rights (42501); counts against the creation quota (53400).';
COMMENT ON FUNCTION apikey.credits IS
    'Credits key id has left (NULL: not usage-limited). Administrators, or the holder of a key of the same owner whose rights cover it; P0002 for a key that does not exist or is not the caller''s.';
COMMENT ON FUNCTION apikey.current_app IS
    'In a two-key request, the application (owner of the app key); otherwise NULL.';
COMMENT ON FUNCTION apikey.current_db_role IS
    'The role apikey.pre_request switches to for this transaction''s key: its db_role, else apikey.default_role, else NULL.';
COMMENT ON FUNCTION apikey.current_key_id IS
    'The id of the key that authenticated the current transaction, or NULL.';
COMMENT ON FUNCTION apikey.current_owner IS
    'The owner the current transaction authenticated as (apikey.authenticate), or NULL; gone at COMMIT or ROLLBACK. Write (SELECT apikey.current_owner()) in policies.';
COMMENT ON FUNCTION apikey.current_resource IS
    'The resource the authenticated key is limited to (in a two-key request, what both keys allow), or NULL: no key, or not limited.';
COMMENT ON FUNCTION apikey.current_scopes IS
    'The scopes of the authenticated key (in a two-key request, what both keys allow), or NULL: no key, or an unscoped key.';
COMMENT ON FUNCTION apikey.delete IS
    'Delete key id: invalid in every session from the commit on; apikey.audit_log keeps its history. Administrators, or a key holder whose rights cover it; P0002 for a key that does not exist or is not the caller''s.';
COMMENT ON FUNCTION apikey.disable IS
    'Disable key id, reversibly: refused with 28000 "API key is disabled" until apikey.enable. Same rights as apikey.revoke; false if it already was disabled; audited.';
COMMENT ON FUNCTION apikey.enable IS
    'Enable disabled key id again; false if it was not disabled, 55000 if it is revoked. Same rights as apikey.revoke; audited.';
COMMENT ON FUNCTION apikey.grant_admin IS
    'Make role (and its members) a pg_apikey administrator of this database, with SELECT on audit_log, usage, usage_live, rate_limit_state, owner_limits and events; false if it already was. Superusers only.';
COMMENT ON FUNCTION apikey.has_permissions IS
    'Do the authenticated key''s scopes satisfy expression, e.g. ''surveys:read AND (metrics:read OR admin:*)''? False without a key; 22023 for a syntax error or a NOT over a scope apikey.deny_scopes does not list.';
COMMENT ON FUNCTION apikey.has_scope IS
    'Does the authenticated key hold scope (surveys:* covers surveys:read)? An unscoped key holds every scope; without a key, false.';
COMMENT ON FUNCTION apikey.import IS
    'Import a key another system issued by the hash it stored (sha256, sha256-base64, or bcrypt with lookup, the key''s beginning), with apikey.create''s settings; returns the id. Administrators only (42501); 23505 if already stored, 22023 for a bad hash or lookup.';
COMMENT ON FUNCTION apikey.import_keys IS
    'Import every row of source, a table owned by the caller with columns named like apikey.import''s arguments: one row each, imported (key_id), duplicate or refused (reason); a refusal stops no other row. Administrators only (42501).';
COMMENT ON FUNCTION apikey.in_resource IS
    'May the authenticated key reach resource? A key without a resource reaches every one; without a key, false.';
COMMENT ON FUNCTION apikey.invalidate_caches IS
    'Statement trigger on apikey.formats, apikey.key_imports, apikey.owner_limits (and TRUNCATE of apikey.keys): every backend drops what it cached of that table at commit.';
COMMENT ON FUNCTION apikey.invalidate_key_trigger IS
    'Row trigger on apikey.keys: a changed or deleted key leaves the shared key cache and every backend''s key cache at commit (standbys replay it too).';
COMMENT ON FUNCTION apikey.is_admin IS
    'Is the current role a pg_apikey administrator of this database (apikey.grant_admin, or a member of such a role) or a superuser?';
COMMENT ON FUNCTION apikey.key_cache_stats IS
    'This backend''s key cache (apikey.key_cache_size): entries, approximate bytes, and lookups that hit or missed since the backend started. Shows no key.';
COMMENT ON FUNCTION apikey.prewarm_key_cache IS
    'Load every live key of this database into the shared key cache, as pg_prewarm does for tables; returns how many keys it holds afterwards. Administrators only (42501).';
COMMENT ON FUNCTION apikey.rate_limit IS
    'The application''s own limit: at most max calls per per (up to 31 days), bursts of burst (default max), in a bucket of the calling role. Returns the calls left; 53400 with the seconds to wait when over. Shared memory: works READ ONLY and on standbys.';
COMMENT ON FUNCTION apikey.rate_limit_buckets IS
    'The shared-memory rate limiter''s buckets in this database, with the seconds until each is full again (behind apikey.rate_limit_state). Administrators only (42501).';
COMMENT ON FUNCTION apikey.report_leaked IS
    'Report keys found in public: each one stored here is revoked at once, audited and announced as leaked with source. One row per key, in order: its SHA-256 (hex) and true_positive or false_positive. Administrators only (42501).';
COMMENT ON FUNCTION apikey.require_resource IS
    'True if the authenticated key may reach resource; 28000 without a key, 42501 naming the resource otherwise.';
COMMENT ON FUNCTION apikey.require_scope IS
    'True if the authenticated key holds scope; 28000 without a key, 42501 naming the scope otherwise.';
COMMENT ON FUNCTION apikey.reveal IS
    'Show recoverable key id again to the holder of a key of its owner whose rights cover it, never to administrators; audited in apikey.audit_log and in the server log, which keeps it after a rollback. 55000 for a key stored only as a digest.';
COMMENT ON FUNCTION apikey.revoke IS
    'Revoke key id: refused in every session from the commit on; false if it already was revoked. Administrators, or a key holder whose rights cover it; P0002 for a key that does not exist or is not the caller''s; audited.';
COMMENT ON FUNCTION apikey.revoke_admin IS
    'Take pg_apikey administrator rights in this database, and the SELECT grants apikey.grant_admin gave, away from role; false if it was none. Superusers only.';
COMMENT ON FUNCTION apikey.rotate IS
    'Replace key id with a new one of the same owner, name and settings, shown once; the old key works for grace (at most apikey.max_rotation_grace, never past its expiry), then is revoked. Counts against the creation quota.';
COMMENT ON FUNCTION apikey.secret_scanning IS
    'GitHub secret scanning''s partner endpoint: takes [{token, type, url, source}], revokes as apikey.report_leaked does, and answers [{token_hash, token_type, label}]. Administrators only (42501).';
COMMENT ON FUNCTION apikey.set_owner_limit IS
    'Set limit name shared by every key of owner (an owner, a pattern with *, or * for everyone): at most max per per, bursts of burst (default max); global: one bucket for the primary and its standbys, which lease tokens of it. Administrators only (42501).';
COMMENT ON FUNCTION apikey.shared_key_cache_stats IS
    'This database''s region of the shared key cache: entries, current capacity, and this backend''s hits and misses in it. Administrators only (42501).';
COMMENT ON FUNCTION apikey.stat_rows IS
    'The rows of apikey.stat: per database, the calls that presented a key, refusals by reason, where lookups were answered, shared-table fill and the worker''s last flush. pg_read_all_stats members get every database, administrators theirs, others none.';
COMMENT ON FUNCTION apikey.stat_reset IS
    'Zero this database''s counters in apikey.stat (stats_reset becomes now). Administrators only (42501).';
COMMENT ON FUNCTION apikey.lease_exchange IS
    'For the workers of standbys, over their replication connection: give back leased credits and lease more from the primary''s ledger (apikey.leases), and lease tokens of global owner limits. Superusers and roles with REPLICATION only (42501).';
COMMENT ON FUNCTION apikey.shared_memory_stats IS
    'This database''s region of pg_apikey''s shared memory (NULL without one), its worker''s pid, usage slots and credit balances in use and available, and usage events dropped. Administrators only (42501).';
COMMENT ON FUNCTION apikey.usage_dropped IS
    'Usage events this database could not record: its usage slots were full of unflushed counts, or it has no shared-memory region. Administrators only (42501).';
COMMENT ON FUNCTION apikey.usage_pending IS
    'Usage in this database''s shared memory: per key, the last use and the counts not yet flushed to apikey.usage (behind apikey.usage_live). Administrators only (42501).';
COMMENT ON FUNCTION apikey.verify IS
    'The record of a valid key; 28000 for an unknown, revoked, deleted, disabled or expired key, 42501 from an address it does not allow. Charges nothing and needs no write: works READ ONLY and on standbys.';
COMMENT ON FUNCTION apikey.verify_callback_signature IS
    'Check in constant time a callback signature made with application key app_id, method ''sha256'' (the seed''s) or ''hmac''. False alike for a wrong signature and an unknown, revoked, expired, user or non-recoverable key.';
COMMENT ON SEQUENCE apikey.audit_log_id_seq IS 'Ids of apikey.audit_log.';
COMMENT ON SEQUENCE apikey.events_id_seq IS 'Ids of apikey.events (the id a notification on apikey_events carries).';
COMMENT ON SEQUENCE apikey.keys_id_seq IS 'Ids of apikey.keys.';
