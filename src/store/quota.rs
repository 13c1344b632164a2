//! The creation quota's durable log.

use super::*;

/// Lock bucket `bucket`'s row (creating it), and return its event log and the clock, in
/// microseconds. Concurrent creators queue on the row lock.
pub fn lock_quota(bucket: &str) -> (Vec<i64>, i64) {
    spi(Spi::connect_mut(|c| {
        c.update(
            "INSERT INTO apikey.rate_limits (bucket, hits) VALUES ($1, '{}') ON CONFLICT (bucket) DO NOTHING",
            None,
            &[bucket.into()],
        )?;
        let t = c.update(
            "SELECT hits,
                    (EXTRACT(epoch FROM pg_catalog.clock_timestamp()) OPERATOR(pg_catalog.*) 1000000)::pg_catalog.int8 AS now_us
               FROM apikey.rate_limits WHERE bucket OPERATOR(pg_catalog.=) $1 FOR UPDATE",
            Some(1),
            &[bucket.into()],
        )?;
        let r = t.first();
        Ok::<_, pgrx::spi::SpiError>((
            col::<Vec<i64>>(&r, "hits")?.unwrap_or_default(),
            col::<i64>(&r, "now_us")?.unwrap_or_default(),
        ))
    }))
}

pub fn save_quota(bucket: &str, hits: Vec<i64>) {
    spi(Spi::connect_mut(|c| {
        c.update(
            "UPDATE apikey.rate_limits SET hits = $2, updated_at = pg_catalog.now() WHERE bucket OPERATOR(pg_catalog.=) $1",
            None,
            &[bucket.into(), hits.into()],
        )
        .map(|_| ())
    }))
}
