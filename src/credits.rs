//! Credits (usage-limited keys) with refill, kept in shared memory and spent exactly.
//!
//! A key with `credits` has a balance; `apikey.authenticate(key, cost)` spends from it under the
//! lock of its database's region (exact under any concurrency on one server; READ ONLY
//! transactions and standbys work). **Spending is final**: a client sees rows before it commits, so a rollback,
//! or an error it provokes after authenticating, gives nothing back (shared memory does not roll
//! back, and neither do we). Only a request that pg_apikey itself refuses before it is served
//! (another of its limits) is not charged: `auth::charge` gives back what it took in that same
//! call. The database's worker writes dirty balances to `apikey.keys` every flush interval.
//!
//! Crash bound: a crash forgives at most one flush interval of spending (balances restart from
//! the last written value). A standby spends only credits it leased from the primary, which took
//! them out of the key's balance first (`lease_table`, `ledger`, `worker::leases`).

use pg_apikey_core::credits_table::{self, Balance, Refill, Spend};
use pg_apikey_core::errors::ApiError;
use pgrx::pg_sys;
use pgrx::prelude::*;

use crate::errors::raise;
use crate::shmem::regions::{self, Attempt, Region};
use crate::shmem::{now_us, on_standby};
use crate::store::StoredKey;

pub fn init() {
    // SAFETY: registering static callbacks once, from _PG_init.
    unsafe {
        pg_sys::RegisterXactCallback(Some(on_xact), std::ptr::null_mut());
        pg_sys::RegisterSubXactCallback(Some(on_subxact), std::ptr::null_mut());
    }
}

/// Per (sub)transaction: the subtransaction, then what it changed.
type Pending<T> = std::cell::RefCell<Vec<(pg_sys::SubTransactionId, T)>>;

thread_local! {
    /// Balances this transaction moved out of a key for a rotation: (subtransaction, (key id,
    /// amount)). The rotation's successor row rolls back with the transaction, so the old key
    /// must get its balance back then; not a refund of spending, which stays final.
    static MOVED: Pending<(i64, i64)> = const { std::cell::RefCell::new(Vec::new()) };
    /// Credits a standby gave back (`give_back`) in this transaction: (subtransaction, (key id,
    /// amount)), added to the balances only once it commits. Its `apikey.leases` row changes
    /// with the transaction; shared memory does not, so adding before the commit would let a
    /// rolled-back return be spent.
    static GIVEN_BACK: Pending<(i64, i64)> = const { std::cell::RefCell::new(Vec::new()) };
    /// Grants this transaction took out of balances for standbys (`lease_out`): (subtransaction,
    /// (key id, amount, the balance's refilled_at then)), put back if it does not commit.
    static LEASED_OUT: Pending<(i64, i64, i64)> = const { std::cell::RefCell::new(Vec::new()) };
    /// Did this backend's last spend come from a standby's lease (for `refund`)?
    static LAST_FROM_LEASE: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Run `f` on this database's balances, if this backend already knows its region: for the
/// transaction callbacks, which must not claim one.
fn in_known_region(f: impl FnOnce(&mut [Balance], u32)) {
    if !crate::shmem::preloaded() {
        return;
    }
    let db = crate::shmem::database();
    if let Some(r) = regions::mine_if_known() {
        r.credits(|p| f(&mut p.balances, db));
    }
}

fn put_back_leases(grants: Vec<(i64, i64, i64)>) {
    if grants.is_empty() {
        return;
    }
    in_known_region(|balances, db| {
        for (key_id, amount, refilled_at) in grants {
            credits_table::put_back_lease(balances, db, key_id, amount, refilled_at);
        }
    });
}

fn put_back(moves: Vec<(i64, i64)>) {
    // Runs at abort (moves) and commit (returns): touch shared memory only when there is
    // something to add (and so it exists: a move or a return needed it). A balance evicted
    // meanwhile (clean, and its table full of others) gets nothing: credits lost, none minted.
    if moves.is_empty() {
        return;
    }
    in_known_region(|balances, db| {
        for (key_id, amount) in moves {
            credits_table::add(balances, db, key_id, amount);
        }
    });
}

#[pg_guard]
unsafe extern "C-unwind" fn on_xact(event: pg_sys::XactEvent::Type, _arg: *mut std::ffi::c_void) {
    use pg_sys::XactEvent::*;
    match event {
        XACT_EVENT_ABORT | XACT_EVENT_PARALLEL_ABORT => {
            let moves = MOVED.take().into_iter().map(|(_, m)| m).collect();
            put_back(moves);
            put_back_leases(LEASED_OUT.take().into_iter().map(|(_, g)| g).collect());
            GIVEN_BACK.with_borrow_mut(|g| g.clear());
            crate::store::forget_inserted();
        }
        XACT_EVENT_COMMIT | XACT_EVENT_PARALLEL_COMMIT | XACT_EVENT_PREPARE => {
            MOVED.with_borrow_mut(|m| m.clear());
            LEASED_OUT.with_borrow_mut(|l| l.clear());
            // Committed (durable): what standbys gave back joins the balances now.
            let given = GIVEN_BACK.take().into_iter().map(|(_, g)| g).collect();
            put_back(given);
            crate::store::forget_inserted();
        }
        _ => {}
    }
}

#[pg_guard]
unsafe extern "C-unwind" fn on_subxact(
    event: pg_sys::SubXactEvent::Type,
    my_subid: pg_sys::SubTransactionId,
    parent_subid: pg_sys::SubTransactionId,
    _arg: *mut std::ffi::c_void,
) {
    use pg_sys::SubXactEvent::*;
    match event {
        SUBXACT_EVENT_ABORT_SUB => {
            let moves = MOVED.with_borrow_mut(|m| pg_apikey_core::subxact::abort(m, my_subid));
            put_back(moves);
            let grants =
                LEASED_OUT.with_borrow_mut(|l| pg_apikey_core::subxact::abort(l, my_subid));
            put_back_leases(grants);
            GIVEN_BACK.with_borrow_mut(|g| pg_apikey_core::subxact::abort(g, my_subid));
        }
        SUBXACT_EVENT_COMMIT_SUB => {
            MOVED.with_borrow_mut(|m| pg_apikey_core::subxact::commit(m, my_subid, parent_subid));
            GIVEN_BACK
                .with_borrow_mut(|g| pg_apikey_core::subxact::commit(g, my_subid, parent_subid));
            LEASED_OUT
                .with_borrow_mut(|l| pg_apikey_core::subxact::commit(l, my_subid, parent_subid));
        }
        _ => {}
    }
}

/// Can keys of this database hold credits? They need shared memory and a region of it (its
/// worker makes spending durable). Checked when a key with credits is made, so none is made that
/// could never be spent.
pub fn available() -> Result<Region, ApiError> {
    if !crate::shmem::preloaded() {
        return Err(ApiError::NotPreloaded("credits"));
    }
    regions::mine().ok_or_else(|| {
        ApiError::NotRecoverable(format!(
            "credits need a region of pg_apikey's shared memory, and all {} are taken by other databases: raise apikey.max_databases",
            crate::gucs::max_databases()
        ))
    })
}

/// Run `f` on this database's balances under their lock.
fn with_balances<R>(f: impl FnOnce(&mut [Balance]) -> R) -> R {
    let region = available().unwrap_or_else(|e| raise(e));
    region
        .credits(|p| f(&mut p.balances))
        .unwrap_or_else(|| raise(ApiError::Internal("this database's region was given back")))
}

/// The balances of this database, if it has a region, under their lock.
fn if_held<R>(f: impl FnOnce(&mut [Balance]) -> Option<R>) -> Option<R> {
    if !crate::shmem::preloaded() {
        return None;
    }
    regions::mine()?.credits(|p| f(&mut p.balances)).flatten()
}

fn refill_of(refill: Option<(i64, i64)>) -> Option<Refill> {
    refill.map(|(amount, interval_us)| Refill {
        amount,
        interval_us,
    })
}

/// Spend `cost` credits of `key` (a key without credits spends nothing). Refused with 53400
/// "API key has no credits left" and, when the key refills, the seconds until it.
pub fn spend(key: &StoredKey, cost: i64) -> Result<(), ApiError> {
    if !key.rights.metered || cost < 0 {
        return Ok(());
    }
    let standby = on_standby();
    LAST_FROM_LEASE.set(standby);
    if standby {
        return spend_leased(key.id, cost);
    }
    let db = crate::shmem::database();
    let refill = refill_of(key.refill);
    let attempt = |loaded| {
        with_balances(|b| {
            credits_table::spend(b, db, key.id, cost, refill, now_us(), loaded, false)
        })
    };
    let mut outcome = attempt(None);
    if outcome == Spend::Unknown {
        // Read the table's balance with no lock held, then try again (another backend may have
        // loaded it meanwhile; its balance wins).
        outcome = attempt(Some(crate::store::as_owner(|| {
            crate::store::credit_balance(key.id)
        })));
    }
    match outcome {
        Spend::Spent(_) => Ok(()),
        Spend::Empty { retry_after } => Err(ApiError::NoCredits { retry_after }),
        Spend::Full => Err(ApiError::LimiterFull),
        Spend::Unknown => Err(ApiError::Internal("a credit balance could not be loaded")),
    }
}

/// How long a request on a standby waits for its worker to lease credits from the primary.
const LEASE_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// On a standby: spend from the credits leased from the primary (`lease_table`); a shortfall
/// asks this database's worker for more and waits for its answer (the only round trip, once per
/// slice). Refused with 53400 when the primary has no more to lease, 57P03 when it cannot be
/// reached and what this server holds does not cover the cost.
fn spend_leased(key_id: i64, cost: i64) -> Result<(), ApiError> {
    use pg_apikey_core::lease_table::{self, LeaseSpend};
    let db = crate::shmem::database();
    let region = available()?;
    region
        .wait_for_worker(LEASE_WAIT, |ask| {
            let spent = region
                .credits(|p| lease_table::spend(&mut p.balances, db, key_id, cost, now_us(), ask))
                .unwrap_or(LeaseSpend::Full);
            match spent {
                LeaseSpend::Spent(_) => Attempt::Done(Ok(())),
                LeaseSpend::Empty => Attempt::Done(Err(ApiError::NoCredits { retry_after: None })),
                LeaseSpend::Unreachable => Attempt::Done(Err(ApiError::LedgerUnreachable)),
                LeaseSpend::Full => Attempt::Done(Err(ApiError::LimiterFull)),
                LeaseSpend::Asked => Attempt::Asked,
                LeaseSpend::Waiting => Attempt::Waiting,
            }
        })
        .unwrap_or(Err(ApiError::LedgerUnreachable))
}

/// Give back `cost` credits that `spend` took from `key_id` in this very call, when another of
/// pg_apikey's own checks refused the request before it was served (all or nothing). Nothing
/// else refunds: see the module comment.
pub fn refund(key_id: i64, cost: i64) {
    let db = crate::shmem::database();
    // Where this call's spend came from, not where we are now (a promotion may lie between).
    let standby = LAST_FROM_LEASE.get();
    if_held(|b| {
        if standby {
            pg_apikey_core::lease_table::refund(b, db, key_id, cost);
        } else {
            credits_table::refund(b, db, key_id, cost);
        }
        Some(())
    });
}

/// The balance of key `key_id` left now: the one in memory, else the table's (with a due
/// refill applied).
pub fn balance(key_id: i64, refill: Option<(i64, i64)>) -> i64 {
    let now = now_us();
    let db = crate::shmem::database();
    let held = if_held(|b| credits_table::peek(b, db, key_id, refill_of(refill), now));
    held.unwrap_or_else(|| {
        let (left, at) = crate::store::as_owner(|| crate::store::credit_balance(key_id));
        credits_table::remaining_at(left, at, refill_of(refill), now)
    })
}

/// Take key `key_id`'s whole balance (a due refill applied) and leave it none, for a rotation's
/// successor. The balance is loaded into shared memory first, so the move happens there under
/// the partition's lock, where every backend spends it: no concurrent spend can use what was
/// moved.
pub fn take_all(key_id: i64, refill: Option<(i64, i64)>) -> i64 {
    let db = crate::shmem::database();
    let refill = refill_of(refill);
    let now = now_us();
    let taken = with_balances(|b| credits_table::take_all(b, db, key_id, refill, now));
    let left = taken.unwrap_or_else(|| {
        let loaded = crate::store::as_owner(|| crate::store::credit_balance(key_id));
        with_balances(|b| {
            // Another backend may have loaded it meanwhile: its balance wins, as in `spend`.
            let _ = credits_table::spend(b, db, key_id, 0, refill, now, Some(loaded), on_standby());
            credits_table::take_all(b, db, key_id, refill, now).unwrap_or(0)
        })
    });
    // Given back to the key if the rotation does not commit (its successor is gone then).
    // SAFETY: reads the transaction state.
    let sub = unsafe { pg_sys::GetCurrentSubTransactionId() };
    MOVED.with_borrow_mut(|m| m.push((sub, (key_id, left))));
    left
}

/// On the primary, for a standby's lease: take credits out of key `key_id`'s balance by the
/// ledger's rule (`lease_table::grant`), in shared memory where every backend spends it, so no
/// concurrent spend can use what was leased. Final: the flush writes it like any spending.
/// Returns the grant and what the key has left.
pub fn lease_out(key_id: i64, refill: Option<(i64, i64)>, need: i64, want: i64) -> (i64, i64) {
    let db = crate::shmem::database();
    let refill = refill_of(refill);
    let attempt = |loaded| {
        with_balances(|b| {
            credits_table::lease_out(b, db, key_id, need, want, refill, now_us(), loaded)
        })
    };
    let outcome = match attempt(None) {
        Err(Spend::Unknown) => attempt(Some(crate::store::as_owner(|| {
            crate::store::credit_balance(key_id)
        }))),
        other => other,
    };
    let Ok(leased) = outcome else {
        return (0, 0);
    };
    if leased.granted > 0 {
        // Given back to the key if this exchange does not commit: the standby never gets it.
        // SAFETY: reads the transaction state.
        let sub = unsafe { pg_sys::GetCurrentSubTransactionId() };
        LEASED_OUT.with_borrow_mut(|l| l.push((sub, (key_id, leased.granted, leased.refilled_at))));
    }
    (leased.granted, leased.left)
}

/// On the primary: credits a standby gives back from its lease, added to the key's balance when
/// this transaction commits (see `GIVEN_BACK`). The balance is loaded into shared memory now, so
/// the commit has a balance to add to.
pub fn give_back(key_id: i64, refill: Option<(i64, i64)>, n: i64) {
    if n <= 0 {
        return;
    }
    let db = crate::shmem::database();
    let refill = refill_of(refill);
    let now = now_us();
    let held = with_balances(|b| credits_table::peek(b, db, key_id, refill, now).is_some());
    if !held {
        let loaded = crate::store::as_owner(|| crate::store::credit_balance(key_id));
        with_balances(|b| {
            let _ = credits_table::spend(b, db, key_id, 0, refill, now, Some(loaded), false);
        });
    }
    // SAFETY: reads the transaction state.
    let sub = unsafe { pg_sys::GetCurrentSubTransactionId() };
    GIVEN_BACK.with_borrow_mut(|g| g.push((sub, (key_id, n))));
}

/// Add `n` credits: to the balance in memory if one is held (the worker writes it), else to the
/// table.
pub fn add(key_id: i64, n: i64) {
    let db = crate::shmem::database();
    let held = if_held(|b| credits_table::add(b, db, key_id, n).then_some(()));
    if held.is_none() {
        crate::store::as_owner(|| crate::store::add_credits(key_id, n));
    }
}

/// Called by the worker of `region`'s database: write dirty balances, in a transaction of their
/// own; returns the keys it settled (all but those whose row is held elsewhere).
pub fn flush(region: Region) -> Vec<i64> {
    if on_standby() {
        return Vec::new();
    }
    let db = crate::shmem::database();
    let dirty = region
        .credits(|p| credits_table::collect(&p.balances, db))
        .unwrap_or_default();
    // Every flush, dirty balances or not: balances written aside earlier go into their rows
    // once those are free.
    let held = pgrx::bgworkers::BackgroundWorker::transaction(|| {
        crate::catalog::installed()?;
        Some(crate::store::as_owner(|| {
            let busy = if dirty.is_empty() {
                Vec::new()
            } else {
                crate::store::write_credits(&dirty)
            };
            crate::store::drain_held_balances();
            busy
        }))
    });
    // A balance that could be written nowhere (its row and its held balance both locked by
    // others) stays dirty: written at a later flush.
    let done: Vec<_> = match held {
        Some(ids) => dirty.into_iter().filter(|d| !ids.contains(&d.0)).collect(),
        None => dirty,
    };
    region.credits(|p| credits_table::settle(&mut p.balances, db, &done));
    done.iter().map(|d| d.0).collect()
}
