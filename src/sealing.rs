//! Recoverable keys: sealing a key under the server key (`apikey.encryption_key`) and opening it.

use pg_apikey_core::errors::ApiError;
use pg_apikey_core::seal;

use crate::errors::raise;
use crate::formats;

pub fn server_key() -> [u8; 32] {
    // Without preload the setting is an ordinary placeholder until the library loads in a
    // session, and any role can read a placeholder with current_setting(): refuse to use it.
    if !crate::shmem::preloaded() {
        raise(ApiError::NotPreloaded("using recoverable keys"));
    }
    let text = crate::gucs::ENCRYPTION_KEY
        .get()
        .and_then(|c| c.into_string().ok())
        .unwrap_or_default();
    if text.is_empty() {
        raise(ApiError::NotRecoverable(
            "recoverable keys need apikey.encryption_key (64 hex characters) in postgresql.conf"
                .into(),
        ));
    }
    seal::server_key(&text).unwrap_or_else(|_| {
        raise(ApiError::NotRecoverable(
            "apikey.encryption_key must be 64 hexadecimal characters".into(),
        ))
    })
}

/// The sealed form of a new key, if its format is recoverable.
pub fn seal_for(format: &str, plaintext: &str) -> Option<Vec<u8>> {
    if !formats::is_recoverable(format) {
        return None;
    }
    Some(seal::seal(&server_key(), plaintext).unwrap_or_else(|_| {
        raise(ApiError::Internal(
            "the operating system's random generator failed",
        ))
    }))
}

/// Open key `id`'s sealed form; None if it was sealed under another server key.
pub fn try_open(blob: &[u8], digest: &[u8]) -> Option<String> {
    seal::open(&server_key(), blob, digest).ok()
}

pub fn open(id: i64, blob: &[u8], digest: &[u8]) -> String {
    try_open(blob, digest).unwrap_or_else(|| {
        raise(ApiError::NotRecoverable(format!(
            "API key {id} cannot be unsealed: apikey.encryption_key differs from the one it was sealed with"
        )))
    })
}
