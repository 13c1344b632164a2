-- In-SQL limiter decisions per second: the shared-memory limiter against an UPDATE counter
-- table, 100 buckets, limits high enough that every decision is "allowed".
\set ON_ERROR_STOP 1
CREATE TEMP TABLE lresults (what text, calls int, seconds float8);
DO $$
DECLARE t0 timestamptz; n int;
BEGIN
    PERFORM count(apikey.rate_limit('b' || (g % 100), 2000000000, '1 second')) FROM generate_series(1, 1000) g;
    t0 := clock_timestamp();
    SELECT count(apikey.rate_limit('b' || (g % 100), 2000000000, '1 second')) INTO n FROM generate_series(1, 100000) g;
    INSERT INTO lresults VALUES ('apikey.rate_limit (shared memory)', n, extract(epoch FROM clock_timestamp() - t0));
    t0 := clock_timestamp();
    SELECT count(bench.counter_hit('b' || (g % 100))) INTO n FROM generate_series(1, 100000) g;
    INSERT INTO lresults VALUES ('UPDATE counter table', n, extract(epoch FROM clock_timestamp() - t0));
END
$$;
SELECT what AS "in-SQL limiter decision", calls, round((calls / seconds)::numeric) AS "per second",
       round((calls / seconds / (SELECT calls / seconds FROM lresults WHERE what LIKE 'UPDATE%'))::numeric, 2)
           AS "ratio to UPDATE counter"
  FROM lresults ORDER BY 3 DESC;
