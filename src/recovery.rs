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
use crate::identity;
use crate::key_type::ApiKey;
use crate::privilege;

fn server_key() -> [u8; 32] {
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
        pgrx::error!("pg_apikey: the operating system's random generator failed")
    }))
}

fn open(id: i64, blob: &[u8], digest: &[u8]) -> String {
    seal::open(&server_key(), blob, digest).unwrap_or_else(|_| {
        raise(ApiError::NotRecoverable(format!(
            "API key {id} cannot be unsealed: apikey.encryption_key differs from the one it was sealed with"
        )))
    })
}

/// A stored key's sealed form, for keys that are valid now.
struct Sealed {
    owner: String,
    name: String,
    kind: String,
    blob: Option<Vec<u8>>,
    digest: Vec<u8>,
}

fn load_sealed(id: i64) -> Option<Sealed> {
    spi(Spi::connect(|c| {
        let t = c.select(
            "SELECT owner, name, kind, sealed, digest FROM apikey.keys
              WHERE id = $1
                AND (revoked_at IS NULL OR revoked_at > pg_catalog.statement_timestamp())
                AND (expires_at IS NULL OR expires_at > pg_catalog.statement_timestamp())",
            Some(1),
            &[id.into()],
        )?;
        if t.is_empty() {
            return Ok(None);
        }
        let r = t.first();
        Ok(Some(Sealed {
            owner: r.get(1)?.unwrap_or_default(),
            name: r.get(2)?.unwrap_or_default(),
            kind: r.get(3)?.unwrap_or_default(),
            blob: r.get(4)?,
            digest: r.get(5)?.unwrap_or_default(),
        }))
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

/// Check a callback signature for application key `app_id`, in constant time. False for an
/// unknown, revoked, expired or non-application key. `method` is 'sha256' (the seed's) or 'hmac'.
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
    let Some(key) = privilege::as_owner(|| load_sealed(app_id)) else {
        return false;
    };
    if key.kind != "app" {
        return false;
    }
    let Some(blob) = key.blob else {
        raise(ApiError::NotRecoverable(format!(
            "application key {app_id} is not recoverable: mark its format with apikey.alter_format(name, true) before creating it"
        )))
    };
    let app_key = open(app_id, &blob, &key.digest);
    let expected = if method == "hmac" {
        callback_signature_hmac(&app_key, callback_url)
    } else {
        callback_signature_sha256(&app_key, callback_url)
    };
    signature_matches(&expected, signature)
}

/// Show a recoverable key again, to its owner only (authenticated in this transaction). Audited.
#[pg_extern(volatile, strict, parallel_unsafe, requires = ["api_key_type"])]
fn reveal(id: i64) -> ApiKey {
    privilege::require_primary("reveal API keys (every reveal is audited)");
    let caller = privilege::caller_name();
    let me = identity::current();
    let key = privilege::as_owner(|| load_sealed(id));
    let key = match (key, &me) {
        (Some(k), Some(i)) if i.owner == k.owner => k,
        _ => raise(ApiError::KeyNotFound(id)),
    };
    let Some(blob) = &key.blob else {
        raise(ApiError::NotRecoverable(format!(
            "API key {id} is not recoverable: it is stored only as a digest"
        )))
    };
    let plaintext = open(id, blob, &key.digest);
    privilege::as_owner(|| {
        spi(Spi::connect_mut(|c| {
            c.update(
                "INSERT INTO apikey.audit_log (action, key_id, owner, key_name, actor, session_actor, actor_key_id)
                 VALUES ('reveal', $1, $2, $3, $4, session_user, $5)",
                None,
                &[
                    id.into(),
                    key.owner.clone().into(),
                    key.name.clone().into(),
                    caller.into(),
                    me.as_ref().map(|i| i.key_id).into(),
                ],
            )
            .map(|_| ())
        }))
    });
    ApiKey::from_generated(plaintext)
}
