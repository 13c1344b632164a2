//! What pg_apikey's shared memory holds for this database: its region, its worker, how full its
//! usage slots and credit balances are. Administrators only.

use pg_apikey_core::errors::ApiError;
use pgrx::prelude::*;

use crate::errors::raise;
use crate::shmem::regions;

/// This database's region of shared memory (NULL without one: not preloaded, or every region
/// taken), the process id of its worker (NULL while none runs), the usage slots and credit
/// balances in use and their capacity, and the usage events dropped.
#[allow(clippy::type_complexity)]
#[pg_extern(volatile, parallel_restricted)]
fn shared_memory_stats() -> TableIterator<
    'static,
    (
        name!(region, Option<i32>),
        name!(worker_pid, Option<i32>),
        name!(usage_slots_used, i64),
        name!(usage_slots, i64),
        name!(balances_held, i64),
        name!(balances, i64),
        name!(usage_dropped, i64),
    ),
> {
    if !crate::admin::caller_is_admin() {
        raise(ApiError::AdminOnly("read shared memory statistics"));
    }
    let region = crate::shmem::preloaded().then(regions::mine).flatten();
    let used = region
        .and_then(|r| r.usage(|p| (p.slots.iter().filter(|s| s.db != 0).count(), p.dropped)))
        .unwrap_or((0, regions::unplaced_if_superuser()));
    let held = region
        .and_then(|r| r.credits(|p| p.balances.iter().filter(|b| b.db != 0).count()))
        .unwrap_or(0);
    TableIterator::once((
        region.map(|r| r.index as i32),
        region.and_then(|r| r.worker_pid()),
        used.0 as i64,
        regions::USAGE_SLOTS as i64,
        held as i64,
        regions::CREDIT_SLOTS as i64,
        used.1.min(i64::MAX as u64) as i64,
    ))
}
