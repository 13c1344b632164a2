//! The key lookup: a direct probe of the index on digest.

use super::*;

/// A key as the verify path needs it: the one typed record of a key row, embedding the core's
/// `Rights` (what the key may do: kind, scopes, resource, expiry, request limit, database role,
/// allow-list, named limits, credits) so that every rule that judges a key reads the same fields.
/// `rights.deny` is empty here: restricting scopes are a setting of the database, added when a
/// key acts (`Identity::rights`).
#[derive(Clone)]
pub struct StoredKey {
    pub id: i64,
    /// The first key of this key's rotation lineage (the key itself if it was never rotated):
    /// request limits belong to the lineage, so a rotation hands out no fresh allowance.
    pub lineage: i64,
    pub owner: String,
    pub name: String,
    pub format: String,
    pub rights: Rights,
    pub created_at: TimestampWithTimeZone,
    pub revoked_at: Option<TimestampWithTimeZone>,
    pub disabled: bool,
    /// A usage-limited key's refill (amount, interval µs); `rights.metered` says it has credits.
    pub refill: Option<(i64, i64)>,
    pub metadata: RawJsonb,
    pub digest: [u8; DIGEST_LEN],
    /// Inserted by the current transaction (not committed): visible to nobody else yet.
    pub created_here: bool,
    /// A bcrypt import found by its lookup part whose row still holds its stand-in digest (the
    /// rehash is queued): the digest its row can be found under until the rehash is applied.
    pub stand_in: Option<[u8; DIGEST_LEN]>,
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
        w.u8(match self.rights.kind {
            KeyKind::User => 0,
            KeyKind::App => 1,
        });
        w.str(&self.format);
        w.opt(self.rights.scopes.as_ref(), |w, v| {
            w.u32(v.len() as u32);
            v.iter().for_each(|x| {
                w.str(x);
            });
        });
        w.opt(self.rights.resource.as_deref(), |w, v| {
            w.str(v);
        });
        w.i64(ts(&self.created_at));
        w.opt(self.rights.expires_at, |w, t| {
            w.i64(t);
        });
        w.opt(self.revoked_at.as_ref(), |w, t| {
            w.i64(ts(t));
        });
        w.bool(self.disabled);
        w.opt(self.rights.allowed.as_ref(), |w, v| {
            w.u32(v.len() as u32);
            v.iter().for_each(|c| {
                w.str(&c.to_string());
            });
        });
        w.bool(self.rights.metered);
        w.opt(self.refill, |w, (amount, every)| {
            w.i64(amount).i64(every);
        });
        w.u32(self.rights.named.len() as u32);
        for (name, r) in &self.rights.named {
            w.str(name);
            rate(&mut w, r);
        }
        w.bytes(&self.metadata.0);
        w.opt(self.rights.rate.as_ref(), rate);
        w.opt(self.rights.db_role.as_deref(), |w, v| {
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
        // Read in the order `encode` wrote.
        let id = r.i64()?;
        let lineage = r.i64()?;
        let owner = r.str()?.to_owned();
        let name = r.str()?.to_owned();
        let kind = match r.u8()? {
            0 => KeyKind::User,
            1 => KeyKind::App,
            _ => return None,
        };
        let format = r.str()?.to_owned();
        let scopes = r.opt(|r| list(r, |r| r.str().map(str::to_owned)))?;
        let resource = r.opt(|r| r.str().map(str::to_owned))?;
        let created_at = ts(r)?;
        let expires_at = r.opt(|r| r.i64())?;
        let revoked_at = r.opt(ts)?;
        let disabled = r.bool()?;
        let allowed = r.opt(|r| list(r, |r| Cidr::parse(r.str()?).ok()))?;
        let metered = r.bool()?;
        let refill = r.opt(|r| Some((r.i64()?, r.i64()?)))?;
        let named = list(r, |r| Some((r.str()?.to_owned(), rate(r)?)))?;
        let metadata = RawJsonb(r.bytes()?.to_vec());
        let rate = r.opt(rate)?;
        let db_role = r.opt(|r| r.str().map(str::to_owned))?;
        let key = StoredKey {
            id,
            lineage,
            owner,
            name,
            format,
            rights: Rights {
                kind,
                scopes,
                resource,
                expires_at,
                rate,
                db_role,
                allowed,
                named,
                metered,
                deny: Vec::new(),
            },
            created_at,
            revoked_at,
            disabled,
            refill,
            metadata,
            digest: *digest,
            created_here: false,
            stand_in: None,
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

/// About how many rows the keys table holds (the statistics' live-row count, kept current at
/// every commit): what tells the worker a bulk load happened, without counting a million rows.
pub fn live_key_estimate() -> i64 {
    let keys = crate::catalog::get().relation("keys");
    spi(Spi::connect(|c| {
        let n = c
            .select(
                "SELECT pg_catalog.pg_stat_get_live_tuples($1)",
                None,
                &[keys.into()],
            )?
            .first()
            .get::<i64>(1)?;
        Ok(n.unwrap_or(0))
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
                format: read!(a.format, String).unwrap_or_default(),
                rights: Rights {
                    kind: kind_of(read!(a.kind, String)),
                    scopes: read!(a.scopes, Vec<String>),
                    resource: read!(a.resource, String),
                    expires_at: read!(a.expires_at, TimestampWithTimeZone).map(Into::into),
                    rate: rate_of(
                        read!(a.rate_limit, i32),
                        read!(a.rate_period, Interval),
                        read!(a.rate_burst, i32),
                    ),
                    db_role: read!(a.db_role, String),
                    allowed: {
                        let (d, n) = get(a.allowed_ips);
                        (!n).then(|| cidr_array(d))
                    },
                    named: match read!(a.limits, RawJsonb) {
                        // Nearly every key has none: skip the text round trip a parse would cost.
                        Some(raw) if !raw.is_empty_object() => {
                            named_limits(read!(a.limits, pgrx::JsonB).map(|j| j.0))
                        }
                        _ => Vec::new(),
                    },
                    metered: !get(a.credits).1,
                    deny: Vec::new(),
                },
                created_at: read!(a.created_at, TimestampWithTimeZone)
                    .unwrap_or_else(|| internal("created_at is NOT NULL")),
                revoked_at: read!(a.revoked_at, TimestampWithTimeZone),
                disabled: read!(a.disabled_at, TimestampWithTimeZone).is_some(),
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
                // The loop above matched it against the probe.
                digest: *digest,
                created_here,
                stand_in: None,
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

pub(super) fn allowed_from_text(text: Option<String>) -> Option<Vec<Cidr>> {
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
