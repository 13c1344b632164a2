//! What the shared-memory modules (`limiter`, `usage`) have in common: whether the library was
//! preloaded (shared memory exists only then), and the declaration of a table split into
//! LWLock-protected partitions.

use std::cell::Cell;

use pgrx::pg_sys;

/// Databases with a usage worker (and a partition of every per-database table) at most.
pub const MAX_WORKERS: usize = 8;

static mut PRELOADED: bool = false;

/// Called first in `_PG_init`.
pub fn init() {
    // SAFETY: written once from _PG_init, before anything reads it; backends are single-threaded.
    unsafe { PRELOADED = pg_sys::process_shared_preload_libraries_in_progress };
}

/// Was the library loaded by `shared_preload_libraries` (so shared memory exists)?
pub fn preloaded() -> bool {
    // SAFETY: only written in _PG_init (see init).
    unsafe { PRELOADED }
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

thread_local! {
    /// This database's partition: Some(Some(i)) listed as the i-th usage database,
    /// Some(None) not listed, None not looked up yet.
    static MY_PART: Cell<Option<Option<usize>>> = const { Cell::new(None) };
}

/// This database's index in `apikey.usage_databases` (its worker's partition, here and for
/// credits), or None when it has no flush worker.
pub fn db_index() -> Option<usize> {
    MY_PART.get().unwrap_or_else(|| {
        // SAFETY: get_database_name returns a palloc'd copy of the name, or NULL for a database
        // that no longer exists.
        let name = unsafe {
            let p = pg_sys::get_database_name(pg_sys::MyDatabaseId);
            (!p.is_null()).then(|| std::ffi::CStr::from_ptr(p).to_string_lossy().into_owned())
        };
        let index = name.and_then(|n| {
            crate::gucs::usage_databases()
                .iter()
                .take(MAX_WORKERS)
                .position(|d| *d == n)
        });
        MY_PART.set(Some(index));
        index
    })
}

/// `db_index` if this backend already resolved it (callbacks may not read the catalog).
pub fn db_index_if_known() -> Option<usize> {
    MY_PART.get().flatten()
}

/// Set by a usage worker, which knows its index (looking its name up would need a transaction).
pub fn set_db_index(index: usize) {
    MY_PART.set(Some(Some(index)));
}
