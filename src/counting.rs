//! Counting what presented keys came to, for `apikey.stat`: used by the request path (lookup,
//! authenticate, the pre-request) and by the `api_key` type's input, which refuses malformed
//! keys before any lookup.

use pg_apikey_core::errors::ApiError;
use pg_apikey_core::stat::{self, Counter};

use crate::shmem::regions;

/// Count a call that presented a key, and the reason it was refused if it was.
pub fn counted<T>(result: Result<T, ApiError>) -> Result<T, ApiError> {
    regions::count(Counter::Verifications);
    if let Err(e) = &result {
        regions::count(stat::refusal(e));
    }
    result
}
