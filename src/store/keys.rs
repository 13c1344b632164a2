//! Keys: creation, the rows a change needs, changes.

use super::*;

/// A new key's row.
pub struct NewKeyRow<'a> {
    pub owner: &'a str,
    pub name: &'a str,
    pub format: String,
    pub kind: KeyKind,
    pub scopes: Option<Vec<String>>,
    pub resource: Option<String>,
    pub display_prefix: String,
    pub last4: String,
    pub digest: Vec<u8>,
    pub expires_in: Option<Interval>,
    pub expires_at: Option<TimestampWithTimeZone>,
    pub created_by: String,
    pub metadata: Option<serde_json::Value>,
    pub sealed: Option<Vec<u8>>,
    pub rate_limit: Option<i32>,
    pub rate_period: Option<Interval>,
    pub rate_burst: Option<i32>,
    pub db_role: Option<String>,
    pub allowed_ips: Option<Vec<String>>,
    pub credits: Option<i64>,
    pub refill_amount: Option<i64>,
    pub refill_interval: Option<Interval>,
    pub limits: serde_json::Value,
}

/// Insert a key; None when a key with its digest is already stored (an import of a key already
/// here, or one imported twice).
pub fn insert_key(k: NewKeyRow) -> Option<i64> {
    spi(Spi::connect_mut(|c| {
        let t = c.update(
            "INSERT INTO apikey.keys (owner, name, format, kind, scopes, resource, display_prefix, last4,
                                     digest, expires_in, expires_at, created_by, metadata, sealed,
                                     rate_limit, rate_period, rate_burst, db_role, allowed_ips,
                                     credits, refill_amount, refill_interval, credits_refilled_at,
                                     credits_peak, limits)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12,
                     COALESCE($13, '{}'::pg_catalog.jsonb), $14, $15, $16, $17, $18,
                     $19::pg_catalog.text[]::pg_catalog.cidr[], $20, $21, $22,
                     CASE WHEN $20 IS NOT NULL THEN pg_catalog.now() END, $20, $23)
             ON CONFLICT (digest) DO NOTHING
             RETURNING id",
            Some(1),
            &[
                k.owner.into(),
                k.name.into(),
                k.format.into(),
                k.kind.name().into(),
                k.scopes.into(),
                k.resource.into(),
                k.display_prefix.into(),
                k.last4.into(),
                k.digest.into(),
                k.expires_in.into(),
                k.expires_at.into(),
                k.created_by.into(),
                k.metadata.map(JsonB).into(),
                k.sealed.into(),
                k.rate_limit.into(),
                k.rate_period.into(),
                k.rate_burst.into(),
                k.db_role.into(),
                k.allowed_ips.into(),
                k.credits.into(),
                k.refill_amount.into(),
                k.refill_interval.into(),
                JsonB(k.limits).into(),
            ],
        )?;
        if t.is_empty() {
            return Ok(None);
        }
        let id = t.first().get_by_name::<i64, _>("id")?;
        if let Some(id) = id {
            note_inserted(id);
        }
        Ok(id)
    }))
}

thread_local! {
    /// Keys this transaction inserted (create, import, a rotation's successor): nobody else can
    /// see their rows before the commit, whatever later updates in this transaction did to them.
    static INSERTED: std::cell::RefCell<Vec<i64>> = const { std::cell::RefCell::new(Vec::new()) };
}

fn note_inserted(id: i64) {
    INSERTED.with_borrow_mut(|v| v.push(id));
}

/// Did this transaction insert key `id`? (Conservative after a rolled-back subtransaction: the
/// key is then gone anyway.)
pub fn inserted_here(id: i64) -> bool {
    INSERTED.with_borrow(|v| v.contains(&id))
}

/// Forget the keys inserted by the transaction that just ended.
pub fn forget_inserted() {
    INSERTED.with_borrow_mut(|v| v.clear());
}

/// A key someone wants to change or see, with what bounds it.
pub struct Target {
    pub id: i64,
    pub owner: String,
    pub name: String,
    pub format: String,
    pub revoked: bool,
    /// Revocation scheduled for later: the key is in a rotation's grace period.
    pub in_grace: bool,
    pub expired: bool,
    pub disabled: bool,
    pub expires_in: Option<Interval>,
    pub rights: Rights,
    pub sealed: Option<Vec<u8>>,
    pub digest: Vec<u8>,
    /// A usage-limited key, and its refill (amount, interval µs).
    pub has_credits: bool,
    pub refill: Option<(i64, i64)>,
}

pub(crate) const TARGET_COLUMNS: &str =
    "owner, name, format, kind, scopes, resource, expires_at, rate_limit,
       rate_period, rate_burst, db_role, sealed, digest, expires_in,
       allowed_ips::pg_catalog.text AS allowed_ips, credits IS NOT NULL AS has_credits,
       refill_amount, refill_interval, limits,
       revoked_at IS NOT NULL AND revoked_at OPERATOR(pg_catalog.<=) pg_catalog.now() AS revoked,
       revoked_at IS NOT NULL AND revoked_at OPERATOR(pg_catalog.>) pg_catalog.now() AS in_grace,
       expires_at IS NOT NULL AND expires_at OPERATOR(pg_catalog.<=) pg_catalog.now() AS expired,
       disabled_at IS NOT NULL AS disabled";

/// Key `id` (locked FOR UPDATE when `lock`). With `owner`, the owner is part of the predicate and
/// the id is deliberately not indexable: the statement reads (and locks) only that owner's rows,
/// so neither the answer, the row locks nor the table's access statistics
/// (`pg_stat_get_xact_tuples_fetched`) say whether another owner's id exists.
///
/// Without `lock` the statement runs read-only (no transaction id is assigned), so reading a
/// key's state (`apikey.credits`) works on a hot standby and in READ ONLY transactions.
pub fn load_target(id: i64, owner: Option<&str>, lock: bool) -> Option<Target> {
    let lock_clause = if lock { " FOR UPDATE" } else { "" };
    let query = match owner {
        None => format!(
            "SELECT {TARGET_COLUMNS} FROM apikey.keys WHERE id OPERATOR(pg_catalog.=) $1{lock_clause}"
        ),
        Some(_) => format!(
            "SELECT {TARGET_COLUMNS} FROM apikey.keys
              WHERE owner OPERATOR(pg_catalog.=) $2
                AND (id OPERATOR(pg_catalog.+) 0) OPERATOR(pg_catalog.=) $1{lock_clause}"
        ),
    };
    let mut args = vec![id.into()];
    if let Some(owner) = owner {
        args.push(owner.into());
    }
    spi(Spi::connect_mut(|c| {
        let t = if lock {
            c.update(query.as_str(), Some(1), &args)?
        } else {
            c.select(query.as_str(), Some(1), &args)?
        };
        if t.is_empty() {
            return Ok(None);
        }
        let r = &t.first();
        Ok::<_, pgrx::spi::SpiError>(Some(Target {
            id,
            owner: col(r, "owner")?.unwrap_or_default(),
            name: col(r, "name")?.unwrap_or_default(),
            format: col(r, "format")?.unwrap_or_default(),
            rights: Rights {
                kind: kind_of(col(r, "kind")?),
                scopes: col(r, "scopes")?,
                resource: col(r, "resource")?,
                expires_at: col::<TimestampWithTimeZone>(r, "expires_at")?.map(Into::into),
                rate: rate_of(
                    col(r, "rate_limit")?,
                    col(r, "rate_period")?,
                    col(r, "rate_burst")?,
                ),
                db_role: col(r, "db_role")?,
                allowed: allowed_from_text(col(r, "allowed_ips")?),
                named: named_limits(col::<pgrx::JsonB>(r, "limits")?.map(|j| j.0)),
                metered: col(r, "has_credits")?.unwrap_or(false),
                deny: crate::gucs::deny_scopes(),
            },
            sealed: col(r, "sealed")?,
            digest: col(r, "digest")?.unwrap_or_default(),
            expires_in: col(r, "expires_in")?,
            has_credits: col(r, "has_credits")?.unwrap_or(false),
            refill: match (
                col::<i64>(r, "refill_amount")?,
                col::<Interval>(r, "refill_interval")?,
            ) {
                (Some(amount), Some(every)) => {
                    Some((amount, every.as_micros().clamp(1, i64::MAX as i128) as i64))
                }
                _ => None,
            },
            revoked: col(r, "revoked")?.unwrap_or(false),
            in_grace: col(r, "in_grace")?.unwrap_or(false),
            expired: col(r, "expired")?.unwrap_or(false),
            disabled: col(r, "disabled")?.unwrap_or(false),
        }))
    }))
}

/// Disable (`true`) or enable key `id`; false when it already was.
pub fn set_disabled(id: i64, disabled: bool) -> bool {
    spi(Spi::connect_mut(|c| {
        let changed = c.update(
            "UPDATE apikey.keys
                SET disabled_at = CASE WHEN $2 THEN pg_catalog.now() END
              WHERE id OPERATOR(pg_catalog.=) $1 AND (disabled_at IS NOT NULL) OPERATOR(pg_catalog.<>) $2
              RETURNING id",
            None,
            &[id.into(), disabled.into()],
        )?;
        Ok::<_, pgrx::spi::SpiError>(!changed.is_empty())
    }))
}

pub fn revoke_now(id: i64) {
    spi(Spi::connect_mut(|c| {
        c.update(
            "UPDATE apikey.keys SET revoked_at = pg_catalog.now() WHERE id OPERATOR(pg_catalog.=) $1",
            None,
            &[id.into()],
        )
        .map(|_| ())
    }))
}

pub fn delete_key(id: i64) {
    spi(Spi::connect_mut(|c| {
        c.update(
            "DELETE FROM apikey.keys WHERE id OPERATOR(pg_catalog.=) $1",
            None,
            &[id.into()],
        )
        .map(|_| ())
    }))
}

/// The parts of a rotated key that are new; the rest is copied from key `old_id`.
pub struct Rotated {
    pub display_prefix: String,
    pub last4: String,
    pub digest: Vec<u8>,
    pub created_by: String,
    pub sealed: Option<Vec<u8>>,
    pub expires_at: Option<TimestampWithTimeZone>,
    /// The balance the successor starts with (the old key's, moved).
    pub credits: Option<i64>,
}

/// Insert the successor of `old_id` and schedule the old key's revocation after `grace`.
pub fn rotate(old_id: i64, new: Rotated, grace: Interval) -> i64 {
    spi(Spi::connect_mut(|c| {
        let new_id = c
            .update(
                crate::key_columns::rotation_insert().as_str(),
                Some(1),
                &[
                    old_id.into(),
                    new.display_prefix.into(),
                    new.last4.into(),
                    new.digest.into(),
                    new.created_by.into(),
                    new.sealed.into(),
                    new.expires_at.into(),
                    new.credits.into(),
                ],
            )?
            .first()
            .get_by_name::<i64, _>("id")?;
        // The old key keeps no refill either: during its grace it would otherwise refill
        // beside its successor, and a chain of rotations would multiply the allowance.
        c.update(
            "UPDATE apikey.keys
                SET revoked_at = LEAST(COALESCE(revoked_at, 'infinity'::pg_catalog.timestamptz),
                                       pg_catalog.now() OPERATOR(pg_catalog.+) $2),
                    refill_amount = NULL, refill_interval = NULL,
                    credits = CASE WHEN credits IS NOT NULL THEN 0::pg_catalog.int8 END
              WHERE id OPERATOR(pg_catalog.=) $1",
            None,
            &[old_id.into(), grace.into()],
        )?;
        // The balance moved to the successor in this transaction: the old key's durable balance
        // goes with it, so a crash before the next flush cannot give it back beside the
        // successor's.
        if crate::catalog::get()
            .relation_if_present("held_balances")
            .is_some()
        {
            c.update(
                "DELETE FROM apikey.held_balances WHERE key_id OPERATOR(pg_catalog.=) $1",
                None,
                &[old_id.into()],
            )?;
        }
        if let Some(id) = new_id {
            note_inserted(id);
        }
        Ok::<_, pgrx::spi::SpiError>(new_id)
    }))
    .unwrap_or_else(|| internal("INSERT … RETURNING returned no row"))
}

/// An application key's sealed form, for keys that are valid now: (sealed, digest).
pub fn sealed_app_key(id: i64) -> Option<(Vec<u8>, Vec<u8>)> {
    spi(Spi::connect(|c| {
        let t = c.select(
            "SELECT sealed, digest FROM apikey.keys
              WHERE id OPERATOR(pg_catalog.=) $1
                AND kind OPERATOR(pg_catalog.=) 'app'
                AND sealed IS NOT NULL
                AND disabled_at IS NULL
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
            col::<Vec<u8>>(&r, "sealed")?.unwrap_or_default(),
            col::<Vec<u8>>(&r, "digest")?.unwrap_or_default(),
        )))
    }))
}
