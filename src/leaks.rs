//! Leak reports from secret scanners: every reported key that is stored here is revoked at once
//! and audited as `leaked`; the answer says which reports were ours without echoing any token.
//!
//! `apikey.report_leaked(keys, source)` takes plain keys; `apikey.secret_scanning(payload)` takes
//! and answers GitHub secret scanning's partner format (`[{token, type, url, source}]` →
//! `[{token_hash, token_type, label}]`, where token_hash is the SHA-256 of the token in hex,
//! which the reporter can compute itself). Administrators only.

use pg_apikey_core::digest::sha256;
use pg_apikey_core::errors::ApiError;
use pgrx::prelude::*;
use pgrx::JsonB;

use crate::jsonarg::Json;
use serde_json::json;

use crate::errors::raise;
use crate::policy::{self, Caller};
use crate::store;

/// Is `token` one of our keys? If so revoke it now and audit the leak; true either way when it
/// is ours (a key revoked earlier is still a true positive).
fn handle(caller: &Caller, token: &str, source: &str, url: Option<&str>) -> bool {
    // A token that is no well-formed key of any format cannot be ours.
    if crate::formats::try_detect(token).is_err() {
        return false;
    }
    let digest = sha256(token.as_bytes());
    let row = store::find_by_digest(&digest).or_else(|| crate::pending::verify_pending(token));
    let Some(row) = row else {
        return false;
    };
    store::as_owner(|| {
        store::revoke_now(row.id);
        policy::audit(
            caller,
            "leaked",
            row.id,
            &row.owner,
            &row.name,
            json!({"source": source, "url": url}),
        );
    });
    true
}

/// Report keys found in public: each stored one is revoked now and audited as leaked with
/// `source`. Returns one row per reported key, in order: its SHA-256 (hex) and `true_positive`
/// (ours, now revoked) or `false_positive`.
#[pg_extern(volatile, parallel_unsafe)]
fn report_leaked(
    keys: Option<Vec<Option<String>>>,
    source: default!(Option<&str>, "NULL"),
) -> TableIterator<'static, (name!(token_hash, String), name!(label, String))> {
    let caller = Caller::admin_only("report leaked keys");
    let keys = keys.unwrap_or_else(|| raise(ApiError::NullArgument("keys")));
    let source = source.unwrap_or("unknown");
    let out: Vec<(String, String)> = keys
        .into_iter()
        .map(|k| {
            let k = k.unwrap_or_default();
            let label = if handle(&caller, &k, source, None) {
                "true_positive"
            } else {
                "false_positive"
            };
            (hex::encode(sha256(k.as_bytes())), label.to_owned())
        })
        .collect();
    TableIterator::new(out)
}

/// GitHub secret scanning's partner endpoint: `payload` is `[{token, type, url, source}]`, the
/// answer `[{token_hash, token_type, label}]`. Administrators only.
#[pg_extern(volatile, strict, parallel_unsafe)]
fn secret_scanning(payload: Json) -> JsonB {
    let caller = Caller::admin_only("report leaked keys");
    let serde_json::Value::Array(items) = payload.0 else {
        raise(ApiError::InvalidArgument(
            "a secret scanning payload is a JSON array of {token, type, url, source}".into(),
        ))
    };
    let text =
        |v: &serde_json::Value, f: &str| v.get(f).and_then(|x| x.as_str()).map(str::to_owned);
    let answers: Vec<serde_json::Value> = items
        .iter()
        .map(|item| {
            let token = text(item, "token").unwrap_or_default();
            let source = text(item, "source").unwrap_or_else(|| "secret scanning".into());
            let url = text(item, "url");
            let ours = handle(&caller, &token, &source, url.as_deref());
            json!({
                "token_hash": hex::encode(sha256(token.as_bytes())),
                "token_type": text(item, "type"),
                "label": if ours { "true_positive" } else { "false_positive" },
            })
        })
        .collect();
    JsonB(serde_json::Value::Array(answers))
}
