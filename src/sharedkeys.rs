//! The shared key cache: keys verified recently, in shared memory, for every backend of the
//! database. A backend's own cache (`keycache`) answers a key it has seen twice; at a million
//! keys most requests present a key this backend has not seen, and without this cache each of
//! them probes the digest index and fetches the row. Slot layout and rules are in
//! `pg_apikey_core::shared_keys`; rows are encoded with `pg_apikey_core::record`.
//!
//! ## Whose memory
//! `apikey.shared_key_cache_size` (by default a quarter of `shared_buffers`) is a pool of chunks
//! of 1,024 slots. Each database's region (`shmem::regions`, by the same index) starts with one
//! chunk and grows by linear hashing (`pg_apikey_core::growth`) when an insert would evict: one
//! chunk taken from the pool, one chunk of its own split (its keys whose address moves go to the
//! new chunk; nothing is lost). A database reads, fills and evicts only
//! its own chunks, and a chunk goes back to the pool only when its region is given back (the
//! extension or the database dropped), so no database can evict or read another's keys. The
//! pool keeps one chunk for every region that has none yet, so every database that comes later
//! still gets its first chunk; beyond that, memory goes to the databases that use it first.
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
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use pg_apikey_core::digest::DIGEST_LEN;
use pg_apikey_core::growth::{Shape, MAX_CHUNKS};
use pg_apikey_core::shared_keys::{self, Partition, PartitionMut};
use pgrx::pg_sys;
use pgrx::prelude::*;

use crate::gucs;
use crate::shmem::regions::{self, Region};
use crate::shmem::{with_lock, Segment};
use crate::store::StoredKey;

type Digest = [u8; DIGEST_LEN];

/// Slots of a chunk.
const CHUNK_SLOTS: usize = 1024;
const ALIGN: usize = 64;

fn chunk_bytes() -> usize {
    shared_keys::partition_bytes(CHUNK_SLOTS).div_ceil(ALIGN) * ALIGN
}

/// Per region: which database and file of its keys table its entries belong to, its shape, and
/// the pool chunk at each of its positions.
#[repr(C)]
struct Directory {
    owner: AtomicU64,
    shape: AtomicU64,
}

#[derive(Clone, Copy)]
struct Layout {
    regions: usize,
    chunks: usize,
}

impl Layout {
    fn from_settings() -> Layout {
        let regions = gucs::max_databases();
        let per_chunk = chunk_bytes() + 8 + 4 + 4 * regions;
        let chunks = (gucs::shared_key_cache_bytes() / per_chunk).min(MAX_CHUNKS);
        Layout { regions, chunks }
    }

    // The segment: the pool's free count and free stack (u32 each), the chunks' owners (u64),
    // the directories, each directory's chunk table (u32 × chunks), then the chunks.
    fn owners(&self) -> usize {
        (4 + 4 * self.chunks).div_ceil(8) * 8
    }
    fn directories(&self) -> usize {
        self.owners() + 8 * self.chunks
    }
    fn tables(&self) -> usize {
        self.directories() + self.regions * std::mem::size_of::<Directory>()
    }
    fn chunk_area(&self) -> usize {
        (self.tables() + 4 * self.chunks * self.regions).div_ceil(ALIGN) * ALIGN
    }
    fn size(&self) -> usize {
        if self.chunks == 0 {
            0
        } else {
            self.chunk_area() + self.chunks * chunk_bytes()
        }
    }
    /// Locks: one per chunk, one per region (its growth), one for the pool.
    fn locks(&self) -> usize {
        self.chunks + self.regions + 1
    }
}

#[derive(Clone, Copy)]
struct Shared {
    layout: Layout,
    base: *mut u8,
    locks: *mut pg_sys::LWLockPadded,
}

static mut SHARED: Option<Shared> = None;

static SEGMENT: Segment = Segment {
    name: c"pg_apikey shared key cache",
    size: || Layout::from_settings().size(),
    locks: || Layout::from_settings().locks(),
    attach: |base, locks, fresh| {
        let layout = Layout::from_settings();
        if layout.chunks == 0 {
            return;
        }
        let s = Shared {
            layout,
            base,
            locks,
        };
        if fresh {
            // Every chunk starts in the pool.
            for c in 0..layout.chunks {
                // SAFETY: c < chunks, within the free stack of new, zeroed memory.
                unsafe { s.free_stack().add(c).write(c as u32) };
            }
            s.free_count()
                .store(layout.chunks as u32, Ordering::Release);
        }
        // SAFETY: called by the startup hook in the postmaster before any backend exists.
        unsafe { SHARED = Some(s) };
    },
};

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
    crate::shmem::register(&SEGMENT);
    // SAFETY: from _PG_init, registering a static callback once.
    unsafe { pg_sys::RegisterXactCallback(Some(on_xact), std::ptr::null_mut()) };
}

fn shared() -> Option<Shared> {
    // SAFETY: SHARED is written only by the startup hook, before any backend exists (or after a
    // crash, before backends are started again); afterwards it is only read, by copy.
    unsafe { SHARED }
}

impl Shared {
    fn free_count(&self) -> &'static AtomicU32 {
        // SAFETY: the segment starts with the free count (a u32, atomics valid at zero).
        unsafe { &*(self.base as *const AtomicU32) }
    }
    fn free_stack(&self) -> *mut u32 {
        // SAFETY: `chunks` u32 after the count, within owners() bytes.
        unsafe { self.base.add(4) as *mut u32 }
    }
    fn chunk_owner(&self, c: usize) -> &'static AtomicU64 {
        assert!(c < self.layout.chunks);
        // SAFETY: c < chunks; 8-byte aligned u64 array at owners().
        unsafe { &*(self.base.add(self.layout.owners() + 8 * c) as *const AtomicU64) }
    }
    fn directory(&self, r: usize) -> &'static Directory {
        assert!(r < self.layout.regions);
        // SAFETY: r < regions, within the directory array.
        unsafe {
            &*(self
                .base
                .add(self.layout.directories() + r * std::mem::size_of::<Directory>())
                as *const Directory)
        }
    }
    /// The pool chunk at `position` of region `r`.
    fn table(&self, r: usize, position: usize) -> &'static AtomicU32 {
        assert!(r < self.layout.regions && position < self.layout.chunks);
        // SAFETY: within region r's table of `chunks` u32.
        unsafe {
            &*(self
                .base
                .add(self.layout.tables() + 4 * (r * self.layout.chunks + position))
                as *const AtomicU32)
        }
    }
    fn chunk_lock(&self, c: usize) -> *mut pg_sys::LWLock {
        assert!(c < self.layout.chunks);
        // SAFETY: lock c of the tranche, c < chunks.
        unsafe { &raw mut (*self.locks.add(c)).lock }
    }
    fn growth_lock(&self, r: usize) -> *mut pg_sys::LWLock {
        assert!(r < self.layout.regions);
        // SAFETY: the lock after the chunks' for region r.
        unsafe { &raw mut (*self.locks.add(self.layout.chunks + r)).lock }
    }
    fn pool_lock(&self) -> *mut pg_sys::LWLock {
        // SAFETY: the tranche's last lock.
        unsafe { &raw mut (*self.locks.add(self.layout.chunks + self.layout.regions)).lock }
    }
    fn chunk(&self, c: usize) -> (*mut u8, usize) {
        assert!(c < self.layout.chunks);
        // SAFETY: chunk c of the chunk area.
        (
            unsafe { self.base.add(self.layout.chunk_area() + c * chunk_bytes()) },
            shared_keys::partition_bytes(CHUNK_SLOTS),
        )
    }
    /// Regions holding no chunk: the pool keeps one chunk for each.
    fn regions_without_chunks(&self) -> usize {
        (0..self.layout.regions)
            .filter(|&r| self.directory(r).shape.load(Ordering::Acquire) == 0)
            .count()
    }
}

/// What a chunk's owner word says: the database and the position in its region (+1, so 0 is
/// free).
fn chunk_owner_word(db: u32, position: usize) -> u64 {
    (u64::from(db) << 32) | (position as u64 + 1)
}

/// The bytes of chunk `c`, with its lock held in `mode`, if it still is `expected`'s.
fn locked<R>(
    s: Shared,
    c: usize,
    expected: u64,
    mode: pg_sys::LWLockMode::Type,
    f: impl FnOnce(*mut u8, usize) -> R,
) -> Option<R> {
    with_lock(s.chunk_lock(c), mode, || {
        (s.chunk_owner(c).load(Ordering::Acquire) == expected).then(|| {
            let (p, n) = s.chunk(c);
            f(p, n)
        })
    })
}

fn read<R>(s: Shared, c: usize, expected: u64, f: impl FnOnce(Partition) -> R) -> Option<R> {
    locked(s, c, expected, pg_sys::LWLockMode::LW_SHARED, |p, n| {
        // SAFETY: the chunk's bytes, which writers change only under the exclusive lock.
        f(Partition::new(unsafe { std::slice::from_raw_parts(p, n) }))
    })
}

fn write<R>(s: Shared, c: usize, expected: u64, f: impl FnOnce(PartitionMut) -> R) -> Option<R> {
    locked(s, c, expected, pg_sys::LWLockMode::LW_EXCLUSIVE, |p, n| {
        // SAFETY: the chunk's bytes, which nobody else touches while we hold the exclusive lock.
        f(PartitionMut::new(unsafe {
            std::slice::from_raw_parts_mut(p, n)
        }))
    })
}

/// Where a tag lives now in region `r` of database `db`: (pool chunk, its owner word, shape).
fn place(s: Shared, r: usize, db: u32, tag: u32) -> Option<(usize, u64, u64)> {
    let packed = s.directory(r).shape.load(Ordering::Acquire);
    let position = Shape::unpack(packed)?.chunk_of(tag);
    let c = s.table(r, position).load(Ordering::Acquire) as usize;
    (c < s.layout.chunks).then(|| (c, chunk_owner_word(db, position), packed))
}

/// Run `f` on the chunk holding `tag` in region `r`, retrying while the region grows under us
/// (a growth changes the shape and empties the split chunk; the owner check catches a chunk
/// given back meanwhile).
fn on_chunk<R>(
    s: Shared,
    r: usize,
    db: u32,
    tag: u32,
    f: impl Fn(usize, u64) -> Option<R>,
) -> Option<R> {
    for _ in 0..8 {
        let (c, owner, packed) = place(s, r, db, tag)?;
        if let Some(out) = f(c, owner) {
            if s.directory(r).shape.load(Ordering::Acquire) == packed {
                return Some(out);
            }
        } else if s.directory(r).shape.load(Ordering::Acquire) == packed {
            return None;
        }
    }
    None
}

/// Take a chunk from the pool for region `r` (which has `held` chunks), keeping one for every
/// region that has none.
fn take_chunk(s: Shared, held: usize) -> Option<usize> {
    with_lock(s.pool_lock(), pg_sys::LWLockMode::LW_EXCLUSIVE, || {
        let free = s.free_count().load(Ordering::Acquire) as usize;
        let keep = if held == 0 {
            0
        } else {
            s.regions_without_chunks()
        };
        if free <= keep {
            return None;
        }
        let top = free - 1;
        s.free_count().store(top as u32, Ordering::Release);
        // SAFETY: top < chunks, within the free stack.
        Some(unsafe { s.free_stack().add(top).read() } as usize)
    })
}

fn give_chunk(s: Shared, c: usize) {
    with_lock(s.pool_lock(), pg_sys::LWLockMode::LW_EXCLUSIVE, || {
        let free = s.free_count().load(Ordering::Acquire) as usize;
        // SAFETY: a chunk is given back once per take, so free < chunks.
        unsafe { s.free_stack().add(free).write(c as u32) };
        s.free_count().store(free as u32 + 1, Ordering::Release);
    });
}

/// Empty region `r` and give its chunks back; then, unless `owner` is 0, give it one fresh
/// chunk for `owner` (database << 32 | keys-table file). Under the region's growth lock.
fn reset_region(s: Shared, r: usize, owner: u64, claim: Option<Region>) {
    with_lock(s.growth_lock(r), pg_sys::LWLockMode::LW_EXCLUSIVE, || {
        // Checked under the growth lock: the region may have gone to another database since
        // this backend found it (a release resets it under this lock too).
        if claim.is_some_and(|c| !c.is_current()) {
            return;
        }
        let dir = s.directory(r);
        let packed = dir.shape.swap(0, Ordering::AcqRel);
        dir.owner.store(0, Ordering::Release);
        if let Some(shape) = Shape::unpack(packed) {
            for position in 0..shape.chunks() {
                let c = s.table(r, position).load(Ordering::Acquire) as usize;
                with_lock(s.chunk_lock(c), pg_sys::LWLockMode::LW_EXCLUSIVE, || {
                    s.chunk_owner(c).store(0, Ordering::Release);
                    let (p, n) = s.chunk(c);
                    // SAFETY: the chunk's bytes under its exclusive lock.
                    PartitionMut::new(unsafe { std::slice::from_raw_parts_mut(p, n) }).clear();
                });
                give_chunk(s, c);
            }
        }
        if owner != 0 {
            // Owned even when the pool has no chunk left for it: its lookups then find no
            // shape and skip the cache, without trying again at every lookup.
            dir.owner.store(owner, Ordering::Release);
            if let Some(c) = take_chunk(s, 0) {
                with_lock(s.chunk_lock(c), pg_sys::LWLockMode::LW_EXCLUSIVE, || {
                    s.chunk_owner(c)
                        .store(chunk_owner_word((owner >> 32) as u32, 0), Ordering::Release);
                });
                s.table(r, 0).store(c as u32, Ordering::Release);
                dir.shape.store(Shape::ONE.pack(), Ordering::Release);
            }
        }
    });
}

/// Grow `region` by one chunk if the pool allows; false if it could not.
fn grow(s: Shared, region: Region) -> bool {
    let (r, db) = (region.index, region.database());
    // Without locks first: a region at the pool's limit is offered a growth at every crowded
    // insert, and should cost nobody a lock.
    if s.free_count().load(Ordering::Acquire) as usize <= s.regions_without_chunks() {
        return false;
    }
    with_lock(s.growth_lock(r), pg_sys::LWLockMode::LW_EXCLUSIVE, || {
        if !region.is_current() {
            return false;
        }
        let dir = s.directory(r);
        let Some(shape) = Shape::unpack(dir.shape.load(Ordering::Acquire)) else {
            return false;
        };
        let Some((split, added, next)) = shape.grow() else {
            return false;
        };
        if added >= s.layout.chunks {
            return false;
        }
        let Some(fresh) = take_chunk(s, shape.chunks()) else {
            return false;
        };
        let old = s.table(r, split).load(Ordering::Acquire) as usize;
        with_lock(s.chunk_lock(old), pg_sys::LWLockMode::LW_EXCLUSIVE, || {
            with_lock(
                s.chunk_lock(fresh),
                pg_sys::LWLockMode::LW_EXCLUSIVE,
                || {
                    let (p, n) = s.chunk(fresh);
                    // SAFETY: the new chunk's bytes under its exclusive lock.
                    let mut to = PartitionMut::new(unsafe { std::slice::from_raw_parts_mut(p, n) });
                    to.clear();
                    let (p, n) = s.chunk(old);
                    // SAFETY: the split chunk's bytes under its exclusive lock (a different chunk
                    // from `fresh`, which came from the pool). Its keys whose address moves go to
                    // the new chunk; the generation it moves refuses inserts read before.
                    PartitionMut::new(unsafe { std::slice::from_raw_parts_mut(p, n) }).split_into(
                        &mut to,
                        |tag| next.chunk_of(tag) == added,
                        MAX_CHUNKS,
                    );
                    s.chunk_owner(fresh)
                        .store(chunk_owner_word(db, added), Ordering::Release);
                    s.table(r, added).store(fresh as u32, Ordering::Release);
                    dir.shape.store(next.pack(), Ordering::Release);
                },
            )
        });
        true
    })
}

/// Give region `r`'s chunks back to the pool (its database or extension is gone).
pub fn release(region: Region) {
    if let Some(s) = shared() {
        if region.index < s.layout.regions {
            let owner = s.directory(region.index).owner.load(Ordering::Acquire);
            if owner == 0 || (owner >> 32) as u32 == region.database() {
                reset_region(s, region.index, 0, None);
            }
        }
    }
}

fn tag(digest: &Digest) -> u32 {
    pg_apikey_core::digest::invalidation_tag(digest)
}

/// Where a lookup of `digest` stands in the shared cache, taken before the row is read.
pub struct Ticket {
    region: Region,
    tag: u32,
    chunk: usize,
    owner: u64,
    generation: u64,
    /// What the cache held for the digest, read with the generation.
    payload: Option<Vec<u8>>,
}

/// The region of this database if the shared cache serves it here: preloaded with a cache,
/// `apikey.shared_key_cache` on, not in recovery, and a region in the registry.
fn my_region(claim: bool) -> Option<(Shared, Region)> {
    if !gucs::SHARED_KEY_CACHE.get() {
        return None;
    }
    let s = shared()?;
    // SAFETY: reads shared recovery state; no preconditions.
    if unsafe { pg_sys::RecoveryInProgress() } {
        return None;
    }
    let region = if claim {
        regions::mine()?
    } else {
        regions::mine_if_known()?
    };
    (region.index < s.layout.regions).then_some((s, region))
}

/// A ticket for `digest`, or None when this database has no shared cache (see `my_region`).
/// Gives the region a fresh start if it holds keys of another database or of another file of
/// the keys table than the one this backend now sees (TRUNCATE, VACUUM FULL, …).
pub fn ticket(digest: &Digest) -> Option<Ticket> {
    let (s, region) = my_region(true)?;
    let r = region.index;
    let cat = crate::catalog::get();
    if !cat.per_key_invalidation() {
        // The 0.1.0 schema (before ALTER EXTENSION UPDATE) invalidates no key by itself.
        return None;
    }
    let file = crate::catalog::file_of(cat.relation("keys"))?;
    let db = crate::shmem::database();
    let owner = (u64::from(db) << 32) | u64::from(u32::from(file));
    if s.directory(r).owner.load(Ordering::Acquire) != owner {
        reset_region(s, r, owner, Some(region));
    }
    let tag = tag(digest);
    // The generation and the lookup under one shared lock: a hit costs one lock, and the
    // generation a miss will insert under is the one the lookup saw.
    on_chunk(s, r, db, tag, |chunk, expected| {
        read(s, chunk, expected, |p| {
            (
                p.generation(),
                p.find(tag, digest, MAX_CHUNKS).map(<[u8]>::to_vec),
            )
        })
        .map(|(generation, payload)| Ticket {
            region,
            tag,
            chunk,
            owner: expected,
            generation,
            payload,
        })
    })
}

/// The key with `digest`, if the shared cache held it when the ticket was taken.
pub fn get(t: &Ticket, digest: &Digest) -> Option<StoredKey> {
    let found = t
        .payload
        .as_deref()
        .and_then(|p| StoredKey::decode(p, digest));
    let (hits, misses) = COUNTS.get();
    COUNTS.set(if found.is_some() {
        (hits + 1, misses)
    } else {
        (hits, misses + 1)
    });
    found
}

/// Offer a key just read from the table, under the ticket taken before reading it; answers
/// whether the cache took it. When storing it pushed another key out, the region grows by a
/// chunk if the pool allows.
pub fn offer(t: Ticket, digest: &Digest, key: &StoredKey) -> bool {
    store(t, digest, key, true)
}

/// Store a key, pushing the oldest of its window out if `evict` (a lookup's miss: this key is
/// in use now) or leaving it out (a prewarm's: the keys already there were put by use).
fn store(t: Ticket, digest: &Digest, key: &StoredKey, evict: bool) -> bool {
    let Some(s) = shared() else { return false };
    if key.created_here {
        return false;
    }
    let payload = key.encode();
    let outcome = write(s, t.chunk, t.owner, |mut p| {
        let crowded = p.would_evict(t.tag, digest, MAX_CHUNKS);
        let stored =
            (evict || !crowded) && p.insert(t.tag, digest, &payload, t.generation, MAX_CHUNKS);
        (stored, crowded)
    });
    let Some((stored, crowded)) = outcome else {
        return false;
    };
    if crowded {
        grow(s, t.region);
    }
    stored
}

/// A key changed in this transaction (from the invalidation trigger): evict it again at commit.
pub fn changed(digest: &Digest) {
    if my_region(true).is_some() {
        CHANGED.with_borrow_mut(|v| v.push(tag(digest)));
    }
}

/// Evict the key(s) with `tag` and move their chunk's generation.
fn evict(s: Shared, r: usize, tag: u32) {
    on_chunk(s, r, crate::shmem::database(), tag, |c, expected| {
        write(s, c, expected, |mut p| p.evict_tag(tag, MAX_CHUNKS))
    });
}

/// From the relcache callback: a per-key tag (or any relation: tags and OIDs look alike). The
/// committing backend already evicted the key and moved the generation after its commit, before
/// sending this; evicting again here only drops a copy stored in between, and touches nothing
/// (no exclusive lock, no generation) when the window holds no such tag, so the invalidations
/// any role causes (temporary tables, say) cost a shared lock and refuse no insert. Queue resets
/// (`InvalidOid`) need nothing: every change was evicted at its commit. No catalog access here:
/// a backend that never found its region has nothing to do.
pub fn invalidated(relid: pg_sys::Oid, is_keys_table: bool) {
    if is_keys_table || relid == pg_sys::InvalidOid {
        return;
    }
    let Some((s, region)) = my_region(false) else {
        return;
    };
    let r = region.index;
    let tag = u32::from(relid);
    let db = crate::shmem::database();
    let held = on_chunk(s, r, db, tag, |c, expected| {
        read(s, c, expected, |p| p.holds_tag(tag, MAX_CHUNKS))
    });
    if held == Some(true) {
        evict(s, r, tag);
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
            if let Some((s, region)) = my_region(false) {
                let r = region.index;
                tags.into_iter().for_each(|t| evict(s, r, t));
            }
        }
        pg_sys::XactEvent::XACT_EVENT_PRE_PREPARE if CHANGED.with_borrow(|v| !v.is_empty()) => {
            crate::errors::raise(pg_apikey_core::errors::ApiError::NotRecoverable(
                "a transaction that changed API keys cannot be prepared while the shared key cache is on (apikey.shared_key_cache_size)".into(),
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
/// the region holds afterwards (fewer than loaded when the pool ran out and windows evicted).
/// Each key is read exactly as a lookup's miss reads it.
#[pg_extern(volatile, parallel_unsafe)]
fn prewarm_key_cache() -> i64 {
    crate::admin::require_admin("prewarm the shared key cache");
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

/// Load these keys, each read exactly as a lookup's miss reads it. The region first grows to
/// hold them (each growth empties one chunk: better before loading than while).
pub fn prewarm_digests(digests: &[Digest]) {
    if let Some((s, region)) = my_region(true) {
        let wanted = digests.len() + digests.len() / 4;
        while capacity(s, region.index) < wanted && grow(s, region) {}
    }
    for digest in digests {
        let Some(t) = ticket(digest) else {
            return;
        };
        if get(&t, digest).is_some() {
            continue;
        }
        if let Some(key) = crate::store::find_by_digest(digest) {
            // A prewarm never pushes out a key that use put there: after a bulk load larger
            // than the cache, the keys in use stay, and the load fills what is free. A crowded
            // window makes the region grow if the pool allows; the key gets a second chance then.
            if !store(t, digest, &key, false) {
                if let Some(t) = ticket(digest) {
                    store(t, digest, &key, false);
                }
            }
        }
    }
}

/// Chunks region `r` has now (0 before its first).
fn chunks(s: Shared, r: usize) -> usize {
    Shape::unpack(s.directory(r).shape.load(Ordering::Acquire)).map_or(0, Shape::chunks)
}

fn capacity(s: Shared, r: usize) -> usize {
    chunks(s, r) * CHUNK_SLOTS
}

/// Is this database's region empty (the server just started, rather than the worker alone
/// restarting over a filled region)?
pub fn region_is_empty() -> bool {
    region_stats().0 == 0
}

/// (entries, capacity) of this database's region; (0, 0) without one.
fn region_stats() -> (i64, i64) {
    let Some((s, region)) = my_region(true) else {
        return (0, 0);
    };
    let r = region.index;
    let db = crate::shmem::database();
    let chunks = chunks(s, r);
    let entries: usize = (0..chunks)
        .filter_map(|position| {
            let c = s.table(r, position).load(Ordering::Acquire) as usize;
            read(s, c, chunk_owner_word(db, position), |p| p.len())
        })
        .sum();
    (entries as i64, (chunks * CHUNK_SLOTS) as i64)
}

/// This database's region of the shared cache: keys held, keys it can hold now (it grows while
/// the pool has chunks), and this backend's hits and misses in it. Administrators only: how
/// many keys are in use is the database's business.
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
