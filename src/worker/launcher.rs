//! The launcher: one background worker, registered while preloading, that starts the worker of
//! every database where pg_apikey is installed, with nothing to configure. At start it visits
//! every database that accepts connections (a short-lived worker looks for the extension and
//! exits if it is not there); afterwards it starts a database's worker when a backend of that
//! database claims a region (its first use of the extension, or `CREATE EXTENSION`), restarts
//! workers that exit, visits databases created since, and gives back the regions of dropped
//! databases. It connects to no database: `pg_database` is a shared catalog.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use pgrx::bgworkers::{
    BackgroundWorker, BackgroundWorkerBuilder, BackgroundWorkerStatus, BgWorkerStartTime,
    DynamicBackgroundWorker, SignalWakeFlags,
};
use pgrx::pg_sys;
use pgrx::prelude::*;

use crate::shmem::regions;

/// How often the launcher looks at `pg_database` when nothing wakes it.
const NAPTIME: Duration = Duration::from_secs(5);
/// Databases visited at once while looking for the extension.
const VISITS_AT_ONCE: usize = 2;

pub fn register() {
    BackgroundWorkerBuilder::new("pg_apikey launcher")
        .set_type("pg_apikey launcher")
        .set_library("pg_apikey")
        .set_function("pg_apikey_launcher")
        .enable_spi_access()
        // On a hot standby too: its workers lease credits from the primary.
        .set_start_time(BgWorkerStartTime::ConsistentState)
        .set_restart_time(Some(Duration::from_secs(5)))
        .load();
}

/// Every database: (OID, accepts connections). One whose DROP was interrupted (datconnlimit -2)
/// counts as gone.
fn databases() -> Vec<(u32, bool)> {
    BackgroundWorker::transaction(|| {
        let mut out = Vec::new();
        // SAFETY: a catalog heap scan of the shared catalog pg_database inside a transaction,
        // as Postgres' own autovacuum launcher does; each tuple's fixed part is a
        // FormData_pg_database, read before the next heap_getnext.
        unsafe {
            let rel = pg_sys::table_open(
                pg_sys::DatabaseRelationId,
                pg_sys::AccessShareLock as pg_sys::LOCKMODE,
            );
            let scan = pg_sys::table_beginscan_catalog(rel, 0, std::ptr::null_mut());
            loop {
                let tuple = pg_sys::heap_getnext(scan, pg_sys::ScanDirection::ForwardScanDirection);
                if tuple.is_null() {
                    break;
                }
                let form = &*pg_sys::heap_tuple_get_struct::<pg_sys::FormData_pg_database>(tuple);
                if form.datconnlimit != -2 {
                    out.push((u32::from(form.oid), form.datallowconn));
                }
            }
            pg_sys::table_endscan(scan);
            pg_sys::table_close(rel, pg_sys::AccessShareLock as pg_sys::LOCKMODE);
        }
        out
    })
}

#[derive(Default)]
struct Launcher {
    running: HashMap<u32, (DynamicBackgroundWorker, Instant)>,
    /// Databases visited where the extension is not installed.
    absent: HashSet<u32>,
    /// When a database's worker last started, and when it may start again.
    started: HashMap<u32, Instant>,
    not_before: HashMap<u32, Instant>,
    /// Quick exits in a row, per database (a worker that fails at once waits longer each time).
    failures: HashMap<u32, u32>,
    /// Databases with a region that the last scan of pg_database did not find.
    missing: HashSet<u32>,
    complained: Option<Instant>,
}

impl Launcher {
    fn tick(&mut self) {
        let now = Instant::now();
        let mut exited = Vec::new();
        self.running
            .retain(|&db, (handle, since)| match handle.pid() {
                Ok(_) | Err(BackgroundWorkerStatus::NotYetStarted) => true,
                Err(_) => {
                    exited.push((db, *since));
                    false
                }
            });
        for (db, since) in exited {
            let Some(region) = regions::of_database(db) else {
                // It found no extension (or no key) there, or gave its region back after a
                // DROP EXTENSION: nothing to start until a backend there claims a region.
                self.absent.insert(db);
                self.failures.remove(&db);
                continue;
            };
            if region.take_clean_exit() {
                // Asked to leave (a statement needed the database, SIGTERM, making way).
                self.failures.remove(&db);
                self.not_before.remove(&db);
                continue;
            }
            // A worker that exits soon after starting again and again (say, it fails at once)
            // waits 1, 2, 4 … 60 s; the first such exit (a terminated worker) restarts at once.
            let quick = since.elapsed() < Duration::from_secs(10);
            let n = if quick {
                self.failures.get(&db).copied().unwrap_or(0) + 1
            } else {
                0
            };
            self.failures.insert(db, n);
            let wait = if n == 0 {
                0
            } else {
                (1u64 << n.min(6)).min(60)
            };
            self.not_before.insert(db, now + Duration::from_secs(wait));
        }

        let all = databases();
        // Only a database that no longer exists gives its region back, and only when two scans
        // in a row miss it (one created and first used between a scan and this loop is not
        // gone). One that merely stopped accepting connections keeps its region, its backends
        // and its worker.
        let mut missing = HashSet::new();
        for r in regions::claimed() {
            let db = r.database();
            if !all.iter().any(|(d, _)| *d == db) {
                if self.missing.contains(&db) {
                    super::release(r);
                } else {
                    missing.insert(db);
                }
            }
        }
        self.missing = missing;
        // Workers go where the extension is in use (a region: connecting even if the database
        // is closed to new connections) and visits where it may be installed (open ones).
        let live: Vec<u32> = all
            .iter()
            .filter(|(db, open)| *open || regions::of_database(*db).is_some())
            .map(|(db, _)| *db)
            .collect();
        self.absent.retain(|db| live.contains(db));

        // Databases with a region first (the extension is in use there), then visits; among
        // each, the one whose worker started longest ago first, so that when worker slots are
        // short, idle workers make way in turn.
        let mut wanted: Vec<(bool, Option<Instant>, u32)> = live
            .iter()
            .copied()
            .filter(|db| !self.running.contains_key(db) && !regions::paused(*db))
            .filter(|db| self.not_before.get(db).is_none_or(|t| *t <= now))
            .filter_map(|db| {
                let claimed = regions::of_database(db).is_some();
                if claimed {
                    self.absent.remove(&db);
                }
                (claimed || !self.absent.contains(&db))
                    .then(|| (!claimed, self.started.get(&db).copied(), db))
            })
            .collect();
        wanted.sort();
        let mut visits = self
            .running
            .keys()
            .filter(|db| regions::of_database(**db).is_none())
            .count();
        let mut starved = false;
        for (visit, _, db) in wanted {
            if visit && visits >= VISITS_AT_ONCE {
                continue;
            }
            match super::start(db) {
                Some(handle) => {
                    self.running.insert(db, (handle, now));
                    self.started.insert(db, now);
                    visits += usize::from(visit);
                }
                None => {
                    starved = !visit || starved;
                    self.complain_no_slot();
                    break;
                }
            }
        }
        regions::set_starved(starved);
    }

    /// How long to sleep: until the next timed restart, at most NAPTIME.
    fn nap(&self) -> Duration {
        let now = Instant::now();
        self.not_before
            .values()
            .filter(|t| **t > now)
            .map(|t| *t - now)
            .min()
            .map_or(NAPTIME, |d| d.min(NAPTIME))
    }

    fn complain_no_slot(&mut self) {
        if self
            .complained
            .is_some_and(|t| t.elapsed() < Duration::from_secs(60))
        {
            return;
        }
        self.complained = Some(Instant::now());
        pgrx::warning!(
            "pg_apikey launcher: no background worker slot for a database's worker; idle workers take turns meanwhile. Raise max_worker_processes (restart needed) to give each database its own."
        );
    }
}

#[pg_guard]
#[unsafe(no_mangle)]
pub extern "C-unwind" fn pg_apikey_launcher(_arg: pg_sys::Datum) {
    BackgroundWorker::attach_signal_handlers(SignalWakeFlags::SIGHUP | SignalWakeFlags::SIGTERM);
    // No database: pg_database is shared. Its own settings are pinned like a worker's.
    BackgroundWorker::connect_worker_to_spi(None, None);
    regions::set_launcher();
    let mut launcher = Launcher::default();
    loop {
        launcher.tick();
        if !BackgroundWorker::wait_latch(Some(launcher.nap())) {
            break;
        }
        if BackgroundWorker::sighup_received() {
            // SAFETY: rereads postgresql.conf, as every process does on SIGHUP.
            unsafe { pg_sys::ProcessConfigFile(pg_sys::GucContext::PGC_SIGHUP) };
        }
    }
}
