//! Verify's path for bcrypt imports that have not been presented yet (called by `lookup`).
//!
//! When a key is not found by digest and its format has waiting bcrypt imports, verify finds the
//! one import whose lookup part begins the key (lookup parts never overlap), checks bcrypt once,
//! and stores the key's SHA-256 in place of the stand-in ("rehash"): in the verifying transaction
//! when it can write, else through a small queue in the database's region that its worker applies. A
//! key with no candidate costs a decoy bcrypt at the highest waiting cost, so timing does not
//! tell whether a lookup part exists. This is request-path code: it imports no management module.

use std::cell::RefCell;

use pg_apikey_core::digest::{sha256, DIGEST_LEN};
use pg_apikey_core::format::last_chars;
use pg_apikey_core::imported;
use pg_apikey_core::rehash_queue::Rehash;
use pgrx::pg_sys;
use pgrx::prelude::*;
use serde_json::json;

use crate::privilege;
use crate::store::{self, PendingImports, StoredKey};

thread_local! {
    /// bcrypt computations this backend ran for verify (see `apikey.bcrypt_checks`).
    static BCRYPT_RUNS: std::cell::Cell<i64> = const { std::cell::Cell::new(0) };
    /// Nanoseconds of the last bcrypt divided by 2^cost: this backend's estimate of one unit.
    static NS_PER_UNIT: std::cell::Cell<Option<f64>> = const { std::cell::Cell::new(None) };
    /// Waiting bcrypt imports per format, and the OID of `apikey.key_imports`; None until
    /// loaded, dropped when that table changes.
    static PENDING: RefCell<Option<(Vec<PendingImports>, pg_sys::Oid)>> = const { RefCell::new(None) };
}

pub fn invalidate(relid: pg_sys::Oid) {
    PENDING.with_borrow_mut(|p| {
        if p.as_ref().is_some_and(|(_, ours)| {
            relid == pg_sys::InvalidOid || relid == *ours || *ours == pg_sys::InvalidOid
        }) {
            *p = None;
        }
    });
}

/// The waiting imports of `format`, if any.
fn pending_for(format: &str) -> Option<(usize, usize, u32)> {
    let find = |list: &[PendingImports]| {
        list.iter()
            .find(|p| p.format == format)
            .map(|p| (p.min_len, p.max_len, p.max_cost))
    };
    if let Some(hit) = PENDING.with_borrow(|p| p.as_ref().map(|(list, _)| find(list))) {
        return hit;
    }
    // Before ALTER EXTENSION UPDATE adds the table, nothing is waiting.
    let relid = crate::catalog::get().relation_if_present("key_imports")?;
    let list = store::as_owner(store::pending_imports);
    let hit = find(&list);
    PENDING.set(Some((list, relid)));
    hit
}

/// One bcrypt computation at `cost`, counted, and timed for the padding of failing paths.
fn timed_bcrypt<R>(cost: u32, f: impl FnOnce() -> R) -> R {
    let start = std::time::Instant::now();
    let r = f();
    BCRYPT_RUNS.set(BCRYPT_RUNS.get() + 1);
    let per_unit = start.elapsed().as_nanos() as f64 / f64::from(1u32 << cost.min(31));
    NS_PER_UNIT.set(Some(per_unit));
    r
}

/// A failing path (no candidate, or a candidate whose bcrypt did not match) takes as long as a
/// bcrypt at the highest waiting cost: imports of one format may come with different costs, and
/// a cheap mismatch must not tell that its lookup part exists.
///
/// The padding *waits* rather than computes, once this backend has timed one bcrypt: a client
/// who presents unknown keys then buys time on a connection, not seconds of CPU, and the wait
/// honours `statement_timeout` and query cancel. Only the first failing path of a backend runs a
/// decoy bcrypt (to learn the time). A wait counts in `apikey.bcrypt_checks()` like the bcrypt
/// it stands for.
fn pad_failure(key: &str, started: std::time::Instant, max_cost: u32) {
    let Some(per_unit) = NS_PER_UNIT.get() else {
        // Not calibrated yet in this backend: a decoy at the highest cost pads and calibrates.
        timed_bcrypt(max_cost, || imported::bcrypt_decoy(key, max_cost));
        return;
    };
    let target =
        std::time::Duration::from_nanos((per_unit * f64::from(1u32 << max_cost.min(31))) as u64);
    if let Some(rest) = target.checked_sub(started.elapsed()) {
        pause(rest);
    }
}

/// Sleep for `d`, in slices short enough that a statement timeout or a cancel request stops it.
fn pause(d: std::time::Duration) {
    let until = std::time::Instant::now() + d;
    loop {
        pgrx::check_for_interrupts!();
        let Some(left) = until.checked_duration_since(std::time::Instant::now()) else {
            return;
        };
        std::thread::sleep(left.min(std::time::Duration::from_millis(5)));
    }
}

/// Verify's last resort for a key not found by digest: a waiting bcrypt import. Returns the
/// key's row (with the presented key's digest) when its bcrypt matches; costs exactly one bcrypt
/// whenever the key's format has waiting imports (failing paths are padded to the time of one at
/// the highest waiting cost), and nothing otherwise.
pub fn verify_pending(key: &str) -> Option<StoredKey> {
    let format = crate::formats::try_detect(key).ok()?;
    let (min_len, max_len, max_cost) = pending_for(&format.name)?;
    let started = std::time::Instant::now();
    let candidates: Vec<String> = imported::lookup_candidates(key, min_len, max_len)
        .into_iter()
        .map(str::to_owned)
        .collect();
    let found = store::as_owner(|| store::find_import(candidates));
    let Some(store::WaitingImport {
        key_id,
        hash,
        stand_in,
    }) = found
    else {
        if NS_PER_UNIT.get().is_some() {
            BCRYPT_RUNS.set(BCRYPT_RUNS.get() + 1);
        }
        pad_failure(key, started, max_cost);
        return None;
    };
    let cost = imported::bcrypt_cost(&hash).unwrap_or(max_cost);
    // The one computation a presented key can cause: not interruptible, so import costs are
    // capped (imported::BCRYPT_COSTS) to keep it within about a second.
    if !timed_bcrypt(cost, || imported::bcrypt_matches(key, &hash)) {
        pad_failure(key, started, max_cost);
        return None;
    }
    let stand_in = <[u8; DIGEST_LEN]>::try_from(stand_in.as_slice()).ok()?;
    let mut row = store::find_by_digest(&stand_in)?;
    let digest = sha256(key.as_bytes());
    rehash_or_queue(key_id, &digest, last_chars(key));
    row.digest = digest;
    row.stand_in = Some(stand_in);
    Some(row)
}

/// How many bcrypt computations (or waits of the same length, see `pad_failure`) this backend has
/// spent on verify: one per key not found by digest whose format has bcrypt imports waiting,
/// matching or not, and none otherwise.
#[pg_extern(volatile, parallel_restricted)]
fn bcrypt_checks() -> i64 {
    BCRYPT_RUNS.get()
}

/// Can this transaction write? Not on a standby, in a READ ONLY transaction, or while a parallel
/// query runs.
fn writable() -> bool {
    // SAFETY: read backend and shared state; no preconditions.
    unsafe { !pg_sys::RecoveryInProgress() && !pg_sys::XactReadOnly && !pg_sys::IsInParallelMode() }
}

fn rehash_or_queue(key_id: i64, digest: &[u8; DIGEST_LEN], last4: &str) {
    if writable() {
        let actor = privilege::caller_name();
        store::as_owner(|| apply_rehash(&actor, key_id, digest, last4));
    } else if let Some(region) = crate::shmem::regions::mine() {
        let db = crate::shmem::database();
        region.rehashes(|q| q.queue.push(Rehash::new(db, key_id, *digest, last4)));
    }
}

/// Store `digest` for imported key `key_id`, unless another key already has it (the same key
/// imported twice: that one is found first anyway). Runs inside `store::as_owner`.
fn apply_rehash(actor: &str, key_id: i64, digest: &[u8; DIGEST_LEN], last4: &str) {
    if store::find_by_digest(digest).is_some() {
        return;
    }
    if let Some((owner, name)) = store::rehash(key_id, digest, last4) {
        crate::audit::audit_as(
            actor,
            None,
            "rehash",
            key_id,
            &owner,
            &name,
            json!({"from": "bcrypt", "to": "sha256"}),
        );
    }
}

/// The worker's share: rehashes queued by read-only verifies of its database (in its region).
pub fn flush_rehashes(region: crate::shmem::regions::Region) {
    let db = crate::shmem::database();
    let taken = region.rehashes(|q| q.queue.take(db)).unwrap_or_default();
    if taken.is_empty() {
        return;
    }
    pgrx::bgworkers::BackgroundWorker::transaction(|| {
        if crate::catalog::installed().is_none() {
            return;
        }
        store::as_owner(|| {
            for r in &taken {
                apply_rehash("pg_apikey worker", r.key_id, &r.digest, &r.last4());
            }
        });
    });
}
