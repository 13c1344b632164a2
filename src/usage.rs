//! Last-used times and usage counts without a write on the request path.
//!
//! Every verify/authenticate (and every refusal where the key is known) bumps a slot in shared
//! memory: one LWLock'd probe, no table write, so it works in READ ONLY transactions and on a
//! standby. A background worker per database (`worker`; listed in `apikey.usage_databases`, as
//! pg_cron lists its database) flushes the slots every `apikey.usage_flush_interval`: one transaction writes
//! `apikey.keys.last_used_at` and adds the counts to `apikey.usage` (one row per key and minute),
//! so a key used 10,000 times between flushes costs one row write. Counts are subtracted from the
//! slots only after that transaction commits: a failed flush loses nothing and is retried.
//!
//! Loss bound: a crash loses at most one flush interval of counts (shared memory is rebuilt); a
//! clean shutdown flushes first (the worker flushes on SIGTERM). Keys are never lost: they live in
//! tables. On a standby the worker does not write and `apikey.usage_live` shows memory.

use std::sync::atomic::{AtomicU64, Ordering};

use pg_apikey_core::errors::ApiError;
use pg_apikey_core::usage_table::{self, Slot, KINDS};
use pgrx::atomics::PgAtomic;
use pgrx::bgworkers::BackgroundWorker;
use pgrx::lwlock::PgLwLock;
use pgrx::pg_sys;
use pgrx::prelude::*;
use pgrx::shmem::PGRXSharedMemory;

use crate::errors::raise;
use crate::gucs;

/// Keys with counts waiting for the next flush, per database. pgrx builds each partition's
/// initial value on the postmaster's stack, in a chain of startup hooks: a larger table
/// overflowed it in debug builds. A busy database shortens apikey.usage_flush_interval instead.
const SLOTS: usize = 1024;

pub use pg_apikey_core::usage_table::Event;

/// One database's share of the table: each database listed in `apikey.usage_databases` owns one
/// partition, so a database whose usage is never flushed cannot pin slots another one needs.
#[derive(Clone, Copy)]
#[repr(C)]
struct Part {
    slots: [Slot; SLOTS],
    /// Events that found every slot pending (a flush is late or failing, or a standby).
    dropped: u64,
}

// SAFETY: plain #[repr(C)] values with no pointers; every bit pattern is valid.
unsafe impl PGRXSharedMemory for Part {}

crate::shmem::partitioned_table!(
    TABLE,
    init_parts,
    Part,
    Part {
        slots: [Slot::FREE; SLOTS],
        dropped: 0
    },
    [
        U0 = c"pg_apikey_usage_0",
        U1 = c"pg_apikey_usage_1",
        U2 = c"pg_apikey_usage_2",
        U3 = c"pg_apikey_usage_3",
        U4 = c"pg_apikey_usage_4",
        U5 = c"pg_apikey_usage_5",
        U6 = c"pg_apikey_usage_6",
        U7 = c"pg_apikey_usage_7",
    ]
);

// SAFETY: const construction of a named shared-memory atomic, registered in init().
static UNLISTED_DROPPED: PgAtomic<AtomicU64> =
    unsafe { PgAtomic::new(c"pg_apikey_usage_unlisted") };

pub fn init() {
    if !crate::shmem::preloaded() {
        return;
    }
    init_parts();
    pgrx::pg_shmem_init!(UNLISTED_DROPPED);
}

fn current_db() -> u32 {
    // SAFETY: reads a backend global set at connection.
    u32::from(unsafe { pg_sys::MyDatabaseId })
}

fn my_part() -> Option<&'static PgLwLock<Part>> {
    crate::shmem::db_index().map(|i| TABLE[i])
}

/// Count `event` for key `key_id` of the current database. A no-op without preload or with
/// `apikey.track_usage = off`. Databases without a flush worker record nothing (their counts could
/// never be written) and count the event as dropped; when this database's partition is full of
/// unflushed slots, the event is dropped and counted rather than blocking the request.
pub fn record(key_id: i64, event: Event) {
    if !crate::shmem::preloaded() || !gucs::TRACK_USAGE.get() {
        return;
    }
    let Some(part) = my_part() else {
        UNLISTED_DROPPED.get().fetch_add(1, Ordering::Relaxed);
        return;
    };
    // SAFETY: reads the system clock.
    let now = unsafe { pg_sys::GetCurrentTimestamp() };
    let mut p = part.exclusive();
    if !usage_table::record(&mut p.slots, current_db(), key_id, event, now) {
        p.dropped += 1;
    }
}

/// What this database's slots hold: (key id, last used, counts), pending ones only unless `all`.
fn collect(all: bool) -> Vec<(i64, i64, [u64; KINDS])> {
    match my_part() {
        Some(part) => usage_table::collect(&part.share().slots, current_db(), all),
        None => Vec::new(),
    }
}

/// Subtract what a committed flush wrote.
fn settle(flushed: &[(i64, i64, [u64; KINDS])]) {
    if let Some(part) = my_part() {
        usage_table::settle(&mut part.exclusive().slots, current_db(), flushed);
    }
}

fn pg_epoch_to_timestamptz(us: i64) -> Option<TimestampWithTimeZone> {
    if us == 0 {
        None
    } else {
        TimestampWithTimeZone::try_from(us).ok()
    }
}

/// Write pending usage in one transaction (the worker's share, see `worker`). Returns the keys
/// refused by a limit since the last flush.
pub fn flush() -> Vec<i64> {
    // SAFETY: reads shared recovery state.
    if unsafe { pg_sys::RecoveryInProgress() } {
        return Vec::new();
    }
    let pending = collect(false);
    if pending.is_empty() {
        return Vec::new();
    }
    let column = |k: usize| -> Vec<i64> { pending.iter().map(|p| p.2[k] as i64).collect() };
    let batch = || crate::store::UsageBatch {
        ids: pending.iter().map(|p| p.0).collect(),
        last_used: pending
            .iter()
            .map(|p| pg_epoch_to_timestamptz(p.1))
            .collect(),
        counts: [column(0), column(1), column(2), column(3), column(4)],
    };
    let held = BackgroundWorker::transaction(|| {
        // The worker connected as the bootstrap superuser under the database's own settings,
        // which its owner controls: find the extension by OID and act as its owner with the
        // pinned search_path, exactly as a management function does.
        crate::catalog::installed()?;
        Some(
            crate::store::as_owner(|| crate::store::write_usage(batch()))
                .unwrap_or_else(|_| raise(ApiError::Internal("the usage flush failed"))),
        )
    });
    // The counts are written for every key; a last use whose key row another transaction holds
    // stays pending (settled as "nothing written": flushed_last_used unchanged) for the next
    // flush. A key that no longer exists is settled whole.
    let settled: Vec<_> = match &held {
        Some(ids) => pending
            .iter()
            .map(|&(id, at, counts)| (id, if ids.contains(&id) { 0 } else { at }, counts))
            .collect(),
        None => pending.clone(),
    };
    settle(&settled);
    pending
        .iter()
        .filter(|p| p.2[Event::RateLimited as usize] > 0)
        .map(|p| p.0)
        .collect()
}

/// Usage in shared memory not yet written to tables, for this database: exact last use even
/// between flushes and on a standby. Administrators only (it names every key in use).
#[allow(clippy::type_complexity)]
#[pg_extern(volatile, parallel_restricted)]
fn usage_pending() -> TableIterator<
    'static,
    (
        name!(key_id, i64),
        name!(last_used_at, Option<TimestampWithTimeZone>),
        name!(uses, i64),
        name!(expired, i64),
        name!(revoked, i64),
        name!(rate_limited, i64),
        name!(denied, i64),
    ),
> {
    if !crate::admin::caller_is_admin() {
        raise(ApiError::AdminOnly("read live usage"));
    }
    if !crate::shmem::preloaded() {
        return TableIterator::new(Vec::new());
    }
    let rows: Vec<_> = collect(true)
        .into_iter()
        .map(|(id, at, c)| {
            (
                id,
                pg_epoch_to_timestamptz(at),
                c[0] as i64,
                c[1] as i64,
                c[2] as i64,
                c[3] as i64,
                c[4] as i64,
            )
        })
        .collect();
    TableIterator::new(rows)
}

/// Usage events this database could not record: its partition was full of unflushed counts, or
/// (for a database not in `apikey.usage_databases`) it has no flush worker. Administrators only.
#[pg_extern(volatile, parallel_restricted)]
fn usage_dropped() -> i64 {
    if !crate::admin::caller_is_admin() {
        raise(ApiError::AdminOnly("read usage statistics"));
    }
    if !crate::shmem::preloaded() {
        return 0;
    }
    let n = match my_part() {
        Some(part) => part.share().dropped,
        None => UNLISTED_DROPPED.get().load(Ordering::Relaxed),
    };
    n.min(i64::MAX as u64) as i64
}
