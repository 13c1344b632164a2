-- pg_apikey finalize: presets, triggers, the admin view, privileges, dump registration.

INSERT INTO apikey.formats (name, prefix, alphabet, body_length, checksum, builtin, description)
SELECT name, prefix, alphabet, body_length, checksum, true, description
  FROM apikey.builtin_formats();

-- Backends cache formats and look keys up through prepared plans; these triggers tell every
-- backend to drop its cache when the tables change.
CREATE TRIGGER formats_invalidate_caches
    AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON apikey.formats
    FOR EACH STATEMENT EXECUTE FUNCTION apikey.invalidate_caches();
CREATE TRIGGER keys_invalidate_caches
    AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON apikey.keys
    FOR EACH STATEMENT EXECUTE FUNCTION apikey.invalidate_caches();

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
           WHEN k.expires_at IS NOT NULL AND k.expires_at <= pg_catalog.now() THEN 'expired'
           ELSE 'active'
       END AS status,
       k.scopes,
       k.resource,
       k.created_at,
       k.expires_at,
       k.last_used_at,
       k.revoked_at,
       k.rotated_from,
       k.rate_limit,
       k.rate_period,
       k.rate_burst,
       k.metadata
  FROM apikey.keys k
 WHERE pg_catalog.pg_has_role(current_user, 'apikey_admin', 'USAGE')
    OR k.owner = apikey.current_owner();
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
GRANT SELECT ON apikey.audit_log TO apikey_admin;
REVOKE ALL ON apikey.rate_limit_state FROM PUBLIC;
GRANT SELECT ON apikey.rate_limit_state TO apikey_admin;
REVOKE ALL ON FUNCTION apikey.rate_limit_buckets() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION apikey.rate_limit_buckets() TO apikey_admin;
REVOKE ALL ON FUNCTION apikey.audit_log_is_append_only() FROM PUBLIC;
REVOKE ALL ON FUNCTION apikey.invalidate_caches() FROM PUBLIC;

-- pg_dump keeps the keys, their history and admin-added formats.
SELECT pg_catalog.pg_extension_config_dump('apikey.keys', '');
SELECT pg_catalog.pg_extension_config_dump('apikey.keys_id_seq', '');
SELECT pg_catalog.pg_extension_config_dump('apikey.audit_log', '');
SELECT pg_catalog.pg_extension_config_dump('apikey.audit_log_id_seq', '');
SELECT pg_catalog.pg_extension_config_dump('apikey.formats', 'WHERE NOT builtin');
SELECT pg_catalog.pg_extension_config_dump('apikey.rate_limits', '');

-- Text converts to api_key implicitly (through the checking input function), so callers can pass
-- a text column, a header value or an untyped parameter straight to verify/authenticate.
CREATE CAST (text AS apikey.api_key) WITH INOUT AS IMPLICIT;
