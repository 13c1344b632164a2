//! Usage, written by the flush worker.

use super::*;

pub struct UsageBatch {
    pub ids: Vec<i64>,
    pub last_used: Vec<Option<TimestampWithTimeZone>>,
    /// One column per event kind, in `usage_table::Event` order.
    pub counts: [Vec<i64>; 5],
}

/// Returns the keys whose row another transaction holds locked (a holder may keep one locked in
/// an idle transaction): their `last_used_at` is not written, never waited for, and stays pending
/// for the next flush. The counts go to `apikey.usage`, which no one else locks.
pub fn write_usage(b: UsageBatch) -> Result<Vec<i64>, pgrx::spi::SpiError> {
    let [uses, expired, revoked, limited, denied] = b.counts;
    Spi::connect_mut(|c| {
        let (free, held) = lock_free_keys(c, &b.ids)?;
        c.update(
            "UPDATE apikey.keys k SET last_used_at = GREATEST(k.last_used_at, u.at)
               FROM ROWS FROM (pg_catalog.unnest($1::pg_catalog.int8[]), pg_catalog.unnest($2::pg_catalog.timestamptz[])) AS u(id, at)
              WHERE k.id OPERATOR(pg_catalog.=) u.id AND u.at IS NOT NULL
                AND k.id OPERATOR(pg_catalog.=) ANY ($3::pg_catalog.int8[])",
            None,
            &[b.ids.clone().into(), b.last_used.into(), free.into()],
        )?;
        c.update(
            "INSERT INTO apikey.usage AS u (key_id, bucket, uses, expired, revoked, rate_limited, denied)
             SELECT x.id, pg_catalog.date_trunc('minute', pg_catalog.now()), x.uses, x.expired, x.revoked, x.limited, x.denied
               FROM ROWS FROM (pg_catalog.unnest($1::pg_catalog.int8[]), pg_catalog.unnest($2::pg_catalog.int8[]),
                               pg_catalog.unnest($3::pg_catalog.int8[]), pg_catalog.unnest($4::pg_catalog.int8[]),
                               pg_catalog.unnest($5::pg_catalog.int8[]), pg_catalog.unnest($6::pg_catalog.int8[]))
                    AS x(id, uses, expired, revoked, limited, denied)
              WHERE GREATEST(x.uses, x.expired, x.revoked, x.limited, x.denied) OPERATOR(pg_catalog.>) 0
             ON CONFLICT (key_id, bucket) DO UPDATE
                SET uses = u.uses OPERATOR(pg_catalog.+) excluded.uses,
                    expired = u.expired OPERATOR(pg_catalog.+) excluded.expired,
                    revoked = u.revoked OPERATOR(pg_catalog.+) excluded.revoked,
                    rate_limited = u.rate_limited OPERATOR(pg_catalog.+) excluded.rate_limited,
                    denied = u.denied OPERATOR(pg_catalog.+) excluded.denied",
            None,
            &[
                b.ids.into(),
                uses.into(),
                expired.into(),
                revoked.into(),
                limited.into(),
                denied.into(),
            ],
        )?;
        Ok(held)
    })
}
