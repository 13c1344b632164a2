//! Last-used times and usage counts without a write on the request path.
//!
//! Every verify/authenticate (and every refusal where the key is known) bumps a slot in shared
//! memory: one LWLock'd probe, no table write, so it works in READ ONLY transactions and on a
//! standby. A background worker per database (listed in `apikey.usage_databases`, as pg_cron lists
//! its database) flushes the slots every `apikey.usage_flush_interval`: one transaction writes
//! `apikey.keys.last_used_at` and adds the counts to `apikey.usage` (one row per key and minute),
//! so a key used 10,000 times between flushes costs one row write. Counts are subtracted from the
//! slots only after that transaction commits: a failed flush loses nothing and is retried.
//!
//! Loss bound: a crash loses at most one flush interval of counts (shared memory is rebuilt); a
//! clean shutdown flushes first (the worker flushes on SIGTERM). Keys are never lost: they live in
//! tables. On a standby the worker does not write and `apikey.usage_live` shows memory.

use std::cell::Cell;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use pg_apikey_core::errors::ApiError;
use pg_apikey_core::usage_table::{self, Slot, KINDS};
use pgrx::atomics::PgAtomic;
use pgrx::bgworkers::{BackgroundWorker, BackgroundWorkerBuilder, SignalWakeFlags};
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

use crate::shmem::MAX_WORKERS;

pub fn init() {
    if !crate::shmem::preloaded() {
        return;
    }
    init_parts();
    pgrx::pg_shmem_init!(UNLISTED_DROPPED);
    for (i, db) in gucs::usage_databases()
        .into_iter()
        .take(MAX_WORKERS)
        .enumerate()
    {
        BackgroundWorkerBuilder::new(&format!("pg_apikey usage flush ({db})"))
            .set_type("pg_apikey usage flush")
            .set_library("pg_apikey")
            .set_function("pg_apikey_usage_worker")
            .set_argument(Some(pg_sys::Datum::from(i)))
            .enable_spi_access()
            .set_restart_time(Some(Duration::from_secs(1)))
            .load();
    }
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

/// Write pending usage in one transaction. Returns the keys refused by a limit since the last
/// flush.
fn flush() -> Vec<i64> {
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
    BackgroundWorker::transaction(|| {
        // The worker connected as the bootstrap superuser under the database's own settings,
        // which its owner controls: find the extension by OID and act as its owner with the
        // pinned search_path, exactly as a management function does.
        if crate::catalog::installed().is_none() {
            return;
        }
        crate::store::as_owner(|| crate::store::write_usage(batch()))
            .unwrap_or_else(|_| raise(ApiError::Internal("the usage flush failed")))
    });
    settle(&pending);
    pending
        .iter()
        .filter(|p| p.2[Event::RateLimited as usize] > 0)
        .map(|p| p.0)
        .collect()
}

/// One flush: usage, credit balances, rehashes queued by read-only verifies, then the events
/// only the worker announces (and, the first time, the shared key cache's load). False when
/// SIGTERM arrived during that load.
fn flush_all() -> bool {
    let limited = flush();
    let credited = crate::credits::flush();
    // SAFETY: reads shared recovery state.
    if unsafe { pg_sys::RecoveryInProgress() } {
        return true;
    }
    crate::pending::flush_rehashes();
    BackgroundWorker::transaction(|| {
        if crate::catalog::installed().is_some() {
            crate::events::worker_tick(&limited, &credited);
        }
    });
    PREWARMED.replace(true) || prewarm_shared_keys()
}

/// Load the shared key cache after a server start, in batches of their own transactions (so no
/// lock is held for long) with a usage flush between them. False if SIGTERM stopped it.
fn prewarm_shared_keys() -> bool {
    let digests = BackgroundWorker::transaction(|| {
        if crate::catalog::installed().is_some() && crate::sharedkeys::region_is_empty() {
            crate::sharedkeys::prewarm_candidates()
        } else {
            Vec::new()
        }
    });
    for batch in digests.chunks(10_000) {
        if BackgroundWorker::sigterm_received() {
            return false;
        }
        BackgroundWorker::transaction(|| {
            if crate::catalog::installed().is_some() {
                crate::sharedkeys::prewarm_digests(batch);
            }
        });
        flush();
    }
    true
}

thread_local! {
    /// Did this worker process load the shared key cache yet (see prewarm_shared_keys)?
    static PREWARMED: Cell<bool> = const { Cell::new(false) };
}

/// Session settings the worker's work depends on, and the values it needs. The connection took
/// the database's own settings (`ALTER DATABASE … SET`, which its owner controls, and
/// `ALTER ROLE … IN DATABASE`): any of these could stop every flush (a read-only default, a
/// tiny statement timeout) or change what the flush does (replica mode skips the keys table's
/// triggers). They are overridden here, for the whole life of the process.
const WORKER_SETTINGS: [(&std::ffi::CStr, &std::ffi::CStr); 11] = [
    (c"default_transaction_read_only", c"off"),
    (c"default_transaction_isolation", c"read committed"),
    (c"default_transaction_deferrable", c"off"),
    (c"statement_timeout", c"0"),
    (c"lock_timeout", c"0"),
    (c"idle_in_transaction_session_timeout", c"0"),
    (c"session_replication_role", c"origin"),
    (c"search_path", c"pg_catalog, pg_temp"),
    (c"synchronous_commit", c"on"),
    (c"transaction_timeout", c"0"),
    (c"row_security", c"on"),
];

fn pin_session_settings() {
    for (name, value) in WORKER_SETTINGS {
        // SAFETY: GetConfigOption(missing_ok) only tells whether this server has the setting
        // (transaction_timeout exists from PostgreSQL 17); set_config_option at PGC_S_OVERRIDE
        // outranks every source a database or role setting comes from. Both strings are valid,
        // NUL-terminated constants.
        unsafe {
            if pg_sys::GetConfigOption(name.as_ptr(), true, false).is_null() {
                continue;
            }
            pg_sys::set_config_option(
                name.as_ptr(),
                value.as_ptr(),
                pg_sys::GucContext::PGC_SUSET,
                pg_sys::GucSource::PGC_S_OVERRIDE,
                pg_sys::GucAction::GUC_ACTION_SET,
                true,
                0,
                false,
            );
        }
    }
}

/// The flush worker's main. Exits with code 1 on SIGTERM (after a last flush) so the postmaster
/// restarts it, unless the server itself is shutting down.
#[pg_guard]
#[unsafe(no_mangle)]
pub extern "C-unwind" fn pg_apikey_usage_worker(arg: pg_sys::Datum) {
    BackgroundWorker::attach_signal_handlers(SignalWakeFlags::SIGHUP | SignalWakeFlags::SIGTERM);
    let index = arg.value();
    let Some(db) = gucs::usage_databases().into_iter().nth(index) else {
        return;
    };
    BackgroundWorker::connect_worker_to_spi(Some(&db), None);
    pin_session_settings();
    // The worker flushes the partition of the database it serves (it knows its index; looking
    // the name up would need a transaction).
    crate::shmem::set_db_index(index);
    loop {
        let interval = Duration::from_millis(gucs::USAGE_FLUSH_INTERVAL.get().max(10) as u64);
        let alive = BackgroundWorker::wait_latch(Some(interval));
        if BackgroundWorker::sighup_received() {
            // SAFETY: rereads postgresql.conf, as every process does on SIGHUP.
            unsafe { pg_sys::ProcessConfigFile(pg_sys::GucContext::PGC_SIGHUP) };
        }
        let carry_on = flush_all();
        if !alive || !carry_on {
            break;
        }
    }
    // SAFETY: ends this worker process; the postmaster restarts it after set_restart_time.
    unsafe { pg_sys::proc_exit(1) };
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
