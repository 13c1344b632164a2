//! Last-used times and usage counts without a write on the request path.
//!
//! Every verify/authenticate (and every refusal where the key is known) bumps a slot in shared
//! memory: one LWLock'd probe, no table write, so it works in READ ONLY transactions and on a
//! standby. The worker of each database (`worker`, started by the launcher) flushes the slots
//! every `apikey.usage_flush_interval`: one transaction writes
//! `apikey.keys.last_used_at` and adds the counts to `apikey.usage` (one row per key and minute),
//! so a key used 10,000 times between flushes costs one row write. Counts are subtracted from the
//! slots only after that transaction commits: a failed flush loses nothing and is retried.
//!
//! Loss bound: a crash loses at most one flush interval of counts (shared memory is rebuilt); a
//! clean shutdown flushes first (the worker flushes on SIGTERM). Keys are never lost: they live in
//! tables. On a standby the worker does not write and `apikey.usage_live` shows memory.

use pg_apikey_core::errors::ApiError;
use pg_apikey_core::usage_table::{self, KINDS};
use pgrx::bgworkers::BackgroundWorker;
use pgrx::prelude::*;

use crate::errors::raise;
use crate::gucs;
use crate::shmem::regions::{self, Region};

pub use pg_apikey_core::usage_table::Event;

/// Count `event` for key `key_id` of the current database. A no-op without preload or with
/// `apikey.track_usage = off`. A database that found no free region (all `apikey.max_databases`
/// taken) records nothing and counts the event as dropped; when this database's slots are all
/// unflushed, the event is dropped and counted rather than blocking the request.
pub fn record(key_id: i64, event: Event) {
    if !crate::shmem::preloaded() || !gucs::TRACK_USAGE.get() {
        return;
    }
    let now = crate::shmem::now_us();
    let db = crate::shmem::database();
    let recorded = regions::mine().and_then(|r| {
        r.usage(|p| {
            if !usage_table::record(&mut p.slots, db, key_id, event, now) {
                p.dropped += 1;
            }
        })
    });
    if recorded.is_none() {
        regions::count_unplaced();
    }
}

/// What this database's slots hold: (key id, last used, counts), pending ones only unless `all`.
fn collect(region: Option<Region>, all: bool) -> Vec<(i64, i64, [u64; KINDS])> {
    region
        .and_then(|r| r.usage(|p| usage_table::collect(&p.slots, crate::shmem::database(), all)))
        .unwrap_or_default()
}

/// Subtract what a committed flush wrote.
fn settle(region: Region, flushed: &[(i64, i64, [u64; KINDS])]) {
    region.usage(|p| usage_table::settle(&mut p.slots, crate::shmem::database(), flushed));
}

fn pg_epoch_to_timestamptz(us: i64) -> Option<TimestampWithTimeZone> {
    if us == 0 {
        None
    } else {
        TimestampWithTimeZone::try_from(us).ok()
    }
}

/// Write pending usage of the worker's region in one transaction (see `worker`). Returns the
/// keys refused by a limit since the last flush.
pub fn flush(region: Region) -> Vec<i64> {
    if crate::shmem::on_standby() {
        return Vec::new();
    }
    let pending = collect(Some(region), false);
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
    settle(region, &settled);
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
    let rows: Vec<_> = collect(regions::mine(), true)
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

/// Usage events this database could not record: its slots were full of unflushed counts, or
/// (for a database that found no free region) it had none. Administrators only.
#[pg_extern(volatile, parallel_restricted)]
fn usage_dropped() -> i64 {
    if !crate::admin::caller_is_admin() {
        raise(ApiError::AdminOnly("read usage statistics"));
    }
    if !crate::shmem::preloaded() {
        return 0;
    }
    let n = regions::mine()
        .and_then(|r| r.usage(|p| p.dropped))
        .unwrap_or_else(regions::unplaced_if_superuser);
    n.min(i64::MAX as u64) as i64
}
