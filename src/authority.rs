//! Authority at every act. `authenticate` remembers an identity for the rest of the
//! transaction, but what that identity may do is decided again each time it acts: the keys that
//! authenticated are read again (by digest, under the latest snapshot or through caches that
//! other sessions' commits invalidate, exactly as verify reads them) and judged as a presented key
//! would be. A key revoked, disabled, deleted, expired or reported leaked in another session
//! stops acting at its next call, even in a transaction that authenticated before.
//!
//! Two faces: the policy readers (`current_owner`, `has_scope`, …) see no identity once its key
//! no longer holds (row-level security then admits nothing), and every management call made on
//! the strength of a key refuses with 28000 (`acting`).

use pg_apikey_core::errors::ApiError;

use crate::errors::raise;
use crate::identity::{self, Identity};
use crate::lookup;

/// Do the keys of `id` (the user key, and the application key of a pair) still hold?
fn still_holds(id: &Identity) -> bool {
    let holds = |digest: &identity::Digest, key_id: Option<i64>| {
        lookup::recheck(&digest.0).is_ok_and(|row| key_id.is_none_or(|k| k == row.id))
    };
    (holds(&id.digest, Some(id.key_id))
        || id
            .stand_in
            .as_ref()
            .is_some_and(|s| holds(s, Some(id.key_id))))
        && id
            .app_digest
            .as_ref()
            .is_none_or(|d| holds(d, id.app.as_ref().map(|(k, _)| *k)))
}

/// This transaction's identity if its keys still hold; None without one, or once they do not.
pub fn current() -> Option<Identity> {
    identity::remembered().filter(still_holds)
}

/// The identity a management call acts for: None without one, 28000 once its keys no longer
/// hold.
pub fn acting() -> Option<Identity> {
    let id = identity::remembered()?;
    if !still_holds(&id) {
        raise(ApiError::AuthorityLost);
    }
    Some(id)
}
