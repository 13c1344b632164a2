-- The api_key type: input validates the shape of a presented key without any table lookup, and a
-- malformed key raises 22P02 naming what is wrong, never echoing the input.
\set VERBOSITY sqlstate
SELECT 'cfk_0123'::apikey.api_key;
\set VERBOSITY terse
SELECT ''::apikey.api_key;
SELECT 'xyz_0123456789'::apikey.api_key;
SELECT ('cfk_' || repeat('a', 63))::apikey.api_key;
SELECT ('cfk_' || repeat('A', 64))::apikey.api_key;
SELECT ('cfk_' || repeat('a', 64) || ' ')::apikey.api_key;
SELECT repeat('a', 600)::apikey.api_key;
SELECT ('ct_live_' || repeat('a', 42) || '_')::apikey.api_key;
SELECT repeat('Z', 42)::apikey.api_key;
-- pak keys carry a CRC32: a one-character typo is refused before any lookup.
SELECT api_key::text AS pak FROM apikey.create('typo-owner', 'pak key', format => 'pak') \gset
SELECT (substr(:'pak', 1, 10) || CASE substr(:'pak', 11, 1) WHEN 'a' THEN 'b' ELSE 'a' END || substr(:'pak', 12))::apikey.api_key;
SELECT length(:'pak'::apikey.api_key::text) AS pak_length;

-- Well-formed keys of every preset parse and print back unchanged.
SELECT f.name,
       k.api_key::text ~ ('^' || f.prefix || CASE f.alphabet WHEN 'hex' THEN '[0-9a-f]' ELSE '[0-9A-Za-z]' END
                         || '{' || f.body_length || '}' || CASE f.checksum WHEN 'crc32' THEN '[0-9A-Za-z]{6}' ELSE '' END || '$') AS matches_regex,
       length(k.api_key::text) AS length,
       k.api_key::text::apikey.api_key::text = k.api_key::text AS round_trips
  FROM apikey.formats f, LATERAL apikey.create('format-owner', 'k ' || f.name, format => f.name) k
 ORDER BY f.name;

-- No error message, detail or hint contains any fragment of the input.
DO $$
DECLARE
  inputs text[] := ARRAY[
    'cfk_' || md5('a') || md5('b') || 'x',
    'cfk_' || upper(md5('a') || md5('b')),
    'qq_' || md5('c'),
    md5('d') || 'ABCDEFGHIJ',
    'pak_' || md5('e') || 'abcdefghijk' || '123456'];
  i text; msg text; det text; hnt text;
BEGIN
  FOREACH i IN ARRAY inputs LOOP
    BEGIN
      PERFORM i::apikey.api_key;
      RAISE EXCEPTION 'accepted a malformed key';
    EXCEPTION WHEN invalid_text_representation THEN
      GET STACKED DIAGNOSTICS msg = MESSAGE_TEXT, det = PG_EXCEPTION_DETAIL, hnt = PG_EXCEPTION_HINT;
      FOR p IN 1 .. length(i) - 7 LOOP
        IF strpos(msg || det || hnt, substr(i, p, 8)) > 0 THEN
          RAISE EXCEPTION 'error text echoes the input';
        END IF;
      END LOOP;
    END;
  END LOOP;
  RAISE NOTICE 'no error echoed its input';
END $$;

-- Binary I/O round-trips and validates too.
SELECT typinput, typoutput, typreceive, typsend FROM pg_type WHERE oid = 'apikey.api_key'::regtype;
-- Text converts implicitly, through the same checks.
SELECT apikey.verify(repeat('x', 43) || '_');
