//! What pg_apikey's shared memory holds: for this database its region, its worker, how full its
//! usage slots and credit balances are (administrators only); and the cumulative statistics of
//! `apikey.stat`.

use pg_apikey_core::errors::ApiError;
use pg_apikey_core::stat::Counter;
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
        .and_then(|r| r.usage_fill())
        .unwrap_or((0, regions::unplaced_if_superuser()));
    let held = region.and_then(|r| r.balances_held()).unwrap_or(0);
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

/// The rows of `apikey.stat`: one per database with a region, each database's cumulative
/// counts (`pg_apikey_core::stat`) and how full its shared tables are. Members of
/// `pg_read_all_stats` (and superusers) see every database, as in `pg_stat_database`; this
/// database's pg_apikey administrators see its row; anyone else sees nothing.
#[allow(clippy::type_complexity)]
#[pg_extern(volatile, parallel_restricted)]
fn stat_rows() -> TableIterator<
    'static,
    (
        name!(datid, pg_sys::Oid),
        name!(verifications, i64),
        name!(refused_invalid, i64),
        name!(refused_malformed, i64),
        name!(refused_expired, i64),
        name!(refused_disabled, i64),
        name!(refused_address, i64),
        name!(refused_rate_limited, i64),
        name!(refused_credits, i64),
        name!(refused_scope, i64),
        name!(refused_other, i64),
        name!(backend_cache_hits, i64),
        name!(shared_cache_hits, i64),
        name!(cache_misses, i64),
        name!(usage_slots_used, i64),
        name!(usage_slots, i64),
        name!(usage_dropped, i64),
        name!(balances_held, i64),
        name!(balances, i64),
        name!(limiter_buckets_used, i64),
        name!(limiter_buckets, i64),
        name!(worker_pid, Option<i32>),
        name!(last_flush, Option<TimestampWithTimeZone>),
        name!(stats_reset, Option<TimestampWithTimeZone>),
    ),
> {
    let here = crate::shmem::database();
    let regions: Vec<regions::Region> = if reads_all_stats() {
        regions::claimed()
    } else if crate::admin::caller_is_admin() {
        regions::of_database(here).into_iter().collect()
    } else {
        Vec::new()
    };
    let rows: Vec<_> = regions
        .into_iter()
        .filter_map(|r| {
            let stats = r.stats()?;
            let (used, dropped) = r.usage_fill().unwrap_or_default();
            let held = r.balances_held().unwrap_or(0);
            let (buckets_used, buckets) = crate::limiter::buckets_of(r.database());
            let n = |c: Counter| stats.counters[c.index()].min(i64::MAX as u64) as i64;
            Some((
                pg_sys::Oid::from(r.database()),
                n(Counter::Verifications),
                n(Counter::RefusedInvalid),
                n(Counter::RefusedMalformed),
                n(Counter::RefusedExpired),
                n(Counter::RefusedDisabled),
                n(Counter::RefusedAddress),
                n(Counter::RefusedRateLimited),
                n(Counter::RefusedCredits),
                n(Counter::RefusedScope),
                n(Counter::RefusedOther),
                n(Counter::BackendCacheHits),
                n(Counter::SharedCacheHits),
                n(Counter::CacheMisses),
                used as i64,
                regions::USAGE_SLOTS as i64,
                dropped.min(i64::MAX as u64) as i64,
                held as i64,
                regions::CREDIT_SLOTS as i64,
                buckets_used as i64,
                buckets as i64,
                r.worker_pid(),
                stats.flushed_at.and_then(timestamp),
                timestamp(stats.stats_reset),
            ))
        })
        .collect();
    TableIterator::new(rows)
}

/// Zero this database's counters in `apikey.stat` (its `stats_reset` becomes now).
/// Administrators only.
#[pg_extern(volatile, parallel_unsafe)]
fn stat_reset() {
    if !crate::admin::caller_is_admin() {
        raise(ApiError::AdminOnly("reset statistics"));
    }
    let db = crate::shmem::database();
    if let Some(r) = crate::shmem::preloaded()
        .then(|| regions::of_database(db))
        .flatten()
    {
        r.reset_stats();
        // pg_stat_reset is a superuser's; this is any administrator's, so it leaves a trace.
        crate::errors::log_line(format!(
            "pg_apikey: statistics of database {db} reset by role \"{}\"",
            crate::privilege::caller_name()
        ));
    }
}

fn reads_all_stats() -> bool {
    // SAFETY: reads the role-membership cache for the current user.
    unsafe {
        pg_sys::has_privs_of_role(
            pg_sys::GetUserId(),
            pg_sys::Oid::from(pg_sys::ROLE_PG_READ_ALL_STATS),
        )
    }
}

fn timestamp(us: i64) -> Option<TimestampWithTimeZone> {
    // SAFETY: a TimestampTz is µs since the Postgres epoch, which is what the regions store.
    unsafe { TimestampWithTimeZone::from_datum(pg_sys::Datum::from(us), false) }
}
