//! The shared key cache: keys verified recently, in shared memory, for every backend of the
//! database. A backend's own cache (`keycache`) answers a key it has seen twice; at a million
//! keys most requests present a key this backend has not seen, and without this cache each of
//! them probes the digest index and fetches the row. Slot layout and rules are in
//! `pg_apikey_core::shared_keys`; rows are encoded with `pg_apikey_core::record`.
//!
//! ## Whose memory
//! `apikey.shared_key_cache_size` is split evenly between the databases of
//! `apikey.usage_databases` (the superuser's list, read at start), one region each: a database
//! reads, fills and evicts only its own region, so no database can evict or read another's keys.
//! Databases not in the list use only the backend cache.
//!
//! ## Staying correct
//! Entries are dropped exactly as the backend caches' are, plus once more by the committing
//! backend itself:
//! - every backend's relcache callback evicts the key a per-key invalidation names (and the
//!   whole region on a queue reset), moving the partition's generation;
//! - the backend that changed a key evicts it again *after* its commit became visible
//!   (`XACT_EVENT_COMMIT`), so a row another backend read before that commit and inserts later
//!   is either refused (the generation moved) or evicted;
//! - a miss inserts only if its partition's generation did not move since before its snapshot;
//! - the region remembers the keys table's file and is emptied when a backend sees another one
//!   (TRUNCATE, VACUUM FULL, …).
//!
//! The cache is not used during recovery: a standby's backends would depend on the replayed
//! invalidations alone, with no committing backend to evict after the commit, so they use their
//! own caches only. A transaction that changed keys cannot be PREPAREd while the cache is on:
//! COMMIT PREPARED runs in a backend that does not know which keys to evict.

use std::cell::{Cell, RefCell};
use std::ffi::CStr;
use std::sync::atomic::{AtomicU64, Ordering};

use pg_apikey_core::digest::DIGEST_LEN;
use pg_apikey_core::shared_keys::{self, Partition, PartitionMut};
use pgrx::pg_sys;
use pgrx::prelude::*;

use crate::gucs;
use crate::store::StoredKey;

type Digest = [u8; DIGEST_LEN];

/// Lock partitions per region.
const PARTITIONS: usize = 64;
const TRANCHE: &CStr = c"pg_apikey_shared_keys";
const SEGMENT: &CStr = c"pg_apikey shared key cache";
/// Room for one owner word per region (database OID and keys-table file), before the partitions.
const FILES_BYTES: usize = 8 * crate::shmem::MAX_WORKERS;

#[derive(Clone, Copy)]
struct Layout {
    regions: usize,
    part_bytes: usize,
}

impl Layout {
    fn from_settings() -> Option<Layout> {
        let regions = gucs::usage_databases().len().min(crate::shmem::MAX_WORKERS);
        let total = gucs::SHARED_KEY_CACHE_SIZE.get().max(0) as usize * 1024;
        if regions == 0 || total <= FILES_BYTES {
            return None;
        }
        let slots = shared_keys::slots_in((total - FILES_BYTES) / (regions * PARTITIONS));
        (slots > 0).then(|| Layout {
            regions,
            part_bytes: shared_keys::partition_bytes(slots),
        })
    }

    fn size(&self) -> usize {
        FILES_BYTES + self.regions * PARTITIONS * self.part_bytes
    }
}

#[derive(Clone, Copy)]
struct Shared {
    layout: Layout,
    base: *mut u8,
    locks: *mut pg_sys::LWLockPadded,
}

static mut SHARED: Option<Shared> = None;
static mut PREV_REQUEST: pg_sys::shmem_request_hook_type = None;
static mut PREV_STARTUP: pg_sys::shmem_startup_hook_type = None;

thread_local! {
    /// Tags of the keys this transaction changed: evicted again after commit.
    static CHANGED: RefCell<Vec<u32>> = const { RefCell::new(Vec::new()) };
    /// (hits, misses) of this backend in the shared cache.
    static COUNTS: Cell<(u64, u64)> = const { Cell::new((0, 0)) };
}

pub fn init() {
    if !crate::shmem::preloaded() {
        return;
    }
    // SAFETY: from _PG_init while preloading, single-threaded: chain the shared-memory hooks
    // (keeping the previous ones, which ours call first) and register a transaction callback.
    unsafe {
        PREV_REQUEST = pg_sys::shmem_request_hook;
        pg_sys::shmem_request_hook = Some(request);
        PREV_STARTUP = pg_sys::shmem_startup_hook;
        pg_sys::shmem_startup_hook = Some(startup);
        pg_sys::RegisterXactCallback(Some(on_xact), std::ptr::null_mut());
    }
}

#[pg_guard]
unsafe extern "C-unwind" fn request() {
    // SAFETY: the postmaster calls this hook once, while shared memory may be requested.
    unsafe {
        if let Some(prev) = PREV_REQUEST {
            // Another module's hook (pgrx's own shared memory among them): Postgres errors
            // unwind through it exactly as they would without us.
            #[allow(ffi_unwind_calls)]
            prev();
        }
        if let Some(layout) = Layout::from_settings() {
            pg_sys::RequestAddinShmemSpace(layout.size());
            pg_sys::RequestNamedLWLockTranche(
                TRANCHE.as_ptr(),
                (layout.regions * PARTITIONS) as i32,
            );
        }
    }
}

#[pg_guard]
unsafe extern "C-unwind" fn startup() {
    // SAFETY: called in the postmaster (and after a crash) once shared memory exists; the
    // segment is created or found under AddinShmemInitLock, zeroed when new (all slots empty,
    // generations 0), and its address and the tranche's locks are kept in a static that forked
    // processes inherit. MainLWLockArray[21] is AddinShmemInitLock, as pgrx's own shmem uses it.
    unsafe {
        if let Some(prev) = PREV_STARTUP {
            // Another module's hook (pgrx's own shared memory among them): Postgres errors
            // unwind through it exactly as they would without us.
            #[allow(ffi_unwind_calls)]
            prev();
        }
        let Some(layout) = Layout::from_settings() else {
            return;
        };
        let init_lock = &raw mut (*pg_sys::MainLWLockArray.add(21)).lock;
        pg_sys::LWLockAcquire(init_lock, pg_sys::LWLockMode::LW_EXCLUSIVE);
        let mut found = false;
        let base = pg_sys::ShmemInitStruct(SEGMENT.as_ptr(), layout.size(), &mut found) as *mut u8;
        if !found {
            std::ptr::write_bytes(base, 0, layout.size());
        }
        let locks = pg_sys::GetNamedLWLockTranche(TRANCHE.as_ptr());
        pg_sys::LWLockRelease(init_lock);
        SHARED = Some(Shared {
            layout,
            base,
            locks,
        });
    }
}

fn shared() -> Option<Shared> {
    // SAFETY: SHARED is written only by the startup hook, before any backend exists (or after a
    // crash, before backends are started again); afterwards it is only read, by copy.
    unsafe { SHARED }
}

/// The bytes of a partition, with its lock held in `mode` for the duration of `f`.
fn locked<R>(
    s: Shared,
    region: usize,
    part: usize,
    mode: pg_sys::LWLockMode::Type,
    f: impl FnOnce(*mut u8, usize) -> R,
) -> R {
    let index = region * PARTITIONS + part;
    // SAFETY: index < regions * PARTITIONS, the number of locks requested and of partitions laid
    // out. If `f` raises an error, transaction abort releases the lock (LWLockReleaseAll).
    unsafe {
        let lock = &raw mut (*s.locks.add(index)).lock;
        pg_sys::LWLockAcquire(lock, mode);
        let r = f(
            s.base.add(FILES_BYTES + index * s.layout.part_bytes),
            s.layout.part_bytes,
        );
        pg_sys::LWLockRelease(lock);
        r
    }
}

/// Read a partition under its shared lock.
fn read<R>(s: Shared, region: usize, part: usize, f: impl FnOnce(Partition) -> R) -> R {
    locked(s, region, part, pg_sys::LWLockMode::LW_SHARED, |p, n| {
        // SAFETY: the partition's bytes, which writers change only under the exclusive lock.
        f(Partition::new(unsafe { std::slice::from_raw_parts(p, n) }))
    })
}

/// Change a partition under its exclusive lock.
fn write<R>(s: Shared, region: usize, part: usize, f: impl FnOnce(PartitionMut) -> R) -> R {
    locked(s, region, part, pg_sys::LWLockMode::LW_EXCLUSIVE, |p, n| {
        // SAFETY: the partition's bytes, which nobody else reads or writes while we hold the
        // exclusive lock.
        f(PartitionMut::new(unsafe {
            std::slice::from_raw_parts_mut(p, n)
        }))
    })
}

/// Which database and which file of its keys table the region's entries belong to.
fn region_owner(s: Shared, region: usize) -> &'static AtomicU64 {
    // SAFETY: region < regions <= MAX_WORKERS, so 8 * region + 8 <= FILES_BYTES; the segment is
    // MAXALIGNed shared memory that lives as long as the server; AtomicU64 has u64's layout.
    unsafe { &*(s.base.add(8 * region) as *const AtomicU64) }
}

fn clear_region(s: Shared, region: usize) {
    for part in 0..PARTITIONS {
        write(s, region, part, |mut p| p.clear());
    }
}

fn tag(digest: &Digest) -> u32 {
    pg_apikey_core::digest::invalidation_tag(digest)
}

/// Where a lookup of `digest` stands in the shared cache, taken before the row is read.
pub struct Ticket {
    region: usize,
    part: usize,
    tag: u32,
    generation: u64,
}

/// A ticket for `digest`, or None when this database has no shared cache (not preloaded, off,
/// not in `apikey.usage_databases`, in recovery, or `apikey.shared_key_cache = off`). Empties the region first if it holds keys of
/// another file of the keys table than the one this backend now sees.
pub fn ticket(digest: &Digest) -> Option<Ticket> {
    if !gucs::SHARED_KEY_CACHE.get() {
        return None;
    }
    let s = shared()?;
    let region = crate::shmem::db_index()?;
    // SAFETY: reads shared recovery state; no preconditions.
    if region >= s.layout.regions || unsafe { pg_sys::RecoveryInProgress() } {
        return None;
    }
    let cat = crate::catalog::get();
    if !cat.per_key_invalidation() {
        // The 0.1.0 schema (before ALTER EXTENSION UPDATE) invalidates no key by itself.
        return None;
    }
    let file = crate::catalog::file_of(cat.relation("keys"))?;
    // SAFETY: reads a backend global.
    let database = unsafe { pg_sys::MyDatabaseId };
    // A region is found by database name: a database dropped and created again under that name
    // (from a template copy of the same files, say) must not find the old one's keys.
    let owner = (u64::from(u32::from(database)) << 32) | u64::from(u32::from(file));
    let stored = region_owner(s, region);
    if stored.load(Ordering::Acquire) != owner {
        clear_region(s, region);
        stored.store(owner, Ordering::Release);
    }
    let tag = tag(digest);
    let part = shared_keys::partition_of(tag, PARTITIONS);
    let generation = read(s, region, part, |p| p.generation());
    Some(Ticket {
        region,
        part,
        tag,
        generation,
    })
}

/// The key with `digest`, if the shared cache holds it.
pub fn get(t: &Ticket, digest: &Digest) -> Option<StoredKey> {
    let s = shared()?;
    let payload = read(s, t.region, t.part, |p| {
        p.find(t.tag, digest, PARTITIONS).map(<[u8]>::to_vec)
    });
    let found = payload.and_then(|p| StoredKey::decode(&p, digest));
    let (hits, misses) = COUNTS.get();
    COUNTS.set(if found.is_some() {
        (hits + 1, misses)
    } else {
        (hits, misses + 1)
    });
    found
}

/// Offer a key just read from the table, under the ticket taken before reading it; answers
/// whether the cache took it.
pub fn offer(t: Ticket, digest: &Digest, key: &StoredKey) -> bool {
    let Some(s) = shared() else { return false };
    if key.created_here {
        return false;
    }
    let payload = key.encode();
    write(s, t.region, t.part, |mut p| {
        p.insert(t.tag, digest, &payload, t.generation, PARTITIONS)
    })
}

/// A key changed in this transaction (from the invalidation trigger): evict it again at commit.
pub fn changed(digest: &Digest) {
    if let (Some(s), Some(region)) = (shared(), crate::shmem::db_index()) {
        if region < s.layout.regions {
            CHANGED.with_borrow_mut(|v| v.push(tag(digest)));
        }
    }
}

/// Evict the key(s) with `tag` and move the partition's generation.
fn evict(s: Shared, region: usize, tag: u32) {
    let part = shared_keys::partition_of(tag, PARTITIONS);
    write(s, region, part, |mut p| p.evict_tag(tag, PARTITIONS));
}

/// From the relcache callback: a per-key tag (or any relation: tags and OIDs look alike). The
/// committing backend already evicted the key and moved the generation after its commit, before
/// sending this; evicting again here only drops a copy stored in between, and touches nothing
/// (no exclusive lock, no generation) when the window holds no such tag, so the invalidations
/// any role causes (temporary tables, say) cost a shared lock and refuse no insert. Queue resets
/// (`InvalidOid`) need nothing: every change was evicted at its commit. No catalog access here:
/// a backend that never resolved its region has nothing to do.
pub fn invalidated(relid: pg_sys::Oid, is_keys_table: bool) {
    let Some(s) = shared() else { return };
    let Some(region) = crate::shmem::db_index_if_known() else {
        return;
    };
    if region >= s.layout.regions || is_keys_table || relid == pg_sys::InvalidOid {
        return;
    }
    let tag = u32::from(relid);
    let part = shared_keys::partition_of(tag, PARTITIONS);
    if read(s, region, part, |p| p.holds_tag(tag, PARTITIONS)) {
        evict(s, region, tag);
    }
}

#[pg_guard]
unsafe extern "C-unwind" fn on_xact(event: pg_sys::XactEvent::Type, _arg: *mut std::ffi::c_void) {
    match event {
        pg_sys::XactEvent::XACT_EVENT_COMMIT | pg_sys::XactEvent::XACT_EVENT_PARALLEL_COMMIT => {
            let mut tags = CHANGED.with_borrow_mut(std::mem::take);
            // An UPDATE queues the old and the new row's tag, mostly the same one.
            tags.sort_unstable();
            tags.dedup();
            if let (Some(s), Some(region)) = (shared(), crate::shmem::db_index_if_known()) {
                if region < s.layout.regions {
                    tags.into_iter().for_each(|t| evict(s, region, t));
                }
            }
        }
        pg_sys::XactEvent::XACT_EVENT_PRE_PREPARE if CHANGED.with_borrow(|v| !v.is_empty()) => {
            crate::errors::raise(pg_apikey_core::errors::ApiError::NotRecoverable(
                "a transaction that changed API keys cannot be prepared while apikey.shared_key_cache_size is set".into(),
            ));
        }
        pg_sys::XactEvent::XACT_EVENT_ABORT | pg_sys::XactEvent::XACT_EVENT_PARALLEL_ABORT => {
            CHANGED.with_borrow_mut(Vec::clear);
        }
        _ => {}
    }
}

/// Load every live key of this database into the shared cache (as `pg_prewarm` does for
/// tables): after a restart, or after a bulk load. Administrators only; answers how many keys
/// the region holds afterwards (fewer than loaded when windows filled and evicted). Each key is
/// read exactly as a lookup's miss reads it.
#[pg_extern(volatile, parallel_unsafe)]
fn prewarm_key_cache() -> i64 {
    crate::admin::require_admin("prewarm the shared key cache");
    prewarm()
}

fn prewarm() -> i64 {
    prewarm_digests(&prewarm_candidates());
    region_stats().0
}

/// Digests of the live keys to load; none unless this database has a region on this schema and
/// this transaction wrote nothing (its own uncommitted changes are visible to it).
pub fn prewarm_candidates() -> Vec<Digest> {
    // SAFETY: reads the transaction state; no preconditions.
    let wrote = unsafe { pg_sys::GetTopTransactionIdIfAny() } != pg_sys::InvalidTransactionId;
    if wrote || ticket(&[0; DIGEST_LEN]).is_none() {
        return Vec::new();
    }
    crate::store::as_owner(crate::store::live_digests)
}

/// Load these keys, each read exactly as a lookup's miss reads it.
pub fn prewarm_digests(digests: &[Digest]) {
    for digest in digests {
        let Some(t) = ticket(digest) else {
            return;
        };
        if let Some(key) = crate::store::find_by_digest(digest) {
            offer(t, digest, &key);
        }
    }
}

/// Is this database's region empty (the server just started, rather than the usage worker
/// alone restarting over a filled region)?
pub fn region_is_empty() -> bool {
    let (entries, capacity) = region_stats();
    entries == 0 && capacity > 0
}

/// (entries, capacity) of this database's region; (0, 0) without one.
fn region_stats() -> (i64, i64) {
    match (shared(), crate::shmem::db_index()) {
        (Some(s), Some(region)) if region < s.layout.regions => {
            let entries: usize = (0..PARTITIONS)
                .map(|p| read(s, region, p, |p| p.len()))
                .sum();
            let capacity = PARTITIONS * shared_keys::slots_in(s.layout.part_bytes);
            (entries as i64, capacity as i64)
        }
        _ => (0, 0),
    }
}

/// This database's region of the shared cache: keys held, keys it can hold, and this backend's
/// hits and misses in it. Administrators only: how many keys are in use is the database's
/// business.
#[pg_extern(volatile, parallel_restricted)]
fn shared_key_cache_stats() -> TableIterator<
    'static,
    (
        name!(entries, i64),
        name!(capacity, i64),
        name!(hits, i64),
        name!(misses, i64),
    ),
> {
    if !crate::admin::caller_is_admin() {
        crate::errors::raise(pg_apikey_core::errors::ApiError::AdminOnly(
            "read shared key cache statistics",
        ));
    }
    let (hits, misses) = COUNTS.get();
    let (entries, capacity) = region_stats();
    TableIterator::once((entries, capacity, hits as i64, misses as i64))
}
