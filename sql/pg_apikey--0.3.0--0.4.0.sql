-- pg_apikey 0.3.0 → 0.4.0. Run by ALTER EXTENSION pg_apikey UPDATE, after the 0.4.0 library is
-- installed (and the server restarted, since the library is preloaded). Nothing is lost;
-- afterwards the schema is exactly a fresh 0.4.0 install's (tests/test_upgrade.py compares the
-- catalogs).
--
-- 0.4.0 runs a worker in every database where the extension is installed (apikey.usage_databases
-- is gone: remove it from postgresql.conf). A credit balance the worker cannot write into
-- apikey.keys because another transaction holds the key's row now goes to apikey.held_balances.

CREATE TABLE apikey.held_balances (
    key_id      bigint PRIMARY KEY,
    credits     bigint NOT NULL,
    refilled_at timestamptz,
    written_at  timestamptz NOT NULL DEFAULT pg_catalog.now()
);
COMMENT ON TABLE apikey.held_balances IS 'Credit balances written while another transaction held the key''s row in apikey.keys; newer than apikey.keys.credits while present. Written only by the pg_apikey worker.';
REVOKE ALL ON apikey.held_balances FROM PUBLIC;
SELECT pg_catalog.pg_extension_config_dump('apikey.held_balances', '');

CREATE FUNCTION "shared_memory_stats"() RETURNS TABLE (
	"region" INT,
	"worker_pid" INT,
	"usage_slots_used" bigint,
	"usage_slots" bigint,
	"balances_held" bigint,
	"balances" bigint,
	"usage_dropped" bigint
)
STRICT VOLATILE PARALLEL RESTRICTED
LANGUAGE c
AS 'MODULE_PATHNAME', 'shared_memory_stats_wrapper';
