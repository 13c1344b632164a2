//! Keys from other systems: `apikey.import` (one key), `apikey.import_keys` (a table of them),
//! and verify's path for bcrypt imports that have not been presented yet.
//!
//! SHA-256 imports are stored like any key. A bcrypt import is stored with a random stand-in
//! digest (no key hashes to it) and its hash and lookup part in `apikey.key_imports`. When a key
//! is not found by digest and its format has waiting bcrypt imports, verify finds the one import
//! whose lookup part begins the key (lookup parts never overlap), checks bcrypt once, and stores
//! the key's SHA-256 in place of the stand-in ("rehash"): in the verifying transaction when it
//! can write, else through a small shared-memory queue that the usage worker applies. A key with
//! no candidate costs a decoy bcrypt at the highest waiting cost, so timing does not tell whether
//! a lookup part exists.

use std::cell::RefCell;

use pg_apikey_core::digest::{sha256, DIGEST_LEN};
use pg_apikey_core::errors::ApiError;
use pg_apikey_core::format::{last_chars, os_random};
use pg_apikey_core::imported::{self, Algorithm, Refusal, Stored};
use pg_apikey_core::rehash_queue::{Queue, Rehash};
use pgrx::lwlock::PgLwLock;
use pgrx::pg_sys;
use pgrx::pg_sys::panic::CaughtError;
use pgrx::prelude::*;
use pgrx::shmem::PGRXSharedMemory;
use pgrx::JsonB;
use serde_json::json;

use crate::errors::{raise, spi};
use crate::lifecycle::{self, KeyOptions};
use crate::policy::{self, Caller};
use crate::privilege;
use crate::store::{self, PendingImports, StoredKey};

#[derive(Clone, Copy)]
#[repr(C)]
struct SharedQueue(Queue);

// SAFETY: plain #[repr(C)] values with no pointers; every bit pattern is valid.
unsafe impl PGRXSharedMemory for SharedQueue {}

// SAFETY: const construction of a named shared-memory lock, registered in init() before use.
static REHASHES: PgLwLock<SharedQueue> = unsafe { PgLwLock::new(c"pg_apikey_rehash_queue") };

pub fn init() {
    if crate::shmem::preloaded() {
        pgrx::pg_shmem_init!(REHASHES = SharedQueue(Queue::EMPTY));
    }
}

thread_local! {
    /// bcrypt computations this backend ran for verify (see `apikey.bcrypt_checks`).
    static BCRYPT_RUNS: std::cell::Cell<i64> = const { std::cell::Cell::new(0) };
    /// Nanoseconds of the last bcrypt divided by 2^cost: this backend's estimate of one unit.
    static NS_PER_UNIT: std::cell::Cell<Option<f64>> = const { std::cell::Cell::new(None) };
    /// Waiting bcrypt imports per format, and the OID of `apikey.key_imports`; None until
    /// loaded, dropped when that table changes.
    static PENDING: RefCell<Option<(Vec<PendingImports>, pg_sys::Oid)>> = const { RefCell::new(None) };
}

pub fn invalidate(relid: pg_sys::Oid) {
    PENDING.with_borrow_mut(|p| {
        if p.as_ref().is_some_and(|(_, ours)| {
            relid == pg_sys::InvalidOid || relid == *ours || *ours == pg_sys::InvalidOid
        }) {
            *p = None;
        }
    });
}

/// The waiting imports of `format`, if any.
fn pending_for(format: &str) -> Option<(usize, usize, u32)> {
    let find = |list: &[PendingImports]| {
        list.iter()
            .find(|p| p.format == format)
            .map(|p| (p.min_len, p.max_len, p.max_cost))
    };
    if let Some(hit) = PENDING.with_borrow(|p| p.as_ref().map(|(list, _)| find(list))) {
        return hit;
    }
    // Before ALTER EXTENSION UPDATE adds the table, nothing is waiting.
    let relid = crate::catalog::get().relation_if_present("key_imports")?;
    let list = store::as_owner(store::pending_imports);
    let hit = find(&list);
    PENDING.set(Some((list, relid)));
    hit
}

/// One bcrypt computation at `cost`, counted, and timed for the padding of failing paths.
fn timed_bcrypt<R>(cost: u32, f: impl FnOnce() -> R) -> R {
    let start = std::time::Instant::now();
    let r = f();
    BCRYPT_RUNS.set(BCRYPT_RUNS.get() + 1);
    let per_unit = start.elapsed().as_nanos() as f64 / f64::from(1u32 << cost.min(31));
    NS_PER_UNIT.set(Some(per_unit));
    r
}

/// A failing path (no candidate, or a candidate whose bcrypt did not match) takes as long as a
/// bcrypt at the highest waiting cost: imports of one format may come with different costs, and
/// a cheap mismatch must not tell that its lookup part exists.
fn pad_failure(key: &str, started: std::time::Instant, max_cost: u32) {
    let Some(per_unit) = NS_PER_UNIT.get() else {
        // Not calibrated yet in this backend: a decoy at the highest cost pads and calibrates.
        timed_bcrypt(max_cost, || imported::bcrypt_decoy(key, max_cost));
        return;
    };
    let target =
        std::time::Duration::from_nanos((per_unit * f64::from(1u32 << max_cost.min(31))) as u64);
    if let Some(rest) = target.checked_sub(started.elapsed()) {
        std::thread::sleep(rest);
    }
}

/// Verify's last resort for a key not found by digest: a waiting bcrypt import. Returns the
/// key's row (with the presented key's digest) when its bcrypt matches; costs exactly one bcrypt
/// whenever the key's format has waiting imports (failing paths are padded to the time of one at
/// the highest waiting cost), and nothing otherwise.
pub fn verify_pending(key: &str) -> Option<StoredKey> {
    let format = crate::formats::try_detect(key).ok()?;
    let (min_len, max_len, max_cost) = pending_for(&format.name)?;
    let started = std::time::Instant::now();
    let candidates: Vec<String> = imported::lookup_candidates(key, min_len, max_len)
        .into_iter()
        .map(str::to_owned)
        .collect();
    let found = store::as_owner(|| store::find_import(candidates));
    let Some((key_id, hash, stand_in)) = found else {
        timed_bcrypt(max_cost, || imported::bcrypt_decoy(key, max_cost));
        return None;
    };
    let cost = imported::bcrypt_cost(&hash).unwrap_or(max_cost);
    if !timed_bcrypt(cost, || imported::bcrypt_matches(key, &hash)) {
        pad_failure(key, started, max_cost);
        return None;
    }
    let stand_in = <[u8; DIGEST_LEN]>::try_from(stand_in.as_slice()).ok()?;
    let mut row = store::find_by_digest(&stand_in)?;
    let digest = sha256(key.as_bytes());
    rehash_or_queue(key_id, &digest, last_chars(key));
    row.digest = digest;
    Some(row)
}

/// How many bcrypt computations this backend has run for verify: one per key not found by
/// digest whose format has bcrypt imports waiting, matching or not, and none otherwise.
#[pg_extern(volatile, parallel_restricted)]
fn bcrypt_checks() -> i64 {
    BCRYPT_RUNS.get()
}

/// Can this transaction write? Not on a standby, in a READ ONLY transaction, or while a parallel
/// query runs.
fn writable() -> bool {
    // SAFETY: read backend and shared state; no preconditions.
    unsafe { !pg_sys::RecoveryInProgress() && !pg_sys::XactReadOnly && !pg_sys::IsInParallelMode() }
}

fn rehash_or_queue(key_id: i64, digest: &[u8; DIGEST_LEN], last4: &str) {
    if writable() {
        let actor = privilege::caller_name();
        store::as_owner(|| apply_rehash(&actor, key_id, digest, last4));
    } else if crate::shmem::preloaded() {
        // SAFETY: reads a backend global set at connection.
        let db = u32::from(unsafe { pg_sys::MyDatabaseId });
        REHASHES
            .exclusive()
            .0
            .push(Rehash::new(db, key_id, *digest, last4));
    }
}

/// Store `digest` for imported key `key_id`, unless another key already has it (the same key
/// imported twice: that one is found first anyway). Runs inside `store::as_owner`.
fn apply_rehash(actor: &str, key_id: i64, digest: &[u8; DIGEST_LEN], last4: &str) {
    if store::find_by_digest(digest).is_some() {
        return;
    }
    if let Some((owner, name)) = store::rehash(key_id, digest, last4) {
        policy::audit_as(
            actor,
            None,
            "rehash",
            key_id,
            &owner,
            &name,
            json!({"from": "bcrypt", "to": "sha256"}),
        );
    }
}

/// The usage worker's share: rehashes queued by read-only verifies of its database.
pub fn flush_rehashes() {
    if !crate::shmem::preloaded() {
        return;
    }
    // SAFETY: reads a backend global set at connection.
    let db = u32::from(unsafe { pg_sys::MyDatabaseId });
    let taken = REHASHES.exclusive().0.take(db);
    if taken.is_empty() {
        return;
    }
    pgrx::bgworkers::BackgroundWorker::transaction(|| {
        if crate::catalog::installed().is_none() {
            return;
        }
        store::as_owner(|| {
            for r in &taken {
                apply_rehash("pg_apikey worker", r.key_id, &r.digest, &r.last4());
            }
        });
    });
}

/// One key to import, as `apikey.import` takes it or a row of `apikey.import_keys`' source.
#[derive(Default)]
struct ImportRow {
    owner: Option<String>,
    name: Option<String>,
    hash: Option<String>,
    algorithm: Option<String>,
    lookup: Option<String>,
    last4: Option<String>,
    expires_at: Option<TimestampWithTimeZone>,
    expires_in: Option<Interval>,
    scopes: Option<Vec<Option<String>>>,
    resource: Option<String>,
    kind: Option<String>,
    format: Option<String>,
    metadata: Option<JsonB>,
    rate_limit: Option<i32>,
    rate_period: Option<Interval>,
    rate_burst: Option<i32>,
    db_role: Option<String>,
    allowed_ips: Option<Vec<Option<String>>>,
    credits: Option<i64>,
    refill_amount: Option<i64>,
    refill_interval: Option<Interval>,
    limits: Option<JsonB>,
}

fn refused(r: Refusal) -> ! {
    raise(ApiError::ImportRefused(r))
}

/// Import one key for `caller` (an administrator). Raises on refusal.
fn import_one(caller: &Caller, r: ImportRow) -> i64 {
    let algorithm = r
        .algorithm
        .as_deref()
        .unwrap_or_else(|| raise(ApiError::NullArgument("algorithm")));
    let algorithm =
        Algorithm::parse(algorithm).unwrap_or_else(|| refused(Refusal::UnknownAlgorithm));
    let hash = r
        .hash
        .as_deref()
        .unwrap_or_else(|| raise(ApiError::NullArgument("hash")));
    let stored = imported::parse_hash(algorithm, hash).unwrap_or_else(|e| refused(e));
    let p = lifecycle::prepare(
        caller,
        KeyOptions {
            owner: r.owner.as_deref(),
            name: r.name.as_deref(),
            expires_in: r.expires_in,
            expires_at: r.expires_at,
            scopes: r.scopes,
            resource: r.resource.as_deref(),
            kind: r.kind.as_deref(),
            format: r.format.as_deref(),
            metadata: r.metadata,
            rate_limit: r.rate_limit,
            rate_period: r.rate_period,
            rate_burst: r.rate_burst,
            db_role: r.db_role.as_deref(),
            allowed_ips: r.allowed_ips,
            credits: r.credits,
            refill_amount: r.refill_amount,
            refill_interval: r.refill_interval,
            limits: r.limits,
        },
    );
    if let Some(lookup) = &r.lookup {
        imported::check_lookup(&p.format, lookup).unwrap_or_else(|e| refused(e));
    }
    if matches!(stored, Stored::Bcrypt { .. }) && p.format.total_len() > imported::BCRYPT_MAX_KEY {
        refused(Refusal::BadHash(
            "bcrypt reads only the first 72 bytes of a key, and keys of this format are longer",
        ));
    }
    let last4 = r.last4.unwrap_or_default();
    if last4.len() > 4 || !last4.bytes().all(|b| b.is_ascii_alphanumeric()) {
        raise(ApiError::InvalidArgument(
            "last4 must be at most 4 letters or digits: the end of the key as the other system showed it".into(),
        ));
    }
    let display_prefix = match &r.lookup {
        Some(l) => p.format.display_prefix(l).to_owned(),
        None => p.format.prefix.clone(),
    };
    let (digest, bcrypt) = match stored {
        Stored::Digest(d) => (d.to_vec(), None),
        Stored::Bcrypt { hash, cost } => {
            let lookup = r.lookup.clone().unwrap_or_else(|| {
                refused(Refusal::BadLookup(
                    "a bcrypt import needs the key's lookup part (its first characters)".into(),
                ))
            });
            let mut stand_in = [0u8; DIGEST_LEN];
            os_random(&mut stand_in).unwrap_or_else(|_| {
                raise(ApiError::Internal(
                    "the operating system's random generator failed",
                ))
            });
            (stand_in.to_vec(), Some((lookup, hash, cost)))
        }
    };
    let audit_detail = {
        let mut d = p.audit_detail();
        d["algorithm"] = json!(algorithm.name());
        if let Some((_, _, cost)) = &bcrypt {
            d["cost"] = json!(cost);
        }
        d
    };
    let (owner, name) = (p.owner.to_owned(), p.name.to_owned());
    store::as_owner(|| {
        if let Some((lookup, hash, _)) = &bcrypt {
            store::lock_imports();
            if let Some((other_lookup, other_hash)) = store::lookup_overlap(lookup) {
                if other_lookup == *lookup && other_hash == *hash {
                    raise(ApiError::AlreadyStored("this key is already imported"));
                }
                refused(Refusal::BadLookup(
                    "it overlaps the lookup part of another imported key (one begins the other); import both with longer lookup parts".into(),
                ));
            }
        }
        let id = store::insert_key(p.row(caller, display_prefix, last4, digest, None))
            .unwrap_or_else(|| raise(ApiError::AlreadyStored("this key is already stored")));
        if let Some((lookup, hash, cost)) = &bcrypt {
            store::insert_import(id, lookup, hash, *cost);
        }
        policy::audit(caller, "import", id, &owner, &name, audit_detail);
        id
    })
}

/// Import a key another system issued, by the hash it stored: `sha256` (hex), `sha256-base64`
/// or `bcrypt` (with `lookup`, the key's first characters). Administrators only. Returns the
/// new key's id; 23505 if the key is already stored, 22023 for a bad hash or lookup part.
#[allow(clippy::too_many_arguments)]
#[pg_extern(volatile, parallel_unsafe)]
fn import(
    owner: Option<&str>,
    name: Option<&str>,
    hash: Option<&str>,
    algorithm: Option<&str>,
    lookup: default!(Option<&str>, "NULL"),
    last4: default!(Option<&str>, "NULL"),
    expires_at: default!(Option<TimestampWithTimeZone>, "NULL"),
    expires_in: default!(Option<Interval>, "NULL"),
    scopes: default!(Option<Vec<Option<String>>>, "NULL"),
    resource: default!(Option<&str>, "NULL"),
    kind: default!(Option<&str>, "'user'"),
    format: default!(Option<&str>, "NULL"),
    metadata: default!(Option<JsonB>, "NULL"),
    rate_limit: default!(Option<i32>, "NULL"),
    rate_period: default!(Option<Interval>, "NULL"),
    rate_burst: default!(Option<i32>, "NULL"),
    db_role: default!(Option<&str>, "NULL"),
    allowed_ips: default!(Option<Vec<Option<String>>>, "NULL"),
    credits: default!(Option<i64>, "NULL"),
    refill_amount: default!(Option<i64>, "NULL"),
    refill_interval: default!(Option<Interval>, "NULL"),
    limits: default!(Option<JsonB>, "NULL"),
) -> i64 {
    let caller = Caller::admin_only("import API keys");
    let s = |v: Option<&str>| v.map(str::to_owned);
    import_one(
        &caller,
        ImportRow {
            owner: s(owner),
            name: s(name),
            hash: s(hash),
            algorithm: s(algorithm),
            lookup: s(lookup),
            last4: s(last4),
            expires_at,
            expires_in,
            scopes,
            resource: s(resource),
            kind: s(kind),
            format: s(format),
            metadata,
            rate_limit,
            rate_period,
            rate_burst,
            db_role: s(db_role),
            allowed_ips,
            credits,
            refill_amount,
            refill_interval,
            limits,
        },
    )
}

/// A `regclass` argument, so `apikey.import_keys('staging')` resolves the name like any
/// table reference.
pub struct RegClass(pg_sys::Oid);

impl pgrx::FromDatum for RegClass {
    unsafe fn from_polymorphic_datum(
        datum: pg_sys::Datum,
        is_null: bool,
        _typoid: pg_sys::Oid,
    ) -> Option<Self> {
        (!is_null).then(|| RegClass(pg_sys::Oid::from(datum.value() as u32)))
    }
}

impl pgrx::IntoDatum for RegClass {
    fn into_datum(self) -> Option<pg_sys::Datum> {
        Some(pg_sys::Datum::from(self.0))
    }

    fn type_oid() -> pg_sys::Oid {
        pg_sys::REGCLASSOID
    }
}

// SAFETY: unboxes through FromDatum; a regclass datum is an OID passed by value.
unsafe impl<'fcx> pgrx::callconv::ArgAbi<'fcx> for RegClass {
    unsafe fn unbox_arg_unchecked(arg: pgrx::callconv::Arg<'_, 'fcx>) -> Self {
        // SAFETY: the argument is a regclass datum, as the SQL signature declares.
        unsafe { arg.unbox_arg_using_from_datum() }
            .unwrap_or_else(|| raise(ApiError::NullArgument("source")))
    }
}

pgrx::impl_sql_translatable!(RegClass, "regclass");

/// The columns `apikey.import_keys` reads from its source, with their types.
const SOURCE_COLUMNS: [(&str, &str); 22] = [
    ("owner", "text"),
    ("name", "text"),
    ("hash", "text"),
    ("algorithm", "text"),
    ("lookup", "text"),
    ("last4", "text"),
    ("expires_at", "timestamp with time zone"),
    ("expires_in", "interval"),
    ("scopes", "text[]"),
    ("resource", "text"),
    ("kind", "text"),
    ("format", "text"),
    ("metadata", "jsonb"),
    ("rate_limit", "integer"),
    ("rate_period", "interval"),
    ("rate_burst", "integer"),
    ("db_role", "text"),
    ("allowed_ips", "text[]"),
    ("credits", "bigint"),
    ("refill_amount", "bigint"),
    ("refill_interval", "interval"),
    ("limits", "jsonb"),
];

/// The source's rows as text, one `Vec` per row in `SOURCE_COLUMNS` order.
///
/// Reading a relation runs code: a view's functions, a row-level security policy, the cast or
/// output function of a column's type. An importing administrator must not run another role's
/// code, so the source must be a table the caller owns, and
/// every column read must have the built-in type it is read as, or be text (so no cast or output
/// function of someone else's type runs); values are read as
/// text and converted row by row (`convert`), so a bad value refuses its row only.
/// "The caller owns it" is checked exactly: a superuser importing another role's table is refused
/// too.
fn read_source(source: pg_sys::Oid) -> Vec<Vec<Option<String>>> {
    let (qualified, kind, owner, present) = privilege::with_pinned_search_path(|| {
        spi(Spi::connect(|c| {
            let t = c.select(
                "SELECT pg_catalog.format('%I.%I', n.nspname, r.relname) AS q,
                        r.relkind::pg_catalog.text AS kind, r.relowner AS owner
                   FROM pg_catalog.pg_class r
                   JOIN pg_catalog.pg_namespace n ON n.oid OPERATOR(pg_catalog.=) r.relnamespace
                  WHERE r.oid OPERATOR(pg_catalog.=) $1",
                Some(1),
                &[source.into()],
            )?;
            if t.is_empty() {
                return Ok((String::new(), String::new(), pg_sys::InvalidOid, Vec::new()));
            }
            let r = t.first();
            let q = r.get_by_name::<String, _>("q")?.unwrap_or_default();
            let kind = r.get_by_name::<String, _>("kind")?.unwrap_or_default();
            let owner = r
                .get_by_name::<pg_sys::Oid, _>("owner")?
                .unwrap_or(pg_sys::InvalidOid);
            let mut cols = Vec::new();
            for row in c.select(
                "SELECT attname::pg_catalog.text AS a,
                        pg_catalog.format_type(atttypid, NULL) AS t
                   FROM pg_catalog.pg_attribute
                  WHERE attrelid OPERATOR(pg_catalog.=) $1 AND attnum OPERATOR(pg_catalog.>) 0
                    AND NOT attisdropped ORDER BY attnum",
                None,
                &[source.into()],
            )? {
                cols.push((
                    row.get_by_name::<String, _>("a")?.unwrap_or_default(),
                    row.get_by_name::<String, _>("t")?.unwrap_or_default(),
                ));
            }
            Ok::<_, pgrx::spi::SpiError>((q, kind, owner, cols))
        }))
    });
    if qualified.is_empty() {
        raise(ApiError::InvalidArgument(
            "the import source does not exist".into(),
        ));
    }
    if kind != "r" && kind != "p" {
        raise(ApiError::InvalidArgument(
            "the import source must be a table (a view, or any other relation, would run its owner's code as you)".into(),
        ));
    }
    // Owned by the caller itself: membership is not enough (another member of a group role could
    // have written its policies), and superusers are no exception.
    if owner != privilege::caller() {
        raise(ApiError::InvalidArgument(
            "the import source must be a table you own: reading another role's table runs its code (row-level security policies) as you".into(),
        ));
    }
    let mut select = Vec::new();
    let mut ignored = Vec::new();
    for (col, ty) in &present {
        match SOURCE_COLUMNS.iter().find(|(n, _)| n == col) {
            None => ignored.push(format!("\"{col}\"")),
            Some((_, want)) => {
                let text_like = ["text", "character varying", "character"];
                let ok = ty == *want
                    || text_like.contains(&ty.as_str())
                    || (*col == "allowed_ips" && ["cidr[]", "inet[]"].contains(&ty.as_str()))
                    || (want.ends_with("[]")
                        && ["text[]", "character varying[]"].contains(&ty.as_str()))
                    || (*want == "jsonb" && ty == "json");
                if !ok {
                    raise(ApiError::InvalidArgument(format!(
                        "column {col} of the import source must be of type {want} or text, not {ty}"
                    )));
                }
            }
        }
    }
    if !ignored.is_empty() {
        pgrx::notice!(
            "apikey.import_keys ignores the source's columns {}",
            ignored.join(", ")
        );
    }
    for (c, _) in SOURCE_COLUMNS {
        if present.iter().any(|(p, _)| p == c) {
            select.push(format!("s.{}::pg_catalog.text", quote(c)));
        } else {
            select.push("NULL::pg_catalog.text".into());
        }
    }
    let query = format!("SELECT {} FROM {qualified} s", select.join(", "));
    privilege::with_pinned_search_path(|| {
        spi(Spi::connect(|c| {
            let mut rows = Vec::new();
            for row in c.select(&query, None, &[])? {
                let mut values = Vec::with_capacity(SOURCE_COLUMNS.len());
                for i in 1..=SOURCE_COLUMNS.len() {
                    values.push(row.get::<String>(i)?);
                }
                rows.push(values);
            }
            Ok::<_, pgrx::spi::SpiError>(rows)
        }))
    })
}

/// A source value converted to `ty` by Postgres' own input function, refusing the row with a
/// message that names the column, never the value.
fn convert<T: pgrx::FromDatum + pgrx::IntoDatum>(
    column: &str,
    ty: &str,
    value: &Option<String>,
) -> Option<T> {
    let text = value.clone()?;
    // Names as format_type prints them; the cast needs the catalog's.
    let cast = match ty {
        "timestamp with time zone" => "timestamptz",
        "integer" => "int4",
        "bigint" => "int8",
        other => other,
    };
    let query = format!("SELECT $1::pg_catalog.{cast}");
    in_subtransaction(|| {
        privilege::with_pinned_search_path(|| {
            spi(Spi::get_one_with_args::<T>(&query, &[text.into()]))
        })
    })
    .unwrap_or_else(|_| {
        raise(ApiError::InvalidArgument(format!(
            "column {column} is not a valid {ty}"
        )))
    })
}

/// One source row as `import` takes it.
fn import_row(v: &[Option<String>]) -> ImportRow {
    let text = |i: usize| v[i].clone();
    let col = |name: &str| {
        SOURCE_COLUMNS
            .iter()
            .position(|(n, _)| *n == name)
            .expect("a source column")
    };
    macro_rules! typed {
        ($name:literal, $t:ty) => {{
            let i = col($name);
            convert::<$t>($name, SOURCE_COLUMNS[i].1, &v[i])
        }};
    }
    ImportRow {
        owner: text(col("owner")),
        name: text(col("name")),
        hash: text(col("hash")),
        algorithm: text(col("algorithm")),
        lookup: text(col("lookup")),
        last4: text(col("last4")),
        expires_at: typed!("expires_at", TimestampWithTimeZone),
        expires_in: typed!("expires_in", Interval),
        scopes: typed!("scopes", Vec<Option<String>>),
        resource: text(col("resource")),
        kind: text(col("kind")),
        format: text(col("format")),
        metadata: typed!("metadata", JsonB),
        rate_limit: typed!("rate_limit", i32),
        rate_period: typed!("rate_period", Interval),
        rate_burst: typed!("rate_burst", i32),
        db_role: text(col("db_role")),
        allowed_ips: typed!("allowed_ips", Vec<Option<String>>),
        credits: typed!("credits", i64),
        refill_amount: typed!("refill_amount", i64),
        refill_interval: typed!("refill_interval", Interval),
        limits: typed!("limits", JsonB),
    }
}

fn quote(ident: &str) -> String {
    format!("\"{}\"", ident.replace('"', "\"\""))
}

/// Run `f` in a subtransaction: its changes are kept if it returns, undone if it raises, and the
/// error (SQLSTATE, message) is returned instead of propagating.
fn in_subtransaction<R>(
    f: impl FnOnce() -> R,
) -> Result<R, (pg_sys::errcodes::PgSqlErrorCode, String)> {
    // SAFETY: the sequence of PL/pgSQL's exception blocks: begin an internal subtransaction,
    // then release it on success or roll it back on error, and in both cases return to the
    // caller's memory context and resource owner. pgrx has already copied and flushed the
    // error state when the catch arm runs.
    unsafe {
        let context = pg_sys::CurrentMemoryContext;
        let owner = pg_sys::CurrentResourceOwner;
        pg_sys::BeginInternalSubTransaction(std::ptr::null());
        pg_sys::MemoryContextSwitchTo(context);
        PgTryBuilder::new(std::panic::AssertUnwindSafe(move || {
            let r = f();
            pg_sys::ReleaseCurrentSubTransaction();
            pg_sys::MemoryContextSwitchTo(context);
            pg_sys::CurrentResourceOwner = owner;
            Ok(r)
        }))
        .catch_others(|e| {
            pg_sys::RollbackAndReleaseCurrentSubTransaction();
            pg_sys::MemoryContextSwitchTo(context);
            pg_sys::CurrentResourceOwner = owner;
            match e {
                CaughtError::PostgresError(r) | CaughtError::ErrorReport(r) => {
                    Err((r.sql_error_code(), r.message().to_owned()))
                }
                CaughtError::RustPanic { ereport, .. } => Err((
                    ereport.sql_error_code(),
                    "pg_apikey internal error".to_owned(),
                )),
            }
        })
        .execute()
    }
}

/// Import every row of `source` (a table or view with columns named like `apikey.import`'s
/// arguments; others are ignored with a NOTICE). Returns one row per input row: `imported` with
/// the new key's id, `duplicate` (already stored), or `refused` with the reason. A refused row
/// does not stop the others. Administrators only; the caller needs SELECT on `source`.
#[allow(clippy::type_complexity)]
#[pg_extern(volatile, strict, parallel_unsafe)]
fn import_keys(
    source: RegClass,
) -> TableIterator<
    'static,
    (
        name!(ordinal, i64),
        name!(owner, Option<String>),
        name!(name, Option<String>),
        name!(status, String),
        name!(key_id, Option<i64>),
        name!(reason, Option<String>),
    ),
> {
    let caller = Caller::admin_only("import API keys");
    let rows = read_source(source.0);
    let mut out = Vec::with_capacity(rows.len());
    let (owner_at, name_at) = (
        SOURCE_COLUMNS
            .iter()
            .position(|(n, _)| *n == "owner")
            .unwrap_or(0),
        SOURCE_COLUMNS
            .iter()
            .position(|(n, _)| *n == "name")
            .unwrap_or(1),
    );
    for (i, row) in rows.into_iter().enumerate() {
        let (owner, name) = (row[owner_at].clone(), row[name_at].clone());
        let result = in_subtransaction(|| import_one(&caller, import_row(&row)));
        let (status, id, reason) = match result {
            Ok(id) => ("imported", Some(id), None),
            Err((code, message)) => {
                if code == pg_sys::errcodes::PgSqlErrorCode::ERRCODE_UNIQUE_VIOLATION {
                    ("duplicate", None, Some(message))
                } else {
                    ("refused", None, Some(message))
                }
            }
        };
        out.push((i as i64 + 1, owner, name, status.to_owned(), id, reason));
    }
    TableIterator::new(out)
}
