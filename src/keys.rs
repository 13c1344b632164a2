//! Key storage and lifecycle: create, verify, revoke, delete, rotate.
//!
//! Only SHA-256 of a key is stored. Verification looks the digest up through the unique index with
//! a read-only, prepared SPI `SELECT` (no xid, so it works in READ ONLY transactions and on a
//! standby), then compares digests in constant time. Every change writes an audit row in the same
//! transaction. All table access runs as the extension owner (see `privilege`).

use std::cell::{Cell, RefCell};
use std::collections::HashMap;

use pg_apikey_core::digest::{ct_eq, sha256, DIGEST_LEN};
use pg_apikey_core::errors::ApiError;
use pg_apikey_core::format::{last_chars, Format};
use pg_apikey_core::gcra::Rate;
use pg_apikey_core::rights::{self, KeyKind, Rights};
use pg_apikey_core::scope;
use pgrx::prelude::*;
use pgrx::{pg_sys, JsonB};
use serde_json::json;

use crate::errors::{raise, spi};
use crate::formats;
use crate::identity::{self, Identity};
use crate::key_type::ApiKey;
use crate::privilege;

/// A stored key as `verify` reports it.
#[derive(Clone)]
pub struct KeyRow {
    pub id: i64,
    pub owner: String,
    pub name: String,
    pub kind: KeyKind,
    pub format: String,
    pub scopes: Option<Vec<String>>,
    pub resource: Option<String>,
    pub created_at: TimestampWithTimeZone,
    pub expires_at: Option<TimestampWithTimeZone>,
    pub metadata: RawJsonb,
    /// The per-key request limit, if any.
    pub rate: Option<Rate>,
    pub db_role: Option<String>,
}

impl KeyRow {
    /// The identity this key gives its holder.
    pub fn identity(self, app: Option<(i64, String)>) -> Identity {
        Identity {
            key_id: self.id,
            owner: self.owner,
            kind: self.kind,
            scopes: self.scopes,
            resource: self.resource,
            app,
            db_role: self.db_role,
            expires_at: self.expires_at.map(Into::into),
            rate: self.rate,
        }
    }
}

/// A cached lookup: the row plus what `judge` needs, as raw timestamps.
struct Cached {
    row: KeyRow,
    digest: [u8; DIGEST_LEN],
    revoked_at: Option<pg_sys::TimestampTz>,
    expires_at: Option<pg_sys::TimestampTz>,
}

const LOOKUP_SQL: &str = "
SELECT id, owner, name, kind, format, scopes, resource, created_at, expires_at, metadata, digest,
       revoked_at, rate_limit, rate_period, rate_burst, db_role
  FROM apikey.keys
 WHERE digest OPERATOR(pg_catalog.=) $1";

/// Enough for every active key of a large deployment; past it the cache starts over.
const CACHE_CAPACITY: usize = 50_000;

thread_local! {
    static LOOKUP_PLAN: Cell<pg_sys::SPIPlanPtr> = const { Cell::new(std::ptr::null_mut()) };
    /// Recently verified keys by digest. Dropped whole by the relcache callback whenever
    /// apikey.keys changes (a statement trigger queues the invalidation; it reaches every backend
    /// at commit, and is replayed locally on abort).
    static CACHE: RefCell<HashMap<[u8; DIGEST_LEN], Cached>> = RefCell::new(HashMap::new());
    static KEYS_RELID: Cell<pg_sys::Oid> = const { Cell::new(pg_sys::InvalidOid) };
}

pub fn relcache_changed(relid: pg_sys::Oid) {
    key_info_changed(relid);
    let ours = KEYS_RELID.get();
    if relid == pg_sys::InvalidOid || relid == ours || ours == pg_sys::InvalidOid {
        CACHE.with_borrow_mut(|c| c.clear());
    }
}

fn internal(what: &'static str) -> ! {
    raise(ApiError::Internal(what))
}

/// The lookup, through raw SPI so it can run under the latest committed snapshot rather than
/// the transaction's: an authorization decision must see a revoke that committed after a
/// REPEATABLE READ transaction began (Postgres' own foreign-key checks do the same). The
/// snapshot still includes this transaction's own changes.
fn fetch(digest: &[u8; DIGEST_LEN]) -> Option<Cached> {
    use pgrx::{FromDatum, IntoDatum};
    let keys_relid = crate::catalog::get().relation("keys");
    KEYS_RELID.set(keys_relid);
    // SAFETY: a self-contained SPI session (connect … finish) in the current memory context; the
    // plan is kept with SPI_keepplan and only used while valid (SPI replans it on invalidation);
    // the tuple is read before SPI_finish frees it, and every datum we keep is copied into Rust
    // values first.
    privilege::as_owner(|| unsafe {
        if pg_sys::SPI_connect() != pg_sys::SPI_OK_CONNECT as i32 {
            internal("SPI_connect failed");
        }
        let mut plan = LOOKUP_PLAN.get();
        if plan.is_null() {
            let sql = std::ffi::CString::new(LOOKUP_SQL).expect("no NUL in SQL");
            let mut argtypes = [pg_sys::BYTEAOID];
            plan = pg_sys::SPI_prepare(sql.as_ptr(), 1, argtypes.as_mut_ptr());
            if plan.is_null() || pg_sys::SPI_keepplan(plan) != 0 {
                internal("could not prepare the key lookup");
            }
            LOOKUP_PLAN.set(plan);
        }
        let mut values = [digest.to_vec().into_datum().expect("bytea datum")];
        let nulls = [b' ' as std::ffi::c_char];
        let rc = pg_sys::SPI_execute_snapshot(
            plan,
            values.as_mut_ptr(),
            nulls.as_ptr(),
            pg_sys::GetLatestSnapshot(),
            std::ptr::null_mut(),
            true,
            false,
            1,
        );
        if rc != pg_sys::SPI_OK_SELECT as i32 {
            internal("the key lookup failed");
        }
        let found = if pg_sys::SPI_processed == 0 {
            None
        } else {
            let table = &*pg_sys::SPI_tuptable;
            let tuple = *table.vals;
            let col = |n: i32| {
                let mut is_null = false;
                let d = pg_sys::SPI_getbinval(tuple, table.tupdesc, n, &mut is_null);
                (d, is_null)
            };
            macro_rules! get {
                ($n:expr, $t:ty) => {{
                    let (d, is_null) = col($n);
                    <$t>::from_polymorphic_datum(d, is_null, pg_sys::InvalidOid)
                }};
            }
            let stored: Vec<u8> = get!(11, Vec<u8>).unwrap_or_default();
            let expires_at = get!(9, TimestampWithTimeZone);
            // Stored limits passed the same checks at creation; a row edited by hand into an
            // invalid limit is refused rather than treated as unlimited.
            let rate = match (get!(13, i32), get!(14, pgrx::datum::Interval)) {
                (Some(limit), Some(period)) => Some(crate::limiter::rate_from(
                    limit as i64,
                    period,
                    get!(15, i32).map(i64::from),
                )),
                _ => None,
            };
            Some(Cached {
                digest: stored.try_into().unwrap_or([0; DIGEST_LEN]),
                revoked_at: get!(12, TimestampWithTimeZone).map(Into::into),
                expires_at: expires_at.map(Into::into),
                row: KeyRow {
                    id: get!(1, i64).unwrap_or_default(),
                    owner: get!(2, String).unwrap_or_default(),
                    name: get!(3, String).unwrap_or_default(),
                    kind: get!(4, String)
                        .and_then(|k| KeyKind::parse(&k))
                        .unwrap_or_else(|| internal("a stored key has an unknown kind")),
                    format: get!(5, String).unwrap_or_default(),
                    scopes: get!(6, Vec<String>),
                    resource: get!(7, String),
                    created_at: get!(8, TimestampWithTimeZone).expect("created_at is NOT NULL"),
                    expires_at,
                    metadata: get!(10, RawJsonb).unwrap_or_default(),
                    rate,
                    db_role: get!(16, String),
                },
            })
        };
        pg_sys::SPI_finish();
        found
    })
}

/// Find the key by digest and judge it. Unknown, revoked and deleted keys are the same error;
/// "expired" is told only to a caller who proved they hold the key (the digest matched).
/// Times are compared with the statement's start, so a key expiring mid-transaction stops
/// working at the next statement.
pub fn lookup(key: &ApiKey) -> KeyRow {
    try_lookup(key.as_str()).unwrap_or_else(|e| raise(e))
}

/// `lookup` for a well-formed key, reporting rather than raising the caller's mistakes.
pub fn try_lookup(key: &str) -> Result<KeyRow, ApiError> {
    let digest = sha256(key.as_bytes());
    // Apply any invalidations other sessions have committed, so a revoke or delete is seen at
    // our next statement even inside a long transaction that takes no new locks.
    // SAFETY: processes the shared invalidation queue; callable at any point in a transaction.
    unsafe { pg_sys::AcceptInvalidationMessages() };
    let hit = CACHE.with_borrow(|c| c.get(&digest).map(|e| judge(e, &digest)));
    if let Some(row) = hit {
        return row;
    }
    let Some(found) = fetch(&digest) else {
        return Err(ApiError::InvalidKey);
    };
    let row = judge(&found, &digest);
    // A transaction that wrote anything may be looking at its own uncommitted keys: keep those
    // out of the cache. Read-only transactions (every verify-only request) populate it.
    // SAFETY: reads the transaction state; no preconditions.
    let wrote = unsafe { pg_sys::GetTopTransactionIdIfAny() } != pg_sys::InvalidTransactionId;
    if !wrote {
        CACHE.with_borrow_mut(|c| {
            if c.len() >= CACHE_CAPACITY {
                c.clear();
            }
            c.insert(digest, found);
        });
    }
    row
}

fn judge(entry: &Cached, digest: &[u8; DIGEST_LEN]) -> Result<KeyRow, ApiError> {
    if !ct_eq(&entry.digest, digest) {
        return Err(ApiError::InvalidKey);
    }
    // SAFETY: reads a backend global.
    let now = unsafe { pg_sys::GetCurrentStatementStartTimestamp() };
    if entry.revoked_at.is_some_and(|t| t <= now) {
        crate::usage::record(entry.row.id, crate::usage::Event::Revoked);
        return Err(ApiError::InvalidKey);
    }
    if entry.expires_at.is_some_and(|t| t <= now) {
        crate::usage::record(entry.row.id, crate::usage::Event::Expired);
        return Err(ApiError::ExpiredKey);
    }
    Ok(entry.row.clone())
}

/// A jsonb value carried as its bytes, so returning cached metadata costs a copy, not a parse.
#[derive(Clone, Default)]
pub struct RawJsonb(Vec<u8>);

impl pgrx::FromDatum for RawJsonb {
    unsafe fn from_polymorphic_datum(
        datum: pg_sys::Datum,
        is_null: bool,
        _: pg_sys::Oid,
    ) -> Option<Self> {
        if is_null {
            return None;
        }
        // SAFETY: a non-null jsonb datum; detoasting yields a varlena whose full size
        // varsize_any reports, and we copy exactly that many bytes.
        unsafe {
            let detoasted = pg_sys::pg_detoast_datum(datum.cast_mut_ptr());
            let len = pgrx::varlena::varsize_any(detoasted);
            Some(RawJsonb(
                std::slice::from_raw_parts(detoasted as *const u8, len).to_vec(),
            ))
        }
    }
}

impl pgrx::IntoDatum for RawJsonb {
    fn into_datum(self) -> Option<pg_sys::Datum> {
        if self.0.is_empty() {
            return JsonB(serde_json::json!({})).into_datum();
        }
        // SAFETY: the bytes are a whole jsonb varlena copied from a datum (see from_polymorphic_datum);
        // palloc gives a buffer of exactly that size in the current context.
        unsafe {
            let ptr = pg_sys::palloc(self.0.len()) as *mut u8;
            std::ptr::copy_nonoverlapping(self.0.as_ptr(), ptr, self.0.len());
            Some(pg_sys::Datum::from(ptr))
        }
    }

    fn type_oid() -> pg_sys::Oid {
        pg_sys::JSONBOID
    }
}

// SAFETY: returns a whole jsonb varlena (or NULL), matching the declared jsonb return type.
unsafe impl pgrx::callconv::BoxRet for RawJsonb {
    unsafe fn box_into<'fcx>(
        self,
        fcinfo: &mut pgrx::callconv::FcInfo<'fcx>,
    ) -> pgrx::datum::Datum<'fcx> {
        use pgrx::IntoDatum;
        match self.into_datum() {
            // SAFETY: a jsonb datum for a function declared to return jsonb.
            Some(d) => unsafe { fcinfo.return_raw_datum(d) },
            None => fcinfo.return_null(),
        }
    }
}

pgrx::impl_sql_translatable!(RawJsonb, "jsonb");

/// `apikey.key_info` as a datum. `verify` returns one composite value rather than a set: a
/// set-returning function costs a multi-call context and a result tuple descriptor per call,
/// which was most of verify's time over the wire.
pub struct KeyInfo(pg_sys::Datum);

// SAFETY: returns a composite datum built with apikey.key_info's own descriptor.
unsafe impl pgrx::callconv::BoxRet for KeyInfo {
    unsafe fn box_into<'fcx>(
        self,
        fcinfo: &mut pgrx::callconv::FcInfo<'fcx>,
    ) -> pgrx::datum::Datum<'fcx> {
        // SAFETY: a key_info composite datum for a function declared to return apikey.key_info.
        unsafe { fcinfo.return_raw_datum(self.0) }
    }
}

pgrx::impl_sql_translatable!(KeyInfo, "apikey.key_info");

thread_local! {
    /// The blessed descriptor of apikey.key_info and the type's relation, kept in
    /// TopMemoryContext; forgotten when that relation's relcache entry is invalidated.
    static KEY_INFO_DESC: Cell<(pg_sys::TupleDesc, pg_sys::Oid)> =
        const { Cell::new((std::ptr::null_mut(), pg_sys::InvalidOid)) };
}

fn key_info_desc() -> pg_sys::TupleDesc {
    let (desc, _) = KEY_INFO_DESC.get();
    if !desc.is_null() {
        return desc;
    }
    // SAFETY: the copied descriptor is allocated in TopMemoryContext so it outlives the call;
    // it is forgotten (and leaked, a few hundred bytes) when the type's relation changes.
    unsafe {
        let typoid = pgrx::wrappers::regtypein("apikey.key_info");
        let old = pg_sys::MemoryContextSwitchTo(pg_sys::TopMemoryContext);
        let desc = pg_sys::BlessTupleDesc(pg_sys::lookup_rowtype_tupdesc_copy(typoid, -1));
        pg_sys::MemoryContextSwitchTo(old);
        KEY_INFO_DESC.set((desc, pg_sys::typeidTypeRelid(typoid)));
        desc
    }
}

fn key_info_changed(relid: pg_sys::Oid) {
    let (desc, typrelid) = KEY_INFO_DESC.get();
    if !desc.is_null() && (relid == pg_sys::InvalidOid || relid == typrelid) {
        KEY_INFO_DESC.set((std::ptr::null_mut(), pg_sys::InvalidOid));
    }
}

/// Check a key and return its record; raises 28000 for an unknown, revoked, deleted or expired key.
#[pg_extern(stable, strict, parallel_restricted, requires = ["api_key_type"])]
fn verify(key: ApiKey) -> KeyInfo {
    use pgrx::IntoDatum;
    let r = lookup(&key);
    crate::usage::record(r.id, crate::usage::Event::Use);
    let desc = key_info_desc();
    let columns = [
        r.id.into_datum(),
        r.owner.into_datum(),
        r.name.into_datum(),
        r.kind.name().into_datum(),
        r.format.into_datum(),
        r.scopes.into_datum(),
        r.resource.into_datum(),
        r.created_at.into_datum(),
        r.expires_at.into_datum(),
        r.metadata.into_datum(),
    ];
    let mut values = columns.map(|d| d.unwrap_or(pg_sys::Datum::from(0)));
    let mut nulls = columns.map(|d| d.is_none());
    // SAFETY: values and nulls have one entry per attribute of the blessed descriptor.
    unsafe {
        let tuple = pg_sys::heap_form_tuple(desc, values.as_mut_ptr(), nulls.as_mut_ptr());
        KeyInfo(pg_sys::heap_copy_tuple_as_datum(tuple, desc))
    }
}

/// Who is calling a management function, captured before switching to the extension owner.
pub struct Caller {
    pub name: String,
    pub admin: bool,
    pub identity: Option<Identity>,
}

impl Caller {
    pub fn get() -> Self {
        Caller {
            name: privilege::caller_name(),
            admin: privilege::caller_is_admin(),
            identity: identity::current(),
        }
    }

    /// Admins manage every key; anyone else only keys of the owner they authenticated as.
    fn may_manage(&self, owner: &str) -> bool {
        self.admin || self.identity.as_ref().is_some_and(|i| i.owner == owner)
    }
}

pub fn audit(
    caller: &Caller,
    action: &str,
    key_id: i64,
    owner: &str,
    key_name: &str,
    detail: serde_json::Value,
) {
    spi(Spi::connect_mut(|c| {
        c.update(
            "INSERT INTO apikey.audit_log (action, key_id, owner, key_name, actor, session_actor, actor_key_id, detail)
             VALUES ($1, $2, $3, $4, $5, session_user, $6, $7)",
            None,
            &[
                action.into(),
                key_id.into(),
                owner.into(),
                key_name.into(),
                caller.name.clone().into(),
                caller.identity.as_ref().map(|i| i.key_id).into(),
                JsonB(detail).into(),
            ],
        )
        .map(|_| ())
    }))
}

fn invalid(msg: impl Into<String>) -> ! {
    raise(ApiError::InvalidArgument(msg.into()))
}

fn required<'a>(value: Option<&'a str>, arg: &'static str) -> &'a str {
    match value {
        None => raise(ApiError::NullArgument(arg)),
        Some(v) if v.trim().is_empty() => invalid(format!("{arg} must not be empty")),
        Some(v) if v.chars().count() > 200 => {
            invalid(format!("{arg} must be at most 200 characters"))
        }
        Some(v) => v,
    }
}

/// Metadata is returned by every verify and cached per backend, so it is bounded: key holders
/// may attach at most this much (it is theirs to write, so nothing may trust it for
/// authorization), administrators up to the table's own limit.
const HOLDER_METADATA_BYTES: usize = 4096;
const ADMIN_METADATA_BYTES: usize = 65536;

/// A freshly generated key and the parts of it we store.
struct NewKey {
    plaintext: String,
    digest: Vec<u8>,
    display_prefix: String,
    last4: String,
}

fn generate(format: &Format) -> NewKey {
    let plaintext = format
        .generate()
        .unwrap_or_else(|_| internal("the operating system's random generator failed"));
    NewKey {
        digest: sha256(plaintext.as_bytes()).to_vec(),
        display_prefix: format.display_prefix(&plaintext).to_owned(),
        last4: last_chars(&plaintext).to_owned(),
        plaintext,
    }
}

/// `now() + interval` as Postgres computes it (months and days included), in microseconds.
fn now_plus(interval: Interval) -> i64 {
    let t: Option<TimestampWithTimeZone> = spi(Spi::get_one_with_args(
        "SELECT pg_catalog.now() OPERATOR(pg_catalog.+) $1",
        &[interval.into()],
    ));
    t.map(Into::into)
        .unwrap_or_else(|| internal("now() + interval was NULL"))
}

fn timestamptz(us: Option<i64>) -> Option<TimestampWithTimeZone> {
    us.map(|t| {
        TimestampWithTimeZone::try_from(t).unwrap_or_else(|_| invalid("expiry is out of range"))
    })
}

/// Create a key. The plaintext is returned here and never again.
#[allow(clippy::too_many_arguments)]
#[pg_extern(volatile, parallel_unsafe, requires = ["api_key_type"])]
fn create(
    owner: Option<&str>,
    name: Option<&str>,
    expires_in: default!(Option<Interval>, "NULL"),
    scopes: default!(Option<Vec<String>>, "NULL"),
    resource: default!(Option<&str>, "NULL"),
    kind: default!(Option<&str>, "'user'"),
    format: default!(Option<&str>, "NULL"),
    metadata: default!(Option<JsonB>, "NULL"),
    rate_limit: default!(Option<i32>, "NULL"),
    rate_period: default!(Option<Interval>, "NULL"),
    rate_burst: default!(Option<i32>, "NULL"),
    db_role: default!(Option<&str>, "NULL"),
) -> TableIterator<'static, (name!(id, i64), name!(api_key, ApiKey))> {
    privilege::require_primary("create API keys");
    let caller = Caller::get();
    let owner = required(owner, "owner");
    let name = required(name, "name");
    if let Some(i) = expires_in {
        if i.as_micros() <= 0 {
            invalid("expires_in must be a positive interval, or NULL for a key that never expires");
        }
    }
    if let Some(list) = &scopes {
        if let Some(bad) = list.iter().find(|s| !scope::is_valid(s)) {
            invalid(format!("invalid scope \"{bad}\": use segments of [a-z0-9_.-] separated by \":\", with \"*\" only as a whole last segment"));
        }
    }
    if resource.is_some_and(|r| r.trim().is_empty()) {
        invalid("resource must not be empty; pass NULL for a key that reaches every resource");
    }
    let kind = KeyKind::parse(kind.unwrap_or("user"))
        .unwrap_or_else(|| invalid("kind must be \"user\" or \"app\""));
    if let Some(m) = &metadata {
        if !m.0.is_object() {
            invalid("metadata must be a JSON object");
        }
        let limit = if caller.admin {
            ADMIN_METADATA_BYTES
        } else {
            HOLDER_METADATA_BYTES
        };
        if m.0.to_string().len() > limit {
            invalid(format!("metadata must be at most {limit} bytes of JSON"));
        }
    }
    let rate = match (rate_limit, rate_period) {
        (Some(limit), Some(period)) => Some(crate::limiter::rate_from(
            limit as i64,
            period,
            rate_burst.map(i64::from),
        )),
        (None, None) if rate_burst.is_none() => None,
        _ => invalid(
            "a request limit needs both rate_limit and rate_period (rate_burst is optional)",
        ),
    };
    if !caller.may_manage(owner) {
        raise(ApiError::NotKeyAdmin);
    }
    if db_role.is_some() && !caller.admin {
        raise(ApiError::AdminOnly("give a key its own database role"));
    }
    if db_role.is_some_and(|r| r.is_empty()) {
        invalid("db_role must not be empty; pass NULL for apikey.default_role");
    }
    let format = formats::by_name(
        &format
            .map(str::to_owned)
            .unwrap_or_else(crate::gucs::default_format),
    );
    let wanted_expiry = expires_in.map(now_plus);

    // A key holder's new key is derived from the key they hold: what they did not give is
    // inherited, and nothing may be wider.
    let (scopes, resource, expires_at, rate, db_role) = match (&caller.identity, caller.admin) {
        (Some(me), false) => {
            if kind != KeyKind::User {
                raise(ApiError::AdminOnly("create application keys"));
            }
            let r = rights::derive(
                &me.rights(),
                rights::Request {
                    scopes: scopes.clone(),
                    resource: resource.map(str::to_owned),
                    expires_at: wanted_expiry,
                    rate,
                },
            )
            .unwrap_or_else(|w| raise(ApiError::Widens(w)));
            (r.scopes, r.resource, r.expires_at, r.rate, r.db_role)
        }
        _ => (
            scopes,
            resource.map(str::to_owned),
            wanted_expiry,
            rate,
            db_role.map(str::to_owned),
        ),
    };
    // Store what was asked for as given; a limit inherited from the caller's key is stored in
    // the same columns, from its parsed form.
    let (rate_limit, rate_period, rate_burst) = if rate_limit.is_some() {
        (rate_limit, rate_period, rate_burst)
    } else {
        stored_rate(rate.as_ref())
    };

    let key = generate(&format);
    let sealed = crate::recovery::seal_for(&format.name, &key.plaintext);
    let id = privilege::as_owner(|| {
        crate::ratelimit::charge_creation(owner);
        let id: i64 = spi(Spi::connect_mut(|c| {
            c.update(
                "INSERT INTO apikey.keys (owner, name, format, kind, scopes, resource, display_prefix, last4,
                                         digest, expires_in, expires_at, created_by, metadata, sealed,
                                         rate_limit, rate_period, rate_burst, db_role)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $18, $11,
                         COALESCE($12, '{}'::pg_catalog.jsonb), $13, $14, $15, $16, $17)
                 RETURNING id",
                Some(1),
                &[
                    owner.into(),
                    name.into(),
                    format.name.clone().into(),
                    kind.name().into(),
                    scopes.clone().into(),
                    resource.clone().into(),
                    key.display_prefix.clone().into(),
                    key.last4.clone().into(),
                    key.digest.clone().into(),
                    expires_in.into(),
                    caller.name.clone().into(),
                    metadata.map(|m| JsonB(m.0)).into(),
                    sealed.clone().into(),
                    rate_limit.into(),
                    rate_period.into(),
                    rate_burst.into(),
                    db_role.clone().into(),
                    timestamptz(expires_at).into(),
                ],
            )?
            .first()
            .get_one::<i64>()
        }))
        .unwrap_or_else(|| internal("INSERT … RETURNING returned no row"));
        audit(
            &caller,
            "create",
            id,
            owner,
            name,
            json!({"format": format.name, "kind": kind.name(), "scopes": scopes, "resource": resource,
                   "expires_in": expires_in.map(|i| i.to_string())}),
        );
        id
    });
    TableIterator::once((id, ApiKey::from_generated(key.plaintext)))
}

/// The stored columns of an inherited limit: its period is its emission interval times its limit.
fn stored_rate(rate: Option<&Rate>) -> (Option<i32>, Option<Interval>, Option<i32>) {
    match rate {
        None => (None, None, None),
        Some(r) => {
            let period = Interval::from_micros(r.emission_us.saturating_mul(r.limit as i64));
            (
                Some(r.limit.min(i32::MAX as u32) as i32),
                Some(period),
                Some(r.burst.min(i32::MAX as u32) as i32),
            )
        }
    }
}

/// A key someone wants to change or see, with what bounds it.
pub struct Target {
    pub owner: String,
    pub name: String,
    pub format: String,
    pub revoked: bool,
    pub expired: bool,
    pub expires_in: Option<Interval>,
    pub rights: Rights,
    pub sealed: Option<Vec<u8>>,
    pub digest: Vec<u8>,
}

/// For a key holder the owner is part of the predicate and the id is deliberately not indexable:
/// the statement reads (and locks) only the caller's own rows, so neither the answer, the
/// row locks nor the table's access statistics (pg_stat_get_xact_tuples_fetched) say whether
/// another owner's id exists.
const TARGET_COLUMNS: &str = "owner, name, format, kind, scopes, resource, expires_at, rate_limit,
       rate_period, rate_burst, db_role, sealed, digest, expires_in,
       revoked_at IS NOT NULL AND revoked_at OPERATOR(pg_catalog.<=) pg_catalog.now(),
       expires_at IS NOT NULL AND expires_at OPERATOR(pg_catalog.<=) pg_catalog.now()";

/// Load key `id` for `caller` (locking it when `lock`). Keys of other owners are reported as
/// missing; keys of the caller's owner that hold more than the caller's own key are refused with
/// 42501. Runs inside `privilege::as_owner`.
pub fn target(caller: &Caller, id: i64, lock: bool) -> Target {
    let lock_clause = if lock { " FOR UPDATE" } else { "" };
    let holder = (!caller.admin)
        .then_some(caller.identity.as_ref())
        .flatten();
    if !caller.admin && holder.is_none() {
        raise(ApiError::KeyNotFound(id));
    }
    let row = spi(Spi::connect_mut(|c| {
        let t = match holder {
            None => c.update(
                &format!(
                    "SELECT {TARGET_COLUMNS} FROM apikey.keys WHERE id OPERATOR(pg_catalog.=) $1{lock_clause}"
                ),
                Some(1),
                &[id.into()],
            )?,
            Some(me) => c.update(
                &format!(
                    "SELECT {TARGET_COLUMNS} FROM apikey.keys
                      WHERE owner OPERATOR(pg_catalog.=) $2
                        AND (id OPERATOR(pg_catalog.+) 0) OPERATOR(pg_catalog.=) $1{lock_clause}"
                ),
                Some(1),
                &[id.into(), me.owner.clone().into()],
            )?,
        };
        if t.is_empty() {
            return Ok(None);
        }
        let r = t.first();
        let rate = match (r.get::<i32>(8)?, r.get::<Interval>(9)?) {
            (Some(limit), Some(period)) => Some(crate::limiter::rate_from(
                limit as i64,
                period,
                r.get::<i32>(10)?.map(i64::from),
            )),
            _ => None,
        };
        Ok::<_, pgrx::spi::SpiError>(Some(Target {
            owner: r.get(1)?.unwrap_or_default(),
            name: r.get(2)?.unwrap_or_default(),
            format: r.get(3)?.unwrap_or_default(),
            rights: Rights {
                kind: r
                    .get::<String>(4)?
                    .and_then(|k| KeyKind::parse(&k))
                    .unwrap_or_else(|| internal("a stored key has an unknown kind")),
                scopes: r.get(5)?,
                resource: r.get(6)?,
                expires_at: r.get::<TimestampWithTimeZone>(7)?.map(Into::into),
                rate,
                db_role: r.get(11)?,
            },
            sealed: r.get(12)?,
            digest: r.get(13)?.unwrap_or_default(),
            expires_in: r.get(14)?,
            revoked: r.get(15)?.unwrap_or(false),
            expired: r.get(16)?.unwrap_or(false),
        }))
    }));
    let Some(t) = row.filter(|t| caller.may_manage(&t.owner)) else {
        raise(ApiError::KeyNotFound(id))
    };
    if let Some(me) = holder {
        rights::within(&me.rights(), &t.rights).unwrap_or_else(|w| raise(ApiError::Widens(w)));
    }
    t
}

/// Revoke a key now. Returns false if it was already revoked.
#[pg_extern(volatile, strict, parallel_unsafe)]
fn revoke(id: i64) -> bool {
    privilege::require_primary("revoke API keys");
    let caller = Caller::get();
    privilege::as_owner(|| {
        let key = target(&caller, id, true);
        if key.revoked {
            return false;
        }
        spi(Spi::connect_mut(|c| {
            c.update(
                "UPDATE apikey.keys SET revoked_at = pg_catalog.now() WHERE id OPERATOR(pg_catalog.=) $1",
                None,
                &[id.into()],
            )
            .map(|_| ())
        }));
        audit(&caller, "revoke", id, &key.owner, &key.name, json!({}));
        true
    })
}

/// Delete a key now; it is invalid in every session the moment this commits. The audit log keeps
/// its history.
#[pg_extern(volatile, strict, parallel_unsafe)]
fn delete(id: i64) -> bool {
    privilege::require_primary("delete API keys");
    let caller = Caller::get();
    privilege::as_owner(|| {
        let key = target(&caller, id, true);
        spi(Spi::connect_mut(|c| {
            c.update(
                "DELETE FROM apikey.keys WHERE id OPERATOR(pg_catalog.=) $1",
                None,
                &[id.into()],
            )
            .map(|_| ())
        }));
        audit(&caller, "delete", id, &key.owner, &key.name, json!({}));
        true
    })
}

/// Replace a key with a new one of the same owner, name and settings, shown once. The old key
/// keeps working for `grace` (at most `apikey.max_rotation_grace`, never past its own expiry),
/// then is revoked. A rotation with a grace adds a live key, so it counts against the creation
/// quota like a `create`; an expired key cannot be rotated.
#[pg_extern(volatile, parallel_unsafe, requires = ["api_key_type"])]
fn rotate(
    id: i64,
    grace: default!(Option<Interval>, "'0'"),
) -> TableIterator<'static, (name!(id, i64), name!(api_key, ApiKey))> {
    privilege::require_primary("rotate API keys");
    let caller = Caller::get();
    let grace = grace.unwrap_or_else(|| Interval::from_micros(0));
    if grace.as_micros() < 0 {
        invalid("grace must not be negative");
    }
    let max_grace = crate::gucs::MAX_ROTATION_GRACE.get() as i128 * 1_000_000;
    if grace.as_micros() > max_grace {
        invalid(format!(
            "grace must be at most apikey.max_rotation_grace ({} seconds)",
            crate::gucs::MAX_ROTATION_GRACE.get()
        ));
    }
    let new_id = privilege::as_owner(|| {
        let old = target(&caller, id, true);
        if old.revoked {
            raise(ApiError::KeyRevoked(id));
        }
        if old.expired {
            raise(ApiError::KeyExpired(id));
        }
        if grace.as_micros() > 0 {
            crate::ratelimit::charge_creation(&old.owner);
        }
        // The new key lives as long as the old one was meant to (expires_in from now), but a key
        // holder's rotation never outlives the key they hold.
        let mut expires_at = old.expires_in.map(now_plus);
        if let Some(mine) = caller
            .identity
            .as_ref()
            .filter(|_| !caller.admin)
            .and_then(|i| i.expires_at)
        {
            expires_at = Some(expires_at.map_or(mine, |e| e.min(mine)));
        }
        let key = generate(&formats::by_name(&old.format));
        let sealed = crate::recovery::seal_for(&old.format, &key.plaintext);
        let new_id = spi(Spi::connect_mut(|c| {
            let new_id = c
                .update(
                    "INSERT INTO apikey.keys (owner, name, format, kind, scopes, resource, display_prefix, last4,
                                             digest, expires_in, expires_at, created_by, metadata, rotated_from, sealed,
                                             rate_limit, rate_period, rate_burst, db_role)
                     SELECT owner, name, format, kind, scopes, resource, $2, $3, $4, expires_in,
                            $7, $5, metadata, id, $6,
                            rate_limit, rate_period, rate_burst, db_role
                       FROM apikey.keys WHERE id OPERATOR(pg_catalog.=) $1
                     RETURNING id",
                    Some(1),
                    &[
                        id.into(),
                        key.display_prefix.clone().into(),
                        key.last4.clone().into(),
                        key.digest.clone().into(),
                        caller.name.clone().into(),
                        sealed.clone().into(),
                        timestamptz(expires_at).into(),
                    ],
                )?
                .first()
                .get_one::<i64>()?;
            c.update(
                "UPDATE apikey.keys
                    SET revoked_at = LEAST(COALESCE(revoked_at, 'infinity'::pg_catalog.timestamptz),
                                           pg_catalog.now() OPERATOR(pg_catalog.+) $2)
                  WHERE id OPERATOR(pg_catalog.=) $1",
                None,
                &[id.into(), grace.into()],
            )?;
            Ok::<_, pgrx::spi::SpiError>(new_id)
        }))
        .unwrap_or_else(|| internal("INSERT … RETURNING returned no row"));
        audit(
            &caller,
            "rotate",
            id,
            &old.owner,
            &old.name,
            json!({"new_key_id": new_id, "grace": grace.to_string()}),
        );
        (new_id, key.plaintext)
    });
    TableIterator::once((new_id.0, ApiKey::from_generated(new_id.1)))
}
