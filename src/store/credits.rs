//! Credits.

use super::*;

/// The table's balance of key `key_id`: (credits, refilled at in µs).
pub fn credit_balance(key_id: i64) -> (i64, i64) {
    latest(
        c"SELECT COALESCE(credits, 0::pg_catalog.int8),
                 COALESCE(credits_refilled_at, created_at)
            FROM apikey.keys WHERE id OPERATOR(pg_catalog.=) $1",
        &[(pg_sys::INT8OID, pg_sys::Datum::from(key_id))],
        |r| (r.get::<i64>(1).unwrap_or(0), r.get::<i64>(2).unwrap_or(0)),
    )
    .into_iter()
    .next()
    .unwrap_or((0, 0))
}

pub fn add_credits(key_id: i64, n: i64) {
    spi(Spi::connect_mut(|c| {
        c.update(
            "UPDATE apikey.keys SET credits = GREATEST(credits OPERATOR(pg_catalog.+) $2, 0),
                    credits_peak = GREATEST(credits_peak, credits OPERATOR(pg_catalog.+) $2)
              WHERE id OPERATOR(pg_catalog.=) $1 AND credits IS NOT NULL",
            None,
            &[key_id.into(), n.into()],
        )
        .map(|_| ())
    }))
}

/// Write balances (key id, remaining, refilled at µs, version) from shared memory.
/// Write dirty balances; returns the keys whose row another transaction holds locked (a holder
/// may keep one locked in an idle transaction): never waited for, their balances stay dirty for
/// the next flush. Every other balance is settled (a key that no longer exists, or no longer has
/// credits, has nothing to write).
pub fn write_credits(rows: &[(i64, i64, i64, u64)]) -> Vec<i64> {
    let ids: Vec<i64> = rows.iter().map(|r| r.0).collect();
    let left: Vec<i64> = rows.iter().map(|r| r.1.max(0)).collect();
    let at: Vec<Option<TimestampWithTimeZone>> = rows
        .iter()
        .map(|r| TimestampWithTimeZone::try_from(r.2).ok())
        .collect();
    spi(Spi::connect_mut(|c| {
        let (free, held) = lock_free_keys(c, &ids)?;
        c.update(
            "UPDATE apikey.keys k SET credits = x.remaining, credits_refilled_at = COALESCE(x.at, k.credits_refilled_at)
               FROM ROWS FROM (pg_catalog.unnest($1::pg_catalog.int8[]), pg_catalog.unnest($2::pg_catalog.int8[]),
                               pg_catalog.unnest($3::pg_catalog.timestamptz[])) AS x(id, remaining, at)
              WHERE k.id OPERATOR(pg_catalog.=) x.id AND k.credits IS NOT NULL
                AND k.id OPERATOR(pg_catalog.=) ANY ($4::pg_catalog.int8[])",
            None,
            &[ids.into(), left.into(), at.into(), free.into()],
        )?;
        Ok::<_, pgrx::spi::SpiError>(held)
    }))
}
