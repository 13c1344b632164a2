//! A standby worker's exchanges with the primary's ledger (`apikey.lease_exchange`): renewals,
//! answers to waiting requests and what goes back, at every tick and whenever a request wakes it.
//!
//! An exchange whose outcome is unknown (the connection broke while it ran) gives nothing back
//! and grants nothing: what it was returning is lost (the primary counts it spent), never held
//! twice. While the primary cannot be reached the standby spends only what it holds, refuses with
//! 57P03 what that does not cover, and tries again at most once a second.

use std::cell::{Cell, RefCell};
use std::time::{Duration, Instant};

use pg_apikey_core::conninfo;
use pg_apikey_core::lease_table::{self, Plan};
use pg_apikey_core::token_leases::{self, Ask as TokenAsk};
use pgrx::bgworkers::BackgroundWorker;
use pgrx::pg_sys;

use super::link::Link;
use crate::shmem::regions::Region;
use crate::shmem::{now_us, on_standby};

/// Set on the primary's side of the connection, over whatever `ALTER DATABASE` or `ALTER ROLE`
/// set there: an exchange must neither be refused (read-only default), nor cut short after its
/// grants were taken (a tiny statement or transaction timeout), nor left waiting (locks, an idle
/// link closed, a commit waiting for a synchronous standby: this very standby, shutting down,
/// would never answer it). From PostgreSQL 17 they travel in the startup packet's `options`,
/// which the primary applies before any statement runs: libpqwalreceiver runs a query of its own
/// right after connecting, which a database's `transaction_timeout` would already cut short. On
/// 15 and 16 (a replication connection, whose `options` libpqwalreceiver replaces) they are SET
/// right after connecting. All are settings any role may set: the ledger role need not be a
/// superuser.
const SESSION: &[(&str, &str)] = &[
    #[cfg(not(any(feature = "pg15", feature = "pg16")))]
    ("transaction_timeout", "0"),
    ("statement_timeout", "10s"),
    ("lock_timeout", "1s"),
    ("idle_in_transaction_session_timeout", "0"),
    ("idle_session_timeout", "0"),
    ("default_transaction_read_only", "off"),
    ("default_transaction_isolation", "read committed"),
    // A superuser ledger role would take on a role a database owner set for the database, and
    // lease as that role (refused, or under its name).
    ("role", "none"),
    ("search_path", "pg_catalog, pg_temp"),
    ("standard_conforming_strings", "on"),
    ("default_transaction_deferrable", "off"),
    ("exit_on_error", "off"),
    ("row_security", "on"),
    // Any role may name libraries (from `$libdir/plugins`) for its sessions to load: one that
    // does not exist would fail every connection of the worker.
    ("local_preload_libraries", ""),
    ("synchronous_commit", "local"),
];
/// Only a superuser may set `session_replication_role`, and only a superuser can have made it
/// anything but `origin` for this database or role: then it is set back (the ledger role is a
/// superuser or the connection fails, closed), else nothing is asked of a plain ledger role.
const ORIGIN: &str = "SELECT pg_catalog.set_config('session_replication_role', 'origin', false) \
    WHERE pg_catalog.current_setting('session_replication_role') OPERATOR(pg_catalog.<>) 'origin'";

/// How long a lease lasts without a renewal; the primary's `apikey.lease_exchange` says the same.
const TTL_US: i64 = 60_000_000;
/// Between failed attempts to reach the primary.
const BACKOFF: Duration = Duration::from_secs(1);

thread_local! {
    static LINK: RefCell<Option<Link>> = const { RefCell::new(None) };
    static RETRY_AT: Cell<Option<Instant>> = const { Cell::new(None) };
    static FORGOTTEN: Cell<bool> = const { Cell::new(false) };
    static DOWN: Cell<bool> = const { Cell::new(false) };
    /// The keys the last exchange asked about.
    static SENT: RefCell<Vec<i64>> = const { RefCell::new(Vec::new()) };
}

/// The conninfo to the primary, with this database named (a quoted value, so any name works).
fn conninfo() -> Result<String, String> {
    let base = match crate::gucs::ledger_conninfo() {
        Some(c) => c,
        None => {
            // SAFETY: reads a setting by its NUL-terminated name; missing_ok.
            let v = unsafe { pg_sys::GetConfigOption(c"primary_conninfo".as_ptr(), true, false) };
            if v.is_null() {
                String::new()
            } else {
                // SAFETY: a NUL-terminated setting value.
                unsafe { std::ffi::CStr::from_ptr(v) }
                    .to_str()
                    .map_err(|_| "primary_conninfo is not valid UTF-8".to_string())?
                    .to_owned()
            }
        }
    };
    if base.trim().is_empty() {
        return Err("no primary_conninfo or apikey.ledger_conninfo to reach the primary".into());
    }
    if base.contains("://") {
        return Err(
            "a connection URI cannot be used: set apikey.ledger_conninfo as keyword = value pairs"
                .into(),
        );
    }
    // SAFETY: the name of this worker's database (palloc'd), read in a transaction.
    let db = BackgroundWorker::transaction(|| unsafe {
        let n = pg_sys::get_database_name(pg_sys::MyDatabaseId);
        (!n.is_null()).then(|| std::ffi::CStr::from_ptr(n).to_str().map(str::to_owned))
    })
    .ok_or("this database has no name")?
    // Never a lossy copy: a name with its invalid bytes replaced is another database's name.
    .map_err(|_| "this database's name is not valid UTF-8".to_string())?;
    // Bounded waits: a primary that vanishes mid-exchange (a dropped network) is noticed within
    // seconds, not at the TCP retransmission timeout.
    let extra = [
        ("dbname", db.as_str()),
        ("application_name", "pg_apikey lease"),
        ("connect_timeout", "2"),
        ("keepalives", "1"),
        ("keepalives_idle", "5"),
        ("keepalives_interval", "2"),
        ("keepalives_count", "2"),
        ("tcp_user_timeout", "10000"),
    ];
    conninfo::with_settings(&base, &extra, SESSION)
        .ok_or_else(|| "the conninfo to the primary is not a list of keyword = value pairs".into())
}

fn request(plan: &Plan, limits: &[TokenAsk]) -> String {
    let limits: Vec<serde_json::Value> = limits
        .iter()
        // The name in hexadecimal: the exchange stays numbers and hex digits, whatever an
        // administrator named the limit and whatever the connection's encoding.
        .map(|a| serde_json::json!([a.key_id, hex::encode(&a.name), a.need, a.want]))
        .collect();
    serde_json::json!({ "asks": plan.asks, "returns": plan.returns, "limits": limits }).to_string()
}

struct Answer {
    granted: Vec<(i64, i64)>,
    ended: Vec<i64>,
    busy: Vec<i64>,
    scarce: Vec<i64>,
    /// Per global limit asked, in order: (tokens granted, µs until the bucket admits more).
    limits: Vec<(i64, i64)>,
}

fn parse(text: &str) -> Option<Answer> {
    let v: serde_json::Value = serde_json::from_str(text).ok()?;
    let pairs = |name: &str| -> Option<Vec<(i64, i64)>> {
        v.get(name)?
            .as_array()?
            .iter()
            .map(|p| Some((p.get(0)?.as_i64()?, p.get(1)?.as_i64()?)))
            .collect()
    };
    let ids = |name: &str| -> Option<Vec<i64>> {
        v.get(name)?
            .as_array()?
            .iter()
            .map(|k| k.as_i64())
            .collect()
    };
    Some(Answer {
        granted: pairs("granted")?,
        ended: ids("ended")?,
        busy: ids("busy").unwrap_or_default(),
        scarce: ids("scarce").unwrap_or_default(),
        limits: pairs("limits").unwrap_or_default(),
    })
}

fn note_failure(what: &str, message: &str) {
    LINK.with_borrow_mut(|l| *l = None);
    RETRY_AT.set(Some(Instant::now() + BACKOFF));
    // Once per outage (and once when it ends): the standby answers 57P03 meanwhile.
    if !DOWN.replace(true) {
        pgrx::warning!(
            "pg_apikey worker: cannot lease credits from the primary ({what}): {message}"
        );
    }
}

fn note_success() {
    RETRY_AT.set(None);
    if DOWN.replace(false) {
        pgrx::log!("pg_apikey worker: leasing credits from the primary again");
    }
}

/// One exchange (all: give everything back, at shutdown).
pub fn tick(region: Region, all: bool) {
    SENT.with_borrow_mut(|s| s.clear());
    exchange_once(region, all);
    // A request that asked while the exchange ran set this worker's latch, and libpq's wait for
    // the primary's answer reset it: look again at once, or that request would wait for the
    // next tick. (A key sent and found busy waits for the next tick, not a loop.)
    let db = crate::shmem::database();
    let asked = region.credits(|p| {
        SENT.with_borrow(|sent| {
            p.balances.iter().any(|b| {
                b.db == db && b.lease.leased && b.lease.pending && !sent.contains(&b.key_id)
            })
        }) || token_leases::asked(&p.tokens, db)
    });
    if !all && asked == Some(true) && on_standby() && RETRY_AT.get().is_none() {
        // SAFETY: sets this process' own latch (MyLatch), valid while it runs.
        unsafe { pg_sys::SetLatch(pg_sys::MyLatch) };
    }
}

fn exchange_once(region: Region, all: bool) {
    let db = crate::shmem::database();
    if !on_standby() {
        // Promoted: a lease is not a balance. What this server held is forfeited (the ledger
        // took it out already), never added to a key.
        if !FORGOTTEN.get() {
            FORGOTTEN.set(true);
            region.credits(|p| {
                lease_table::forget(&mut p.balances, db);
                token_leases::forget(&mut p.tokens, db);
            });
            LINK.with_borrow_mut(|l| *l = None);
        }
        return;
    }
    let started = now_us();
    let Some(name) = region.lease_name() else {
        return;
    };
    // Tokens of global limits are never given back (they expire), so a shutdown asks none.
    let Some((plan, limits)) = region.credits(|p| {
        let plan = lease_table::plan(&mut p.balances, db, started, TTL_US / 2, all);
        let limits = if all {
            Vec::new()
        } else {
            token_leases::plan(&mut p.tokens, db, started)
        };
        (plan, limits)
    }) else {
        return;
    };
    if plan.is_empty() && limits.is_empty() {
        return;
    }
    SENT.with_borrow_mut(|s| s.extend(plan.asks.iter().map(|a| a.0)));
    let unreachable = || {
        region.credits(|p| {
            lease_table::unreachable(&mut p.balances, db);
            token_leases::unreachable(&mut p.tokens, db);
        });
    };
    let not_sent = |plan: &Plan| {
        region.credits(|p| {
            lease_table::not_sent(&mut p.balances, db, plan);
            token_leases::unreachable(&mut p.tokens, db);
        });
    };
    if !all && RETRY_AT.get().is_some_and(|t| Instant::now() < t) {
        not_sent(&plan);
        return;
    }
    let mut plan = plan;
    // A connection that sat idle may have broken meanwhile (the primary restarted): one more try
    // on a fresh one, without what the first try was giving back (its outcome is unknown).
    for attempt in 0..2 {
        let fresh = LINK.with_borrow(|l| l.is_none());
        if fresh {
            let linked = conninfo()
                .and_then(|c| Link::connect(&c))
                .and_then(with_session)
                .and_then(|l| {
                    LINK.with_borrow_mut(|slot| *slot = Some(l));
                    same_database()?;
                    query(ORIGIN)
                });
            match linked {
                Ok(_) => {}
                Err(e) => {
                    not_sent(&plan);
                    note_failure("connect", &e);
                    return;
                }
            }
        }
        match exchange(&name, &plan, &limits) {
            Ok(a) => {
                note_success();
                let expires = started.saturating_add(TTL_US);
                region.credits(|p| {
                    lease_table::answer(
                        &mut p.balances,
                        db,
                        &plan.asks,
                        &a.granted,
                        &a.ended,
                        &a.busy,
                        &a.scarce,
                        expires,
                    );
                    // Tokens were asked for at `started`: they are spent no later than
                    // TTL after that, hence no later than TTL after the primary took them.
                    token_leases::answer(&mut p.tokens, db, &limits, &a.limits, started);
                });
                return;
            }
            Err(e) => {
                LINK.with_borrow_mut(|l| *l = None);
                if fresh || attempt == 1 {
                    unreachable();
                    note_failure("exchange", &e);
                    return;
                }
                plan.returns.clear();
            }
        }
    }
}

/// On 15 and 16 the startup options do not reach the primary: the settings are SET instead.
#[cfg(any(feature = "pg15", feature = "pg16"))]
fn with_session(mut link: Link) -> Result<Link, String> {
    link.command(&conninfo::set_commands(SESSION))?;
    Ok(link)
}

#[cfg(not(any(feature = "pg15", feature = "pg16")))]
fn with_session(link: Link) -> Result<Link, String> {
    Ok(link)
}

/// The primary's database must be this one, by OID (a standby's OIDs are its primary's): a
/// database renamed on the primary since this standby replayed its name, or any other database
/// the name could reach, is not asked to run `apikey.lease_exchange`, whose meaning there its
/// owner controls.
fn same_database() -> Result<(), String> {
    let oid = query(
        "SELECT d.oid::pg_catalog.text FROM pg_catalog.pg_database d \
         WHERE d.datname OPERATOR(pg_catalog.=) pg_catalog.current_database()",
    )?;
    let ours = crate::shmem::database().to_string();
    if oid.as_deref() == Some(ours.as_str()) {
        Ok(())
    } else {
        Err("the primary's database of this name is not this database".into())
    }
}

/// Run `sql` on the primary over the current link, in a transaction here (see
/// [`Link::query_text`]); the first column of its first row.
fn query(sql: &str) -> Result<Option<String>, String> {
    super::caught(|| {
        BackgroundWorker::transaction(|| {
            LINK.with_borrow_mut(|l| match l.as_mut() {
                Some(link) => link.query_text(sql),
                None => Err("no connection".into()),
            })
        })
    })?
}

/// Send `plan` to the primary over the current link; its answer. From the moment it is sent the
/// primary may have acted on it: an error means the outcome is unknown.
fn exchange(name: &str, plan: &Plan, limits: &[TokenAsk]) -> Result<Answer, String> {
    let sql = format!(
        "SELECT apikey.lease_exchange('{}', '{}')",
        name,
        request(plan, limits)
    );
    query(&sql)?
        .as_deref()
        .and_then(parse)
        .ok_or_else(|| "the primary's answer could not be read".to_string())
}
