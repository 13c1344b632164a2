-- Key formats are data: administrators add formats; weak or ambiguous ones are refused.
\set VERBOSITY terse
SELECT name, prefix, alphabet, body_length, checksum, builtin FROM apikey.formats ORDER BY name;
SELECT apikey.add_format('acme', 'acme_', 'base62', 40, 'crc32', description => 'Acme keys');
SELECT api_key::text ~ '^acme_[0-9A-Za-z]{46}$' AS acme_shape FROM apikey.create('acme-owner', 'acme', format => 'acme');
-- Refusals: too little entropy, bad prefix, duplicate prefix, unknown alphabet, unknown format.
SELECT apikey.add_format('weak', 'weak_', 'hex', 16);
SELECT apikey.add_format('nosep', 'nosep', 'hex', 64);
SELECT apikey.add_format('cfk2', 'cfk_', 'hex', 64);
SELECT apikey.add_format('b64', 'b64_', 'base64', 64);
SELECT * FROM apikey.create('x', 'y', format => 'nope');
-- Ordinary roles may read formats but not add them.
SET ROLE regress_attacker;
SELECT count(*) > 0 AS can_read_formats FROM apikey.formats;
SELECT apikey.add_format('evil', 'evil_', 'hex', 64);
INSERT INTO apikey.formats (name, prefix, alphabet, body_length) VALUES ('evil', 'evil_', 'hex', 64);
RESET ROLE;
-- The default format is a superuser-only setting.
SET apikey.default_format = 'ct_live';
SELECT api_key::text LIKE 'ct_live_%' AS live_by_default FROM apikey.create('gucs', 'default');
RESET apikey.default_format;
SET ROLE regress_attacker;
SET apikey.default_format = 'cft';
RESET ROLE;
