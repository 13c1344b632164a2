//! The backend's key cache, and the one invalidation registry of the extension.
//!
//! ## The cache
//! Keys recently found by digest, bounded in bytes by `apikey.key_cache_size`. When an insert
//! would pass the bound, about an eighth of the entries (chosen by digest, which is random) are
//! dropped. Entries are dropped one by one when their key changes, and all at once when the keys
//! table itself is invalidated (TRUNCATE, DDL, a lost invalidation queue).
//!
//! ## Admission
//! A key enters the cache on its second miss within a window (a "doorkeeper" bitset, cleared as it
//! fills), so keys seen once — the long tail of a million-key workload — cost no insertion and
//! evict nothing that is hot; a key used twice is cached from then on.
//!
//! ## Per-key invalidation
//! A change to a key (UPDATE of anything but `last_used_at`, DELETE) runs a row trigger that
//! queues a *relcache invalidation* for a made-up relation OID derived from the key's digest
//! ([`tag_of`]). Postgres sends it at commit to every backend of the database, writes it into the
//! commit's WAL record (so standbys replay it), and applies it locally at the next command; each
//! backend's relcache callback then drops the one entry with that tag. Creating a key invalidates
//! nothing. A tag that happens to equal a real relation's OID costs that relation one relcache
//! rebuild, nothing more.
//!
//! The keys table's own invalidation comes with every VACUUM and ANALYZE of it (they update its
//! `pg_class` row), which autovacuum runs regularly on a table whose `last_used_at` the usage
//! worker updates. Those change no key, so the cache is emptied only if the table's file changed
//! (TRUNCATE, VACUUM FULL, CLUSTER, a rewriting ALTER) or the table is gone; the check runs at the
//! next lookup, in a transaction, where the relation cache may be read. Before `ALTER EXTENSION
//! pg_apikey UPDATE` has installed the per-key trigger, 0.1.0's statement triggers invalidate the
//! table for every change, and then every such invalidation empties the cache.
//!
//! ## The race
//! A miss looks the key up under the latest snapshot; if a revoke commits after that snapshot and
//! its invalidation is processed before the entry is inserted, inserting would cache the revoked
//! key. Every callback invocation bumps a counter; a miss inserts only if the counter did not move
//! while it looked (`tests/test_cache.py` races revokers against readers).

use std::cell::{Cell, RefCell};
use std::collections::HashMap;

use pg_apikey_core::digest::{invalidation_tag, DIGEST_LEN, FIRST_NORMAL_OBJECT_ID};
use pgrx::pg_sys;
use pgrx::prelude::*;

use crate::store::StoredKey;

type Digest = [u8; DIGEST_LEN];

struct Entry {
    key: StoredKey,
    bytes: usize,
}

#[derive(Default)]
struct Cache {
    map: HashMap<Digest, Entry>,
    by_tag: HashMap<u32, Vec<Digest>>,
    bytes: usize,
    /// Rotates which eighth of the entries an overflow drops.
    sweep: u8,
}

impl Cache {
    fn remove(&mut self, digest: &Digest) {
        if let Some(e) = self.map.remove(digest) {
            self.bytes -= e.bytes;
            let tag = u32::from(tag_of(digest));
            if let Some(v) = self.by_tag.get_mut(&tag) {
                v.retain(|d| d != digest);
                if v.is_empty() {
                    self.by_tag.remove(&tag);
                }
            }
        }
    }

    fn clear(&mut self) {
        self.map.clear();
        self.by_tag.clear();
        self.bytes = 0;
    }

    fn make_room(&mut self, budget: usize) {
        while self.bytes > budget && !self.map.is_empty() {
            self.sweep = self.sweep.wrapping_add(1);
            let eighth = self.sweep % 8;
            let doomed: Vec<Digest> = self
                .map
                .keys()
                .filter(|d| d[0] % 8 == eighth)
                .copied()
                .collect();
            for d in doomed {
                self.remove(&d);
            }
        }
    }
}

/// Bits of the doorkeeper: about four times the entries a default-sized cache holds.
const DOOR_BITS: usize = 1 << 18;

struct Doorkeeper {
    bits: Vec<u64>,
    set: usize,
}

impl Doorkeeper {
    /// Has `digest` been seen since the last reset? Marks it seen either way.
    fn seen_before(&mut self, digest: &Digest) -> bool {
        if self.bits.is_empty() {
            self.bits = vec![0; DOOR_BITS / 64];
        }
        // The digest is SHA-256, so any of its bits serve as independent hashes.
        let h1 =
            u32::from_le_bytes([digest[4], digest[5], digest[6], digest[7]]) as usize % DOOR_BITS;
        let h2 =
            u32::from_le_bytes([digest[8], digest[9], digest[10], digest[11]]) as usize % DOOR_BITS;
        let was =
            self.bits[h1 / 64] >> (h1 % 64) & 1 == 1 && self.bits[h2 / 64] >> (h2 % 64) & 1 == 1;
        if !was {
            for h in [h1, h2] {
                self.bits[h / 64] |= 1 << (h % 64);
            }
            self.set += 2;
            if self.set > DOOR_BITS / 2 {
                self.bits.fill(0);
                self.set = 0;
            }
        }
        was
    }
}

thread_local! {
    static CACHE: RefCell<Cache> = RefCell::new(Cache::default());
    static DOOR: RefCell<Doorkeeper> = const { RefCell::new(Doorkeeper { bits: Vec::new(), set: 0 }) };
    static GENERATION: Cell<u64> = const { Cell::new(0) };
    static KEYS_RELID: Cell<pg_sys::Oid> = const { Cell::new(pg_sys::InvalidOid) };
    /// The keys table's file when the entries were read (InvalidOid: not known yet).
    static KEYS_FILE: Cell<pg_sys::Oid> = const { Cell::new(pg_sys::InvalidOid) };
    /// The keys table was invalidated: compare its file before the next lookup.
    static CHECK_FILE: Cell<bool> = const { Cell::new(false) };
    /// The installed schema invalidates per key (see catalog::per_key_invalidation); until a
    /// lookup has seen that, an invalidation of the keys table empties the cache.
    static PER_KEY: Cell<bool> = const { Cell::new(false) };
    static INVALIDATORS: RefCell<Vec<fn(pg_sys::Oid)>> = const { RefCell::new(Vec::new()) };
    /// (hits, misses) of this backend, for `apikey.key_cache_stats()`.
    static COUNTS: Cell<(u64, u64)> = const { Cell::new((0, 0)) };
}

/// The relcache OID that stands for a key (see `pg_apikey_core::digest::invalidation_tag`).
pub fn tag_of(digest: &Digest) -> pg_sys::Oid {
    pg_sys::Oid::from(invalidation_tag(digest))
}

// The tag keeps clear of the catalogs' OIDs as this server numbers them.
const _: () = assert!(pg_sys::FirstNormalObjectId == FIRST_NORMAL_OBJECT_ID);

/// Approximate memory of an entry: the row's variable parts plus a fixed overhead for the
/// struct, the map slot and the allocator.
fn size_of(k: &StoredKey) -> usize {
    256 + k.owner.len()
        + k.name.len()
        + k.format.len()
        + k.rights.resource.as_ref().map_or(0, String::len)
        + k.rights.db_role.as_ref().map_or(0, String::len)
        + k.rights
            .scopes
            .as_ref()
            .map_or(0, |s| s.iter().map(|x| x.len() + 24).sum())
        + k.rights.allowed.as_ref().map_or(0, |a| {
            a.len() * std::mem::size_of::<pg_apikey_core::ipnet::Cidr>()
        })
        + k.rights
            .named
            .iter()
            .map(|(n, _)| n.len() + 24 + std::mem::size_of::<pg_apikey_core::gcra::Rate>())
            .sum::<usize>()
        + k.metadata.0.len()
}

fn budget() -> usize {
    crate::gucs::KEY_CACHE_SIZE.get().max(0) as usize * 1024
}

/// Empty the cache if the keys table was invalidated and its file is not the one the entries
/// were read from (see "Per-key invalidation").
fn check_keys_file() {
    if !CHECK_FILE.replace(false) {
        return;
    }
    let keys = KEYS_RELID.get();
    let file = crate::catalog::file_of(keys);
    if keys == pg_sys::InvalidOid || file != Some(KEYS_FILE.get()) {
        CACHE.with_borrow_mut(Cache::clear);
    }
    KEYS_FILE.set(file.unwrap_or(pg_sys::InvalidOid));
}

pub fn get(digest: &Digest) -> Option<StoredKey> {
    check_keys_file();
    if budget() == 0 {
        // Switched off: serve nothing cached before (an insert would have emptied it anyway).
        CACHE.with_borrow_mut(Cache::clear);
    }
    let found = CACHE.with_borrow(|c| c.map.get(digest).map(|e| e.key.clone()));
    let (hits, misses) = COUNTS.get();
    COUNTS.set(if found.is_some() {
        (hits + 1, misses)
    } else {
        (hits, misses + 1)
    });
    found
}

/// A counter that moves whenever an invalidation is processed; see "The race".
pub fn generation() -> u64 {
    GENERATION.get()
}

/// May the key just found be cached? Not if an invalidation was processed since `generation()`
/// returned `since`, nor on its first miss in the doorkeeper's window. Asked before copying the
/// row, which most misses of a large key set would copy for nothing.
pub fn admits(digest: &Digest, since: u64) -> bool {
    GENERATION.get() == since && DOOR.with_borrow_mut(|d| d.seen_before(digest))
}

/// Cache `key`; the caller asked [`admits`] just before, with nothing in between that could
/// process an invalidation.
pub fn insert(digest: Digest, key: StoredKey) {
    let bytes = size_of(&key);
    let budget = budget();
    CACHE.with_borrow_mut(|c| {
        if bytes > budget {
            // Too big to keep (or the cache was switched off): honour a lowered bound at least.
            c.make_room(budget);
            return;
        }
        c.remove(&digest);
        c.make_room(budget.saturating_sub(bytes));
        c.by_tag
            .entry(u32::from(tag_of(&digest)))
            .or_default()
            .push(digest);
        c.map.insert(digest, Entry { key, bytes });
        c.bytes += bytes;
    });
}

/// This backend's key cache: keys held, their approximate size, and lookups that hit or missed
/// since the backend started. Says nothing about any key.
#[pg_extern(volatile, parallel_restricted)]
fn key_cache_stats() -> TableIterator<
    'static,
    (
        name!(entries, i64),
        name!(bytes, i64),
        name!(hits, i64),
        name!(misses, i64),
    ),
> {
    let (entries, bytes) = CACHE.with_borrow(|c| (c.map.len() as i64, c.bytes as i64));
    let (hits, misses) = COUNTS.get();
    TableIterator::once((entries, bytes, hits as i64, misses as i64))
}

/// The OID of `apikey.keys`, after a lookup read it: its own invalidation may drop every entry.
pub fn set_keys_relid(relid: pg_sys::Oid) {
    PER_KEY.set(crate::catalog::get().per_key_invalidation());
    if KEYS_RELID.replace(relid) != relid || KEYS_FILE.get() == pg_sys::InvalidOid {
        CACHE.with_borrow_mut(Cache::clear);
        KEYS_FILE.set(crate::catalog::file_of(relid).unwrap_or(pg_sys::InvalidOid));
    }
}

/// Another backend-local cache that must be dropped with relcache invalidations; each gets every
/// relid (InvalidOid: everything) and decides itself.
pub fn register(f: fn(pg_sys::Oid)) {
    INVALIDATORS.with_borrow_mut(|v| v.push(f));
}

/// Queue the invalidation of the key with `digest` in every backend, at commit.
pub fn invalidate_key(digest: &Digest) {
    crate::sharedkeys::changed(digest);
    let tag = tag_of(digest);
    // CacheInvalidateRelcacheByTuple reads only the `oid` and `relisshared` fields of the
    // pg_class row it is given, then queues a transactional relcache invalidation for that OID.
    // A zeroed row with our tag as its OID asks for exactly that.
    let hoff = std::mem::offset_of!(pg_sys::HeapTupleHeaderData, t_bits).next_multiple_of(8);
    let len = hoff + std::mem::size_of::<pg_sys::FormData_pg_class>();
    let mut buf = vec![0u64; len.div_ceil(8)];
    // SAFETY: `buf` is zeroed, 8-byte aligned and large enough for a tuple header followed (at
    // t_hoff) by a FormData_pg_class; both are plain C structs for which all-zero is valid. The
    // tuple lives until the call returns, and the callee copies what it keeps.
    unsafe {
        let header = buf.as_mut_ptr() as *mut pg_sys::HeapTupleHeaderData;
        (*header).t_hoff = hoff as u8;
        let class = (buf.as_mut_ptr() as *mut u8).add(hoff) as *mut pg_sys::FormData_pg_class;
        (*class).oid = tag;
        (*class).relisshared = false;
        let mut tuple = pg_sys::HeapTupleData {
            t_len: len as u32,
            t_self: std::mem::zeroed(),
            t_tableOid: pg_sys::RelationRelationId,
            t_data: header,
        };
        pg_sys::CacheInvalidateRelcacheByTuple(&mut tuple);
    }
}

/// Row trigger on apikey.keys (UPDATE of anything but last_used_at, DELETE): drop that key from
/// every backend's cache at commit.
#[pg_trigger]
fn invalidate_key_trigger<'a>(
    trigger: &'a pgrx::PgTrigger<'a>,
) -> Result<Option<PgHeapTuple<'a, AllocatedByPostgres>>, pgrx::PgTriggerError> {
    for row in [trigger.old(), trigger.new()].into_iter().flatten() {
        if let Ok(Some(d)) = row.get_by_name::<&[u8]>("digest") {
            if let Ok(digest) = Digest::try_from(d) {
                invalidate_key(&digest);
            }
        }
    }
    Ok(None)
}

/// The extension's one relcache callback.
#[pg_guard]
unsafe extern "C-unwind" fn relcache_changed(_arg: pg_sys::Datum, relid: pg_sys::Oid) {
    GENERATION.set(GENERATION.get().wrapping_add(1));
    let keys = KEYS_RELID.get();
    CACHE.with_borrow_mut(|c| {
        if relid == pg_sys::InvalidOid || keys == pg_sys::InvalidOid {
            c.clear();
        } else if relid == keys && !PER_KEY.get() {
            // 0.1.0's statement triggers: any change of the table may be any key's.
            c.clear();
        } else if relid == keys {
            // No catalog access in a callback: the next lookup compares the table's file.
            CHECK_FILE.set(true);
        } else if let Some(doomed) = c.by_tag.get(&u32::from(relid)).cloned() {
            for d in doomed {
                c.remove(&d);
            }
        }
    });
    crate::sharedkeys::invalidated(relid, relid == keys && keys != pg_sys::InvalidOid);
    INVALIDATORS.with_borrow(|v| v.iter().for_each(|f| f(relid)));
}

/// `ALTER EXTENSION … UPDATE` (or any change of a pg_extension row) may add tables that the
/// catalog and every cache must now see: drop them all, as for a relcache queue reset.
#[pg_guard]
unsafe extern "C-unwind" fn extension_changed(
    _arg: pg_sys::Datum,
    _cache: std::ffi::c_int,
    _hash: u32,
) {
    // SAFETY: the relcache callback with InvalidOid touches only backend-local caches and the
    // shared cache's region lookups, as when Postgres resets the invalidation queue.
    unsafe { relcache_changed(pg_sys::Datum::from(0), pg_sys::InvalidOid) };
}

// PostgreSQL 17 generates its syscache identifiers and names this one ZEXTENSIONOID (its
// EXTENSIONOID is a C macro, which bindgen does not carry over).
#[cfg(not(feature = "pg17"))]
const EXTENSION_SYSCACHE: pg_sys::SysCacheIdentifier::Type =
    pg_sys::SysCacheIdentifier::EXTENSIONOID;
#[cfg(feature = "pg17")]
const EXTENSION_SYSCACHE: pg_sys::SysCacheIdentifier::Type =
    pg_sys::SysCacheIdentifier::ZEXTENSIONOID;

pub fn init() {
    // SAFETY: registers static callbacks once, from _PG_init.
    unsafe {
        pg_sys::CacheRegisterRelcacheCallback(Some(relcache_changed), pg_sys::Datum::from(0));
        pg_sys::CacheRegisterSyscacheCallback(
            EXTENSION_SYSCACHE as i32,
            Some(extension_changed),
            pg_sys::Datum::from(0),
        );
    }
}
