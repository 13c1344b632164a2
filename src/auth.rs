//! Authentication and the transaction identity's SQL face: `apikey.authenticate` and the readers
//! that row-level security policies call.
//!
//! The readers are STABLE (so `(SELECT apikey.current_owner())` is evaluated once per query) and
//! PARALLEL RESTRICTED: the identity lives in this backend's memory, which parallel workers do not
//! share, so they must run in the leader.

use pgrx::prelude::*;

use crate::identity::{self, Identity};
use crate::key_type::ApiKey;
use crate::keys;

/// Verify `key` and make its owner the identity of the current transaction. Returns the owner.
#[pg_extern(volatile, strict, parallel_unsafe, requires = ["api_key_type"])]
fn authenticate(key: ApiKey) -> String {
    let row = keys::lookup(&key);
    identity::set(Identity {
        key_id: row.id,
        owner: row.owner.clone(),
        scopes: row.scopes,
        resource: row.resource,
    });
    row.owner
}

/// The authenticated owner of this transaction, or NULL.
#[pg_extern(stable, parallel_restricted)]
fn current_owner() -> Option<String> {
    identity::current().map(|i| i.owner)
}

/// The id of the key that authenticated this transaction, or NULL.
#[pg_extern(stable, parallel_restricted)]
fn current_key_id() -> Option<i64> {
    identity::current().map(|i| i.key_id)
}
