//! Every setting of the extension. None is `PGC_USERSET`: none of them may be changed by the role
//! whose requests they govern, and none of them carries identity.

use std::ffi::CString;

use pgrx::{GucContext, GucFlags, GucRegistry, GucSetting};

/// `apikey.default_format`: the format `apikey.create` uses when none is given.
pub static DEFAULT_FORMAT: GucSetting<Option<CString>> =
    GucSetting::<Option<CString>>::new(Some(c"cfk"));

/// `apikey.encryption_key`: 64 hex characters sealing recoverable keys. Set in postgresql.conf
/// (reloadable, superuser-only, hidden from SHOW ALL); never stored in a table.
pub static ENCRYPTION_KEY: GucSetting<Option<CString>> = GucSetting::<Option<CString>>::new(None);

/// `apikey.default_role`: the role `apikey.pre_request` switches to for keys without their own.
pub static DEFAULT_ROLE: GucSetting<Option<CString>> = GucSetting::<Option<CString>>::new(None);

/// `apikey.ledger_conninfo`: how a standby's worker reaches the primary that leases it credits
/// (empty: the standby's own `primary_conninfo`). Superuser-only and hidden: it may hold a
/// password.
pub static LEDGER_CONNINFO: GucSetting<Option<CString>> = GucSetting::<Option<CString>>::new(None);

/// The conninfo a standby's worker leases credits through, if any.
pub fn ledger_conninfo() -> Option<String> {
    LEDGER_CONNINFO
        .get()
        .and_then(|c| c.into_string().ok())
        .filter(|s| !s.trim().is_empty())
}

/// `apikey.track_usage`: count uses and refusals in shared memory (on by default).
pub static TRACK_USAGE: GucSetting<bool> = GucSetting::<bool>::new(true);
/// `apikey.usage_flush_interval`: milliseconds between flushes of usage to tables.
pub static USAGE_FLUSH_INTERVAL: GucSetting<i32> = GucSetting::<i32>::new(5000);
/// `apikey.max_databases`: databases that can use pg_apikey's shared memory at once (each gets
/// a region: usage, credits, its worker, its part of the shared key cache).
pub static MAX_DATABASES: GucSetting<i32> = GucSetting::<i32>::new(64);

/// `apikey.shared_key_cache_size` (kB): shared memory holding recently verified keys, for every
/// backend of the database they belong to; -1 sizes it from `shared_buffers` (see
/// `shared_key_cache_bytes`).
pub static SHARED_KEY_CACHE_SIZE: GucSetting<i32> = GucSetting::<i32>::new(-1);
/// `apikey.shared_key_cache`: whether this session reads and fills the shared key cache.
pub static SHARED_KEY_CACHE: GucSetting<bool> = GucSetting::<bool>::new(true);

/// The shared key cache's size in bytes. The automatic size (-1) is a quarter of
/// `shared_buffers`, at least 8 MB and at most 8 GB, as `wal_buffers = -1` follows
/// `shared_buffers`: a server tuned for its data is tuned for its keys (256 bytes a key, so
/// `shared_buffers = 1GB` holds about a million).
pub fn shared_key_cache_bytes() -> usize {
    const MB: usize = 1024 * 1024;
    match SHARED_KEY_CACHE_SIZE.get() {
        n if n >= 0 => n as usize * 1024,
        _ => {
            // SAFETY: NBuffers is set from shared_buffers before shared memory is sized, and
            // only read here.
            let shared_buffers =
                unsafe { pgrx::pg_sys::NBuffers }.max(0) as usize * pgrx::pg_sys::BLCKSZ as usize;
            (shared_buffers / 4).clamp(8 * MB, 8 * 1024 * MB)
        }
    }
}

pub fn max_databases() -> usize {
    MAX_DATABASES.get().clamp(1, 1024) as usize
}

/// `apikey.max_rotation_grace`: the longest grace `apikey.rotate` accepts, in seconds.
pub static MAX_ROTATION_GRACE: GucSetting<i32> = GucSetting::<i32>::new(7 * 86400);

/// `apikey.anonymous_paths`: PostgREST request paths that may be called without a key.
pub static ANONYMOUS_PATHS: GucSetting<Option<CString>> = GucSetting::<Option<CString>>::new(None);

/// The non-empty, trimmed entries of a comma-separated setting, at most `max` of them.
fn comma_list(setting: &GucSetting<Option<CString>>, max: usize) -> Vec<String> {
    setting
        .get()
        .and_then(|c| c.into_string().ok())
        .unwrap_or_default()
        .split(',')
        .map(|p| p.trim().to_owned())
        .filter(|p| !p.is_empty())
        .take(max)
        .collect()
}

pub fn anonymous_paths() -> Vec<String> {
    comma_list(&ANONYMOUS_PATHS, usize::MAX)
}

/// `apikey.deny_scopes`: scopes that mark restrictions (tested with NOT in permission
/// expressions); a key holding one passes it to every key it creates or manages.
pub static DENY_SCOPES: GucSetting<Option<CString>> = GucSetting::<Option<CString>>::new(None);

pub fn deny_scopes() -> Vec<String> {
    comma_list(&DENY_SCOPES, 64)
}

/// `apikey.default_lifetime`: seconds a new key lives when `create` gets no expiry (0: forever).
pub static DEFAULT_LIFETIME: GucSetting<i32> = GucSetting::<i32>::new(0);
/// `apikey.max_lifetime`: the longest lifetime a key may have, in seconds (0: no maximum).
pub static MAX_LIFETIME: GucSetting<i32> = GucSetting::<i32>::new(0);

/// `apikey.limit_scale`: this server's share of every request limit (1: all of it).
pub static LIMIT_SCALE: GucSetting<f64> = GucSetting::<f64>::new(1.0);

/// `apikey.trusted_proxies`: peers whose X-Forwarded-For header names the client.
pub static TRUSTED_PROXIES: GucSetting<Option<CString>> = GucSetting::<Option<CString>>::new(None);

/// `apikey.creation_check`: a function `(owner text) RETURNS void` that `create`, `import` and
/// `rotate` call first.
pub static CREATION_CHECK: GucSetting<Option<CString>> = GucSetting::<Option<CString>>::new(None);

/// `apikey.expiry_notice_days`: announce keys expiring within each of these many days.
pub static EXPIRY_NOTICE_DAYS: GucSetting<Option<CString>> =
    GucSetting::<Option<CString>>::new(Some(c"7"));
/// `apikey.credits_low_percent`: announce a key whose credits fall below this share.
pub static CREDITS_LOW_PERCENT: GucSetting<i32> = GucSetting::<i32>::new(10);
/// `apikey.limit_event_window`: a key refused by a limit is announced once per this many seconds.
pub static LIMIT_EVENT_WINDOW: GucSetting<i32> = GucSetting::<i32>::new(3600);
/// `apikey.event_retention`: how long `apikey.events` keeps an event.
pub static EVENT_RETENTION: GucSetting<i32> = GucSetting::<i32>::new(7 * 86400);

pub fn expiry_notice_days() -> String {
    EXPIRY_NOTICE_DAYS
        .get()
        .and_then(|c| c.into_string().ok())
        .unwrap_or_default()
}

fn init_events() {
    GucRegistry::define_string_guc(
        c"apikey.expiry_notice_days",
        c"Days before expiry at which a key is announced (event expiring), comma-separated (default 7; empty: never).",
        c"Comma-separated whole days, such as 30, 7, 1; each is announced once per key. Empty: none.",
        &EXPIRY_NOTICE_DAYS,
        GucContext::Sighup,
        GucFlags::default(),
    );
    GucRegistry::define_int_guc(
        c"apikey.credits_low_percent",
        c"Percentage of its credits below which a key is announced (event credits_low) (default 10; 0: never).",
        c"Of its refill amount, or of the most credits it held; announced again only after the balance was above it.",
        &CREDITS_LOW_PERCENT,
        0,
        100,
        GucContext::Sighup,
        GucFlags::default(),
    );
    GucRegistry::define_int_guc(
        c"apikey.limit_event_window",
        c"Seconds of the window in which a key refused by a limit is announced (event limited) once (default 3600, 1 hour).",
        c"One event per key and window, not one per refused request.",
        &LIMIT_EVENT_WINDOW,
        1,
        31 * 86400,
        GucContext::Sighup,
        GucFlags::UNIT_S,
    );
    GucRegistry::define_int_guc(
        c"apikey.event_retention",
        c"Seconds apikey.events keeps an event before it is deleted (default 604800, 7 days).",
        c"The database's worker deletes older events; a database without a worker prunes on every thousandth event.",
        &EVENT_RETENTION,
        60,
        366 * 86400,
        GucContext::Sighup,
        GucFlags::UNIT_S,
    );
}

/// `apikey.key_cache_size`: kilobytes of keys each backend keeps in its cache.
pub static KEY_CACHE_SIZE: GucSetting<i32> = GucSetting::<i32>::new(16 * 1024);

/// `preloaded`: loaded by shared_preload_libraries (postmaster settings can be defined only then).
pub fn init(preloaded: bool) {
    GucRegistry::define_bool_guc(
        c"apikey.shared_key_cache",
        c"Whether this session reads and fills the shared key cache (default on).",
        c"Off: every key this backend's own cache does not hold is read from the table. The cache's size is apikey.shared_key_cache_size.",
        &SHARED_KEY_CACHE,
        GucContext::Suset,
        GucFlags::default(),
    );
    GucRegistry::define_int_guc(
        c"apikey.default_lifetime",
        c"Seconds a new key lives when apikey.create is given no expiry (default 0: it never expires).",
        c"Set per database by a superuser, e.g. ALTER DATABASE app SET apikey.default_lifetime = '90d'.",
        &DEFAULT_LIFETIME,
        0,
        i32::MAX,
        GucContext::Suset,
        GucFlags::UNIT_S,
    );
    GucRegistry::define_int_guc(
        c"apikey.max_lifetime",
        c"Longest lifetime a key may have, in seconds; longer, or never expiring, is refused (default 0: no maximum).",
        c"Applies to apikey.create, to keys created by key holders, and to rotations (capped).",
        &MAX_LIFETIME,
        0,
        i32::MAX,
        GucContext::Suset,
        GucFlags::UNIT_S,
    );
    GucRegistry::define_float_guc(
        c"apikey.limit_scale",
        c"This server's share of every request limit, e.g. 0.5 with two servers sharing traffic (default 1: all of it).",
        c"Limits live in each server's memory; scaling each server's share keeps the total near the limit when traffic is spread evenly.",
        &LIMIT_SCALE,
        0.01,
        1.0,
        GucContext::Sighup,
        GucFlags::default(),
    );
    GucRegistry::define_string_guc(
        c"apikey.trusted_proxies",
        c"Database peers (CIDR blocks, or local for Unix sockets) whose X-Forwarded-For names the client (default empty: none).",
        c"For PostgREST behind a proxy that overwrites X-Forwarded-For. Anyone else's header is ignored.",
        &TRUSTED_PROXIES,
        GucContext::Suset,
        GucFlags::default(),
    );
    GucRegistry::define_string_guc(
        c"apikey.creation_check",
        c"Function (owner text) RETURNS void that create, import and rotate call before making a key (default empty: none).",
        c"Schema-qualified with its argument type, e.g. app.may_create_keys(text). It refuses by raising; raise with SQLSTATE 42501 for HTTP 403 through apikey.raise_http.",
        &CREATION_CHECK,
        GucContext::Suset,
        GucFlags::default(),
    );
    GucRegistry::define_int_guc(
        c"apikey.key_cache_size",
        c"Kilobytes each backend may use to cache verified keys (default 16384, 16MB; 0: no cache).",
        c"Entries are dropped one by one when their key changes, and an eighth at a time when the cache is full.",
        &KEY_CACHE_SIZE,
        0,
        4 * 1024 * 1024,
        GucContext::Suset,
        GucFlags::UNIT_KB,
    );
    GucRegistry::define_int_guc(
        c"apikey.max_rotation_grace",
        c"Longest grace period apikey.rotate accepts, in seconds (default 604800, 7 days).",
        c"During the grace both keys work; a rotation with a grace counts against the creation quota.",
        &MAX_ROTATION_GRACE,
        0,
        365 * 86400,
        GucContext::Suset,
        GucFlags::UNIT_S,
    );
    GucRegistry::define_string_guc(
        c"apikey.anonymous_paths",
        c"PostgREST request paths apikey.pre_request lets through without an API key (default empty: none).",
        c"Comma-separated request.path values such as /rpc/user_key, or * for every path. Empty (the default): every request without a key gets 401.",
        &ANONYMOUS_PATHS,
        GucContext::Suset,
        GucFlags::default(),
    );
    GucRegistry::define_string_guc(
        c"apikey.deny_scopes",
        c"Scopes that mark restrictions, which permission expressions may test with NOT (default empty: none).",
        c"Comma-separated scope names, e.g. reports:embargoed. A key holding one passes it to every key it creates, and manages no key without it; apikey.has_permissions refuses NOT over a scope not listed here.",
        &DENY_SCOPES,
        GucContext::Suset,
        GucFlags::default(),
    );
    GucRegistry::define_bool_guc(
        c"apikey.track_usage",
        c"Record last-used times and usage counts in shared memory (default on).",
        c"Needs shared_preload_libraries; a worker writes them to apikey.keys and apikey.usage.",
        &TRACK_USAGE,
        GucContext::Suset,
        GucFlags::default(),
    );
    GucRegistry::define_int_guc(
        c"apikey.usage_flush_interval",
        c"Milliseconds between the usage worker's writes of usage from shared memory to tables (default 5000, 5s).",
        c"A crash loses at most this much usage; a clean shutdown loses none.",
        &USAGE_FLUSH_INTERVAL,
        10,
        3_600_000,
        GucContext::Sighup,
        GucFlags::UNIT_MS,
    );
    // A postmaster-context setting can only be defined while preloading; without preload there
    // is no worker to configure.
    if preloaded {
        GucRegistry::define_string_guc(
            c"apikey.ledger_conninfo",
            c"Connection string a standby's worker uses to lease credits from the primary (default empty: the standby's primary_conninfo).",
            c"Keyword = value pairs; the database is added. The role needs REPLICATION (or superuser) and a pg_hba.conf line for the database, as a logical replication subscriber's does.",
            &LEDGER_CONNINFO,
            GucContext::Sighup,
            GucFlags::SUPERUSER_ONLY | GucFlags::NO_SHOW_ALL,
        );
        GucRegistry::define_int_guc(
            c"apikey.max_databases",
            c"Databases that can use pg_apikey's shared memory at once (default 64).",
            c"Each database where the extension is used gets a region (usage, credits, its worker, its part of the shared key cache) on first use, given back when the extension or the database is dropped. Read at server start.",
            &MAX_DATABASES,
            1,
            1024,
            GucContext::Postmaster,
            GucFlags::default(),
        );
        GucRegistry::define_int_guc(
            c"apikey.shared_key_cache_size",
            c"Kilobytes of shared memory for keys verified recently (default -1: a quarter of shared_buffers, 8MB to 8GB; 0: off).",
            c"256 bytes per key. Each database's region grows into it on demand and never gives memory up to another database while it lives. Read at server start.",
            &SHARED_KEY_CACHE_SIZE,
            -1,
            16 * 1024 * 1024,
            GucContext::Postmaster,
            GucFlags::UNIT_KB,
        );
    }

    GucRegistry::define_string_guc(
        c"apikey.default_role",
        c"Database role apikey.pre_request switches to for keys that name none (default empty: stay in PostgREST's role).",
        c"The login role must be a member of it.",
        &DEFAULT_ROLE,
        GucContext::Suset,
        GucFlags::default(),
    );
    GucRegistry::define_string_guc(
        c"apikey.encryption_key",
        c"Server key (64 hex characters) that seals keys of recoverable formats (default empty: they cannot be created).",
        c"Keep it out of the database: postgresql.conf or an included file readable only by postgres.",
        &ENCRYPTION_KEY,
        GucContext::Sighup,
        GucFlags::SUPERUSER_ONLY | GucFlags::NO_SHOW_ALL,
    );
    GucRegistry::define_string_guc(
        c"apikey.default_format",
        c"Key format apikey.create uses when given none (default cfk).",
        c"The name of a row in apikey.formats: cfk, ct_live, ct_test, cft, pak or one an administrator added.",
        &DEFAULT_FORMAT,
        GucContext::Suset,
        GucFlags::default(),
    );
    init_quota();
    init_events();
    // SAFETY: called from _PG_init after our settings are defined; removes (with a WARNING) any
    // placeholder apikey.* a session set before the library loaded.
    unsafe { pgrx::pg_sys::MarkGUCPrefixReserved(c"apikey".as_ptr()) };
}

pub fn default_format() -> String {
    DEFAULT_FORMAT
        .get()
        .and_then(|c| c.into_string().ok())
        .unwrap_or_else(|| "cfk".to_owned())
}

/// `apikey.creation_limit`: keys one owner may create per `apikey.creation_period`; 0 = no limit.
pub static CREATION_LIMIT: GucSetting<i32> = GucSetting::<i32>::new(5);
/// `apikey.creation_period`: the window of the creation quota, in seconds.
pub static CREATION_PERIOD: GucSetting<i32> = GucSetting::<i32>::new(3600);

pub fn init_quota() {
    GucRegistry::define_int_guc(
        c"apikey.creation_limit",
        c"API keys one owner may create per apikey.creation_period (default 5; 0: unlimited).",
        c"Over the limit apikey.create raises SQLSTATE 53400 with the seconds to wait in DETAIL.",
        &CREATION_LIMIT,
        0,
        1_000_000,
        GucContext::Suset,
        GucFlags::default(),
    );
    GucRegistry::define_int_guc(
        c"apikey.creation_period",
        c"Seconds in the sliding window of the key-creation quota (default 3600, 1 hour).",
        c"Never more than apikey.creation_limit new keys per owner in any such period.",
        &CREATION_PERIOD,
        1,
        31 * 86400,
        GucContext::Suset,
        GucFlags::UNIT_S,
    );
}
