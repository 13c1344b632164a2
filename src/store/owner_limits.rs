//! Owner-wide limits.

use super::*;

/// Every owner limit: (owner or pattern, name, max, per, burst).
/// A row of `apikey.owner_limits`.
pub struct OwnerLimit {
    pub owner: String,
    pub name: String,
    pub max: i32,
    pub per: Interval,
    pub burst: Option<i32>,
    pub global: bool,
}

pub fn owner_limits() -> Vec<OwnerLimit> {
    // Under the latest snapshot: backends cache what this returns, so a transaction with an old
    // snapshot must not load (and keep) the limits as they were before one was set. `global`
    // through the row's JSON: between a library upgrade and ALTER EXTENSION UPDATE the table
    // has no such column yet, and keys must still verify.
    latest(
        c"SELECT owner, name, max, per, burst, pg_catalog.to_jsonb(l) OPERATOR(pg_catalog.->>) 'global' FROM apikey.owner_limits l",
        &[],
        |r| OwnerLimit {
            owner: r.get::<String>(1).unwrap_or_default(),
            name: r.get::<String>(2).unwrap_or_default(),
            max: r.get::<i32>(3).unwrap_or(1),
            per: r
                .get::<Interval>(4)
                .unwrap_or_else(|| Interval::from_micros(1)),
            burst: r.get::<i32>(5),
            global: r.get::<String>(6).as_deref() == Some("true"),
        },
    )
}

pub fn set_owner_limit(
    owner: &str,
    name: &str,
    max: i32,
    per: Interval,
    burst: Option<i32>,
    global: bool,
    by: &str,
) {
    spi(Spi::connect_mut(|c| {
        c.update(
            "INSERT INTO apikey.owner_limits (owner, name, max, per, burst, global, set_by) VALUES ($1, $2, $3, $4, $5, $6, $7)
             ON CONFLICT (owner, name) DO UPDATE
                SET max = excluded.max, per = excluded.per, burst = excluded.burst, global = excluded.global,
                    set_by = excluded.set_by, set_at = pg_catalog.now()",
            None,
            &[
                owner.into(),
                name.into(),
                max.into(),
                per.into(),
                burst.into(),
                global.into(),
                by.into(),
            ],
        )
        .map(|_| ())
    }))
}

pub fn clear_owner_limit(owner: &str, name: &str) -> bool {
    spi(Spi::connect_mut(|c| {
        let t = c.update(
            "DELETE FROM apikey.owner_limits WHERE owner OPERATOR(pg_catalog.=) $1 AND name OPERATOR(pg_catalog.=) $2 RETURNING owner",
            None,
            &[owner.into(), name.into()],
        )?;
        Ok::<_, pgrx::spi::SpiError>(!t.is_empty())
    }))
}
