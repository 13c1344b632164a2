//! Every statement against the extension's tables, and nothing else.
//!
//! Rows come back as typed structs read by column name. The statements are written for the
//! extension owner with `search_path = pg_catalog, pg_temp` and qualified operators; callers wrap
//! them in [`as_owner`] (the catalog check of `catalog::get` runs first, so every name used here is
//! known to be the extension's own table). The hot path, [`find_by_digest`], does not go through
//! SQL at all: it probes the digest's hash index (or its unique B-tree) directly under the latest
//! snapshot.

use pg_apikey_core::digest::{ct_eq, DIGEST_LEN};
use pg_apikey_core::errors::ApiError;
use pg_apikey_core::gcra::Rate;
use pg_apikey_core::ipnet::{self, Cidr};
use pg_apikey_core::record::{Reader, Writer};
use pg_apikey_core::rights::{KeyKind, Rights};
use pgrx::datum::Interval;
use pgrx::pg_sys;
use pgrx::prelude::*;
use pgrx::spi::{SpiHeapTupleData, SpiResult};
use pgrx::{FromDatum, IntoDatum, JsonB};

use crate::catalog;
use crate::errors::{raise, spi};
use crate::privilege::Elevated;

/// Run `f` as the extension owner with the pinned search_path (see `privilege::Elevated`).
pub fn as_owner<R>(f: impl FnOnce() -> R) -> R {
    let _guard = Elevated::to_role(catalog::get().owner);
    f()
}

fn internal(what: &'static str) -> ! {
    raise(ApiError::Internal(what))
}

/// A row read by column name: an iterated row, or the current row of a result.
trait ByName {
    fn by_name<T: IntoDatum + FromDatum>(&self, name: &str) -> SpiResult<Option<T>>;
}

impl ByName for SpiHeapTupleData<'_> {
    fn by_name<T: IntoDatum + FromDatum>(&self, name: &str) -> SpiResult<Option<T>> {
        self.get_by_name::<T, _>(name)
    }
}

impl ByName for pgrx::spi::SpiTupleTable<'_> {
    fn by_name<T: IntoDatum + FromDatum>(&self, name: &str) -> SpiResult<Option<T>> {
        self.get_by_name::<T, _>(name)
    }
}

fn col<T: IntoDatum + FromDatum>(row: &impl ByName, name: &str) -> SpiResult<Option<T>> {
    row.by_name::<T>(name)
}

fn kind_of(text: Option<String>) -> KeyKind {
    text.and_then(|k| KeyKind::parse(&k))
        .unwrap_or_else(|| internal("a stored key has an unknown kind"))
}

fn rate_of(limit: Option<i32>, period: Option<Interval>, burst: Option<i32>) -> Option<Rate> {
    match (limit, period) {
        // Stored limits passed the same checks at creation; a row edited by hand into an invalid
        // limit is refused rather than treated as unlimited.
        (Some(limit), Some(period)) => Some(crate::rates::rate_from(
            limit as i64,
            period,
            burst.map(i64::from),
        )),
        _ => None,
    }
}

// ---------------------------------------------------------------------------------------------
// The key lookup: a direct probe of the index on digest.

/// A key as the verify path needs it.
#[derive(Clone)]
pub struct StoredKey {
    pub id: i64,
    /// The first key of this key's rotation lineage (the key itself if it was never rotated):
    /// request limits belong to the lineage, so a rotation hands out no fresh allowance.
    pub lineage: i64,
    pub owner: String,
    pub name: String,
    pub kind: KeyKind,
    pub format: String,
    pub scopes: Option<Vec<String>>,
    pub resource: Option<String>,
    pub created_at: TimestampWithTimeZone,
    pub expires_at: Option<TimestampWithTimeZone>,
    pub revoked_at: Option<TimestampWithTimeZone>,
    pub disabled: bool,
    /// Addresses the key may be used from; None: any.
    pub allowed: Option<Vec<Cidr>>,
    /// A usage-limited key (its balance is in `credits`), and its refill (amount, interval µs).
    pub has_credits: bool,
    pub refill: Option<(i64, i64)>,
    /// Named limits (see `named_limits`).
    pub named: Vec<(String, Rate)>,
    pub metadata: RawJsonb,
    pub rate: Option<Rate>,
    pub db_role: Option<String>,
    pub digest: [u8; DIGEST_LEN],
    /// Inserted by the current transaction (not committed): visible to nobody else yet.
    pub created_here: bool,
}

impl StoredKey {
    /// The row as the shared key cache stores it (see `sharedkeys`). The digest is not part of
    /// it: the slot holds it, and a hit is a slot whose digest equals the presented one.
    pub fn encode(&self) -> Vec<u8> {
        fn rate(w: &mut Writer, r: &Rate) {
            w.i64(r.emission_us)
                .i64(r.tolerance_us)
                .u32(r.limit)
                .u32(r.burst);
        }
        let ts = |t: &TimestampWithTimeZone| pg_sys::TimestampTz::from(*t);
        let mut w = Writer::new();
        w.i64(self.id)
            .i64(self.lineage)
            .str(&self.owner)
            .str(&self.name);
        w.u8(match self.kind {
            KeyKind::User => 0,
            KeyKind::App => 1,
        });
        w.str(&self.format);
        w.opt(self.scopes.as_ref(), |w, v| {
            w.u32(v.len() as u32);
            v.iter().for_each(|x| {
                w.str(x);
            });
        });
        w.opt(self.resource.as_deref(), |w, v| {
            w.str(v);
        });
        w.i64(ts(&self.created_at));
        w.opt(self.expires_at.as_ref(), |w, t| {
            w.i64(ts(t));
        });
        w.opt(self.revoked_at.as_ref(), |w, t| {
            w.i64(ts(t));
        });
        w.bool(self.disabled);
        w.opt(self.allowed.as_ref(), |w, v| {
            w.u32(v.len() as u32);
            v.iter().for_each(|c| {
                w.str(&c.to_string());
            });
        });
        w.bool(self.has_credits);
        w.opt(self.refill, |w, (amount, every)| {
            w.i64(amount).i64(every);
        });
        w.u32(self.named.len() as u32);
        for (name, r) in &self.named {
            w.str(name);
            rate(&mut w, r);
        }
        w.bytes(&self.metadata.0);
        w.opt(self.rate.as_ref(), rate);
        w.opt(self.db_role.as_deref(), |w, v| {
            w.str(v);
        });
        w.finish()
    }

    /// The key `encode` wrote, with the digest it was found under; None if the bytes do not
    /// decode (the caller then reads the table).
    pub fn decode(bytes: &[u8], digest: &[u8; DIGEST_LEN]) -> Option<StoredKey> {
        fn rate(r: &mut Reader) -> Option<Rate> {
            Some(Rate {
                emission_us: r.i64()?,
                tolerance_us: r.i64()?,
                limit: r.u32()?,
                burst: r.u32()?,
            })
        }
        fn ts(r: &mut Reader) -> Option<TimestampWithTimeZone> {
            TimestampWithTimeZone::try_from(r.i64()?).ok()
        }
        fn list<T>(
            r: &mut Reader,
            mut one: impl FnMut(&mut Reader) -> Option<T>,
        ) -> Option<Vec<T>> {
            let n = r.u32()? as usize;
            (0..n).map(|_| one(r)).collect()
        }
        let r = &mut Reader::new(bytes);
        let key = StoredKey {
            id: r.i64()?,
            lineage: r.i64()?,
            owner: r.str()?.to_owned(),
            name: r.str()?.to_owned(),
            kind: match r.u8()? {
                0 => KeyKind::User,
                1 => KeyKind::App,
                _ => return None,
            },
            format: r.str()?.to_owned(),
            scopes: r.opt(|r| list(r, |r| r.str().map(str::to_owned)))?,
            resource: r.opt(|r| r.str().map(str::to_owned))?,
            created_at: ts(r)?,
            expires_at: r.opt(ts)?,
            revoked_at: r.opt(ts)?,
            disabled: r.bool()?,
            allowed: r.opt(|r| list(r, |r| Cidr::parse(r.str()?).ok()))?,
            has_credits: r.bool()?,
            refill: r.opt(|r| Some((r.i64()?, r.i64()?)))?,
            named: list(r, |r| Some((r.str()?.to_owned(), rate(r)?)))?,
            metadata: RawJsonb(r.bytes()?.to_vec()),
            rate: r.opt(rate)?,
            db_role: r.opt(|r| r.str().map(str::to_owned))?,
            digest: *digest,
            created_here: false,
        };
        r.is_done().then_some(key)
    }
}

/// Digests of the keys that verify now (not revoked, disabled or expired), for the shared
/// cache's prewarm.
pub fn live_digests() -> Vec<[u8; DIGEST_LEN]> {
    spi(Spi::connect(|c| {
        let mut out = Vec::new();
        for row in c.select(
            "SELECT digest FROM apikey.keys
              WHERE disabled_at IS NULL
                AND (revoked_at IS NULL OR revoked_at OPERATOR(pg_catalog.>) pg_catalog.statement_timestamp())
                AND (expires_at IS NULL OR expires_at OPERATOR(pg_catalog.>) pg_catalog.statement_timestamp())",
            None,
            &[],
        )? {
            if let Some(d) = col::<Vec<u8>>(&row, "digest")? {
                if let Ok(d) = <[u8; DIGEST_LEN]>::try_from(d.as_slice()) {
                    out.push(d);
                }
            }
        }
        Ok(out)
    }))
}

/// Find the key whose digest is `digest`, under the latest committed snapshot (which includes
/// this transaction's own changes). An authorization decision must see a revoke that committed
/// after a REPEATABLE READ transaction began, so the transaction snapshot will not do: Postgres'
/// own foreign-key checks read the same way.
///
/// Why not SPI: parse/plan caching aside, an SPI execution costs an executor start-up and
/// shutdown per call; a direct index probe is a B-tree descent and one heap fetch.
pub fn find_by_digest(digest: &[u8; DIGEST_LEN]) -> Option<StoredKey> {
    let cat = catalog::get();
    let keys = cat.relation("keys");
    let index = cat.digest_index();
    let a = cat.key_columns();
    let lock = pg_sys::AccessShareLock as pg_sys::LOCKMODE;
    // SAFETY: the relation and index are opened and closed in this function (closing with NoLock
    // keeps the lock to the end of the transaction, as the executor does); the lock is taken
    // *before* the snapshot, so any invalidation queued by a concurrent commit is processed first
    // (the cache's race counter sees it). The snapshot is registered for the scan and
    // unregistered after. The scan key's datum is a bytea built from `digest` in the current
    // memory context. Datums read from the slot are copied into Rust values before the slot is
    // dropped. If Postgres raises an error anywhere here, transaction abort releases the scan,
    // slot, relations and snapshot through their resource owners.
    unsafe {
        let heap = pg_sys::table_open(keys, lock);
        let irel = pg_sys::index_open(index, lock);
        let snapshot = pg_sys::RegisterSnapshot(pg_sys::GetLatestSnapshot());
        let mut skey: pg_sys::ScanKeyData = std::mem::zeroed();
        let arg = digest
            .to_vec()
            .into_datum()
            .unwrap_or_else(|| internal("bytea datum"));
        let strategy = if cat.digest_index_is_hash() {
            pg_sys::HTEqualStrategyNumber
        } else {
            pg_sys::BTEqualStrategyNumber
        };
        pg_sys::ScanKeyInit(
            &mut skey,
            1,
            strategy as pg_sys::StrategyNumber,
            pg_sys::Oid::from(pg_sys::F_BYTEAEQ),
            arg,
        );
        let scan = begin_index_scan(heap, irel, snapshot);
        pg_sys::index_rescan(scan, &mut skey, 1, std::ptr::null_mut(), 0);
        let slot = pg_sys::table_slot_create(heap, std::ptr::null_mut());
        // A hash index returns every row whose digest hashes alike (xs_recheck): skip those
        // whose digest is not this one. The unique B-tree returns at most the one.
        let mut hit = false;
        while pg_sys::index_getnext_slot(scan, pg_sys::ScanDirection::ForwardScanDirection, slot) {
            pg_sys::slot_getsomeattrs_int(slot, a.digest as i32);
            let i = (a.digest - 1) as usize;
            let (d, n) = (*(*slot).tts_values.add(i), *(*slot).tts_isnull.add(i));
            if !n && ct_eq(bytea_bytes(d), digest) {
                hit = true;
                break;
            }
        }
        let found = if hit {
            pg_sys::slot_getsomeattrs_int(slot, a.max as i32);
            let values = (*slot).tts_values;
            let nulls = (*slot).tts_isnull;
            // Attribute 0 is a column this install does not have yet (see catalog::key_columns).
            let get = |attnum: i16| {
                if attnum <= 0 {
                    return (pg_sys::Datum::from(0), true);
                }
                let i = (attnum - 1) as usize;
                (*values.add(i), *nulls.add(i))
            };
            macro_rules! read {
                ($attnum:expr, $t:ty) => {{
                    let (d, n) = get($attnum);
                    <$t>::from_polymorphic_datum(d, n, pg_sys::InvalidOid)
                }};
            }
            let mut should_free = false;
            let tuple = pg_sys::ExecFetchSlotHeapTuple(slot, false, &mut should_free);
            // Inserted (not updated: HEAP_UPDATED marks a row version made by an UPDATE) by this
            // very transaction.
            let header = (*tuple).t_data;
            let xmin = (*header).t_choice.t_heap.t_xmin;
            let inserted = (*header).t_infomask & pg_sys::HEAP_UPDATED as u16 == 0;
            let created_here = inserted && pg_sys::TransactionIdIsCurrentTransactionId(xmin);
            if should_free {
                pg_sys::heap_freetuple(tuple);
            }
            let id = read!(a.id, i64).unwrap_or_default();
            Some(StoredKey {
                id,
                lineage: read!(a.lineage, i64).unwrap_or(id),
                owner: read!(a.owner, String).unwrap_or_default(),
                name: read!(a.name, String).unwrap_or_default(),
                kind: kind_of(read!(a.kind, String)),
                format: read!(a.format, String).unwrap_or_default(),
                scopes: read!(a.scopes, Vec<String>),
                resource: read!(a.resource, String),
                created_at: read!(a.created_at, TimestampWithTimeZone)
                    .unwrap_or_else(|| internal("created_at is NOT NULL")),
                expires_at: read!(a.expires_at, TimestampWithTimeZone),
                revoked_at: read!(a.revoked_at, TimestampWithTimeZone),
                disabled: read!(a.disabled_at, TimestampWithTimeZone).is_some(),
                allowed: {
                    let (d, n) = get(a.allowed_ips);
                    (!n).then(|| cidr_array(d))
                },
                has_credits: !get(a.credits).1,
                named: match read!(a.limits, RawJsonb) {
                    // Nearly every key has none: skip the text round trip a parse would cost.
                    Some(raw) if !raw.is_empty_object() => {
                        named_limits(read!(a.limits, pgrx::JsonB).map(|j| j.0))
                    }
                    _ => Vec::new(),
                },
                refill: match (
                    read!(a.refill_amount, i64),
                    read!(a.refill_interval, Interval),
                ) {
                    (Some(amount), Some(every)) => {
                        Some((amount, every.as_micros().clamp(1, i64::MAX as i128) as i64))
                    }
                    _ => None,
                },
                metadata: read!(a.metadata, RawJsonb).unwrap_or_default(),
                rate: rate_of(
                    read!(a.rate_limit, i32),
                    read!(a.rate_period, Interval),
                    read!(a.rate_burst, i32),
                ),
                db_role: read!(a.db_role, String),
                // The loop above matched it against the probe.
                digest: *digest,
                created_here,
            })
        } else {
            None
        };
        pg_sys::ExecDropSingleTupleTableSlot(slot);
        pg_sys::index_endscan(scan);
        pg_sys::UnregisterSnapshot(snapshot);
        pg_sys::index_close(irel, pg_sys::NoLock as pg_sys::LOCKMODE);
        pg_sys::table_close(heap, pg_sys::NoLock as pg_sys::LOCKMODE);
        found
    }
}

/// Named limits from the `limits` column. A stored entry that does not parse is refused
/// rather than treated as unlimited (the same rule as the per-key limit).
pub fn named_limits(json: Option<serde_json::Value>) -> Vec<(String, Rate)> {
    let Some(serde_json::Value::Object(map)) = json else {
        return Vec::new();
    };
    map.into_iter()
        .map(|(name, v)| {
            let max = v.get("max").and_then(|x| x.as_i64()).unwrap_or(0);
            let per = v.get("per_us").and_then(|x| x.as_i64()).unwrap_or(0);
            let burst = v.get("burst").and_then(|x| x.as_i64());
            let rate = Rate::new(max, per, burst)
                .unwrap_or_else(|_| internal("a stored named limit is invalid"));
            (name, rate)
        })
        .collect()
}

/// A `cidr[]` datum, through its text form. A stored value that does not parse allows nothing
/// (fail closed); it cannot happen, since the column's type checks every value.
///
/// # Safety
/// `d` must be a non-null `cidr[]` datum.
unsafe fn cidr_array(d: pg_sys::Datum) -> Vec<Cidr> {
    // SAFETY: array_out on a cidr[] datum returns a palloc'd C string.
    let text = unsafe {
        std::ffi::CStr::from_ptr(pg_sys::OidOutputFunctionCall(
            pg_sys::Oid::from(pg_sys::F_ARRAY_OUT),
            d,
        ))
    };
    ipnet::parse_array(&text.to_string_lossy()).unwrap_or_default()
}

fn allowed_from_text(text: Option<String>) -> Option<Vec<Cidr>> {
    text.map(|t| ipnet::parse_array(&t).unwrap_or_default())
}

#[cfg(not(feature = "pg18"))]
unsafe fn begin_index_scan(
    heap: pg_sys::Relation,
    index: pg_sys::Relation,
    snapshot: pg_sys::Snapshot,
) -> pg_sys::IndexScanDesc {
    // SAFETY: open relations and a registered snapshot, as the caller guarantees.
    unsafe { pg_sys::index_beginscan(heap, index, snapshot, 1, 0) }
}

#[cfg(feature = "pg18")]
unsafe fn begin_index_scan(
    heap: pg_sys::Relation,
    index: pg_sys::Relation,
    snapshot: pg_sys::Snapshot,
) -> pg_sys::IndexScanDesc {
    // SAFETY: as above; PostgreSQL 18 adds an optional instrumentation pointer.
    unsafe { pg_sys::index_beginscan(heap, index, snapshot, std::ptr::null_mut(), 1, 0) }
}

/// The bytes of a non-null bytea datum, detoasted (into the current memory context) if need be.
///
/// # Safety
/// `d` must be a non-null bytea datum that outlives the returned slice.
unsafe fn bytea_bytes<'a>(d: pg_sys::Datum) -> &'a [u8] {
    // SAFETY: per the contract, a bytea; pg_detoast_datum_packed returns it (or a detoasted
    // copy) with a 1- or 4-byte header that varsize_any_exhdr and vardata_any read.
    unsafe {
        let v = pg_sys::pg_detoast_datum_packed(d.cast_mut_ptr());
        std::slice::from_raw_parts(
            pgrx::varlena::vardata_any(v) as *const u8,
            pgrx::varlena::varsize_any_exhdr(v),
        )
    }
}

/// A jsonb value carried as its bytes, so returning cached metadata costs a copy, not a parse.
#[derive(Clone, Default)]
pub struct RawJsonb(pub Vec<u8>);

impl RawJsonb {
    /// `{}`: a 4-byte varlena header, then a root container header saying "object, 0 pairs".
    fn is_empty_object(&self) -> bool {
        const JB_FOBJECT: u32 = 0x2000_0000;
        self.0.len() == 8 && self.0[4..8] == JB_FOBJECT.to_ne_bytes()
    }
}

impl FromDatum for RawJsonb {
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

impl IntoDatum for RawJsonb {
    fn into_datum(self) -> Option<pg_sys::Datum> {
        if self.0.is_empty() {
            return JsonB(serde_json::json!({})).into_datum();
        }
        // SAFETY: the bytes are a whole jsonb varlena copied from a datum (see
        // from_polymorphic_datum); palloc gives a buffer of exactly that size.
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

// ---------------------------------------------------------------------------------------------
// Keys: creation, the rows a change needs, changes.

/// A new key's row.
pub struct NewKeyRow<'a> {
    pub owner: &'a str,
    pub name: &'a str,
    pub format: String,
    pub kind: KeyKind,
    pub scopes: Option<Vec<String>>,
    pub resource: Option<String>,
    pub display_prefix: String,
    pub last4: String,
    pub digest: Vec<u8>,
    pub expires_in: Option<Interval>,
    pub expires_at: Option<TimestampWithTimeZone>,
    pub created_by: String,
    pub metadata: Option<serde_json::Value>,
    pub sealed: Option<Vec<u8>>,
    pub rate_limit: Option<i32>,
    pub rate_period: Option<Interval>,
    pub rate_burst: Option<i32>,
    pub db_role: Option<String>,
    pub allowed_ips: Option<Vec<String>>,
    pub credits: Option<i64>,
    pub refill_amount: Option<i64>,
    pub refill_interval: Option<Interval>,
    pub limits: serde_json::Value,
}

/// Insert a key; None when a key with its digest is already stored (an import of a key already
/// here, or one imported twice).
pub fn insert_key(k: NewKeyRow) -> Option<i64> {
    spi(Spi::connect_mut(|c| {
        let t = c.update(
            "INSERT INTO apikey.keys (owner, name, format, kind, scopes, resource, display_prefix, last4,
                                     digest, expires_in, expires_at, created_by, metadata, sealed,
                                     rate_limit, rate_period, rate_burst, db_role, allowed_ips,
                                     credits, refill_amount, refill_interval, credits_refilled_at,
                                     credits_peak, limits)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12,
                     COALESCE($13, '{}'::pg_catalog.jsonb), $14, $15, $16, $17, $18,
                     $19::pg_catalog.text[]::pg_catalog.cidr[], $20, $21, $22,
                     CASE WHEN $20 IS NOT NULL THEN pg_catalog.now() END, $20, $23)
             ON CONFLICT (digest) DO NOTHING
             RETURNING id",
            Some(1),
            &[
                k.owner.into(),
                k.name.into(),
                k.format.into(),
                k.kind.name().into(),
                k.scopes.into(),
                k.resource.into(),
                k.display_prefix.into(),
                k.last4.into(),
                k.digest.into(),
                k.expires_in.into(),
                k.expires_at.into(),
                k.created_by.into(),
                k.metadata.map(JsonB).into(),
                k.sealed.into(),
                k.rate_limit.into(),
                k.rate_period.into(),
                k.rate_burst.into(),
                k.db_role.into(),
                k.allowed_ips.into(),
                k.credits.into(),
                k.refill_amount.into(),
                k.refill_interval.into(),
                JsonB(k.limits).into(),
            ],
        )?;
        if t.is_empty() {
            return Ok(None);
        }
        t.first().get_by_name::<i64, _>("id")
    }))
}

/// A key someone wants to change or see, with what bounds it.
pub struct Target {
    pub owner: String,
    pub name: String,
    pub format: String,
    pub revoked: bool,
    /// Revocation scheduled for later: the key is in a rotation's grace period.
    pub in_grace: bool,
    pub expired: bool,
    pub disabled: bool,
    pub expires_in: Option<Interval>,
    pub rights: Rights,
    pub sealed: Option<Vec<u8>>,
    pub digest: Vec<u8>,
    /// A usage-limited key, and its refill (amount, interval µs).
    pub has_credits: bool,
    pub refill: Option<(i64, i64)>,
}

pub(crate) const TARGET_COLUMNS: &str =
    "owner, name, format, kind, scopes, resource, expires_at, rate_limit,
       rate_period, rate_burst, db_role, sealed, digest, expires_in,
       allowed_ips::pg_catalog.text AS allowed_ips, credits IS NOT NULL AS has_credits,
       refill_amount, refill_interval, limits,
       revoked_at IS NOT NULL AND revoked_at OPERATOR(pg_catalog.<=) pg_catalog.now() AS revoked,
       revoked_at IS NOT NULL AND revoked_at OPERATOR(pg_catalog.>) pg_catalog.now() AS in_grace,
       expires_at IS NOT NULL AND expires_at OPERATOR(pg_catalog.<=) pg_catalog.now() AS expired,
       disabled_at IS NOT NULL AS disabled";

/// Key `id` (locked FOR UPDATE when `lock`). With `owner`, the owner is part of the predicate and
/// the id is deliberately not indexable: the statement reads (and locks) only that owner's rows,
/// so neither the answer, the row locks nor the table's access statistics
/// (`pg_stat_get_xact_tuples_fetched`) say whether another owner's id exists.
///
/// Without `lock` the statement runs read-only (no transaction id is assigned), so reading a
/// key's state (`apikey.credits`) works on a hot standby and in READ ONLY transactions.
pub fn load_target(id: i64, owner: Option<&str>, lock: bool) -> Option<Target> {
    let lock_clause = if lock { " FOR UPDATE" } else { "" };
    let query = match owner {
        None => format!(
            "SELECT {TARGET_COLUMNS} FROM apikey.keys WHERE id OPERATOR(pg_catalog.=) $1{lock_clause}"
        ),
        Some(_) => format!(
            "SELECT {TARGET_COLUMNS} FROM apikey.keys
              WHERE owner OPERATOR(pg_catalog.=) $2
                AND (id OPERATOR(pg_catalog.+) 0) OPERATOR(pg_catalog.=) $1{lock_clause}"
        ),
    };
    let mut args = vec![id.into()];
    if let Some(owner) = owner {
        args.push(owner.into());
    }
    spi(Spi::connect_mut(|c| {
        let t = if lock {
            c.update(query.as_str(), Some(1), &args)?
        } else {
            c.select(query.as_str(), Some(1), &args)?
        };
        if t.is_empty() {
            return Ok(None);
        }
        let r = &t.first();
        Ok::<_, pgrx::spi::SpiError>(Some(Target {
            owner: col(r, "owner")?.unwrap_or_default(),
            name: col(r, "name")?.unwrap_or_default(),
            format: col(r, "format")?.unwrap_or_default(),
            rights: Rights {
                kind: kind_of(col(r, "kind")?),
                scopes: col(r, "scopes")?,
                resource: col(r, "resource")?,
                expires_at: col::<TimestampWithTimeZone>(r, "expires_at")?.map(Into::into),
                rate: rate_of(
                    col(r, "rate_limit")?,
                    col(r, "rate_period")?,
                    col(r, "rate_burst")?,
                ),
                db_role: col(r, "db_role")?,
                allowed: allowed_from_text(col(r, "allowed_ips")?),
                named: named_limits(col::<pgrx::JsonB>(r, "limits")?.map(|j| j.0)),
                metered: col(r, "has_credits")?.unwrap_or(false),
                deny: crate::gucs::deny_scopes(),
            },
            sealed: col(r, "sealed")?,
            digest: col(r, "digest")?.unwrap_or_default(),
            expires_in: col(r, "expires_in")?,
            has_credits: col(r, "has_credits")?.unwrap_or(false),
            refill: match (
                col::<i64>(r, "refill_amount")?,
                col::<Interval>(r, "refill_interval")?,
            ) {
                (Some(amount), Some(every)) => {
                    Some((amount, every.as_micros().clamp(1, i64::MAX as i128) as i64))
                }
                _ => None,
            },
            revoked: col(r, "revoked")?.unwrap_or(false),
            in_grace: col(r, "in_grace")?.unwrap_or(false),
            expired: col(r, "expired")?.unwrap_or(false),
            disabled: col(r, "disabled")?.unwrap_or(false),
        }))
    }))
}

/// Disable (`true`) or enable key `id`; false when it already was.
pub fn set_disabled(id: i64, disabled: bool) -> bool {
    spi(Spi::connect_mut(|c| {
        let changed = c.update(
            "UPDATE apikey.keys
                SET disabled_at = CASE WHEN $2 THEN pg_catalog.now() END
              WHERE id OPERATOR(pg_catalog.=) $1 AND (disabled_at IS NOT NULL) OPERATOR(pg_catalog.<>) $2
              RETURNING id",
            None,
            &[id.into(), disabled.into()],
        )?;
        Ok::<_, pgrx::spi::SpiError>(!changed.is_empty())
    }))
}

pub fn revoke_now(id: i64) {
    spi(Spi::connect_mut(|c| {
        c.update(
            "UPDATE apikey.keys SET revoked_at = pg_catalog.now() WHERE id OPERATOR(pg_catalog.=) $1",
            None,
            &[id.into()],
        )
        .map(|_| ())
    }))
}

pub fn delete_key(id: i64) {
    spi(Spi::connect_mut(|c| {
        c.update(
            "DELETE FROM apikey.keys WHERE id OPERATOR(pg_catalog.=) $1",
            None,
            &[id.into()],
        )
        .map(|_| ())
    }))
}

/// The parts of a rotated key that are new; the rest is copied from key `old_id`.
pub struct Rotated {
    pub display_prefix: String,
    pub last4: String,
    pub digest: Vec<u8>,
    pub created_by: String,
    pub sealed: Option<Vec<u8>>,
    pub expires_at: Option<TimestampWithTimeZone>,
    /// The balance the successor starts with (the old key's, moved).
    pub credits: Option<i64>,
}

/// Insert the successor of `old_id` and schedule the old key's revocation after `grace`.
pub fn rotate(old_id: i64, new: Rotated, grace: Interval) -> i64 {
    spi(Spi::connect_mut(|c| {
        let new_id = c
            .update(
                crate::key_columns::rotation_insert().as_str(),
                Some(1),
                &[
                    old_id.into(),
                    new.display_prefix.into(),
                    new.last4.into(),
                    new.digest.into(),
                    new.created_by.into(),
                    new.sealed.into(),
                    new.expires_at.into(),
                    new.credits.into(),
                ],
            )?
            .first()
            .get_by_name::<i64, _>("id")?;
        // The old key keeps no refill either: during its grace it would otherwise refill
        // beside its successor, and a chain of rotations would multiply the allowance.
        c.update(
            "UPDATE apikey.keys
                SET revoked_at = LEAST(COALESCE(revoked_at, 'infinity'::pg_catalog.timestamptz),
                                       pg_catalog.now() OPERATOR(pg_catalog.+) $2),
                    refill_amount = NULL, refill_interval = NULL
              WHERE id OPERATOR(pg_catalog.=) $1",
            None,
            &[old_id.into(), grace.into()],
        )?;
        Ok::<_, pgrx::spi::SpiError>(new_id)
    }))
    .unwrap_or_else(|| internal("INSERT … RETURNING returned no row"))
}

/// An application key's sealed form, for keys that are valid now: (sealed, digest).
pub fn sealed_app_key(id: i64) -> Option<(Vec<u8>, Vec<u8>)> {
    spi(Spi::connect(|c| {
        let t = c.select(
            "SELECT sealed, digest FROM apikey.keys
              WHERE id OPERATOR(pg_catalog.=) $1
                AND kind OPERATOR(pg_catalog.=) 'app'
                AND sealed IS NOT NULL
                AND disabled_at IS NULL
                AND (revoked_at IS NULL OR revoked_at OPERATOR(pg_catalog.>) pg_catalog.statement_timestamp())
                AND (expires_at IS NULL OR expires_at OPERATOR(pg_catalog.>) pg_catalog.statement_timestamp())",
            Some(1),
            &[id.into()],
        )?;
        if t.is_empty() {
            return Ok(None);
        }
        let r = t.first();
        Ok(Some((
            col::<Vec<u8>>(&r, "sealed")?.unwrap_or_default(),
            col::<Vec<u8>>(&r, "digest")?.unwrap_or_default(),
        )))
    }))
}

// ---------------------------------------------------------------------------------------------
// The audit log.

pub struct AuditRow<'a> {
    pub action: &'a str,
    pub key_id: i64,
    pub owner: &'a str,
    pub key_name: &'a str,
    pub actor: &'a str,
    pub actor_key_id: Option<i64>,
    pub detail: serde_json::Value,
}

pub fn audit(row: AuditRow) {
    spi(Spi::connect_mut(|c| {
        c.update(
            "INSERT INTO apikey.audit_log (action, key_id, owner, key_name, actor, session_actor, actor_key_id, detail)
             VALUES ($1, $2, $3, $4, $5, session_user, $6, $7)",
            None,
            &[
                row.action.into(),
                row.key_id.into(),
                row.owner.into(),
                row.key_name.into(),
                row.actor.into(),
                row.actor_key_id.into(),
                JsonB(row.detail).into(),
            ],
        )
        .map(|_| ())
    }))
}

// ---------------------------------------------------------------------------------------------
// Administrators.

/// The administrator roles: (OID, the name it had when granted).
pub fn admin_roles() -> Vec<(pg_sys::Oid, String)> {
    // Under the latest snapshot: a revoke_admin committed after a REPEATABLE READ transaction
    // began takes effect in it at once.
    latest(
        c"SELECT role, role_name::pg_catalog.text FROM apikey.admins",
        &[],
        |r| r.get::<pg_sys::Oid>(1).zip(r.get::<String>(2)),
    )
    .into_iter()
    .flatten()
    .collect()
}

/// What an administrator may read directly (everything else goes through functions).
const ADMIN_READS: &str =
    "apikey.audit_log, apikey.usage, apikey.usage_live, apikey.rate_limit_state, apikey.owner_limits, apikey.events";

/// Add role `oid` (named `name`, quoted `quoted`) to the administrators; false if it was one.
pub fn add_admin(oid: pg_sys::Oid, name: &str, quoted: &str, granted_by: &str) -> bool {
    spi(Spi::connect_mut(|c| {
        let added = c.update(
            "INSERT INTO apikey.admins (role, role_name, granted_by) VALUES ($1, $2::pg_catalog.name, $3)
             ON CONFLICT (role) DO NOTHING RETURNING role",
            None,
            &[oid.into(), name.into(), granted_by.into()],
        )?;
        c.update(
            &format!("GRANT SELECT ON {ADMIN_READS} TO {quoted}"),
            None,
            &[],
        )?;
        Ok::<_, pgrx::spi::SpiError>(!added.is_empty())
    }))
}

pub fn remove_admin(oid: pg_sys::Oid, quoted: &str) -> bool {
    spi(Spi::connect_mut(|c| {
        let removed = c.update(
            "DELETE FROM apikey.admins WHERE role OPERATOR(pg_catalog.=) $1 RETURNING role",
            None,
            &[oid.into()],
        )?;
        c.update(
            &format!("REVOKE SELECT ON {ADMIN_READS} FROM {quoted}"),
            None,
            &[],
        )?;
        Ok::<_, pgrx::spi::SpiError>(!removed.is_empty())
    }))
}

// ---------------------------------------------------------------------------------------------
// Formats.

pub struct FormatRow {
    pub name: String,
    pub prefix: String,
    pub alphabet: String,
    pub body_length: i32,
    pub checksum: String,
    pub recoverable: bool,
}

/// Read as the caller (formats are readable by everyone), with the pinned search_path.
pub fn formats() -> Vec<FormatRow> {
    spi(Spi::connect(|c| {
        let mut rows = Vec::new();
        for row in c.select(
            "SELECT name, prefix, alphabet, body_length, checksum, recoverable
               FROM apikey.formats ORDER BY name",
            None,
            &[],
        )? {
            rows.push(FormatRow {
                name: col(&row, "name")?.unwrap_or_default(),
                prefix: col(&row, "prefix")?.unwrap_or_default(),
                alphabet: col(&row, "alphabet")?.unwrap_or_default(),
                body_length: col(&row, "body_length")?.unwrap_or_default(),
                checksum: col(&row, "checksum")?.unwrap_or_default(),
                recoverable: col(&row, "recoverable")?.unwrap_or(false),
            });
        }
        Ok::<_, pgrx::spi::SpiError>(rows)
    }))
}

pub fn insert_format(f: &FormatRow, description: Option<&str>) {
    spi(Spi::connect_mut(|c| {
        c.update(
            "INSERT INTO apikey.formats (name, prefix, alphabet, body_length, checksum, recoverable, description)
             VALUES ($1, $2, $3, $4, $5, $6, $7)",
            None,
            &[
                f.name.clone().into(),
                f.prefix.clone().into(),
                f.alphabet.clone().into(),
                f.body_length.into(),
                f.checksum.clone().into(),
                f.recoverable.into(),
                description.into(),
            ],
        )
        .map(|_| ())
    }))
}

pub fn set_format_recoverable(name: &str, recoverable: bool) {
    spi(Spi::connect_mut(|c| {
        c.update(
            "UPDATE apikey.formats SET recoverable = $2 WHERE name OPERATOR(pg_catalog.=) $1",
            None,
            &[name.into(), recoverable.into()],
        )
        .map(|_| ())
    }))
}

// ---------------------------------------------------------------------------------------------
// The creation quota's durable log.

/// Lock bucket `bucket`'s row (creating it), and return its event log and the clock, in
/// microseconds. Concurrent creators queue on the row lock.
pub fn lock_quota(bucket: &str) -> (Vec<i64>, i64) {
    spi(Spi::connect_mut(|c| {
        c.update(
            "INSERT INTO apikey.rate_limits (bucket, hits) VALUES ($1, '{}') ON CONFLICT (bucket) DO NOTHING",
            None,
            &[bucket.into()],
        )?;
        let t = c.update(
            "SELECT hits,
                    (EXTRACT(epoch FROM pg_catalog.clock_timestamp()) OPERATOR(pg_catalog.*) 1000000)::pg_catalog.int8 AS now_us
               FROM apikey.rate_limits WHERE bucket OPERATOR(pg_catalog.=) $1 FOR UPDATE",
            Some(1),
            &[bucket.into()],
        )?;
        let r = t.first();
        Ok::<_, pgrx::spi::SpiError>((
            col::<Vec<i64>>(&r, "hits")?.unwrap_or_default(),
            col::<i64>(&r, "now_us")?.unwrap_or_default(),
        ))
    }))
}

pub fn save_quota(bucket: &str, hits: Vec<i64>) {
    spi(Spi::connect_mut(|c| {
        c.update(
            "UPDATE apikey.rate_limits SET hits = $2, updated_at = pg_catalog.now() WHERE bucket OPERATOR(pg_catalog.=) $1",
            None,
            &[bucket.into(), hits.into()],
        )
        .map(|_| ())
    }))
}

// ---------------------------------------------------------------------------------------------
// Usage, written by the flush worker.

pub struct UsageBatch {
    pub ids: Vec<i64>,
    pub last_used: Vec<Option<TimestampWithTimeZone>>,
    /// One column per event kind, in `usage_table::Event` order.
    pub counts: [Vec<i64>; 5],
}

pub fn write_usage(b: UsageBatch) -> Result<(), pgrx::spi::SpiError> {
    let [uses, expired, revoked, limited, denied] = b.counts;
    Spi::connect_mut(|c| {
        c.update(
            "UPDATE apikey.keys k SET last_used_at = GREATEST(k.last_used_at, u.at)
               FROM ROWS FROM (pg_catalog.unnest($1::pg_catalog.int8[]), pg_catalog.unnest($2::pg_catalog.timestamptz[])) AS u(id, at)
              WHERE k.id OPERATOR(pg_catalog.=) u.id AND u.at IS NOT NULL",
            None,
            &[b.ids.clone().into(), b.last_used.into()],
        )?;
        c.update(
            "INSERT INTO apikey.usage AS u (key_id, bucket, uses, expired, revoked, rate_limited, denied)
             SELECT x.id, pg_catalog.date_trunc('minute', pg_catalog.now()), x.uses, x.expired, x.revoked, x.limited, x.denied
               FROM ROWS FROM (pg_catalog.unnest($1::pg_catalog.int8[]), pg_catalog.unnest($2::pg_catalog.int8[]),
                               pg_catalog.unnest($3::pg_catalog.int8[]), pg_catalog.unnest($4::pg_catalog.int8[]),
                               pg_catalog.unnest($5::pg_catalog.int8[]), pg_catalog.unnest($6::pg_catalog.int8[]))
                    AS x(id, uses, expired, revoked, limited, denied)
              WHERE GREATEST(x.uses, x.expired, x.revoked, x.limited, x.denied) OPERATOR(pg_catalog.>) 0
             ON CONFLICT (key_id, bucket) DO UPDATE
                SET uses = u.uses OPERATOR(pg_catalog.+) excluded.uses,
                    expired = u.expired OPERATOR(pg_catalog.+) excluded.expired,
                    revoked = u.revoked OPERATOR(pg_catalog.+) excluded.revoked,
                    rate_limited = u.rate_limited OPERATOR(pg_catalog.+) excluded.rate_limited,
                    denied = u.denied OPERATOR(pg_catalog.+) excluded.denied",
            None,
            &[
                b.ids.into(),
                uses.into(),
                expired.into(),
                revoked.into(),
                limited.into(),
                denied.into(),
            ],
        )?;
        Ok(())
    })
}

// ---------------------------------------------------------------------------------------------
// Reads under the latest snapshot.

/// One row of [`latest`], read by column number (from 1).
pub struct LatestRow {
    tuple: pg_sys::HeapTuple,
    desc: pg_sys::TupleDesc,
}

impl LatestRow {
    pub fn get<V: FromDatum>(&self, column: i32) -> Option<V> {
        // SAFETY: the tuple and descriptor belong to the SPI result that `latest` holds while
        // it calls the row closure; FromDatum copies what it returns out of SPI memory; the
        // column's own type OID is passed, as FromDatum expects.
        unsafe {
            let mut isnull = false;
            let d = pg_sys::SPI_getbinval(self.tuple, self.desc, column, &mut isnull);
            let typoid = pg_sys::SPI_gettypeid(self.desc, column);
            V::from_polymorphic_datum(d, isnull, typoid)
        }
    }
}

/// The rows of a read-only query under the *latest* snapshot, not the transaction's. What
/// decides authority or money now (a balance, the administrators, owner limits, waiting
/// imports; several are then cached per backend) must not be read as a REPEATABLE READ
/// transaction saw it when it began: a transaction kept open would otherwise keep spending a
/// balance already spent, or keep rights already taken away. Read-only: no transaction id.
/// `args` are (type OID, by-value datum) pairs.
pub fn latest<T>(
    query: &std::ffi::CStr,
    args: &[(pg_sys::Oid, pg_sys::Datum)],
    mut row: impl FnMut(&LatestRow) -> T,
) -> Vec<T> {
    spi(Spi::connect(|_| {
        // SAFETY: runs inside the SPI connection Spi::connect opened. The plan's parameter
        // types and datums come from `args` (by-value datums, all not null); the snapshot is
        // registered for the execution and unregistered after; the result's tuples are read
        // (and copied out by `row`) before the plan is freed. An error raised inside releases
        // the plan, snapshot and tuple table with the SPI context and resource owner.
        unsafe {
            let mut types: Vec<pg_sys::Oid> = args.iter().map(|a| a.0).collect();
            let mut values: Vec<pg_sys::Datum> = args.iter().map(|a| a.1).collect();
            let nulls: Vec<std::ffi::c_char> = vec![b' ' as std::ffi::c_char; args.len() + 1];
            let plan = pg_sys::SPI_prepare(query.as_ptr(), args.len() as i32, types.as_mut_ptr());
            if plan.is_null() {
                internal("a read under the latest snapshot did not plan");
            }
            let snapshot = pg_sys::RegisterSnapshot(pg_sys::GetLatestSnapshot());
            let rc = pg_sys::SPI_execute_snapshot(
                plan,
                values.as_mut_ptr(),
                nulls.as_ptr(),
                snapshot,
                std::ptr::null_mut(),
                true,
                false,
                0,
            );
            pg_sys::UnregisterSnapshot(snapshot);
            let table = pg_sys::SPI_tuptable;
            let mut out = Vec::new();
            if rc == pg_sys::SPI_OK_SELECT as i32 && !table.is_null() {
                for i in 0..pg_sys::SPI_processed as usize {
                    out.push(row(&LatestRow {
                        tuple: *(*table).vals.add(i),
                        desc: (*table).tupdesc,
                    }));
                }
            }
            pg_sys::SPI_freeplan(plan);
            Ok::<_, pgrx::spi::SpiError>(out)
        }
    }))
}

// ---------------------------------------------------------------------------------------------
// Credits.

/// The table's balance of key `key_id`: (credits, refilled at in µs).
pub fn credit_balance(key_id: i64) -> (i64, i64) {
    latest(
        c"SELECT COALESCE(credits, 0::pg_catalog.int8),
                 COALESCE(credits_refilled_at, created_at)
            FROM apikey.keys WHERE id OPERATOR(pg_catalog.=) $1",
        &[(pg_sys::INT8OID, pg_sys::Datum::from(key_id))],
        |r| (r.get::<i64>(1).unwrap_or(0), r.get::<i64>(2).unwrap_or(0)),
    )
    .into_iter()
    .next()
    .unwrap_or((0, 0))
}

pub fn add_credits(key_id: i64, n: i64) {
    spi(Spi::connect_mut(|c| {
        c.update(
            "UPDATE apikey.keys SET credits = GREATEST(credits OPERATOR(pg_catalog.+) $2, 0),
                    credits_peak = GREATEST(credits_peak, credits OPERATOR(pg_catalog.+) $2)
              WHERE id OPERATOR(pg_catalog.=) $1 AND credits IS NOT NULL",
            None,
            &[key_id.into(), n.into()],
        )
        .map(|_| ())
    }))
}

/// Write balances (key id, remaining, refilled at µs, version) from shared memory.
pub fn write_credits(rows: &[(i64, i64, i64, u64)]) {
    let ids: Vec<i64> = rows.iter().map(|r| r.0).collect();
    let left: Vec<i64> = rows.iter().map(|r| r.1.max(0)).collect();
    let at: Vec<Option<TimestampWithTimeZone>> = rows
        .iter()
        .map(|r| TimestampWithTimeZone::try_from(r.2).ok())
        .collect();
    spi(Spi::connect_mut(|c| {
        c.update(
            "UPDATE apikey.keys k SET credits = x.remaining, credits_refilled_at = COALESCE(x.at, k.credits_refilled_at)
               FROM ROWS FROM (pg_catalog.unnest($1::pg_catalog.int8[]), pg_catalog.unnest($2::pg_catalog.int8[]),
                               pg_catalog.unnest($3::pg_catalog.timestamptz[])) AS x(id, remaining, at)
              WHERE k.id OPERATOR(pg_catalog.=) x.id AND k.credits IS NOT NULL",
            None,
            &[ids.into(), left.into(), at.into()],
        )
        .map(|_| ())
    }))
}

// ---------------------------------------------------------------------------------------------
// Owner-wide limits.

/// Every owner limit: (owner or pattern, name, max, per, burst).
pub fn owner_limits() -> Vec<(String, String, i32, Interval, Option<i32>)> {
    // Under the latest snapshot: backends cache what this returns, so a transaction with an old
    // snapshot must not load (and keep) the limits as they were before one was set.
    latest(
        c"SELECT owner, name, max, per, burst FROM apikey.owner_limits",
        &[],
        |r| {
            (
                r.get::<String>(1).unwrap_or_default(),
                r.get::<String>(2).unwrap_or_default(),
                r.get::<i32>(3).unwrap_or(1),
                r.get::<Interval>(4)
                    .unwrap_or_else(|| Interval::from_micros(1)),
                r.get::<i32>(5),
            )
        },
    )
}

pub fn set_owner_limit(
    owner: &str,
    name: &str,
    max: i32,
    per: Interval,
    burst: Option<i32>,
    by: &str,
) {
    spi(Spi::connect_mut(|c| {
        c.update(
            "INSERT INTO apikey.owner_limits (owner, name, max, per, burst, set_by) VALUES ($1, $2, $3, $4, $5, $6)
             ON CONFLICT (owner, name) DO UPDATE
                SET max = excluded.max, per = excluded.per, burst = excluded.burst,
                    set_by = excluded.set_by, set_at = pg_catalog.now()",
            None,
            &[owner.into(), name.into(), max.into(), per.into(), burst.into(), by.into()],
        )
        .map(|_| ())
    }))
}

pub fn clear_owner_limit(owner: &str, name: &str) -> bool {
    spi(Spi::connect_mut(|c| {
        let t = c.update(
            "DELETE FROM apikey.owner_limits WHERE owner OPERATOR(pg_catalog.=) $1 AND name OPERATOR(pg_catalog.=) $2 RETURNING owner",
            None,
            &[owner.into(), name.into()],
        )?;
        Ok::<_, pgrx::spi::SpiError>(!t.is_empty())
    }))
}

// ---------------------------------------------------------------------------------------------
// Imported keys waiting for their first use (bcrypt).

/// What verify needs to know about waiting bcrypt imports of one key format.
pub struct PendingImports {
    pub format: String,
    pub min_len: usize,
    pub max_len: usize,
    pub max_cost: u32,
}

pub fn pending_imports() -> Vec<PendingImports> {
    // Cached per backend: read under the latest snapshot (see owner_limits).
    latest(
        c"SELECT k.format, pg_catalog.min(pg_catalog.length(i.lookup)),
                 pg_catalog.max(pg_catalog.length(i.lookup)), pg_catalog.max(i.cost)
            FROM apikey.key_imports i
            JOIN apikey.keys k ON k.id OPERATOR(pg_catalog.=) i.key_id
           GROUP BY k.format",
        &[],
        |r| PendingImports {
            format: r.get::<String>(1).unwrap_or_default(),
            min_len: r.get::<i32>(2).unwrap_or(0).max(0) as usize,
            max_len: r.get::<i32>(3).unwrap_or(0).max(0) as usize,
            max_cost: r.get::<i32>(4).unwrap_or(4).max(4) as u32,
        },
    )
}

/// Serialize imports of bcrypt keys, so two concurrent imports cannot add overlapping lookup
/// parts.
pub fn lock_imports() {
    spi(Spi::connect_mut(|c| {
        c.update(
            "LOCK TABLE apikey.key_imports IN SHARE ROW EXCLUSIVE MODE",
            None,
            &[],
        )
        .map(|_| ())
    }))
}

/// A stored lookup part that is a prefix of `lookup` or that `lookup` is a prefix of, with its
/// hash. (Lookup parts are ASCII, so the range [lookup, lookup with its last byte + 1) holds
/// exactly the strings it begins.)
pub fn lookup_overlap(lookup: &str) -> Option<(String, String)> {
    let shorter: Vec<String> = (1..lookup.len()).map(|n| lookup[..n].to_owned()).collect();
    let mut upper = lookup.as_bytes().to_vec();
    if let Some(last) = upper.last_mut() {
        *last = last.saturating_add(1);
    }
    let upper = String::from_utf8_lossy(&upper).into_owned();
    spi(Spi::connect(|c| {
        let t = c.select(
            "SELECT lookup::pg_catalog.text AS lookup, hash FROM apikey.key_imports
              WHERE lookup OPERATOR(pg_catalog.=) ANY ($1::pg_catalog.text[])
                 OR (lookup OPERATOR(pg_catalog.>=) $2 AND lookup OPERATOR(pg_catalog.<) $3)
              LIMIT 1",
            Some(1),
            &[shorter.into(), lookup.into(), upper.into()],
        )?;
        if t.is_empty() {
            return Ok(None);
        }
        let r = t.first();
        Ok::<_, pgrx::spi::SpiError>(Some((
            col::<String>(&r, "lookup")?.unwrap_or_default(),
            col::<String>(&r, "hash")?.unwrap_or_default(),
        )))
    }))
}

pub fn insert_import(key_id: i64, lookup: &str, hash: &str, cost: u32) {
    spi(Spi::connect_mut(|c| {
        c.update(
            "INSERT INTO apikey.key_imports (key_id, lookup, hash, cost) VALUES ($1, $2, $3, $4)",
            None,
            &[
                key_id.into(),
                lookup.into(),
                hash.into(),
                (cost as i32).into(),
            ],
        )
        .map(|_| ())
    }))
}

/// The import whose lookup part is one of `candidates`: (key id, bcrypt hash, stand-in digest).
pub fn find_import(candidates: Vec<String>) -> Option<(i64, String, Vec<u8>)> {
    spi(Spi::connect(|c| {
        let t = c.select(
            "SELECT i.key_id, i.hash, k.digest
               FROM apikey.key_imports i
               JOIN apikey.keys k ON k.id OPERATOR(pg_catalog.=) i.key_id
              WHERE i.lookup OPERATOR(pg_catalog.=) ANY ($1::pg_catalog.text[])
              LIMIT 1",
            Some(1),
            &[candidates.into()],
        )?;
        if t.is_empty() {
            return Ok(None);
        }
        let r = t.first();
        Ok::<_, pgrx::spi::SpiError>(Some((
            col::<i64>(&r, "key_id")?.unwrap_or(0),
            col::<String>(&r, "hash")?.unwrap_or_default(),
            col::<Vec<u8>>(&r, "digest")?.unwrap_or_default(),
        )))
    }))
}

/// Store an imported key's SHA-256 in place of its stand-in and forget its bcrypt hash. Returns
/// (owner, name) when this call did it (None: already done, or the key is gone).
pub fn rehash(key_id: i64, digest: &[u8], last4: &str) -> Option<(String, String)> {
    spi(Spi::connect_mut(|c| {
        let t = c.update(
            "WITH done AS (DELETE FROM apikey.key_imports WHERE key_id OPERATOR(pg_catalog.=) $1 RETURNING key_id)
             UPDATE apikey.keys k SET digest = $2, last4 = $3
               FROM done WHERE k.id OPERATOR(pg_catalog.=) done.key_id
             RETURNING k.owner, k.name",
            Some(1),
            &[key_id.into(), digest.to_vec().into(), last4.into()],
        )?;
        if t.is_empty() {
            return Ok(None);
        }
        let r = t.first();
        Ok::<_, pgrx::spi::SpiError>(Some((
            col::<String>(&r, "owner")?.unwrap_or_default(),
            col::<String>(&r, "name")?.unwrap_or_default(),
        )))
    }))
}

// ---------------------------------------------------------------------------------------------
// Events.

/// Record an event and announce it on channel `apikey_events` at commit. The notification
/// carries no owner, name or detail: any role may LISTEN on any channel, so those stay in
/// `apikey.events`, which only administrators read.
pub fn emit_event(
    event: &str,
    key_id: Option<i64>,
    owner: Option<&str>,
    key_name: Option<&str>,
    detail: serde_json::Value,
) -> i64 {
    spi(Spi::connect_mut(|c| {
        let t = c.update(
            "WITH e AS (INSERT INTO apikey.events (event, key_id, owner, key_name, detail)
                        VALUES ($1, $2, $3, $4, $5) RETURNING id, at)
             SELECT e.id, pg_catalog.pg_notify('apikey_events',
                        pg_catalog.json_build_object('id', e.id, 'event', $1::pg_catalog.text,
                                                     'key_id', $2::pg_catalog.int8, 'at', e.at)::pg_catalog.text) AS sent
               FROM e",
            Some(1),
            &[
                event.into(),
                key_id.into(),
                owner.into(),
                key_name.into(),
                JsonB(detail).into(),
            ],
        )?;
        t.first()
            .get_by_name::<i64, _>("id")
            .map(|id| id.unwrap_or(0))
    }))
}

/// Delete events older than `retention_s` seconds, and `limited` marks of past windows.
pub fn prune_events(retention_s: i64, window_s: i64) {
    spi(Spi::connect_mut(|c| {
        c.update(
            "DELETE FROM apikey.events
              WHERE at OPERATOR(pg_catalog.<) (pg_catalog.now() OPERATOR(pg_catalog.-) pg_catalog.make_interval(secs => $1))",
            None,
            &[(retention_s as f64).into()],
        )?;
        c.update(
            "DELETE FROM apikey.announcements
              WHERE event OPERATOR(pg_catalog.=) 'limited'
                AND at OPERATOR(pg_catalog.<) (pg_catalog.now() OPERATOR(pg_catalog.-) pg_catalog.make_interval(secs => $1))",
            None,
            &[(2.0 * window_s as f64).into()],
        )
        .map(|_| ())
    }))
}

/// A key event the worker announces: (key id, owner, name, detail).
pub type Announced = (i64, String, String, serde_json::Value);

fn announced_rows(t: pgrx::spi::SpiTupleTable) -> SpiResult<Vec<Announced>> {
    let mut out = Vec::new();
    for row in t {
        out.push((
            col::<i64>(&row, "id")?.unwrap_or(0),
            col::<String>(&row, "owner")?.unwrap_or_default(),
            col::<String>(&row, "name")?.unwrap_or_default(),
            col::<JsonB>(&row, "detail")?
                .map(|j| j.0)
                .unwrap_or_default(),
        ));
    }
    Ok(out)
}

/// Live keys expiring within one of `days`, not yet announced for that threshold; marks them.
pub fn due_expiry_notices(days: &[i32]) -> Vec<Announced> {
    spi(Spi::connect_mut(|c| {
        let t = c.update(
            "WITH due AS (
                 SELECT k.id, k.owner, k.name, k.expires_at, t.days
                   FROM pg_catalog.unnest($1::pg_catalog.int4[]) AS t(days)
                   JOIN apikey.keys k
                     ON k.expires_at OPERATOR(pg_catalog.>) pg_catalog.now()
                    AND k.expires_at OPERATOR(pg_catalog.<=) (pg_catalog.now() OPERATOR(pg_catalog.+) pg_catalog.make_interval(days => t.days))
                  WHERE (k.revoked_at IS NULL OR k.revoked_at OPERATOR(pg_catalog.>) pg_catalog.now())
             ), marked AS (
                 INSERT INTO apikey.announcements (key_id, event, threshold)
                 SELECT id, 'expiring', days::pg_catalog.text FROM due
                 ON CONFLICT DO NOTHING RETURNING key_id, threshold
             )
             SELECT d.id, d.owner, d.name,
                    pg_catalog.jsonb_build_object('expires_at', d.expires_at, 'within_days', d.days) AS detail
               FROM due d JOIN marked m
                 ON m.key_id OPERATOR(pg_catalog.=) d.id AND m.threshold OPERATOR(pg_catalog.=) d.days::pg_catalog.text
              ORDER BY d.id, d.days DESC",
            None,
            &[days.to_vec().into()],
        )?;
        announced_rows(t)
    }))
}

/// Of keys `ids`, those whose credits fell below `percent` % of their refill amount (or of the
/// most they held), not yet announced since they last were above it; marks them, and forgets
/// the mark of keys that are above it again.
pub fn due_credit_notices(ids: &[i64], percent: i32) -> Vec<Announced> {
    spi(Spi::connect_mut(|c| {
        let threshold = format!("{percent}%");
        c.update(
            "DELETE FROM apikey.announcements a USING apikey.keys k
              WHERE a.key_id OPERATOR(pg_catalog.=) k.id AND a.event OPERATOR(pg_catalog.=) 'credits_low'
                AND k.id OPERATOR(pg_catalog.=) ANY ($1::pg_catalog.int8[])
                AND (k.credits OPERATOR(pg_catalog.*) 100) OPERATOR(pg_catalog.>=)
                    (COALESCE(k.refill_amount, k.credits_peak) OPERATOR(pg_catalog.*) $2)",
            None,
            &[ids.to_vec().into(), percent.into()],
        )?;
        let t = c.update(
            "WITH low AS (
                 SELECT k.id, k.owner, k.name, k.credits, COALESCE(k.refill_amount, k.credits_peak) AS reference
                   FROM apikey.keys k
                  WHERE k.id OPERATOR(pg_catalog.=) ANY ($1::pg_catalog.int8[])
                    AND k.credits IS NOT NULL
                    AND (k.credits OPERATOR(pg_catalog.*) 100) OPERATOR(pg_catalog.<)
                        (COALESCE(k.refill_amount, k.credits_peak) OPERATOR(pg_catalog.*) $2)
             ), marked AS (
                 INSERT INTO apikey.announcements (key_id, event, threshold)
                 SELECT id, 'credits_low', $3 FROM low ON CONFLICT DO NOTHING RETURNING key_id
             )
             SELECT l.id, l.owner, l.name,
                    pg_catalog.jsonb_build_object('credits', l.credits, 'of', l.reference, 'below_percent', $2) AS detail
               FROM low l JOIN marked m ON m.key_id OPERATOR(pg_catalog.=) l.id",
            None,
            &[ids.to_vec().into(), percent.into(), threshold.into()],
        )?;
        announced_rows(t)
    }))
}

/// Of keys `ids` (refused by a limit since the last flush), those not yet announced in the
/// window numbered `window`; marks them.
pub fn due_limit_notices(ids: &[i64], window: i64) -> Vec<Announced> {
    spi(Spi::connect_mut(|c| {
        let t = c.update(
            "WITH marked AS (
                 INSERT INTO apikey.announcements (key_id, event, threshold)
                 SELECT k.id, 'limited', $2 FROM apikey.keys k
                  WHERE k.id OPERATOR(pg_catalog.=) ANY ($1::pg_catalog.int8[])
                 ON CONFLICT DO NOTHING RETURNING key_id
             )
             SELECT k.id, k.owner, k.name, '{}'::pg_catalog.jsonb AS detail
               FROM apikey.keys k JOIN marked m ON m.key_id OPERATOR(pg_catalog.=) k.id",
            None,
            &[ids.to_vec().into(), window.to_string().into()],
        )?;
        announced_rows(t)
    }))
}
