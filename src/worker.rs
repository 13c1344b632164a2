//! The background worker of a database: every `apikey.usage_flush_interval` it writes usage
//! counts, credit balances and queued rehashes, announces the events only it can (expiring keys,
//! low credits, limits hit), and after a server start loads the shared key cache. One worker per
//! database listed in `apikey.usage_databases`, registered while preloading.
//!
//! It connects under the database's own settings, which the database's owner controls, so it
//! sets every session setting it depends on itself (`WORKER_SETTINGS`) and acts as the extension
//! owner with the pinned search_path, like every management function.

use std::cell::Cell;
use std::time::Duration;

use pgrx::bgworkers::{BackgroundWorker, BackgroundWorkerBuilder, SignalWakeFlags};
use pgrx::pg_sys;
use pgrx::prelude::*;

use crate::gucs;
use crate::shmem::MAX_WORKERS;
use crate::usage::flush;

/// Register one worker per listed database. Called from `_PG_init` while preloading.
pub fn init() {
    if !crate::shmem::preloaded() {
        return;
    }
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
