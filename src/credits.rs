//! Credits (usage-limited keys) with refill, kept in shared memory and spent exactly.
//!
//! A key with `credits` has a balance; `apikey.authenticate(key, cost)` spends from it under the
//! partition's LWLock (exact under any concurrency on one server; READ ONLY transactions and
//! standbys work). **Spending is final**: a client sees rows before it commits, so a rollback,
//! or an error it provokes after authenticating, gives nothing back (shared memory does not roll
//! back, and neither do we). Only a request that pg_apikey itself refuses before it is served
//! (another of its limits) is not charged: `auth::charge` gives back what it took in that same
//! call. The usage worker writes dirty balances to `apikey.keys` every flush interval.
//!
//! Crash bound: a crash forgives at most one flush interval of spending (balances restart from
//! the last written value). On a standby spending is never written: each standby keeps its own
//! balances, forgotten at restart or when its table is full.

use pg_apikey_core::credits_table::{self, Balance, Refill, Spend};
use pg_apikey_core::errors::ApiError;
use pgrx::lwlock::PgLwLock;
use pgrx::pg_sys;
use pgrx::prelude::*;
use pgrx::shmem::PGRXSharedMemory;

use crate::errors::raise;
use crate::store::StoredKey;

const SLOTS: usize = 1024;

#[derive(Clone, Copy)]
#[repr(C)]
struct Part([Balance; SLOTS]);

// SAFETY: plain #[repr(C)] values with no pointers; every bit pattern is valid.
unsafe impl PGRXSharedMemory for Part {}

crate::shmem::partitioned_table!(
    TABLE,
    init_parts,
    Part,
    Part([Balance::FREE; SLOTS]),
    [
        C0 = c"pg_apikey_credits_0",
        C1 = c"pg_apikey_credits_1",
        C2 = c"pg_apikey_credits_2",
        C3 = c"pg_apikey_credits_3",
        C4 = c"pg_apikey_credits_4",
        C5 = c"pg_apikey_credits_5",
        C6 = c"pg_apikey_credits_6",
        C7 = c"pg_apikey_credits_7",
    ]
);

pub fn init() {
    if crate::shmem::preloaded() {
        init_parts();
    }
    // SAFETY: registering static callbacks once, from _PG_init.
    unsafe {
        pg_sys::RegisterXactCallback(Some(on_xact), std::ptr::null_mut());
        pg_sys::RegisterSubXactCallback(Some(on_subxact), std::ptr::null_mut());
    }
}

thread_local! {
    /// Balances this transaction moved out of a key for a rotation: (subtransaction, (key id,
    /// amount)). The rotation's successor row rolls back with the transaction, so the old key
    /// must get its balance back then; not a refund of spending, which stays final.
    static MOVED: std::cell::RefCell<Vec<(pg_sys::SubTransactionId, (i64, i64))>> =
        const { std::cell::RefCell::new(Vec::new()) };
}

fn put_back(moves: Vec<(i64, i64)>) {
    // Runs at abort: touch shared memory only when there is something to give back (and so it
    // exists: a move needed it).
    if moves.is_empty() || !crate::shmem::preloaded() {
        return;
    }
    if let Some(i) = crate::shmem::db_index() {
        let db = current_db();
        let mut part = TABLE[i].exclusive();
        for (key_id, amount) in moves {
            credits_table::add(&mut part.0, db, key_id, amount);
        }
    }
}

#[pg_guard]
unsafe extern "C-unwind" fn on_xact(event: pg_sys::XactEvent::Type, _arg: *mut std::ffi::c_void) {
    use pg_sys::XactEvent::*;
    match event {
        XACT_EVENT_ABORT | XACT_EVENT_PARALLEL_ABORT => {
            let moves = MOVED.take().into_iter().map(|(_, m)| m).collect();
            put_back(moves);
            crate::store::forget_inserted();
        }
        XACT_EVENT_COMMIT | XACT_EVENT_PARALLEL_COMMIT | XACT_EVENT_PREPARE => {
            MOVED.with_borrow_mut(|m| m.clear());
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
        }
        SUBXACT_EVENT_COMMIT_SUB => {
            MOVED.with_borrow_mut(|m| pg_apikey_core::subxact::commit(m, my_subid, parent_subid))
        }
        _ => {}
    }
}

fn part() -> &'static PgLwLock<Part> {
    if !crate::shmem::preloaded() {
        raise(ApiError::NotPreloaded("credits"));
    }
    match crate::shmem::db_index() {
        Some(i) => TABLE[i],
        None => raise(ApiError::NotRecoverable(
            "credits need this database in apikey.usage_databases: its worker makes spending durable"
                .into(),
        )),
    }
}

fn current_db() -> u32 {
    // SAFETY: reads a backend global set at connection.
    u32::from(unsafe { pg_sys::MyDatabaseId })
}

fn now_us() -> i64 {
    // SAFETY: reads the clock.
    unsafe { pg_sys::GetCurrentTimestamp() }
}

fn on_standby() -> bool {
    // SAFETY: reads shared recovery state.
    unsafe { pg_sys::RecoveryInProgress() }
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
    let part = part();
    let db = current_db();
    let refill = refill_of(key.refill);
    let evictable = on_standby();
    let attempt = |loaded| {
        credits_table::spend(
            &mut part.exclusive().0,
            db,
            key.id,
            cost,
            refill,
            now_us(),
            loaded,
            evictable,
        )
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

/// Give back `cost` credits that `spend` took from `key_id` in this very call, when another of
/// pg_apikey's own checks refused the request before it was served (all or nothing). Nothing
/// else refunds: see the module comment.
pub fn refund(key_id: i64, cost: i64) {
    if let Some(i) = crate::shmem::db_index() {
        credits_table::refund(&mut TABLE[i].exclusive().0, current_db(), key_id, cost);
    }
}

/// The balance of key `key_id` left now: the one in memory, else the table's (with a due
/// refill applied).
pub fn balance(key_id: i64, refill: Option<(i64, i64)>) -> i64 {
    let now = now_us();
    let held = crate::shmem::db_index()
        .filter(|_| crate::shmem::preloaded())
        .and_then(|i| {
            credits_table::peek(
                &TABLE[i].share().0,
                current_db(),
                key_id,
                refill_of(refill),
                now,
            )
        });
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
    let part = part();
    let db = current_db();
    let refill = refill_of(refill);
    let now = now_us();
    let taken = credits_table::take_all(&mut part.exclusive().0, db, key_id, refill, now);
    let left = taken.unwrap_or_else(|| {
        let loaded = crate::store::as_owner(|| crate::store::credit_balance(key_id));
        let mut p = part.exclusive();
        // Another backend may have loaded it meanwhile: its balance wins, as in `spend`.
        let _ = credits_table::spend(
            &mut p.0,
            db,
            key_id,
            0,
            refill,
            now,
            Some(loaded),
            on_standby(),
        );
        credits_table::take_all(&mut p.0, db, key_id, refill, now).unwrap_or(0)
    });
    // Given back to the key if the rotation does not commit (its successor is gone then).
    // SAFETY: reads the transaction state.
    let sub = unsafe { pg_sys::GetCurrentSubTransactionId() };
    MOVED.with_borrow_mut(|m| m.push((sub, (key_id, left))));
    left
}

/// Add `n` credits: to the balance in memory if one is held (the worker writes it), else to the
/// table.
pub fn add(key_id: i64, n: i64) {
    let held = crate::shmem::db_index()
        .filter(|_| crate::shmem::preloaded())
        .is_some_and(|i| credits_table::add(&mut TABLE[i].exclusive().0, current_db(), key_id, n));
    if !held {
        crate::store::as_owner(|| crate::store::add_credits(key_id, n));
    }
}

/// Called by the usage worker: write dirty balances of its database.
/// Write dirty balances; returns the keys it settled (all but those whose row is held elsewhere).
pub fn flush() -> Vec<i64> {
    if !crate::shmem::preloaded() || on_standby() {
        return Vec::new();
    }
    let Some(i) = crate::shmem::db_index() else {
        return Vec::new();
    };
    let db = current_db();
    let dirty = credits_table::collect(&TABLE[i].share().0, db);
    if dirty.is_empty() {
        return Vec::new();
    }
    let held = pgrx::bgworkers::BackgroundWorker::transaction(|| {
        crate::catalog::installed()?;
        Some(crate::store::as_owner(|| {
            crate::store::write_credits(&dirty)
        }))
    });
    // A balance whose key row another transaction holds stays dirty: written at a later flush.
    let done: Vec<_> = match held {
        Some(ids) => dirty.into_iter().filter(|d| !ids.contains(&d.0)).collect(),
        None => dirty,
    };
    credits_table::settle(&mut TABLE[i].exclusive().0, db, &done);
    done.iter().map(|d| d.0).collect()
}
