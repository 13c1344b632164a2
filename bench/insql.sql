-- In-SQL verifications per second: each candidate verifies keys in one statement, in one
-- transaction, so only the verification itself is timed. Ratios are printed against apikey.verify.
\set ON_ERROR_STOP 1
CREATE TEMP TABLE results (what text, calls int, seconds float8);
DO $$
DECLARE t0 timestamptz; n int; ks text[];
BEGIN
    -- Each call takes its key from the row number, so the planner cannot call once per key and
    -- reuse the result across rows: every row is one verification.
    SELECT array_agg(api_key ORDER BY id) INTO ks FROM bench.keys;
    -- Warm plans and caches.
    PERFORM (SELECT count(*) FROM bench.keys k, LATERAL apikey.verify(k.api_key) v);
    PERFORM (SELECT count(*) FROM bench.keys k, LATERAL bench.plpgsql_verify(k.api_key) v);

    t0 := clock_timestamp();
    SELECT count(*) INTO n FROM generate_series(0, 19999) g, LATERAL apikey.verify(ks[1 + g % 1000]) v;
    INSERT INTO results VALUES ('apikey.verify', n, extract(epoch FROM clock_timestamp() - t0));

    t0 := clock_timestamp();
    SELECT count(*) INTO n FROM generate_series(0, 19999) g, LATERAL bench.plpgsql_verify(ks[1 + g % 1000]) v;
    INSERT INTO results VALUES ('PL/pgSQL sha256() recipe', n, extract(epoch FROM clock_timestamp() - t0));

    t0 := clock_timestamp();
    SELECT count(*) INTO n FROM (SELECT api_key FROM bench.keys ORDER BY id LIMIT 20) k, LATERAL bench.bcrypt_verify(k.api_key) v;
    INSERT INTO results VALUES ('bcrypt crypt() cost 10', n, extract(epoch FROM clock_timestamp() - t0));
END
$$;
SELECT what AS "in-SQL verify", calls,
       round((calls / seconds)::numeric) AS "per second",
       round((calls / seconds / (SELECT calls / seconds FROM results WHERE what = 'apikey.verify'))::numeric, 4)
           AS "ratio to apikey.verify"
  FROM results ORDER BY 3 DESC;
