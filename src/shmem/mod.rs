//! Shared memory: whether the library was preloaded (shared memory exists only then), the
//! segments sized from settings (`register`: one pair of shared-memory hooks serves them all),
//! the registry of per-database regions (`regions`), and the declaration of a fixed table split
//! into LWLock-protected partitions (the limiter's).

pub mod regions;

use std::ffi::CStr;

use pgrx::pg_sys;

static mut PRELOADED: bool = false;

/// Called first in `_PG_init`.
pub fn init() {
    // SAFETY: written once from _PG_init, before anything reads it; backends are single-threaded.
    unsafe { PRELOADED = pg_sys::process_shared_preload_libraries_in_progress };
    regions::init();
}

/// Was the library loaded by `shared_preload_libraries` (so shared memory exists)?
pub fn preloaded() -> bool {
    // SAFETY: only written in _PG_init (see init).
    unsafe { PRELOADED }
}

/// This backend's database (its OID as shared-memory tables key it; 0 before a connection).
pub fn database() -> u32 {
    // SAFETY: reads a backend global set at connection.
    u32::from(unsafe { pg_sys::MyDatabaseId })
}

/// Whether this server is in recovery (a hot standby): nothing may be written, and credits and
/// global limits are spent from what the worker leased.
pub fn on_standby() -> bool {
    // SAFETY: reads shared recovery state under its own spinlock; callable in any process.
    unsafe { pg_sys::RecoveryInProgress() }
}

/// The clock every shared-memory table keeps time by: microseconds since 2000-01-01 (a
/// `TimestampTz`), the wall clock, so every backend and the worker agree on it.
pub fn now_us() -> i64 {
    // SAFETY: reads the system clock; no preconditions.
    unsafe { pg_sys::GetCurrentTimestamp() }
}

/// A piece of shared memory whose size a setting decides: `size` bytes (zeroed when created) and
/// `locks` LWLocks of a tranche with the same name, handed to `attach` (with whether the memory
/// is new) in the postmaster (and
/// again after a crash restart) before any backend exists; forked processes inherit what
/// `attach` keeps.
pub struct Segment {
    pub name: &'static CStr,
    pub size: fn() -> usize,
    pub locks: fn() -> usize,
    pub attach: fn(base: *mut u8, locks: *mut pg_sys::LWLockPadded, fresh: bool),
}

const MAX_SEGMENTS: usize = 4;
static mut SEGMENTS: [Option<&'static Segment>; MAX_SEGMENTS] = [None; MAX_SEGMENTS];
static mut PREV_REQUEST: pg_sys::shmem_request_hook_type = None;
static mut PREV_STARTUP: pg_sys::shmem_startup_hook_type = None;

/// Add a segment; from an `init()` while preloading.
#[allow(clippy::deref_addrof)] // a reference to the static mut, made explicit
pub fn register(segment: &'static Segment) {
    if !preloaded() {
        return;
    }
    // SAFETY: _PG_init runs single-threaded in the postmaster while preloading; the hooks are
    // chained once (keeping the previous ones, which ours call first).
    unsafe {
        let segments = &mut *(&raw mut SEGMENTS);
        if segments.iter().all(Option::is_none) {
            PREV_REQUEST = pg_sys::shmem_request_hook;
            pg_sys::shmem_request_hook = Some(request);
            PREV_STARTUP = pg_sys::shmem_startup_hook;
            pg_sys::shmem_startup_hook = Some(startup);
        }
        let free = segments
            .iter_mut()
            .find(|s| s.is_none())
            .expect("fewer segments than MAX_SEGMENTS");
        *free = Some(segment);
    }
}

#[allow(clippy::deref_addrof)] // see register
fn segments() -> impl Iterator<Item = &'static Segment> {
    // SAFETY: SEGMENTS is written only from _PG_init, before these hooks run.
    unsafe { (*(&raw const SEGMENTS)).iter().flatten().copied() }
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
        for s in segments() {
            pg_sys::RequestAddinShmemSpace((s.size)());
            pg_sys::RequestNamedLWLockTranche(s.name.as_ptr(), (s.locks)().max(1) as i32);
        }
    }
}

#[pg_guard]
unsafe extern "C-unwind" fn startup() {
    // SAFETY: called in the postmaster (and after a crash restart) once shared memory exists;
    // each segment is created or found under AddinShmemInitLock (MainLWLockArray[21], as pgrx's
    // own shared memory uses it) and zeroed when new.
    unsafe {
        if let Some(prev) = PREV_STARTUP {
            // See request().
            #[allow(ffi_unwind_calls)]
            prev();
        }
        let init_lock = &raw mut (*pg_sys::MainLWLockArray.add(21)).lock;
        pg_sys::LWLockAcquire(init_lock, pg_sys::LWLockMode::LW_EXCLUSIVE);
        for s in segments() {
            let size = (s.size)();
            let mut found = false;
            let base = pg_sys::ShmemInitStruct(s.name.as_ptr(), size, &mut found) as *mut u8;
            if !found {
                std::ptr::write_bytes(base, 0, size);
            }
            (s.attach)(base, pg_sys::GetNamedLWLockTranche(s.name.as_ptr()), !found);
        }
        pg_sys::LWLockRelease(init_lock);
    }
}

/// Run `f` with LWLock `lock` held in `mode`. If `f` raises an error, transaction abort (or the
/// process' exit) releases the lock (LWLockReleaseAll).
pub fn with_lock<R>(
    lock: *mut pg_sys::LWLock,
    mode: pg_sys::LWLockMode::Type,
    f: impl FnOnce() -> R,
) -> R {
    // SAFETY: callers pass a lock of a tranche registered by `register`, valid for the life of
    // the server.
    unsafe { pg_sys::LWLockAcquire(lock, mode) };
    let r = f();
    // SAFETY: acquired just above by this process.
    unsafe { pg_sys::LWLockRelease(lock) };
    r
}

/// Declares one `PgLwLock<$part>` static per name, a `$table` array of them and an `$init` fn
/// that registers each with `pg_shmem_init!` filled with `$empty`.
macro_rules! partitioned_table {
    ($table:ident, $init:ident, $part:ty, $empty:expr, [$($name:ident = $label:literal),* $(,)?]) => {
        // SAFETY: const construction of named shared-memory locks, each registered with
        // pg_shmem_init! by the generated init function before use.
        $(static $name: pgrx::lwlock::PgLwLock<$part> = unsafe { pgrx::lwlock::PgLwLock::new($label) };)*
        static $table: &[&pgrx::lwlock::PgLwLock<$part>] = &[$(&$name),*];
        fn $init() {
            $(pgrx::pg_shmem_init!($name = $empty);)*
        }
    };
}
pub(crate) use partitioned_table;

use pgrx::pg_guard;
