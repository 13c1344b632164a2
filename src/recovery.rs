//! Recoverable keys and callback signatures (the Cool Farm Tool seed).
//!
//! Keys of formats marked recoverable are also stored sealed under `apikey.encryption_key`, a
//! superuser-only setting kept out of the tables. That lets the server check the seed's callback
//! hash (SHA-256 of app key ‖ URL), which needs the app key itself, and lets an owner look a key
//! up again with `apikey.reveal`. Every reveal is audited.

use pg_apikey_core::digest::{
    callback_signature_hmac, callback_signature_sha256, signature_matches,
};
use pg_apikey_core::errors::ApiError;
use pg_apikey_core::seal;
use pgrx::prelude::*;

use crate::errors::{raise, spi};
use crate::formats;
use crate::key_type::ApiKey;
use crate::keys::{audit, target, Caller};
use crate::privilege;
use serde_json::json;

fn server_key() -> [u8; 32] {
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

fn open(id: i64, blob: &[u8], digest: &[u8]) -> String {
    seal::open(&server_key(), blob, digest).unwrap_or_else(|_| {
        raise(ApiError::NotRecoverable(format!(
            "API key {id} cannot be unsealed: apikey.encryption_key differs from the one it was sealed with"
        )))
    })
}

/// An application key's sealed form, for keys that are valid now.
fn load_sealed_app(id: i64) -> Option<(Vec<u8>, Vec<u8>)> {
    spi(Spi::connect(|c| {
        let t = c.select(
            "SELECT sealed, digest FROM apikey.keys
              WHERE id OPERATOR(pg_catalog.=) $1
                AND kind OPERATOR(pg_catalog.=) 'app'
                AND sealed IS NOT NULL
                AND (revoked_at IS NULL OR revoked_at OPERATOR(pg_catalog.>) pg_catalog.statement_timestamp())
                AND (expires_at IS NULL OR expires_at OPERATOR(pg_catalog.>) pg_catalog.statement_timestamp())",
            Some(1),
            &[id.into()],
        )?;
        if t.is_empty() {
            return Ok(None);
        }
        let r = t.first();
        Ok(Some((
            r.get::<Vec<u8>>(1)?.unwrap_or_default(),
            r.get::<Vec<u8>>(2)?.unwrap_or_default(),
        )))
    }))
}

/// The seed's callback hash: hex SHA-256 of the application key followed by the URL.
#[pg_extern(immutable, strict, parallel_safe, requires = ["api_key_type"])]
fn callback_signature(app_key: ApiKey, callback_url: &str) -> String {
    callback_signature_sha256(app_key.as_str(), callback_url)
}

/// The recommended signature: hex HMAC-SHA256 of the URL keyed by the application key (no length
/// extension, unlike SHA-256 of key ‖ URL).
#[pg_extern(immutable, strict, parallel_safe, requires = ["api_key_type"])]
fn callback_signature_hmac_sha256(app_key: ApiKey, callback_url: &str) -> String {
    callback_signature_hmac(app_key.as_str(), callback_url)
}

/// Check a callback signature for application key `app_id`, in constant time. False, the same
/// way, for an unknown, revoked, expired, non-application or non-recoverable key: the answer says
/// only whether the signature is right. `method` is 'sha256' (the seed's) or 'hmac'.
#[pg_extern(stable, strict, parallel_restricted)]
fn verify_callback_signature(
    app_id: i64,
    callback_url: &str,
    signature: &str,
    method: default!(&str, "'sha256'"),
) -> bool {
    if method != "sha256" && method != "hmac" {
        raise(ApiError::InvalidArgument(
            "method must be \"sha256\" or \"hmac\"".into(),
        ));
    }
    let Some((blob, digest)) = privilege::as_owner(|| load_sealed_app(app_id)) else {
        return false;
    };
    let app_key = open(app_id, &blob, &digest);
    let expected = if method == "hmac" {
        callback_signature_hmac(&app_key, callback_url)
    } else {
        callback_signature_sha256(&app_key, callback_url)
    };
    signature_matches(&expected, signature)
}

/// Show a recoverable key again, to a holder of a key of the same owner whose rights cover it
/// (or an administrator). Audited in the table, and also in the server log, which keeps the
/// line even if the caller rolls back.
#[pg_extern(volatile, strict, parallel_unsafe, requires = ["api_key_type"])]
fn reveal(id: i64) -> ApiKey {
    privilege::require_primary("reveal API keys (every reveal is audited)");
    // Reveal is for key holders only: administrators manage keys but never read them.
    let caller = Caller {
        admin: false,
        ..Caller::get()
    };
    let key = privilege::as_owner(|| {
        let t = target(&caller, id, false);
        if t.revoked || t.expired {
            raise(ApiError::KeyNotFound(id));
        }
        t
    });
    let Some(blob) = &key.sealed else {
        raise(ApiError::NotRecoverable(format!(
            "API key {id} is not recoverable: it is stored only as a digest"
        )))
    };
    let plaintext = open(id, blob, &key.digest);
    crate::errors::log_line(format!(
        "pg_apikey: API key {id} of owner \"{}\" revealed to role \"{}\" (authenticated key {})",
        key.owner,
        caller.name,
        caller
            .identity
            .as_ref()
            .map_or("none".to_owned(), |i| i.key_id.to_string())
    ));
    privilege::as_owner(|| audit(&caller, "reveal", id, &key.owner, &key.name, json!({})));
    ApiKey::from_generated(plaintext)
}
