//! Key storage and lifecycle: create, verify, revoke, delete, rotate.
//!
//! Only SHA-256 of a key is stored. Verification looks the digest up through the unique index with
//! a read-only, prepared SPI `SELECT` (no xid, so it works in READ ONLY transactions and on a
//! standby), then compares digests in constant time. Every change writes an audit row in the same
//! transaction. All table access runs as the extension owner (see `privilege`).

use std::cell::RefCell;

use pg_apikey_core::digest::{ct_eq, sha256};
use pg_apikey_core::errors::ApiError;
use pg_apikey_core::format::{last_chars, Format};
use pg_apikey_core::scope;
use pgrx::prelude::*;
use pgrx::spi::OwnedPreparedStatement;
use pgrx::{pg_sys, JsonB, PgOid};
use serde_json::json;

use crate::errors::{raise, spi};
use crate::formats;
use crate::identity::{self, Identity};
use crate::key_type::ApiKey;
use crate::privilege;

/// A stored key as `verify` reports it.
#[derive(Clone)]
pub struct KeyRow {
    pub id: i64,
    pub owner: String,
    pub name: String,
    pub kind: String,
    pub format: String,
    pub scopes: Option<Vec<String>>,
    pub resource: Option<String>,
    pub created_at: TimestampWithTimeZone,
    pub expires_at: Option<TimestampWithTimeZone>,
    pub metadata: serde_json::Value,
}

const LOOKUP_SQL: &str = "
SELECT id, owner, name, kind, format, scopes, resource, created_at, expires_at, metadata, digest,
       revoked_at IS NOT NULL AND revoked_at <= pg_catalog.statement_timestamp() AS revoked,
       expires_at IS NOT NULL AND expires_at <= pg_catalog.statement_timestamp() AS expired
  FROM apikey.keys
 WHERE digest = $1";

thread_local! {
    static LOOKUP_PLAN: RefCell<Option<OwnedPreparedStatement>> = const { RefCell::new(None) };
}

pub fn relcache_changed(_relid: pg_sys::Oid) {}

/// Find the key by digest and judge it. Unknown, revoked and deleted keys are the same error;
/// "expired" is told only to a caller who proved they hold the key (the digest matched).
pub fn lookup(key: &ApiKey) -> KeyRow {
    let digest = sha256(key.as_str().as_bytes());
    let found = privilege::as_owner(|| {
        spi(Spi::connect(|c| {
            let missing = LOOKUP_PLAN.with_borrow(|p| p.is_none());
            if missing {
                let plan = c
                    .prepare(LOOKUP_SQL, &[PgOid::from(pg_sys::BYTEAOID)])?
                    .keep();
                LOOKUP_PLAN.with_borrow_mut(|p| *p = Some(plan));
            }
            LOOKUP_PLAN.with_borrow(|p| {
                let plan = p.as_ref().expect("prepared above");
                let table = c.select(plan, Some(1), &[digest.to_vec().into()])?;
                if table.is_empty() {
                    return Ok(None);
                }
                let row = table.first();
                let stored: Vec<u8> = row.get(11)?.unwrap_or_default();
                Ok(Some((
                    KeyRow {
                        id: row.get(1)?.unwrap_or_default(),
                        owner: row.get(2)?.unwrap_or_default(),
                        name: row.get(3)?.unwrap_or_default(),
                        kind: row.get(4)?.unwrap_or_default(),
                        format: row.get(5)?.unwrap_or_default(),
                        scopes: row.get(6)?,
                        resource: row.get(7)?,
                        created_at: row.get(8)?.expect("created_at is NOT NULL"),
                        expires_at: row.get(9)?,
                        metadata: row.get::<JsonB>(10)?.map(|j| j.0).unwrap_or_default(),
                    },
                    stored,
                    row.get::<bool>(12)?.unwrap_or(true),
                    row.get::<bool>(13)?.unwrap_or(true),
                )))
            })
        }))
    });
    match found {
        Some((row, stored, revoked, expired)) if ct_eq(&stored, &digest) => {
            if revoked {
                raise(ApiError::InvalidKey)
            }
            if expired {
                raise(ApiError::ExpiredKey)
            }
            row
        }
        _ => raise(ApiError::InvalidKey),
    }
}

/// Check a key and return its record; raises 28000 for an unknown, revoked, deleted or expired key.
// pgrx reads the column names from this literal type, so it cannot be an alias.
#[allow(clippy::type_complexity)]
#[pg_extern(stable, strict, parallel_restricted, requires = ["api_key_type"])]
fn verify(
    key: ApiKey,
) -> TableIterator<
    'static,
    (
        name!(id, i64),
        name!(owner, String),
        name!(name, String),
        name!(kind, String),
        name!(format, String),
        name!(scopes, Option<Vec<String>>),
        name!(resource, Option<String>),
        name!(created_at, TimestampWithTimeZone),
        name!(expires_at, Option<TimestampWithTimeZone>),
        name!(metadata, JsonB),
    ),
> {
    let r = lookup(&key);
    TableIterator::once((
        r.id,
        r.owner,
        r.name,
        r.kind,
        r.format,
        r.scopes,
        r.resource,
        r.created_at,
        r.expires_at,
        JsonB(r.metadata),
    ))
}

/// Who is calling a management function, captured before switching to the extension owner.
struct Caller {
    name: String,
    admin: bool,
    identity: Option<Identity>,
}

impl Caller {
    fn get() -> Self {
        Caller {
            name: privilege::caller_name(),
            admin: privilege::caller_is_admin(),
            identity: identity::current(),
        }
    }

    /// Admins manage every key; anyone else only keys of the owner they authenticated as.
    fn may_manage(&self, owner: &str) -> bool {
        self.admin || self.identity.as_ref().is_some_and(|i| i.owner == owner)
    }
}

fn audit(
    caller: &Caller,
    action: &str,
    key_id: i64,
    owner: &str,
    key_name: &str,
    detail: serde_json::Value,
) {
    spi(Spi::connect_mut(|c| {
        c.update(
            "INSERT INTO apikey.audit_log (action, key_id, owner, key_name, actor, session_actor, actor_key_id, detail)
             VALUES ($1, $2, $3, $4, $5, session_user, $6, $7)",
            None,
            &[
                action.into(),
                key_id.into(),
                owner.into(),
                key_name.into(),
                caller.name.clone().into(),
                caller.identity.as_ref().map(|i| i.key_id).into(),
                JsonB(detail).into(),
            ],
        )
        .map(|_| ())
    }))
}

fn invalid(msg: impl Into<String>) -> ! {
    raise(ApiError::InvalidArgument(msg.into()))
}

fn required<'a>(value: Option<&'a str>, arg: &'static str) -> &'a str {
    match value {
        None => raise(ApiError::NullArgument(arg)),
        Some(v) if v.trim().is_empty() => invalid(format!("{arg} must not be empty")),
        Some(v) if v.chars().count() > 200 => {
            invalid(format!("{arg} must be at most 200 characters"))
        }
        Some(v) => v,
    }
}

/// A freshly generated key and the parts of it we store.
struct NewKey {
    plaintext: String,
    digest: Vec<u8>,
    display_prefix: String,
    last4: String,
}

fn generate(format: &Format) -> NewKey {
    let plaintext = format.generate().unwrap_or_else(|e| {
        pgrx::error!("pg_apikey: the operating system's random generator failed: {e}")
    });
    NewKey {
        digest: sha256(plaintext.as_bytes()).to_vec(),
        display_prefix: format.display_prefix(&plaintext).to_owned(),
        last4: last_chars(&plaintext).to_owned(),
        plaintext,
    }
}

/// What a new key may hold when its creator is a key owner rather than an admin: never more than
/// the key they authenticated with, so a scoped key cannot mint an unscoped one.
fn check_no_escalation(
    caller: &Caller,
    scopes: &Option<Vec<String>>,
    resource: Option<&str>,
    kind: &str,
) {
    if caller.admin {
        return;
    }
    let Some(me) = &caller.identity else { return };
    let denied = |what: &str| -> ! {
        raise(ApiError::InvalidArgument(format!(
            "a key can only create keys within its own rights: {what}"
        )))
    };
    if kind != "user" {
        raise(ApiError::AdminOnly("create application keys"));
    }
    if let Some(mine) = &me.scopes {
        match scopes {
            None => denied("the new key must be scoped"),
            Some(wanted) if !wanted.iter().all(|s| scope::covers(mine, s)) => {
                denied("a requested scope is not held")
            }
            _ => {}
        }
    }
    if let Some(mine) = &me.resource {
        if resource != Some(mine.as_str()) {
            denied("the new key must be limited to the same resource");
        }
    }
}

/// Create a key. The plaintext is returned here and never again.
#[allow(clippy::too_many_arguments)]
#[pg_extern(volatile, parallel_unsafe, requires = ["api_key_type"])]
fn create(
    owner: Option<&str>,
    name: Option<&str>,
    expires_in: default!(Option<Interval>, "NULL"),
    scopes: default!(Option<Vec<String>>, "NULL"),
    resource: default!(Option<&str>, "NULL"),
    kind: default!(Option<&str>, "'user'"),
    format: default!(Option<&str>, "NULL"),
    metadata: default!(Option<JsonB>, "NULL"),
) -> TableIterator<'static, (name!(id, i64), name!(api_key, ApiKey))> {
    let caller = Caller::get();
    let owner = required(owner, "owner");
    let name = required(name, "name");
    if let Some(i) = expires_in {
        if i.as_micros() <= 0 {
            invalid("expires_in must be a positive interval, or NULL for a key that never expires");
        }
    }
    if let Some(list) = &scopes {
        if let Some(bad) = list.iter().find(|s| !scope::is_valid(s)) {
            invalid(format!("invalid scope \"{bad}\": use segments of [a-z0-9_.-] separated by \":\", with \"*\" only as a whole last segment"));
        }
    }
    if resource.is_some_and(|r| r.trim().is_empty()) {
        invalid("resource must not be empty; pass NULL for a key that reaches every resource");
    }
    let kind = kind.unwrap_or("user");
    if kind != "user" && kind != "app" {
        invalid("kind must be \"user\" or \"app\"");
    }
    if let Some(m) = &metadata {
        if !m.0.is_object() {
            invalid("metadata must be a JSON object");
        }
    }
    if !caller.may_manage(owner) {
        raise(ApiError::NotKeyAdmin);
    }
    check_no_escalation(&caller, &scopes, resource, kind);
    let format = formats::by_name(
        &format
            .map(str::to_owned)
            .unwrap_or_else(crate::gucs::default_format),
    );

    let key = generate(&format);
    let sealed = crate::recovery::seal_for(&format.name, &key.plaintext);
    let id = privilege::as_owner(|| {
        crate::ratelimit::charge_creation(owner);
        let id: i64 = spi(Spi::connect_mut(|c| {
            c.update(
                "INSERT INTO apikey.keys (owner, name, format, kind, scopes, resource, display_prefix, last4,
                                         digest, expires_in, expires_at, created_by, metadata, sealed)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, pg_catalog.now() + $10, $11,
                         COALESCE($12, '{}'::jsonb), $13)
                 RETURNING id",
                Some(1),
                &[
                    owner.into(),
                    name.into(),
                    format.name.clone().into(),
                    kind.into(),
                    scopes.clone().into(),
                    resource.into(),
                    key.display_prefix.clone().into(),
                    key.last4.clone().into(),
                    key.digest.clone().into(),
                    expires_in.into(),
                    caller.name.clone().into(),
                    metadata.map(|m| JsonB(m.0)).into(),
                    sealed.clone().into(),
                ],
            )?
            .first()
            .get_one::<i64>()
        }))
        .expect("INSERT … RETURNING id returns a row");
        audit(
            &caller,
            "create",
            id,
            owner,
            name,
            json!({"format": format.name, "kind": kind, "scopes": scopes, "resource": resource,
                   "expires_in": expires_in.map(|i| i.to_string())}),
        );
        id
    });
    TableIterator::once((id, ApiKey::from_generated(key.plaintext)))
}

/// The stored facts a change needs, with the row locked against concurrent changes.
struct Locked {
    owner: String,
    name: String,
    format: String,
    revoked: bool,
}

/// Lock key `id` for a change by `caller`. Keys the caller may not manage are reported as missing,
/// so key ids are no oracle for other owners' keys.
fn lock_for_change(caller: &Caller, id: i64) -> Locked {
    let row = spi(Spi::connect_mut(|c| {
        let t = c.update(
            "SELECT owner, name, format, revoked_at IS NOT NULL AND revoked_at <= pg_catalog.now()
               FROM apikey.keys WHERE id = $1 FOR UPDATE",
            Some(1),
            &[id.into()],
        )?;
        if t.is_empty() {
            return Ok(None);
        }
        let r = t.first();
        Ok(Some(Locked {
            owner: r.get(1)?.unwrap_or_default(),
            name: r.get(2)?.unwrap_or_default(),
            format: r.get(3)?.unwrap_or_default(),
            revoked: r.get(4)?.unwrap_or(false),
        }))
    }));
    match row {
        Some(l) if caller.may_manage(&l.owner) => l,
        _ => raise(ApiError::KeyNotFound(id)),
    }
}

/// Revoke a key now. Returns false if it was already revoked.
#[pg_extern(volatile, strict, parallel_unsafe)]
fn revoke(id: i64) -> bool {
    let caller = Caller::get();
    privilege::as_owner(|| {
        let key = lock_for_change(&caller, id);
        if key.revoked {
            return false;
        }
        spi(Spi::connect_mut(|c| {
            c.update(
                "UPDATE apikey.keys SET revoked_at = pg_catalog.now() WHERE id = $1",
                None,
                &[id.into()],
            )
            .map(|_| ())
        }));
        audit(&caller, "revoke", id, &key.owner, &key.name, json!({}));
        true
    })
}

/// Delete a key now; it is invalid in every session the moment this commits. The audit log keeps
/// its history.
#[pg_extern(volatile, strict, parallel_unsafe)]
fn delete(id: i64) -> bool {
    let caller = Caller::get();
    privilege::as_owner(|| {
        let key = lock_for_change(&caller, id);
        spi(Spi::connect_mut(|c| {
            c.update("DELETE FROM apikey.keys WHERE id = $1", None, &[id.into()])
                .map(|_| ())
        }));
        audit(&caller, "delete", id, &key.owner, &key.name, json!({}));
        true
    })
}

/// Replace a key with a new one of the same owner, name and settings, shown once. The old key
/// keeps working for `grace` (never past its own expiry), then is revoked.
#[pg_extern(volatile, parallel_unsafe, requires = ["api_key_type"])]
fn rotate(
    id: i64,
    grace: default!(Option<Interval>, "'0'"),
) -> TableIterator<'static, (name!(id, i64), name!(api_key, ApiKey))> {
    let caller = Caller::get();
    let grace = grace.unwrap_or_else(|| Interval::from_micros(0));
    if grace.as_micros() < 0 {
        invalid("grace must not be negative");
    }
    let new_id = privilege::as_owner(|| {
        let old = lock_for_change(&caller, id);
        if old.revoked {
            raise(ApiError::KeyRevoked(id));
        }
        let key = generate(&formats::by_name(&old.format));
        let sealed = crate::recovery::seal_for(&old.format, &key.plaintext);
        let new_id = spi(Spi::connect_mut(|c| {
            let new_id = c
                .update(
                    "INSERT INTO apikey.keys (owner, name, format, kind, scopes, resource, display_prefix, last4,
                                             digest, expires_in, expires_at, created_by, metadata, rotated_from, sealed)
                     SELECT owner, name, format, kind, scopes, resource, $2, $3, $4, expires_in,
                            pg_catalog.now() + expires_in, $5, metadata, id, $6
                       FROM apikey.keys WHERE id = $1
                     RETURNING id",
                    Some(1),
                    &[
                        id.into(),
                        key.display_prefix.clone().into(),
                        key.last4.clone().into(),
                        key.digest.clone().into(),
                        caller.name.clone().into(),
                        sealed.clone().into(),
                    ],
                )?
                .first()
                .get_one::<i64>()?;
            c.update(
                "UPDATE apikey.keys
                    SET revoked_at = LEAST(COALESCE(revoked_at, 'infinity'), pg_catalog.now() + $2)
                  WHERE id = $1",
                None,
                &[id.into(), grace.into()],
            )?;
            Ok::<_, pgrx::spi::SpiError>(new_id)
        }))
        .expect("INSERT … RETURNING id returns a row");
        audit(
            &caller,
            "rotate",
            id,
            &old.owner,
            &old.name,
            json!({"new_key_id": new_id, "grace": grace.to_string()}),
        );
        (new_id, key.plaintext)
    });
    TableIterator::once((new_id.0, ApiKey::from_generated(new_id.1)))
}
