//! Credit leases (`apikey.leases`), the primary's ledger of what standbys hold.

use super::*;

/// What the ledger knows of a key: may it lease, and its refill (amount, interval µs).
pub struct KeyState {
    pub id: i64,
    pub active: bool,
    pub refill: Option<(i64, i64)>,
}

pub fn key_states(ids: &[i64]) -> Vec<KeyState> {
    spi(Spi::connect(|c| {
        let mut out = Vec::new();
        for row in c.select(
            "SELECT id,
                    credits IS NOT NULL AND revoked_at IS NULL AND disabled_at IS NULL
                        AND (expires_at IS NULL OR expires_at OPERATOR(pg_catalog.>) pg_catalog.now()) AS active,
                    refill_amount,
                    (pg_catalog.date_part('epoch', refill_interval) OPERATOR(pg_catalog.*) 1000000)::pg_catalog.int8 AS refill_us
               FROM apikey.keys WHERE id OPERATOR(pg_catalog.=) ANY ($1::pg_catalog.int8[])",
            None,
            &[ids.to_vec().into()],
        )? {
            let amount = row.get_by_name::<i64, _>("refill_amount")?;
            let us = row.get_by_name::<i64, _>("refill_us")?;
            out.push(KeyState {
                id: row.get_by_name::<i64, _>("id")?.unwrap_or(0),
                active: row.get_by_name::<bool, _>("active")?.unwrap_or(false),
                refill: amount.zip(us),
            });
        }
        Ok::<_, pgrx::spi::SpiError>(out)
    }))
}

/// The owners of keys `ids` (a standby asks for a global limit's tokens by a key of its owner).
pub fn key_owners(ids: &[i64]) -> Vec<(i64, String)> {
    spi(Spi::connect(|c| {
        let mut out = Vec::new();
        for row in c.select(
            "SELECT id, owner FROM apikey.keys WHERE id OPERATOR(pg_catalog.=) ANY ($1::pg_catalog.int8[])",
            None,
            &[ids.to_vec().into()],
        )? {
            if let (Some(id), Some(owner)) = (row.get::<i64>(1)?, row.get::<String>(2)?) {
                out.push((id, owner));
            }
        }
        Ok::<_, pgrx::spi::SpiError>(out)
    }))
}

/// Take up to `n` out of `standby`'s lease of `key_id`: what it may give back.
pub fn give_back_lease(standby: &str, key_id: i64, n: i64) -> i64 {
    spi(Spi::connect_mut(|c| {
        let back = c.update(
                "WITH l AS (SELECT held FROM apikey.leases
                             WHERE standby OPERATOR(pg_catalog.=) $1 AND key_id OPERATOR(pg_catalog.=) $2 FOR UPDATE)
                 UPDATE apikey.leases x SET held = x.held OPERATOR(pg_catalog.-) LEAST($3, l.held)
                   FROM l
                  WHERE x.standby OPERATOR(pg_catalog.=) $1 AND x.key_id OPERATOR(pg_catalog.=) $2
                 RETURNING LEAST($3, l.held)",
                None,
                &[standby.into(), key_id.into(), n.into()],
            )?;
        // No lease of that name, role and key: nothing to give back.
        if back.is_empty() {
            return Ok(0);
        }
        Ok::<_, pgrx::spi::SpiError>(back.first().get::<i64>(1)?.unwrap_or(0))
    }))
}

/// A key that may lease no more: its lease keeps what the standby says it holds (to give back),
/// and goes once nothing is left.
pub fn end_lease(standby: &str, key_id: i64, holds: i64) {
    spi(Spi::connect_mut(|c| {
        c.update(
            "UPDATE apikey.leases SET held = LEAST(held, $3)
              WHERE standby OPERATOR(pg_catalog.=) $1 AND key_id OPERATOR(pg_catalog.=) $2",
            None,
            &[standby.into(), key_id.into(), holds.into()],
        )?;
        c.update(
            "DELETE FROM apikey.leases
              WHERE standby OPERATOR(pg_catalog.=) $1 AND key_id OPERATOR(pg_catalog.=) $2 AND held OPERATOR(pg_catalog.=) 0",
            None,
            &[standby.into(), key_id.into()],
        )
        .map(|_| ())
    }))
}

/// Record what `standby` was granted now: per key (key id, credits granted, credits it says it
/// still holds), ids distinct. The grants were taken out of the balances in memory already; here
/// they go into the keys' rows and `apikey.leases` (what the standby holds, never more than the
/// ledger says, plus the grant), and every listed lease is renewed for `ttl_seconds`.
pub fn record_leases(standby: &str, rows: &[(i64, i64, i64)], ttl_seconds: i64) {
    if rows.is_empty() {
        return;
    }
    let ids: Vec<i64> = rows.iter().map(|r| r.0).collect();
    let granted: Vec<i64> = rows.iter().map(|r| r.1).collect();
    let holds: Vec<i64> = rows.iter().map(|r| r.2).collect();
    spi(Spi::connect_mut(|c| {
        c.update(
            "UPDATE apikey.keys k SET credits = GREATEST(k.credits OPERATOR(pg_catalog.-) x.g, 0)
               FROM ROWS FROM (pg_catalog.unnest($1::pg_catalog.int8[]), pg_catalog.unnest($2::pg_catalog.int8[])) AS x(id, g)
              WHERE k.id OPERATOR(pg_catalog.=) x.id AND x.g OPERATOR(pg_catalog.>) 0 AND k.credits IS NOT NULL",
            None,
            &[ids.clone().into(), granted.clone().into()],
        )?;
        c.update(
            "WITH x AS (SELECT * FROM ROWS FROM (pg_catalog.unnest($2::pg_catalog.int8[]),
                                                 pg_catalog.unnest($3::pg_catalog.int8[]),
                                                 pg_catalog.unnest($4::pg_catalog.int8[])) AS x(id, g, holds))
             INSERT INTO apikey.leases AS l (standby, key_id, held, granted_at, expires_at)
             SELECT $1, x.id, x.g, pg_catalog.now(),
                    pg_catalog.now() OPERATOR(pg_catalog.+) pg_catalog.make_interval(secs => $5)
               FROM x
             ON CONFLICT (standby, key_id) DO UPDATE
                SET held = LEAST(l.held, (SELECT x.holds FROM x WHERE x.id OPERATOR(pg_catalog.=) l.key_id))
                           OPERATOR(pg_catalog.+) excluded.held,
                    granted_at = CASE WHEN excluded.held OPERATOR(pg_catalog.>) 0 THEN excluded.granted_at ELSE l.granted_at END,
                    expires_at = excluded.expires_at",
            None,
            &[
                standby.into(),
                ids.into(),
                granted.into(),
                holds.into(),
                (ttl_seconds as f64).into(),
            ],
        )
        .map(|_| ())
    }))
}

/// Forget expired leases: their remainder counts as spent (the standby stopped spending it).
pub fn expire_leases() {
    spi(Spi::connect_mut(|c| {
        c.update(
            "DELETE FROM apikey.leases WHERE (standby, key_id) IN (
                 SELECT standby, key_id FROM apikey.leases
                  WHERE expires_at OPERATOR(pg_catalog.<) pg_catalog.now() FOR UPDATE SKIP LOCKED)",
            None,
            &[],
        )
        .map(|_| ())
    }))
}

/// Of key rows `ids`, those this transaction could lock (no other holds them).
pub fn lock_free_key_rows(ids: &[i64]) -> Vec<i64> {
    spi(Spi::connect_mut(|c| {
        lock_free_keys(c, ids).map(|(free, _)| free)
    }))
}
