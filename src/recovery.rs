//! Callback signatures (the Cool Farm Tool seed) and `apikey.reveal`, both of which need a
//! recoverable key's plaintext (see `sealing`).

use pg_apikey_core::digest::{
    callback_signature_hmac, callback_signature_sha256, signature_matches, SignatureMethod,
};
use pg_apikey_core::errors::ApiError;
use pgrx::prelude::*;
use serde_json::json;

use crate::errors::raise;
use crate::key_type::ApiKey;
use crate::policy::{self, Caller};
use crate::privilege;
use crate::sealing;
use crate::store;

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
    let method = SignatureMethod::parse(method).unwrap_or_else(|| {
        raise(ApiError::InvalidArgument(
            "method must be \"sha256\" or \"hmac\"".into(),
        ))
    });
    let Some((blob, digest)) = store::as_owner(|| store::sealed_app_key(app_id)) else {
        return false;
    };
    // A key sealed under another server key answers like a missing one: no existence oracle
    // when the server is misconfigured.
    let Some(app_key) = sealing::try_open(&blob, &digest) else {
        return false;
    };
    let expected = method.sign(&app_key, callback_url);
    signature_matches(&expected, signature)
}

/// Show a recoverable key again, to a holder of a key of the same owner whose rights cover it
/// (or an administrator). Audited in the table, and also in the server log, which keeps the
/// line even if the caller rolls back.
#[pg_extern(volatile, strict, parallel_unsafe, requires = ["api_key_type"])]
fn reveal(id: i64) -> ApiKey {
    privilege::require_primary("reveal API keys (every reveal is audited)");
    // Reveal is for key holders only: administrators manage keys but never read them.
    let caller = Caller::holder_only();
    let key = store::as_owner(|| {
        let t = policy::target(&caller, id, false);
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
    let plaintext = sealing::open(id, blob, &key.digest);
    crate::errors::log_line(format!(
        "pg_apikey: API key {id} of owner \"{}\" revealed to role \"{}\" (authenticated key {})",
        key.owner,
        caller.name,
        caller
            .identity
            .as_ref()
            .map_or("none".to_owned(), |i| i.key_id.to_string())
    ));
    store::as_owner(|| policy::audit(&caller, "reveal", id, &key.owner, &key.name, json!({})));
    ApiKey::from_generated(plaintext)
}
