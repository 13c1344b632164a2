//! The worker of a database: every `apikey.usage_flush_interval` it writes usage counts, credit
//! balances and queued rehashes, announces the events only it can (expiring keys, low credits,
//! limits hit), and loads the shared key cache after a server start or a bulk load. The launcher
//! (`launcher`) starts one in every database where the extension is installed; `ddl` stops it
//! before statements that need its database free of connections.
//!
//! It connects under the database's own settings, which the database's owner controls, so it
//! sets every session setting it depends on itself (`WORKER_SETTINGS`) and acts as the extension
//! owner with the pinned search_path, like every management function.
//!
//! Nothing can block it: every step runs in a transaction of its own (credits apart from usage),
//! row locks others hold are skipped (`SKIP LOCKED`, retried at the next flush) and anything else
//! it would wait on times out (`lock_timeout`); a failed step is logged at most once a minute and
//! retried, and the others go on.

pub mod ddl;
pub mod launcher;
mod leases;
mod link;

use std::cell::Cell;
use std::time::{Duration, Instant};

use pgrx::bgworkers::{
    BackgroundWorker, BackgroundWorkerBuilder, BgWorkerStartTime, DynamicBackgroundWorker,
    SignalWakeFlags,
};
use pgrx::pg_sys;
use pgrx::prelude::*;

use crate::gucs;
use crate::shmem::regions::{self, Region};

pub fn init() {
    if !crate::shmem::preloaded() {
        return;
    }
    launcher::register();
    ddl::init();
}

/// Start the worker of database `db`, reporting its start and exit to this process.
pub fn start(db: u32) -> Option<DynamicBackgroundWorker> {
    // SAFETY: reads this process' id.
    let me = unsafe { pg_sys::MyProcPid };
    BackgroundWorkerBuilder::new(&format!("pg_apikey worker for database {db}"))
        .set_type("pg_apikey worker")
        .set_library("pg_apikey")
        .set_function("pg_apikey_worker")
        .set_argument(Some(pg_sys::Datum::from(db)))
        .enable_spi_access()
        // On a hot standby too: it leases credits from the primary.
        .set_start_time(BgWorkerStartTime::ConsistentState)
        .set_notify_pid(me)
        .load_dynamic()
        .ok()
}

/// Give a region back (its database or its extension is gone): the shared key cache's chunks,
/// then usage, balances and queued rehashes.
pub fn release(region: Region) {
    crate::sharedkeys::release(region);
    region.release();
}

/// Run `f` (which may start transactions of its own), catching an ERROR it raises: the failed
/// transaction is aborted (which also releases LWLocks and resets memory contexts) so the worker
/// can start the next one, and the error's message is returned. Between transactions abort does
/// nothing, so LWLocks are released here too.
fn caught<R>(f: impl FnOnce() -> R) -> Result<R, String> {
    PgTryBuilder::new(std::panic::AssertUnwindSafe(move || Ok(f())))
        .catch_others(|e| {
            // SAFETY: see above: the failed transaction (if any) is aborted, nothing else.
            unsafe {
                pg_sys::AbortCurrentTransaction();
                pg_sys::LWLockReleaseAll();
            }
            let message = match &e {
                pg_sys::panic::CaughtError::PostgresError(r)
                | pg_sys::panic::CaughtError::ErrorReport(r)
                | pg_sys::panic::CaughtError::RustPanic { ereport: r, .. } => {
                    r.message().to_owned()
                }
            };
            Err(message)
        })
        .execute()
}

/// Run one step of a flush (which starts its own transactions). An error (a lock that timed
/// out, a database made read-only, a full disk) aborts that step only; it is logged at most once
/// a minute, with how many were not, and the step runs again at the next flush. The step's own
/// state is dropped or rebuilt after an error (each step starts from shared memory and the
/// tables), so nothing half-changed is observed.
fn step<R>(name: &'static str, f: impl FnOnce() -> R) -> Option<R> {
    caught(f).map_err(|message| complain(name, &message)).ok()
}

thread_local! {
    /// When this worker last logged a failed step, and how many it did not log since.
    static COMPLAINED: Cell<(Option<Instant>, u64)> = const { Cell::new((None, 0)) };
}

fn complain(step: &str, message: &str) {
    let (last, quiet) = COMPLAINED.get();
    if last.is_some_and(|t| t.elapsed() < Duration::from_secs(60)) {
        COMPLAINED.set((last, quiet + 1));
        return;
    }
    COMPLAINED.set((Some(Instant::now()), 0));
    // Only the message: a DETAIL could carry a row's values.
    pgrx::warning!(
        "pg_apikey worker: {step} failed, retrying at the next flush: {message}{}",
        if quiet > 0 {
            format!(" ({quiet} more failures since the last report)")
        } else {
            String::new()
        }
    );
}

/// How often a standby's worker looks at its leases.
const LEASE_TICK: Duration = Duration::from_millis(200);

/// What a flush found.
enum Flushed {
    /// Done; true if there was anything to write.
    Done(bool),
    /// The extension is no longer installed here.
    Gone,
    /// SIGTERM arrived while loading the shared key cache.
    Stopped,
}

/// One flush: usage, credit balances (each in its own transaction), rehashes queued by
/// read-only verifies, then the events only the worker announces and the shared key cache's
/// loads.
fn flush_all(region: Region, warm: &mut Prewarm) -> Flushed {
    let busy = region.busy();
    let limited = step("the usage flush", move || crate::usage::flush(region));
    let credited = step("the credits flush", move || crate::credits::flush(region));
    // apikey.stat's flush lag: the time since both were last written in full.
    if limited.is_some() && credited.is_some() {
        region.note_flush();
    }
    let (limited, credited) = (limited.unwrap_or_default(), credited.unwrap_or_default());
    if crate::shmem::on_standby() {
        return Flushed::Done(busy);
    }
    step("queued rehashes", move || {
        crate::pending::flush_rehashes(region)
    });
    let installed = step("the event sweep", move || {
        BackgroundWorker::transaction(|| {
            let installed = crate::catalog::installed().is_some();
            if installed {
                crate::events::worker_tick(&limited, &credited);
            }
            installed
        })
    });
    if installed == Some(false) {
        return Flushed::Gone;
    }
    if !warm.load(region) {
        return Flushed::Stopped;
    }
    Flushed::Done(busy)
}

/// When this worker loads the shared key cache: once after it starts on an empty region (a
/// server start), and again whenever the keys table grew to more than twice the number of keys
/// it last loaded (a bulk load), checked at every flush from the statistics' live-row count (one
/// cheap read).
struct Prewarm {
    loaded_for: Option<i64>,
}

impl Prewarm {
    /// False if SIGTERM stopped the load.
    fn load(&mut self, region: Region) -> bool {
        let first = self.loaded_for.is_none();
        let last = self.loaded_for.unwrap_or(0);
        let plan = step("the shared key cache's load", move || {
            BackgroundWorker::transaction(|| {
                crate::catalog::installed()?;
                let live = crate::store::as_owner(crate::store::live_key_estimate);
                let due = if first {
                    crate::sharedkeys::region_is_empty()
                } else {
                    live > 2 * last.max(50)
                };
                Some((
                    live,
                    if due {
                        crate::sharedkeys::prewarm_candidates()
                    } else {
                        Vec::new()
                    },
                ))
            })
        })
        .flatten();
        let Some((live, digests)) = plan else {
            return true;
        };
        self.loaded_for = Some(if first || !digests.is_empty() {
            live
        } else {
            last
        });
        // In batches of their own transactions (so no lock is held for long), with a usage
        // flush between them.
        for batch in digests.chunks(10_000) {
            if BackgroundWorker::sigterm_received() {
                return false;
            }
            let batch = batch.to_vec();
            step("the shared key cache's load", move || {
                BackgroundWorker::transaction(|| {
                    if crate::catalog::installed().is_some() {
                        crate::sharedkeys::prewarm_digests(&batch);
                    }
                })
            });
            step("the usage flush", move || crate::usage::flush(region));
        }
        true
    }
}

/// Session settings the worker's work depends on, and the values it needs. The connection took
/// the database's own settings (`ALTER DATABASE … SET`, which its owner controls, and
/// `ALTER ROLE … IN DATABASE`): any of these could stop every flush (a read-only default, a
/// tiny statement timeout) or change what the flush does (replica mode skips the keys table's
/// triggers). They are overridden here, for the whole life of the process.
const WORKER_SETTINGS: [(&std::ffi::CStr, &std::ffi::CStr); 12] = [
    (c"default_transaction_read_only", c"off"),
    (c"default_transaction_isolation", c"read committed"),
    (c"default_transaction_deferrable", c"off"),
    (c"statement_timeout", c"0"),
    // Row locks others hold are skipped; anything else the worker would wait on fails the step
    // quickly instead (retried at the next flush).
    (c"lock_timeout", c"1s"),
    (c"idle_in_transaction_session_timeout", c"0"),
    (c"session_replication_role", c"origin"),
    (c"search_path", c"pg_catalog, pg_temp"),
    (c"synchronous_commit", c"on"),
    (c"transaction_timeout", c"0"),
    (c"row_security", c"on"),
    // A failed step is caught and retried; exit_on_error would turn it into the worker's exit.
    (c"exit_on_error", c"off"),
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

/// Clears this worker from its region when it exits, however it exits.
#[pg_guard]
unsafe extern "C-unwind" fn forget_me(_code: i32, _arg: pg_sys::Datum) {
    // SAFETY: reads this process' id.
    regions::forget_worker(unsafe { pg_sys::MyProcPid });
}

/// The worker's main, for database `arg` (an OID). Flushes a last time and exits on SIGTERM,
/// when its database is about to be dropped or copied (`ddl`), when the extension was dropped
/// (giving its region back), or when it is idle while another database waits for a worker slot.
#[pg_guard]
#[unsafe(no_mangle)]
pub extern "C-unwind" fn pg_apikey_worker(arg: pg_sys::Datum) {
    BackgroundWorker::attach_signal_handlers(SignalWakeFlags::SIGHUP | SignalWakeFlags::SIGTERM);
    let db = arg.value() as u32;
    // SAFETY: connects this worker to database `db` as the bootstrap superuser, once, before
    // any transaction; BYPASS_ALLOWCONN so a database closed to new connections (whose backends
    // still spend) keeps its worker.
    unsafe {
        pg_sys::BackgroundWorkerInitializeConnectionByOid(
            pg_sys::Oid::from(db),
            pg_sys::InvalidOid,
            pg_sys::BGWORKER_BYPASS_ALLOWCONN,
        )
    };
    pin_session_settings();
    let installed = || {
        step("the start", || {
            BackgroundWorker::transaction(|| crate::catalog::installed().is_some())
        })
    };
    let mut found = installed();
    // A region without the extension: a CREATE EXTENSION claims its region before it commits,
    // so look again for a while before taking it for one left behind (a DROP EXTENSION, a
    // rolled-back CREATE) and giving it back.
    let mut looks = 0;
    while found == Some(false) && regions::of_database(db).is_some() && looks < 10 {
        if !BackgroundWorker::wait_latch(Some(Duration::from_secs(1))) {
            return;
        }
        looks += 1;
        found = installed();
    }
    if found != Some(true) {
        if found == Some(false) {
            if let Some(r) = regions::of_database(db) {
                release(r);
            }
        }
        return;
    }
    // A database's region is claimed by its first use; after a start, by this visit only if the
    // database has keys (so copies of a database nobody uses take no region and no worker).
    let has_keys = || {
        step("the start", || {
            BackgroundWorker::transaction(|| {
                crate::store::as_owner(crate::store::live_key_estimate)
            })
        })
        .unwrap_or(0)
            > 0
    };
    let region = match regions::of_database(db) {
        Some(_) => regions::mine(),
        None if has_keys() => regions::mine(),
        None => return,
    };
    let Some(region) = region else {
        complain(
            "the start",
            "every region of pg_apikey's shared memory is taken: raise apikey.max_databases",
        );
        return;
    };
    if !region.become_worker() {
        return;
    }
    // SAFETY: registers a static callback run at this process' exit.
    unsafe { pg_sys::before_shmem_exit(Some(forget_me), pg_sys::Datum::from(0)) };
    let mut warm = Prewarm { loaded_for: None };
    let mut idle = 0u32;
    loop {
        let mut interval = Duration::from_millis(gucs::USAGE_FLUSH_INTERVAL.get().max(10) as u64);
        if crate::shmem::on_standby() {
            // A standby renews its leases before they run out (requests wake it sooner).
            interval = interval.min(LEASE_TICK);
        }
        let alive = BackgroundWorker::wait_latch(Some(interval));
        if alive {
            leases::tick(region, false);
        }
        if BackgroundWorker::sighup_received() {
            // SAFETY: rereads postgresql.conf, as every process does on SIGHUP.
            unsafe { pg_sys::ProcessConfigFile(pg_sys::GucContext::PGC_SIGHUP) };
        }
        if !region.is_current() {
            // The region was given back (the launcher found the database gone).
            return;
        }
        match flush_all(region, &mut warm) {
            Flushed::Gone => {
                release(region);
                return;
            }
            Flushed::Stopped => {
                leases::tick(region, true);
                region.note_clean_exit();
                return;
            }
            Flushed::Done(busy) => idle = if busy { 0 } else { idle + 1 },
        }
        let make_way = regions::starved() && idle >= 3;
        if !alive || regions::paused(db) || make_way {
            // What this standby holds goes back to the primary before the worker exits.
            leases::tick(region, true);
            region.note_clean_exit();
            return;
        }
    }
}
