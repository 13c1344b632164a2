//! Turning SQL limit arguments into the core's `Rate`, with the bounds every limit obeys.

use pg_apikey_core::errors::ApiError;
use pg_apikey_core::gcra::Rate;

use crate::errors::raise;

/// The longest a bucket may stay live: a full burst refills within it, so its slot becomes
/// reclaimable, and a retry-after never exceeds it.
pub const MAX_PERIOD_US: i64 = 31 * 86_400 * 1_000_000;

/// `limit` requests per `period`, bursts of `burst` (default `limit`); 22023 when out of bounds.
pub fn rate_from(limit: i64, period: pgrx::datum::Interval, burst: Option<i64>) -> Rate {
    let micros = period.as_micros().clamp(i64::MIN as i128, i64::MAX as i128) as i64;
    if micros > MAX_PERIOD_US {
        raise(ApiError::InvalidArgument(
            "rate limit period must be at most 31 days".into(),
        ));
    }
    let rate = Rate::new(limit, micros, burst)
        .unwrap_or_else(|e| raise(ApiError::InvalidArgument(e.to_string())));
    // A bucket can run `burst` emission intervals ahead of now; that, not the period alone, is
    // how long it stays live (and holds its slot).
    if rate.emission_us.saturating_mul(rate.burst as i64) > MAX_PERIOD_US {
        raise(ApiError::InvalidArgument(
            "rate limit burst is too large: a full burst must refill within 31 days".into(),
        ));
    }
    rate
}
