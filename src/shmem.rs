//! What the shared-memory modules (`limiter`, `usage`) have in common: whether the library was
//! preloaded (shared memory exists only then), and the declaration of a table split into
//! LWLock-protected partitions.

use pgrx::pg_sys;

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
