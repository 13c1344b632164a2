//! The key-creation quota (the Coldflow seed: 5 new keys per owner per hour, then 429 with
//! Retry-After). State lives in `apikey.rate_limits`, one row per bucket holding the times of the
//! recent events; the row is locked with `FOR UPDATE`, so concurrent creators for one owner queue
//! on it and exactly `limit` of them get through. A refused attempt raises, which rolls back
//! everything it did: nothing is charged for it. Key holders and administrators are charged in
//! separate buckets for each owner (`create:<owner>`, `admin-create:<owner>`), so a holder who
//! spends the owner's quota cannot lock an administrator out for an hour.
//!
//! Every act that writes a key row and its audit rows and events is bounded per owner the same
//! way, so one transaction cannot write thousands of them: a rotation (it creates a key, grace or
//! not) counts as a creation; disabling and enabling count in their own buckets
//! (`toggle:<owner>`, `admin-toggle:<owner>`) at ten times the creation limit.

use pg_apikey_core::errors::{creation_quota_message, ApiError};
use pg_apikey_core::window::{admit, Decision};

use crate::errors::raise;
use crate::gucs;
use crate::store;

/// What a quota bucket counts.
#[derive(Clone, Copy)]
pub enum Act {
    /// A new key: create, import by a key holder, rotate.
    Create,
    /// A key disabled or enabled.
    Toggle,
}

/// Charge one key creation to `owner`, or raise 53400 with the seconds to wait. Runs as the
/// extension owner (inside `store::as_owner`).
pub fn charge_creation(owner: &str, by_admin: bool) {
    charge(Act::Create, owner, by_admin);
}

/// Charge one `act` to `owner`'s bucket for it, or raise 53400 with the seconds to wait. Runs as
/// the extension owner (inside `store::as_owner`).
pub fn charge(act: Act, owner: &str, by_admin: bool) {
    let limit = gucs::CREATION_LIMIT.get();
    if limit <= 0 {
        return;
    }
    let (limit, kind) = match act {
        Act::Create => (limit, "create"),
        Act::Toggle => (limit.saturating_mul(10), "toggle"),
    };
    let period_us = gucs::CREATION_PERIOD.get() as i64 * 1_000_000;
    let bucket = if by_admin {
        format!("admin-{kind}:{owner}")
    } else {
        format!("{kind}:{owner}")
    };
    let (log, now) = store::lock_quota(&bucket);
    match admit(&log, now, limit as usize, period_us) {
        Decision::Allowed(log) => store::save_quota(&bucket, log),
        Decision::Refused { retry_after } => raise(ApiError::RateLimited {
            message: match act {
                Act::Create => creation_quota_message(retry_after),
                Act::Toggle => {
                    format!("Too many API key changes. Please try again in {retry_after} seconds.")
                }
            },
            retry_after,
        }),
    }
}
