//! The hot path: a presented key's digest → the backend cache → on a miss, a direct index probe →
//! constant-time compare → status checks. No table write, so it works in READ ONLY transactions
//! and on a standby.

use pg_apikey_core::digest::{ct_eq, sha256, DIGEST_LEN};
use pg_apikey_core::errors::ApiError;
use pgrx::pg_sys;

use pg_apikey_core::stat::Counter;

use crate::counting::counted;
use crate::errors::raise;
use crate::identity::{Digest, Identity};
use crate::key_type::ApiKey;
use crate::keycache;
use crate::sharedkeys;
use crate::shmem::regions;
use crate::store::{self, StoredKey};
use crate::usage;

impl StoredKey {
    /// The identity this key gives its holder.
    pub fn identity(self, app: Option<(i64, String)>) -> Identity {
        Identity {
            key_id: self.id,
            lineage: self.lineage,
            app_lineage: 0,
            digest: Digest(self.digest),
            app_digest: None,
            stand_in: self.stand_in.map(Digest),
            owner: self.owner,
            kind: self.rights.kind,
            scopes: self.rights.scopes,
            resource: self.rights.resource,
            app,
            db_role: self.rights.db_role,
            expires_at: self.rights.expires_at,
            rate: self.rights.rate,
            app_bounds: None,
            allowed: self.rights.allowed,
            has_credits: self.rights.metered,
            named: self.rights.named,
            app_named: Vec::new(),
        }
    }
}

/// Find the key and judge it, in one documented order: unknown / revoked / deleted (one error) →
/// disabled → expired. "Disabled" and "expired" are told only to a caller who proved they hold the
/// key (the digest matched). Times are compared
/// with the statement's start, so a key expiring mid-transaction stops working at the next
/// statement.
pub fn lookup(key: &ApiKey) -> StoredKey {
    counted(try_lookup(key.as_str())).unwrap_or_else(|e| raise(e))
}

/// `lookup` for a well-formed key, reporting rather than raising the caller's mistakes.
pub fn try_lookup(key: &str) -> Result<StoredKey, ApiError> {
    let digest = sha256(key.as_bytes());
    match find(&digest) {
        Some((row, answered_by)) => {
            let judged = judge(row, &digest, true);
            // Where an accepted key was found, only: counted for a refused one, a revoked key
            // (still cached) would read differently from one never issued, which its holder was
            // not told.
            if judged.is_ok() {
                regions::count(answered_by);
            }
            judged
        }
        // A bcrypt-imported key not presented before: found (and rehashed) by its lookup part.
        None => match crate::pending::verify_pending(key) {
            Some(row) => judge(row, &digest, true),
            None => Err(ApiError::InvalidKey),
        },
    }
}

/// The key whose digest is `digest` as it is now, judged as a presented key would be (revoked,
/// disabled, expired, address), but counting nothing: the question of `authority`, asked again
/// at every act of an identity.
pub fn recheck(digest: &[u8; DIGEST_LEN]) -> Result<StoredKey, ApiError> {
    match find(digest) {
        Some((row, _)) => judge(row, digest, false),
        None => Err(ApiError::InvalidKey),
    }
}

/// The row of `digest`: the backend cache, the shared cache, else the table under the latest
/// snapshot; and which of them answered (the counter of `apikey.stat`).
fn find(digest: &[u8; DIGEST_LEN]) -> Option<(StoredKey, Counter)> {
    let digest = *digest;
    // Apply any invalidations other sessions have committed, so a revoke or delete is seen at
    // our next statement even inside a long transaction that takes no new locks.
    // SAFETY: processes the shared invalidation queue; callable at any point in a transaction.
    unsafe { pg_sys::AcceptInvalidationMessages() };
    if let Some(hit) = keycache::get(&digest) {
        return Some((hit, Counter::BackendCacheHits));
    }
    let since = keycache::generation();
    // A transaction that wrote anything may be looking at its own uncommitted keys, or have
    // changed a key that another backend put back in the shared cache before this commit: it
    // reads the table. Read-only transactions (every verify-only request) use both caches.
    // SAFETY: reads the transaction state; no preconditions.
    let wrote = unsafe { pg_sys::GetTopTransactionIdIfAny() } != pg_sys::InvalidTransactionId;
    // Taken before the row is read (see sharedkeys, "Staying correct").
    let ticket = if wrote {
        None
    } else {
        sharedkeys::ticket(&digest)
    };
    if let Some(t) = &ticket {
        if let Some(hit) = sharedkeys::get(t, &digest) {
            keycache::set_keys_relid(crate::catalog::get().relation("keys"));
            if keycache::admits(&digest, since) {
                keycache::insert(digest, hit.clone());
            }
            return Some((hit, Counter::SharedCacheHits));
        }
    }
    let found = store::find_by_digest(&digest)?;
    keycache::set_keys_relid(crate::catalog::get().relation("keys"));
    if !wrote {
        if let Some(t) = ticket {
            sharedkeys::offer(t, &digest, &found);
        }
        if keycache::admits(&digest, since) {
            keycache::insert(digest, found.clone());
        }
    }
    Some((found, Counter::CacheMisses))
}

/// The status checks, in the documented order; `count` records a refusal in the key's usage.
fn judge(entry: StoredKey, digest: &[u8; DIGEST_LEN], count: bool) -> Result<StoredKey, ApiError> {
    if !ct_eq(&entry.digest, digest) {
        return Err(ApiError::InvalidKey);
    }
    let record = |id, event| {
        if count {
            usage::record(id, event)
        }
    };
    // SAFETY: reads a backend global.
    let now = unsafe { pg_sys::GetCurrentStatementStartTimestamp() };
    if entry
        .revoked_at
        .is_some_and(|t| pg_sys::TimestampTz::from(t) <= now)
    {
        record(entry.id, usage::Event::Revoked);
        return Err(ApiError::InvalidKey);
    }
    if entry.disabled {
        record(entry.id, usage::Event::Denied);
        return Err(ApiError::DisabledKey);
    }
    if entry.rights.expires_at.is_some_and(|t| t <= now) {
        record(entry.id, usage::Event::Expired);
        return Err(ApiError::ExpiredKey);
    }
    if let Some(allowed) = &entry.rights.allowed {
        let from = crate::client::address();
        if !from.is_some_and(|a| allowed.iter().any(|c| c.contains(a))) {
            record(entry.id, usage::Event::Denied);
            return Err(ApiError::AddressNotAllowed);
        }
    }
    Ok(entry)
}
