-- pg_apikey 0.2.0 → 0.3.0. Run by ALTER EXTENSION pg_apikey UPDATE, after the 0.3.0 library is
-- installed (and the server restarted, since the library is preloaded). Nothing is lost;
-- afterwards the schema is exactly a fresh 0.3.0 install's (tests/test_upgrade.py compares the
-- catalogs).
--
-- Request limits now belong to a key's rotation lineage (apikey.keys.lineage), so a rotation
-- hands out no fresh allowance; keys rotated before the update join the lineage of the first key
-- of their chain that still exists. Setting or clearing a key's credits now reaches every
-- backend's key cache.

ALTER TABLE apikey.keys ADD COLUMN lineage bigint;
COMMENT ON COLUMN apikey.keys.lineage IS 'The first key of this key''s rotation lineage (NULL: the key itself). Request limits belong to the lineage: a rotation hands out no fresh allowance.';

DROP TRIGGER keys_invalidate_key_on_update ON apikey.keys;
CREATE TRIGGER keys_invalidate_key_on_update
    AFTER UPDATE OF id, owner, name, format, kind, scopes, resource, display_prefix, last4, digest,
                    expires_in, created_at, created_by, expires_at, revoked_at, disabled_at, allowed_ips, rotated_from, sealed,
                    rate_limit, rate_period, rate_burst, db_role, metadata,
                    refill_amount, refill_interval, limits, lineage ON apikey.keys
    FOR EACH ROW EXECUTE FUNCTION apikey.invalidate_key_trigger();
CREATE TRIGGER keys_invalidate_key_on_metering
    AFTER UPDATE OF credits ON apikey.keys
    FOR EACH ROW WHEN ((OLD.credits IS NULL) IS DISTINCT FROM (NEW.credits IS NULL))
    EXECUTE FUNCTION apikey.invalidate_key_trigger();
ALTER TABLE apikey.keys ENABLE ALWAYS TRIGGER keys_invalidate_key_on_update;
ALTER TABLE apikey.keys ENABLE ALWAYS TRIGGER keys_invalidate_key_on_metering;

-- After the trigger that lists lineage: every key whose lineage is set here is invalidated in
-- every backend's cache and the shared key cache, which still hold it without one.
WITH RECURSIVE chain (id, root) AS (
    SELECT k.id, k.id FROM apikey.keys k
     WHERE k.rotated_from IS NULL
        OR NOT EXISTS (SELECT 1 FROM apikey.keys p WHERE p.id OPERATOR(pg_catalog.=) k.rotated_from)
    UNION ALL
    SELECT k.id, c.root FROM apikey.keys k JOIN chain c ON k.rotated_from OPERATOR(pg_catalog.=) c.id
)
UPDATE apikey.keys k SET lineage = c.root
  FROM chain c
 WHERE k.id OPERATOR(pg_catalog.=) c.id AND c.root OPERATOR(pg_catalog.<>) c.id;
