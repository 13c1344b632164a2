//! The cumulative statistics each database's region counts (`apikey.stat`): the calls that
//! presented a key, why the refused ones were refused, and where key lookups were answered.

use crate::errors::ApiError;

/// One cumulative counter. The discriminant is the counter's index in a region's array.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Counter {
    /// Calls that presented a key: `verify`, `authenticate`, the pre-request.
    Verifications,
    RefusedInvalid,
    RefusedMalformed,
    RefusedExpired,
    RefusedDisabled,
    RefusedAddress,
    RefusedRateLimited,
    RefusedCredits,
    RefusedScope,
    RefusedOther,
    /// Key lookups answered by the backend's cache, the shared cache, or the table.
    BackendCacheHits,
    SharedCacheHits,
    CacheMisses,
}

pub const COUNTERS: usize = 13;

pub const ALL: [Counter; COUNTERS] = [
    Counter::Verifications,
    Counter::RefusedInvalid,
    Counter::RefusedMalformed,
    Counter::RefusedExpired,
    Counter::RefusedDisabled,
    Counter::RefusedAddress,
    Counter::RefusedRateLimited,
    Counter::RefusedCredits,
    Counter::RefusedScope,
    Counter::RefusedOther,
    Counter::BackendCacheHits,
    Counter::SharedCacheHits,
    Counter::CacheMisses,
];

impl Counter {
    pub fn index(self) -> usize {
        self as usize
    }
}

/// The counter a refusal of a presented key (or of a check after it) goes to. A revoked or
/// deleted key is "invalid" here as in its message: the statistics tell no more than the
/// caller was told.
pub fn refusal(err: &ApiError) -> Counter {
    match err {
        ApiError::MalformedKey(_) => Counter::RefusedMalformed,
        ApiError::InvalidKey | ApiError::AuthorityLost => Counter::RefusedInvalid,
        ApiError::ExpiredKey => Counter::RefusedExpired,
        ApiError::DisabledKey => Counter::RefusedDisabled,
        ApiError::AddressNotAllowed => Counter::RefusedAddress,
        ApiError::RateLimited { .. } | ApiError::LimiterFull | ApiError::LimitsUnreachable => {
            Counter::RefusedRateLimited
        }
        ApiError::NoCredits { .. } | ApiError::LedgerUnreachable => Counter::RefusedCredits,
        ApiError::MissingScope(_) | ApiError::OutsideResource(_) => Counter::RefusedScope,
        _ => Counter::RefusedOther,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_counter_has_its_own_index() {
        for (i, c) in ALL.iter().enumerate() {
            assert_eq!(c.index(), i);
        }
    }

    #[test]
    fn refusals_go_to_their_reason() {
        assert_eq!(refusal(&ApiError::ExpiredKey), Counter::RefusedExpired);
        assert_eq!(
            refusal(&ApiError::NoCredits { retry_after: None }),
            Counter::RefusedCredits
        );
        assert_eq!(
            refusal(&ApiError::MissingScope("a".into())),
            Counter::RefusedScope
        );
        assert_eq!(
            refusal(&ApiError::KeyRequired("user")),
            Counter::RefusedOther
        );
    }
}
