-- pg_apikey bootstrap: the shell type and the tables. CREATE EXTENSION runs this with
-- search_path = apikey; every name is qualified anyway.

-- Adopt nothing: CREATE EXTENSION installs into an existing schema called apikey, and whoever
-- controls a schema controls every name in it (an overloaded apikey.verify(text) would see
-- plaintext keys). Go on only if the schema is what CREATE EXTENSION itself would have made: owned
-- by a superuser, empty, with no CREATE right or default privileges for anyone else. (pg_dump
-- writes CREATE SCHEMA apikey before CREATE EXTENSION, as the restoring superuser: that passes.)
-- Operators and functions are qualified: the schema in question is on the search_path here.
DO $$
DECLARE
    nsp pg_catalog.oid;
    nsp_owner pg_catalog.oid;
    owner_is_super boolean;
BEGIN
    SELECT n.oid, n.nspowner, r.rolsuper INTO nsp, nsp_owner, owner_is_super
      FROM pg_catalog.pg_namespace n
      JOIN pg_catalog.pg_roles r ON r.oid OPERATOR(pg_catalog.=) n.nspowner
     WHERE n.nspname OPERATOR(pg_catalog.=) 'apikey'::pg_catalog.name;
    IF NOT owner_is_super
       OR EXISTS (SELECT 1 FROM pg_catalog.pg_depend d
                   WHERE d.refclassid OPERATOR(pg_catalog.=) 'pg_catalog.pg_namespace'::pg_catalog.regclass
                     AND d.refobjid OPERATOR(pg_catalog.=) nsp
                     AND d.classid OPERATOR(pg_catalog.<>) 'pg_catalog.pg_extension'::pg_catalog.regclass)
       OR EXISTS (SELECT 1 FROM pg_catalog.pg_namespace n, pg_catalog.aclexplode(n.nspacl) a
                   WHERE n.oid OPERATOR(pg_catalog.=) nsp
                     AND a.grantee OPERATOR(pg_catalog.<>) nsp_owner
                     AND a.privilege_type OPERATOR(pg_catalog.=) 'CREATE')
       OR EXISTS (SELECT 1 FROM pg_catalog.pg_default_acl da
                   WHERE da.defaclnamespace OPERATOR(pg_catalog.=) nsp)
    THEN
        RAISE EXCEPTION 'schema "apikey" already exists and was not made for pg_apikey'
            USING ERRCODE = '42P06',
                  DETAIL = 'pg_apikey installs only into a new schema, or an empty one owned by a superuser that grants CREATE to nobody else.',
                  HINT = 'Drop or rename the existing schema apikey, then run CREATE EXTENSION pg_apikey again.';
    END IF;
END
$$;

CREATE TYPE apikey.api_key;

-- Administrators of this database (roles are cluster-wide; this list is not). Changed only by
-- apikey.grant_admin / apikey.revoke_admin, which superusers call.
CREATE TABLE apikey.admins (
    role       oid PRIMARY KEY,
    role_name  name NOT NULL,
    granted_by text NOT NULL,
    granted_at timestamptz NOT NULL DEFAULT pg_catalog.now()
);
COMMENT ON TABLE apikey.admins IS 'pg_apikey administrators of this database: these roles and their members manage every key here. Use apikey.grant_admin(role) and apikey.revoke_admin(role).';
COMMENT ON COLUMN apikey.admins.role IS 'The role''s OID. The entry counts only while that role still has role_name: it is never adopted by a new role of the same name. After a restore into another cluster, grant again.';

CREATE TABLE apikey.formats (
    name        text PRIMARY KEY,
    prefix      text NOT NULL,
    alphabet    text NOT NULL CHECK (alphabet IN ('hex', 'base62')),
    body_length integer NOT NULL CHECK (body_length > 0),
    checksum    text NOT NULL DEFAULT 'none' CHECK (checksum IN ('none', 'crc32')),
    recoverable boolean NOT NULL DEFAULT false,
    builtin     boolean NOT NULL DEFAULT false,
    description text
);
COMMENT ON TABLE apikey.formats IS 'Key formats: prefix, alphabet, body length and optional checksum. Add rows with apikey.add_format().';

CREATE SEQUENCE apikey.keys_id_seq;
CREATE TABLE apikey.keys (
    id             bigint PRIMARY KEY DEFAULT pg_catalog.nextval('apikey.keys_id_seq'),
    owner          text NOT NULL CHECK (owner <> ''),
    name           text NOT NULL CHECK (pg_catalog.btrim(name) <> ''),
    format         text NOT NULL REFERENCES apikey.formats (name) ON UPDATE CASCADE,
    kind           text NOT NULL DEFAULT 'user' CHECK (kind IN ('user', 'app')),
    scopes         text[],
    resource       text,
    display_prefix text NOT NULL,
    last4          text NOT NULL,
    digest         bytea NOT NULL CHECK (pg_catalog.octet_length(digest) = 32),
    expires_in     interval,
    created_at     timestamptz NOT NULL DEFAULT pg_catalog.now(),
    created_by     text NOT NULL,
    expires_at     timestamptz,
    last_used_at   timestamptz,
    revoked_at     timestamptz,
    rotated_from   bigint,
    sealed         bytea,
    rate_limit     integer CHECK (rate_limit > 0),
    rate_period    interval CHECK (rate_period > interval '0'),
    rate_burst     integer CHECK (rate_burst > 0),
    db_role        text,
    metadata       jsonb NOT NULL DEFAULT '{}'
                   CHECK (pg_catalog.octet_length(metadata::text) <= 65536),
    -- Added in 0.2.0 (after the 0.1.0 columns, so an upgraded table has the same column order).
    disabled_at    timestamptz,
    allowed_ips    cidr[],
    credits        bigint CHECK (credits >= 0),
    refill_amount  bigint CHECK (refill_amount > 0),
    refill_interval interval CHECK (refill_interval > interval '0'),
    credits_refilled_at timestamptz,
    credits_peak   bigint,
    limits         jsonb NOT NULL DEFAULT '{}' CHECK (pg_catalog.jsonb_typeof(limits) = 'object'),
    -- Added in 0.3.0 (after the 0.2.0 columns, for the same reason).
    lineage        bigint,
    CHECK ((rate_limit IS NULL) = (rate_period IS NULL)),
    CHECK (rate_burst IS NULL OR rate_limit IS NOT NULL),
    CHECK ((refill_amount IS NULL) = (refill_interval IS NULL)),
    CHECK (refill_amount IS NULL OR credits IS NOT NULL)
);
ALTER SEQUENCE apikey.keys_id_seq OWNED BY apikey.keys.id;
CREATE UNIQUE INDEX keys_digest_key ON apikey.keys (digest);
-- Verify probes this one: SHA-256 digests are uniformly spread, so a hash index finds a key in
-- one bucket page where the B-tree needs a descent of bytea comparisons. The B-tree stays for
-- uniqueness.
CREATE INDEX keys_digest_hash ON apikey.keys USING hash (digest);
CREATE INDEX keys_owner_idx ON apikey.keys (owner);
-- The usage worker's search for keys about to expire (apikey.expiry_notice_days).
CREATE INDEX keys_expires_at_idx ON apikey.keys (expires_at) WHERE expires_at IS NOT NULL;
COMMENT ON TABLE apikey.keys IS 'API keys: SHA-256 digests and metadata, never the plaintext. Not readable by ordinary roles; see apikey.key_list.';
COMMENT ON COLUMN apikey.keys.digest IS 'SHA-256 of the whole key text.';
COMMENT ON COLUMN apikey.keys.sealed IS 'Recoverable formats only: the key sealed with XChaCha20-Poly1305 under apikey.encryption_key, bound to the digest.';
COMMENT ON COLUMN apikey.keys.rate_limit IS 'Per-key request limit: rate_limit requests per rate_period, bursts of rate_burst (default rate_limit), checked by apikey.authenticate in shared memory.';
COMMENT ON COLUMN apikey.keys.db_role IS 'Database role apikey.pre_request switches to for this key (NULL: apikey.default_role).';
COMMENT ON COLUMN apikey.keys.limits IS 'Named limits: {"name": {"max": N, "per": interval, "per_us": microseconds, "burst": N}}. "requests" is charged by apikey.authenticate, any name by apikey.charge(name).';
COMMENT ON COLUMN apikey.keys.credits IS 'Credits left (NULL: not usage-limited), as last written by the usage worker; the live balance is in shared memory (apikey.credits(id)).';
COMMENT ON COLUMN apikey.keys.allowed_ips IS 'Addresses the key may be used from (NULL: any). Checked before anything is charged.';
COMMENT ON COLUMN apikey.keys.disabled_at IS 'Set while the key is disabled (apikey.disable); apikey.enable clears it. Unlike a revoke, reversible.';
COMMENT ON COLUMN apikey.keys.credits_peak IS 'The most credits the key has held (at creation or after apikey.add_credits): what the credits_low event measures against when the key has no refill.';
COMMENT ON COLUMN apikey.keys.lineage IS 'The first key of this key''s rotation lineage (NULL: the key itself). Request limits belong to the lineage: a rotation hands out no fresh allowance.';
COMMENT ON COLUMN apikey.keys.revoked_at IS 'When the key stops working; in the future while a rotated key is in its grace period.';

CREATE SEQUENCE apikey.audit_log_id_seq;
CREATE TABLE apikey.audit_log (
    id            bigint PRIMARY KEY DEFAULT pg_catalog.nextval('apikey.audit_log_id_seq'),
    at            timestamptz NOT NULL DEFAULT pg_catalog.now(),
    action        text NOT NULL CHECK (action IN ('create', 'revoke', 'delete', 'rotate', 'reveal', 'disable', 'enable', 'add_credits',
                                           'import', 'rehash', 'leaked')),
    key_id        bigint NOT NULL,
    owner         text NOT NULL,
    key_name      text NOT NULL,
    actor         text NOT NULL,
    session_actor text NOT NULL,
    actor_key_id  bigint,
    detail        jsonb NOT NULL DEFAULT '{}'
);
ALTER SEQUENCE apikey.audit_log_id_seq OWNED BY apikey.audit_log.id;
CREATE INDEX audit_log_key_idx ON apikey.audit_log (key_id);
COMMENT ON TABLE apikey.audit_log IS 'Append-only history of key changes (create, revoke, delete, rotate), written in the same transaction. Never holds a secret.';
COMMENT ON COLUMN apikey.audit_log.actor IS 'The role that called the function (current_user at the call).';
COMMENT ON COLUMN apikey.audit_log.session_actor IS 'session_user: the login role (for PostgREST, the authenticator).';
COMMENT ON COLUMN apikey.audit_log.actor_key_id IS 'The key the caller had authenticated with in that transaction, if any.';

CREATE TABLE apikey.owner_limits (
    owner      text NOT NULL CHECK (owner <> ''),
    name       text NOT NULL CHECK (name <> ''),
    max        integer NOT NULL CHECK (max > 0),
    per        interval NOT NULL CHECK (per > interval '0'),
    burst      integer CHECK (burst > 0),
    set_by     text NOT NULL,
    set_at     timestamptz NOT NULL DEFAULT pg_catalog.now(),
    global     boolean NOT NULL DEFAULT false,
    PRIMARY KEY (owner, name)
);
COMMENT ON TABLE apikey.owner_limits IS 'Limits shared by all keys of an owner: owner is an owner, a pattern with * (team-*), or * for every owner; exact beats pattern (longer first) beats *. Set with apikey.set_owner_limit.';

CREATE TABLE apikey.usage (
    key_id       bigint NOT NULL,
    bucket       timestamptz NOT NULL,
    uses         bigint NOT NULL DEFAULT 0,
    expired      bigint NOT NULL DEFAULT 0,
    revoked      bigint NOT NULL DEFAULT 0,
    rate_limited bigint NOT NULL DEFAULT 0,
    denied       bigint NOT NULL DEFAULT 0,
    PRIMARY KEY (key_id, bucket)
);
COMMENT ON TABLE apikey.usage IS 'Per-key counts per minute (the minute of the flush that wrote them): uses and refusals by reason. Written by the pg_apikey usage worker.';

-- Added in 0.4.0. Credit balances the worker could not write into apikey.keys because another
-- transaction held the key's row (a holder idling after touching it): kept here until the row is
-- free, so no holder can stretch what a crash forgets. No foreign key: writing here must not
-- wait on the key's row either.
CREATE TABLE apikey.held_balances (
    key_id      bigint PRIMARY KEY,
    credits     bigint NOT NULL,
    refilled_at timestamptz,
    written_at  timestamptz NOT NULL DEFAULT pg_catalog.now()
);
COMMENT ON TABLE apikey.held_balances IS 'Credit balances written while another transaction held the key''s row in apikey.keys; newer than apikey.keys.credits while present. Written only by the pg_apikey worker.';

-- Added in 0.5.0. Credits the primary has leased to its standbys (apikey.lease_exchange): already
-- taken out of the key's balance, given back only by the standby that holds them, forgotten
-- (counted spent) once expired. No foreign key: a lease must not wait on the key's row.
CREATE TABLE apikey.leases (
    standby    text NOT NULL,
    key_id     bigint NOT NULL,
    held       bigint NOT NULL CHECK (held >= 0),
    granted_at timestamptz NOT NULL,
    expires_at timestamptz NOT NULL,
    PRIMARY KEY (standby, key_id)
);
COMMENT ON TABLE apikey.leases IS 'Credits leased to standbys: per standby worker and key, what it holds (already taken out of the key''s balance) and until when. Written only by apikey.lease_exchange on the primary.';

CREATE TYPE apikey.key_info AS (
    id         bigint,
    owner      text,
    name       text,
    kind       text,
    format     text,
    scopes     text[],
    resource   text,
    created_at timestamptz,
    expires_at timestamptz,
    metadata   jsonb
);
COMMENT ON TYPE apikey.key_info IS 'What apikey.verify returns about a valid key.';

CREATE TABLE apikey.rate_limits (
    bucket     text PRIMARY KEY,
    hits       bigint[] NOT NULL DEFAULT '{}',
    updated_at timestamptz NOT NULL DEFAULT pg_catalog.now()
);
COMMENT ON TABLE apikey.rate_limits IS 'Durable rate-limit state: for each bucket, the recent event times in epoch microseconds.';

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
