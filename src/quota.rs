//! The key-creation quota (the Coldflow seed: 5 new keys per owner per hour, then 429 with
//! Retry-After). State lives in `apikey.rate_limits`, one row per bucket holding the times of the
//! recent events; the row is locked with `FOR UPDATE`, so concurrent creators for one owner queue
//! on it and exactly `limit` of them get through. A refused attempt raises, which rolls back
//! everything it did: nothing is charged for it. Key holders and administrators are charged in
//! separate buckets for each owner (`create:<owner>`, `admin-create:<owner>`), so a holder who
//! spends the owner's quota cannot lock an administrator out for an hour.

use pg_apikey_core::errors::{creation_quota_message, ApiError};
use pg_apikey_core::window::{admit, Decision};

use crate::errors::raise;
use crate::gucs;
use crate::store;

/// Charge one key creation to `owner`, or raise 53400 with the seconds to wait. Runs as the
/// extension owner (inside `store::as_owner`).
pub fn charge_creation(owner: &str, by_admin: bool) {
    let limit = gucs::CREATION_LIMIT.get();
    if limit <= 0 {
        return;
    }
    let period_us = gucs::CREATION_PERIOD.get() as i64 * 1_000_000;
    let bucket = if by_admin {
        format!("admin-create:{owner}")
    } else {
        format!("create:{owner}")
    };
    let (log, now) = store::lock_quota(&bucket);
    match admit(&log, now, limit as usize, period_us) {
        Decision::Allowed(log) => store::save_quota(&bucket, log),
        Decision::Refused { retry_after } => raise(ApiError::RateLimited {
            message: creation_quota_message(retry_after),
            retry_after,
        }),
    }
}
