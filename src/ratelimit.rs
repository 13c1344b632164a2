//! The key-creation quota (the Coldflow seed: 5 new keys per owner per hour, then 429 with
//! Retry-After). State lives in `apikey.rate_limits`, one row per bucket holding the times of the
//! recent events; the row is locked with `FOR UPDATE`, so concurrent creators for one owner queue
//! on it and exactly `limit` of them get through. A refused attempt raises, which rolls back
//! everything it did: nothing is charged for it.

use pg_apikey_core::errors::{creation_quota_message, ApiError};
use pg_apikey_core::window::{admit, Decision};
use pgrx::prelude::*;

use crate::errors::{raise, spi};
use crate::gucs;

/// Charge one key creation to `owner`, or raise 53400 with the seconds to wait. Runs as the
/// extension owner (inside `privilege::as_owner`).
pub fn charge_creation(owner: &str) {
    let limit = gucs::CREATION_LIMIT.get();
    if limit <= 0 {
        return;
    }
    let period_us = gucs::CREATION_PERIOD.get() as i64 * 1_000_000;
    let bucket = format!("create:{owner}");
    spi(Spi::connect_mut(|c| {
        c.update(
            "INSERT INTO apikey.rate_limits (bucket, hits) VALUES ($1, '{}') ON CONFLICT (bucket) DO NOTHING",
            None,
            &[bucket.clone().into()],
        )?;
        let row = c
            .select(
                "SELECT hits, (EXTRACT(epoch FROM pg_catalog.clock_timestamp()) OPERATOR(pg_catalog.*) 1000000)::pg_catalog.int8
                   FROM apikey.rate_limits WHERE bucket OPERATOR(pg_catalog.=) $1 FOR UPDATE",
                Some(1),
                &[bucket.clone().into()],
            )?
            .first()
            .get_two::<Vec<i64>, i64>()?;
        let (log, now) = (row.0.unwrap_or_default(), row.1.unwrap_or_default());
        match admit(&log, now, limit as usize, period_us) {
            Decision::Allowed(log) => {
                c.update(
                    "UPDATE apikey.rate_limits SET hits = $2, updated_at = pg_catalog.now() WHERE bucket OPERATOR(pg_catalog.=) $1",
                    None,
                    &[bucket.into(), log.into()],
                )?;
                Ok(())
            }
            Decision::Refused { retry_after } => raise(ApiError::RateLimited {
                message: creation_quota_message(retry_after),
                retry_after,
            }),
        }
    }))
}
