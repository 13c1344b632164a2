//! Keys from other systems: `apikey.import` (one key) and `apikey.import_keys` (a table of them).
//!
//! SHA-256 imports are stored like any key. A bcrypt import is stored with a random stand-in
//! digest (no key hashes to it) and its hash and lookup part in `apikey.key_imports`; verify's
//! path for them (on the request path, so apart from this management module) is `pending`.

use crate::jsonarg::Json;
use pg_apikey_core::digest::DIGEST_LEN;
use pg_apikey_core::errors::ApiError;
use pg_apikey_core::format::os_random;
use pg_apikey_core::imported::{self, Algorithm, Refusal, Stored};
use pgrx::pg_sys;
use pgrx::pg_sys::panic::CaughtError;
use pgrx::prelude::*;
use serde_json::json;

use crate::errors::{raise, spi};
use crate::lifecycle::{self, KeyOptions};
use crate::policy::{self, Caller};
use crate::privilege;
use crate::store;

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
    metadata: Option<Json>,
    rate_limit: Option<i32>,
    rate_period: Option<Interval>,
    rate_burst: Option<i32>,
    db_role: Option<String>,
    allowed_ips: Option<Vec<Option<String>>>,
    credits: Option<i64>,
    refill_amount: Option<i64>,
    refill_interval: Option<Interval>,
    limits: Option<Json>,
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
    metadata: default!(Option<Json>, "NULL"),
    rate_limit: default!(Option<i32>, "NULL"),
    rate_period: default!(Option<Interval>, "NULL"),
    rate_burst: default!(Option<i32>, "NULL"),
    db_role: default!(Option<&str>, "NULL"),
    allowed_ips: default!(Option<Vec<Option<String>>>, "NULL"),
    credits: default!(Option<i64>, "NULL"),
    refill_amount: default!(Option<i64>, "NULL"),
    refill_interval: default!(Option<Interval>, "NULL"),
    limits: default!(Option<Json>, "NULL"),
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
/// code, so the source must be a plain table the caller owns, and every column read must have
/// the built-in type it is read as, or be text (so no cast or output function of someone else's
/// type runs); values are read as text and converted row by row (`convert`), so a bad value
/// refuses its row only. "The caller owns it" is checked exactly: a superuser importing another
/// role's table is refused too.
///
/// The table is found by OID only, locked *before* it is checked, and read with a heap scan of
/// that OID: no name is resolved after the check (a schema owner could otherwise rename the
/// schema between the check and the read and put a view under the same name), and no policy,
/// rule or view definition is consulted.
fn read_source(source: pg_sys::Oid) -> Vec<Vec<Option<String>>> {
    let lock = pg_sys::AccessShareLock as pg_sys::LOCKMODE;
    // SAFETY: LockRelationOid takes a lock on an OID whether or not it names a relation; the
    // syscache probe then tells whether it does (a relation dropped before we locked it is gone
    // for good: DROP needs a lock that conflicts with ours).
    let exists = unsafe {
        pg_sys::LockRelationOid(source, lock);
        pg_sys::SearchSysCacheExists(
            pg_sys::SysCacheIdentifier::RELOID as i32,
            pg_sys::Datum::from(source),
            pg_sys::Datum::from(0),
            pg_sys::Datum::from(0),
            pg_sys::Datum::from(0),
        )
    };
    if !exists {
        raise(ApiError::InvalidArgument(
            "the import source does not exist".into(),
        ));
    }
    // SAFETY: the relation exists and is locked by this transaction, so opening it with NoLock
    // is what the executor does for a relation it has locked; it is closed below on every path
    // that returns (an error releases it through the resource owner).
    let rel = unsafe { pg_sys::relation_open(source, pg_sys::NoLock as pg_sys::LOCKMODE) };
    // SAFETY: rd_rel of an open relation is valid until it is closed.
    let (kind, owner) = unsafe { ((*(*rel).rd_rel).relkind as u8, (*(*rel).rd_rel).relowner) };
    if kind != pg_sys::RELKIND_RELATION {
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
    // (attribute index, output function) for each of SOURCE_COLUMNS the table has.
    let mut read: Vec<Option<(usize, pg_sys::Oid)>> = vec![None; SOURCE_COLUMNS.len()];
    let mut ignored = Vec::new();
    // SAFETY: rd_att of an open relation is its tuple descriptor, valid until it is closed.
    let desc = unsafe { pgrx::PgTupleDesc::from_pg_unchecked((*rel).rd_att) };
    for (i, att) in desc.iter().enumerate() {
        if att.is_dropped() {
            continue;
        }
        let col = att.name().to_owned();
        let typid = att.type_oid().value();
        let Some(at) = SOURCE_COLUMNS.iter().position(|(n, _)| *n == col) else {
            ignored.push(format!("\"{col}\""));
            continue;
        };
        let want = SOURCE_COLUMNS[at].1;
        // Built-in types only: their names cannot be shadowed, and their output functions are
        // Postgres' own.
        let ty = if u32::from(typid) < pg_sys::FirstNormalObjectId {
            privilege::with_pinned_search_path(|| {
                // SAFETY: format_type_be returns a palloc'd name for any type OID.
                unsafe { std::ffi::CStr::from_ptr(pg_sys::format_type_be(typid)) }
                    .to_string_lossy()
                    .into_owned()
            })
        } else {
            String::from("a type that is not built in")
        };
        let text_like = ["text", "character varying", "character"];
        let ok = ty == want
            || text_like.contains(&ty.as_str())
            || (col == "allowed_ips" && ["cidr[]", "inet[]"].contains(&ty.as_str()))
            || (want.ends_with("[]") && ["text[]", "character varying[]"].contains(&ty.as_str()))
            || (want == "jsonb" && ty == "json");
        if !ok {
            raise(ApiError::InvalidArgument(format!(
                "column {col} of the import source must be of type {want} or text, not {ty}"
            )));
        }
        let (mut output, mut varlena) = (pg_sys::InvalidOid, false);
        // SAFETY: out-parameters are valid locals; the type is a built-in one.
        unsafe { pg_sys::getTypeOutputInfo(typid, &mut output, &mut varlena) };
        read[at] = Some((i, output));
    }
    drop(desc);
    if !ignored.is_empty() {
        pgrx::notice!(
            "apikey.import_keys ignores the source's columns {}",
            ignored.join(", ")
        );
    }
    let mut rows = Vec::new();
    // SAFETY: a sequential scan of the locked, open relation under the statement's active
    // snapshot; every value is converted to an owned String (by the type's built-in output
    // function) before the next tuple replaces the slot's contents. The slot, scan and relation
    // are released in reverse order of creation; an error in between releases them through the
    // transaction's resource owner.
    unsafe {
        let snapshot = pg_sys::GetActiveSnapshot();
        let slot = pg_sys::table_slot_create(rel, std::ptr::null_mut());
        let scan = pg_sys::table_beginscan(rel, snapshot, 0, std::ptr::null_mut());
        while pg_sys::table_scan_getnextslot(
            scan,
            pg_sys::ScanDirection::ForwardScanDirection,
            slot,
        ) {
            pgrx::check_for_interrupts!();
            pg_sys::slot_getallattrs(slot);
            let values = (*slot).tts_values;
            let nulls = (*slot).tts_isnull;
            let row = read
                .iter()
                .map(|r| {
                    let (i, output) = (*r)?;
                    if *nulls.add(i) {
                        return None;
                    }
                    let text = pg_sys::OidOutputFunctionCall(output, *values.add(i));
                    Some(
                        std::ffi::CStr::from_ptr(text)
                            .to_string_lossy()
                            .into_owned(),
                    )
                })
                .collect();
            rows.push(row);
        }
        pg_sys::table_endscan(scan);
        pg_sys::ExecDropSingleTupleTableSlot(slot);
        pg_sys::relation_close(rel, pg_sys::NoLock as pg_sys::LOCKMODE);
    }
    rows
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
        metadata: typed!("metadata", Json),
        rate_limit: typed!("rate_limit", i32),
        rate_period: typed!("rate_period", Interval),
        rate_burst: typed!("rate_burst", i32),
        db_role: text(col("db_role")),
        allowed_ips: typed!("allowed_ips", Vec<Option<String>>),
        credits: typed!("credits", i64),
        refill_amount: typed!("refill_amount", i64),
        refill_interval: typed!("refill_interval", Interval),
        limits: typed!("limits", Json),
    }
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
