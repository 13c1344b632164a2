//! The registry of per-database regions: every database where pg_apikey is used gets one region
//! on first use (a backend's first verify, `CREATE EXTENSION`, or its worker's start), chosen
//! among `apikey.max_databases` and given back when the extension or the database is dropped.
//! A region holds that database's usage slots, credit balances and queued rehashes here, its
//! part of the shared key cache (`sharedkeys`, by the same index) and names its worker.
//!
//! ## Whose memory
//! A region is bound to one database OID and a generation that moves at every claim and release.
//! Every access locks the part it needs and then checks that the region still belongs to this
//! database under the generation this backend saw (`Region::usage`, `Region::credits`), so a
//! backend can never write into a region given to another database meanwhile. Nothing one
//! database does (filling its slots, dropping its extension) touches another's region.

use std::cell::Cell;
use std::sync::atomic::{AtomicI32, AtomicI64, AtomicU32, AtomicU64, Ordering};

use pg_apikey_core::credits_table::Balance;
use pg_apikey_core::rehash_queue::Queue;
use pg_apikey_core::stat::{Counter, COUNTERS};
use pg_apikey_core::token_leases::TokenLease;
use pg_apikey_core::usage_table::Slot;
use pgrx::pg_sys;

use super::{now_us, with_lock, Segment};

/// Keys with usage counts waiting for the next flush, per database.
pub const USAGE_SLOTS: usize = 1024;
/// Credit balances held in memory, per database.
pub const CREDIT_SLOTS: usize = 1024;
/// Global limits' buckets a standby holds tokens of, per database.
pub const TOKEN_SLOTS: usize = 256;

#[repr(C)]
pub struct UsagePart {
    pub slots: [Slot; USAGE_SLOTS],
    /// Events that found every slot pending (a flush is late or failing, or a standby).
    pub dropped: u64,
}

#[repr(C)]
pub struct CreditsPart {
    pub balances: [Balance; CREDIT_SLOTS],
    /// On a standby: tokens of global limits leased from the primary (`token_leases`); they
    /// share the balances' lock, since the worker's exchanges take both at once.
    pub tokens: [TokenLease; TOKEN_SLOTS],
}

#[repr(C)]
pub struct RehashPart {
    pub queue: Queue,
}

#[repr(C)]
struct Descriptor {
    /// The database's OID; 0 while free.
    db: AtomicU32,
    /// Moves at every claim and release.
    generation: AtomicU32,
    /// The process id of the database's worker, 0 when none runs.
    worker: AtomicI32,
    /// The worker's latch (in its PGPROC), to wake it.
    latch: AtomicU64,
    /// The backend holding the worker off (see `pause`), and until when (µs since the Postgres
    /// epoch).
    pause_pid: AtomicI32,
    pause_until: AtomicI64,
    /// Set by a worker that exits because it was asked to (SIGTERM, its database paused or its
    /// region given back, making way): the launcher restarts it without counting a failure.
    clean_exit: AtomicU32,
    /// Cumulative statistics (`apikey.stat`), zeroed at every claim; since when, and when the
    /// worker last finished a flush (µs since the Postgres epoch, 0 never).
    counters: [AtomicU64; COUNTERS],
    stats_reset: AtomicI64,
    flushed_at: AtomicI64,
    /// The region's name at the primary for its credit leases (random, made by its worker once
    /// per claim, 0 until then), so a worker that restarts still gives back what the region
    /// holds.
    lease_name: [AtomicU64; 2],
}

#[repr(C)]
struct Header {
    /// The launcher's latch (in its PGPROC, shared memory), 0 while none runs.
    launcher: AtomicU64,
    /// Set by the launcher while a region waits for a worker slot (max_worker_processes):
    /// idle workers then make way.
    starved: AtomicU32,
    /// Usage events of databases that found no free region.
    unplaced: AtomicU64,
}

const ALIGN: usize = 64;
const LOCKS_PER_REGION: usize = 3;

fn aligned(n: usize) -> usize {
    n.div_ceil(ALIGN) * ALIGN
}

#[derive(Clone, Copy)]
struct Layout {
    regions: usize,
    descriptors: usize,
    usage: usize,
    credits: usize,
    rehashes: usize,
    size: usize,
}

impl Layout {
    fn new() -> Layout {
        let regions = crate::gucs::max_databases();
        let descriptors = aligned(std::mem::size_of::<Header>());
        let usage = descriptors + aligned(regions * std::mem::size_of::<Descriptor>());
        let credits = usage + regions * aligned(std::mem::size_of::<UsagePart>());
        let rehashes = credits + regions * aligned(std::mem::size_of::<CreditsPart>());
        let size = rehashes + regions * aligned(std::mem::size_of::<RehashPart>());
        Layout {
            regions,
            descriptors,
            usage,
            credits,
            rehashes,
            size,
        }
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
    name: c"pg_apikey regions",
    size: || Layout::new().size,
    // One registry lock, then a usage, a credits and a rehash lock per region.
    locks: || 1 + LOCKS_PER_REGION * Layout::new().regions,
    attach: |base, locks, _fresh| {
        // SAFETY: called by the startup hook in the postmaster, before any backend exists.
        unsafe {
            SHARED = Some(Shared {
                layout: Layout::new(),
                base,
                locks,
            })
        };
    },
};

pub fn init() {
    super::register(&SEGMENT);
}

fn shared() -> Option<Shared> {
    // SAFETY: written only by the startup hook before backends exist; read by copy afterwards.
    unsafe { SHARED }
}

impl Shared {
    fn header(&self) -> &'static Header {
        // SAFETY: the segment starts with a zeroed Header (atomics are valid at zero) and lives
        // as long as the server; MAXALIGNed.
        unsafe { &*(self.base as *const Header) }
    }

    fn descriptor(&self, i: usize) -> &'static Descriptor {
        assert!(i < self.layout.regions);
        // SAFETY: i < regions, within the descriptor array laid out by Layout.
        unsafe {
            &*(self
                .base
                .add(self.layout.descriptors + i * std::mem::size_of::<Descriptor>())
                as *const Descriptor)
        }
    }

    fn lock(&self, n: usize) -> *mut pg_sys::LWLock {
        assert!(n < 1 + LOCKS_PER_REGION * self.layout.regions);
        // SAFETY: n is below the number of locks requested for the tranche.
        unsafe { &raw mut (*self.locks.add(n)).lock }
    }

    /// Part `T` of region `i`: parts of one kind lie back to back from `offset`.
    fn part<T>(&self, offset: usize, i: usize) -> *mut T {
        assert!(i < self.layout.regions);
        // SAFETY: i < regions, and Layout reserved `regions` aligned parts of T from `offset`.
        unsafe {
            self.base
                .add(offset + i * aligned(std::mem::size_of::<T>())) as *mut T
        }
    }

    fn usage_part(&self, i: usize) -> *mut UsagePart {
        self.part(self.layout.usage, i)
    }

    fn credits_part(&self, i: usize) -> *mut CreditsPart {
        self.part(self.layout.credits, i)
    }

    fn rehash_part(&self, i: usize) -> *mut RehashPart {
        self.part(self.layout.rehashes, i)
    }

    /// Lock `k` (0 usage, 1 credits, 2 rehashes) of region `i`.
    fn part_lock(&self, i: usize, k: usize) -> *mut pg_sys::LWLock {
        self.lock(1 + LOCKS_PER_REGION * i + k)
    }
}

/// What one attempt of a request on what its worker leases came to ([`Region::wait_for_worker`]).
pub enum Attempt<T> {
    /// Settled: spent, or refused.
    Done(T),
    /// Too little here: the worker is asked.
    Asked,
    /// The worker has not answered an earlier ask yet.
    Waiting,
    /// Too little here, and nobody asked: try again, asking.
    Ask,
}

/// A region as a backend of its database saw it.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Region {
    pub index: usize,
    generation: u32,
    db: u32,
}

thread_local! {
    /// This backend's region, once found or claimed.
    static MINE: Cell<Option<Region>> = const { Cell::new(None) };
}

impl Region {
    /// Does the region still belong to the database it was found for, under the same claim?
    pub fn is_current(&self) -> bool {
        shared().is_some_and(|s| self.still_ours(&s))
    }

    fn still_ours(&self, s: &Shared) -> bool {
        let d = s.descriptor(self.index);
        d.db.load(Ordering::Acquire) == self.db
            && d.generation.load(Ordering::Acquire) == self.generation
    }

    /// Run `f` on the region's part `k` (see `part_lock`) under its lock, if the region is still
    /// this one.
    fn with_part<T, R>(
        &self,
        k: usize,
        part: fn(&Shared, usize) -> *mut T,
        f: impl FnOnce(&mut T) -> R,
    ) -> Option<R> {
        let s = shared()?;
        with_lock(
            s.part_lock(self.index, k),
            pg_sys::LWLockMode::LW_EXCLUSIVE,
            || {
                self.still_ours(&s).then(|| {
                    // SAFETY: the part's memory, which only holders of its lock touch.
                    f(unsafe { &mut *part(&s, self.index) })
                })
            },
        )
    }

    /// Run `f` on this region's usage slots under their lock, if the region is still this one.
    pub fn usage<R>(&self, f: impl FnOnce(&mut UsagePart) -> R) -> Option<R> {
        self.with_part(0, Shared::usage_part, f)
    }

    /// Run `f` on this region's credit balances under their lock, if the region is still this
    /// one.
    pub fn credits<R>(&self, f: impl FnOnce(&mut CreditsPart) -> R) -> Option<R> {
        self.with_part(1, Shared::credits_part, f)
    }

    /// Run `f` on this region's queued rehashes under their lock, if the region is still this
    /// one.
    pub fn rehashes<R>(&self, f: impl FnOnce(&mut RehashPart) -> R) -> Option<R> {
        self.with_part(2, Shared::rehash_part, f)
    }

    /// Does the region hold anything to write (usage not flushed, balances not written)?
    pub fn busy(&self) -> bool {
        let usage = self.usage(|p| p.slots.iter().any(|s| s.db != 0 && s.pending()));
        // A standby's leases keep its worker (the only one who gives them back) from making way.
        let credits = self.credits(|p| {
            p.balances
                .iter()
                .any(|b| b.db != 0 && (b.dirty() || (b.lease.leased && b.remaining > 0)))
        });
        usage == Some(true) || credits == Some(true)
    }

    /// Usage slots in use and usage events dropped, if the region is still this one.
    pub fn usage_fill(&self) -> Option<(usize, u64)> {
        self.usage(|p| (p.slots.iter().filter(|s| s.db != 0).count(), p.dropped))
    }

    /// Credit balances held, if the region is still this one.
    pub fn balances_held(&self) -> Option<usize> {
        self.credits(|p| p.balances.iter().filter(|b| b.db != 0).count())
    }

    /// Is this region's worker running?
    pub fn has_worker(&self) -> bool {
        shared().is_some_and(|s| s.descriptor(self.index).worker.load(Ordering::Acquire) != 0)
    }
}

impl Descriptor {
    fn reset_stats(&self) {
        for c in &self.counters {
            c.store(0, Ordering::Relaxed);
        }
        self.stats_reset.store(now_us(), Ordering::Relaxed);
    }
}

thread_local! {
    /// This backend asked for a region to count in once already: when every region is taken,
    /// counting must not take the registry's lock again at every call.
    static TRIED_TO_COUNT: Cell<bool> = const { Cell::new(false) };
}

/// Count one event in this database's statistics (claiming its region the first time, as a
/// first verify does). A count that races with the region's release may land in the next
/// claim's zeroed counters: one count, never anything read.
pub fn count(c: Counter) {
    let Some(s) = shared() else { return };
    let region = mine_if_known().or_else(|| {
        if TRIED_TO_COUNT.replace(true) {
            None
        } else {
            mine()
        }
    });
    if let Some(r) = region {
        s.descriptor(r.index).counters[c.index()].fetch_add(1, Ordering::Relaxed);
    }
}

/// A region's statistics as read now.
pub struct Stats {
    pub counters: [u64; COUNTERS],
    /// µs since the Postgres epoch.
    pub stats_reset: i64,
    pub flushed_at: Option<i64>,
}

impl Region {
    /// The region's statistics, if it still belongs to its database.
    pub fn stats(&self) -> Option<Stats> {
        let s = shared()?;
        let d = s.descriptor(self.index);
        let stats = Stats {
            counters: std::array::from_fn(|i| d.counters[i].load(Ordering::Relaxed)),
            stats_reset: d.stats_reset.load(Ordering::Relaxed),
            flushed_at: Some(d.flushed_at.load(Ordering::Relaxed)).filter(|&t| t != 0),
        };
        self.still_ours(&s).then_some(stats)
    }

    pub fn reset_stats(&self) {
        if let Some(s) = shared().filter(|s| self.still_ours(s)) {
            s.descriptor(self.index).reset_stats();
        }
    }

    /// The region's name for its leases at the primary (see `Descriptor::lease_name`); only its
    /// worker calls this.
    pub fn lease_name(&self) -> Option<String> {
        let s = shared().filter(|s| self.still_ours(s))?;
        let d = s.descriptor(self.index);
        let mut parts = [
            d.lease_name[0].load(Ordering::Acquire),
            d.lease_name[1].load(Ordering::Acquire),
        ];
        if parts == [0, 0] {
            parts = [rand::random::<u64>() | 1, rand::random::<u64>()];
            d.lease_name[0].store(parts[0], Ordering::Release);
            d.lease_name[1].store(parts[1], Ordering::Release);
        }
        Some(format!("{:016x}{:016x}", parts[0], parts[1]))
    }

    /// The worker finished a flush now.
    pub fn note_flush(&self) {
        if let Some(s) = shared().filter(|s| self.still_ours(s)) {
            s.descriptor(self.index)
                .flushed_at
                .store(now_us(), Ordering::Relaxed);
        }
    }
}

/// This database's region: found, or claimed if this database has none yet (the launcher is
/// woken to start its worker). None without preload, or when every region is taken.
pub fn mine() -> Option<Region> {
    let s = shared()?;
    if let Some(r) = MINE.get() {
        if r.still_ours(&s) {
            return Some(r);
        }
    }
    let r = claim(&s, super::database());
    MINE.set(r);
    r
}

/// This backend's region if it already found one (callbacks must not claim).
pub fn mine_if_known() -> Option<Region> {
    let s = shared()?;
    MINE.get().filter(|r| r.still_ours(&s))
}

fn claim(s: &Shared, db: u32) -> Option<Region> {
    if db == 0 {
        return None;
    }
    let (region, fresh) = with_lock(s.lock(0), pg_sys::LWLockMode::LW_EXCLUSIVE, || {
        let found =
            (0..s.layout.regions).find(|&i| s.descriptor(i).db.load(Ordering::Acquire) == db);
        if let Some(i) = found {
            let d = s.descriptor(i);
            return Some((
                Region {
                    index: i,
                    generation: d.generation.load(Ordering::Acquire),
                    db,
                },
                false,
            ));
        }
        let free =
            (0..s.layout.regions).find(|&i| s.descriptor(i).db.load(Ordering::Acquire) == 0)?;
        let d = s.descriptor(free);
        let generation = d.generation.load(Ordering::Acquire).wrapping_add(1);
        d.generation.store(generation, Ordering::Release);
        d.reset_stats();
        d.flushed_at.store(0, Ordering::Relaxed);
        d.lease_name[0].store(0, Ordering::Relaxed);
        d.lease_name[1].store(0, Ordering::Relaxed);
        d.db.store(db, Ordering::Release);
        Some((
            Region {
                index: free,
                generation,
                db,
            },
            true,
        ))
    })?;
    if fresh {
        wake_launcher();
    }
    Some(region)
}

/// The region of database `db`, if it has one.
pub fn of_database(db: u32) -> Option<Region> {
    let s = shared()?;
    (0..s.layout.regions).find_map(|i| {
        let d = s.descriptor(i);
        (db != 0 && d.db.load(Ordering::Acquire) == db).then(|| Region {
            index: i,
            generation: d.generation.load(Ordering::Acquire),
            db,
        })
    })
}

/// Every claimed region.
pub fn claimed() -> Vec<Region> {
    let Some(s) = shared() else {
        return Vec::new();
    };
    (0..s.layout.regions)
        .filter_map(|i| {
            let d = s.descriptor(i);
            let db = d.db.load(Ordering::Acquire);
            (db != 0).then(|| Region {
                index: i,
                generation: d.generation.load(Ordering::Acquire),
                db,
            })
        })
        .collect()
}

impl Region {
    pub fn database(&self) -> u32 {
        self.db
    }

    /// Give the region back: its usage, balances and queued rehashes are emptied (what was not
    /// written is lost, as the database or the extension is gone) and the generation moves, so
    /// no backend that saw it can touch it again. The caller empties the region's shared key
    /// cache too.
    pub fn release(&self) {
        let Some(s) = shared() else { return };
        // The registry's lock, then every part's, so no access is under way while the owner
        // changes (the order every other path takes them in).
        let locks = [
            s.lock(0),
            s.part_lock(self.index, 0),
            s.part_lock(self.index, 1),
            s.part_lock(self.index, 2),
        ];
        for lock in locks {
            // SAFETY: locks of the tranche registered for this segment.
            unsafe { pg_sys::LWLockAcquire(lock, pg_sys::LWLockMode::LW_EXCLUSIVE) };
        }
        if self.still_ours(&s) {
            // SAFETY: the parts' memory, with their locks held; zero is their empty state
            // (free slots, no drops, an empty queue).
            unsafe {
                std::ptr::write_bytes(s.usage_part(self.index), 0, 1);
                std::ptr::write_bytes(s.credits_part(self.index), 0, 1);
                std::ptr::write_bytes(s.rehash_part(self.index), 0, 1);
            }
            let d = s.descriptor(self.index);
            d.generation
                .store(self.generation.wrapping_add(1), Ordering::Release);
            d.db.store(0, Ordering::Release);
            d.pause_pid.store(0, Ordering::Release);
            d.pause_until.store(0, Ordering::Release);
            // A worker still running for it sees the region is no longer its own at its next
            // wake (now) and exits; the next database's worker can take the region then.
            let latch = d.latch.swap(0, Ordering::AcqRel);
            d.worker.store(0, Ordering::Release);
            if latch != 0 {
                // SAFETY: a PGPROC latch in shared memory (see wake_launcher).
                unsafe { pg_sys::SetLatch(latch as *mut pg_sys::Latch) };
            }
        }
        for lock in locks.into_iter().rev() {
            // SAFETY: acquired just above by this process.
            unsafe { pg_sys::LWLockRelease(lock) };
        }
    }

    /// Record this process as the region's worker; false if another worker holds it.
    pub fn become_worker(&self) -> bool {
        let Some(s) = shared() else { return false };
        // SAFETY: reads this process' id.
        let pid = unsafe { pg_sys::MyProcPid };
        let d = s.descriptor(self.index);
        let taken = self.still_ours(&s)
            && d.worker
                .compare_exchange(0, pid, Ordering::AcqRel, Ordering::Acquire)
                .is_ok();
        if taken {
            // SAFETY: MyLatch is this process' PGPROC latch, in shared memory.
            d.latch
                .store(unsafe { pg_sys::MyLatch } as u64, Ordering::Release);
            d.clean_exit.store(0, Ordering::Release);
        }
        taken
    }

    /// From a worker about to exit because it was asked to.
    pub fn note_clean_exit(&self) {
        if let Some(s) = shared() {
            s.descriptor(self.index)
                .clean_exit
                .store(1, Ordering::Release);
        }
    }

    /// From the launcher: did the region's last worker exit because it was asked to? (Reset.)
    pub fn take_clean_exit(&self) -> bool {
        shared().is_some_and(|s| {
            s.descriptor(self.index)
                .clean_exit
                .swap(0, Ordering::AcqRel)
                != 0
        })
    }

    /// Wake the region's worker (it exits when its database is paused).
    pub fn wake_worker(&self) {
        let Some(s) = shared() else { return };
        let d = s.descriptor(self.index);
        let latch = d.latch.load(Ordering::Acquire);
        if d.worker.load(Ordering::Acquire) != 0 && latch != 0 {
            // SAFETY: a PGPROC latch in shared memory (see wake_launcher).
            unsafe { pg_sys::SetLatch(latch as *mut pg_sys::Latch) };
        }
    }

    /// Wait for the region's worker to lease what a request lacks: `attempt(true)` first (it
    /// records the ask), then `attempt(false)` every millisecond until it settles, waking the
    /// worker when an attempt asked and again every 100 ms while it waits (a wake-up can be
    /// consumed by the worker's own wait for the primary). No lock is held between attempts, and
    /// interrupts (cancel, `statement_timeout`) are honoured between them. `None` after `limit`.
    pub fn wait_for_worker<T>(
        &self,
        limit: std::time::Duration,
        mut attempt: impl FnMut(bool) -> Attempt<T>,
    ) -> Option<T> {
        let started = std::time::Instant::now();
        let mut woken = started;
        let mut ask = true;
        loop {
            let outcome = attempt(ask);
            match outcome {
                Attempt::Done(t) => return Some(t),
                Attempt::Ask if !ask => {
                    ask = true;
                    continue;
                }
                _ => {}
            }
            if started.elapsed() >= limit {
                return None;
            }
            if matches!(outcome, Attempt::Asked) || woken.elapsed().as_millis() >= 100 {
                self.wake_worker();
                woken = std::time::Instant::now();
            }
            // SAFETY: a plain sleep, holding no lock.
            unsafe { pg_sys::pg_usleep(1000) };
            pgrx::check_for_interrupts!();
            ask = false;
        }
    }

    /// The running worker's process id, if any.
    pub fn worker_pid(&self) -> Option<i32> {
        let pid = shared()?
            .descriptor(self.index)
            .worker
            .load(Ordering::Acquire);
        (pid != 0).then_some(pid)
    }
}

/// This process stops being a worker of any region (at its exit).
pub fn forget_worker(pid: i32) {
    let Some(s) = shared() else { return };
    for i in 0..s.layout.regions {
        let _ =
            s.descriptor(i)
                .worker
                .compare_exchange(pid, 0, Ordering::AcqRel, Ordering::Acquire);
    }
}

/// Count a usage event of a database that has no region.
pub fn count_unplaced() {
    if let Some(s) = shared() {
        s.header().unplaced.fetch_add(1, Ordering::Relaxed);
    }
}

/// Usage events of every database that found no region: counted for the whole server, so shown
/// to superusers only (another database's traffic is no administrator's business).
pub fn unplaced_if_superuser() -> u64 {
    // SAFETY: superuser() reads the current user's role; no preconditions.
    if !unsafe { pg_sys::superuser() } {
        return 0;
    }
    shared().map_or(0, |s| s.header().unplaced.load(Ordering::Relaxed))
}

/// From the launcher: wake me through my latch.
pub fn set_launcher() {
    if let Some(s) = shared() {
        // SAFETY: MyLatch is this process' PGPROC latch, in shared memory for the server's life.
        let latch = unsafe { pg_sys::MyLatch } as u64;
        s.header().launcher.store(latch, Ordering::Release);
    }
}

/// Wake the launcher (a region was claimed, or a database created or dropped).
pub fn wake_launcher() {
    let Some(s) = shared() else { return };
    let latch = s.header().launcher.load(Ordering::Acquire);
    if latch != 0 {
        // SAFETY: a PGPROC's latch, in shared memory for the server's life; setting the latch of
        // a process that has since exited (and whose PGPROC another process took) only wakes
        // that process once, spuriously.
        unsafe { pg_sys::SetLatch(latch as *mut pg_sys::Latch) };
    }
}

pub fn set_starved(starved: bool) {
    if let Some(s) = shared() {
        s.header()
            .starved
            .store(u32::from(starved), Ordering::Release);
    }
}

pub fn starved() -> bool {
    shared().is_some_and(|s| s.header().starved.load(Ordering::Acquire) != 0)
}

/// Hold off database `db`'s worker for at most `seconds`, on behalf of this backend (a statement
/// that needs the database free of connections is about to run). One pause per region: false
/// when the database has no region (so no worker to hold off) or another backend's pause is in
/// force (that one already sent the worker away).
pub fn pause(db: u32, seconds: i64) -> bool {
    let (Some(s), Some(region)) = (shared(), of_database(db)) else {
        return false;
    };
    // SAFETY: reads this process' id.
    let me = unsafe { pg_sys::MyProcPid };
    with_lock(s.lock(0), pg_sys::LWLockMode::LW_EXCLUSIVE, || {
        let d = s.descriptor(region.index);
        let now = now_us();
        let holder = d.pause_pid.load(Ordering::Acquire);
        if !region.still_ours(&s)
            || (holder != 0 && holder != me && d.pause_until.load(Ordering::Acquire) > now)
        {
            return false;
        }
        d.pause_pid.store(me, Ordering::Release);
        d.pause_until
            .store(now + seconds * 1_000_000, Ordering::Release);
        true
    })
}

/// Lift this backend's pause of database `db` (another backend's stays).
pub fn unpause(db: u32) {
    let (Some(s), Some(region)) = (shared(), of_database(db)) else {
        return;
    };
    // SAFETY: reads this process' id.
    let me = unsafe { pg_sys::MyProcPid };
    with_lock(s.lock(0), pg_sys::LWLockMode::LW_EXCLUSIVE, || {
        let d = s.descriptor(region.index);
        if d.pause_pid.load(Ordering::Acquire) == me {
            d.pause_pid.store(0, Ordering::Release);
            d.pause_until.store(0, Ordering::Release);
        }
    });
}

/// Is database `db`'s worker held off?
pub fn paused(db: u32) -> bool {
    let (Some(s), Some(region)) = (shared(), of_database(db)) else {
        return false;
    };
    s.descriptor(region.index)
        .pause_until
        .load(Ordering::Acquire)
        > now_us()
}
