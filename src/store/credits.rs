//! Credits.

use super::*;

/// The table's balance of key `key_id`: (credits, refilled at in µs). A balance the worker wrote
/// aside while the key's row was held is the newer one.
pub fn credit_balance(key_id: i64) -> (i64, i64) {
    let query = if held_balances() {
        c"SELECT COALESCE(h.credits, k.credits, 0::pg_catalog.int8),
                 COALESCE(h.refilled_at, k.credits_refilled_at, k.created_at)
            FROM apikey.keys k
            LEFT JOIN apikey.held_balances h ON h.key_id OPERATOR(pg_catalog.=) k.id
           WHERE k.id OPERATOR(pg_catalog.=) $1"
    } else {
        c"SELECT COALESCE(credits, 0::pg_catalog.int8), COALESCE(credits_refilled_at, created_at)
            FROM apikey.keys WHERE id OPERATOR(pg_catalog.=) $1"
    };
    latest(
        query,
        &[(pg_sys::INT8OID, pg_sys::Datum::from(key_id))],
        |r| (r.get::<i64>(1).unwrap_or(0), r.get::<i64>(2).unwrap_or(0)),
    )
    .into_iter()
    .next()
    .unwrap_or((0, 0))
}

/// Does the schema have `apikey.held_balances` (0.4.0; before `ALTER EXTENSION … UPDATE` it does
/// not, and balances of held rows wait for the row as 0.3.0's did)?
fn held_balances() -> bool {
    crate::catalog::get()
        .relation_if_present("held_balances")
        .is_some()
}

pub fn add_credits(key_id: i64, n: i64) {
    spi(Spi::connect_mut(|c| {
        c.update(
            "UPDATE apikey.keys SET credits = GREATEST(credits OPERATOR(pg_catalog.+) $2, 0),
                    credits_peak = GREATEST(credits_peak, credits OPERATOR(pg_catalog.+) $2)
              WHERE id OPERATOR(pg_catalog.=) $1 AND credits IS NOT NULL",
            None,
            &[key_id.into(), n.into()],
        )?;
        if held_balances() {
            c.update(
                "UPDATE apikey.held_balances SET credits = GREATEST(credits OPERATOR(pg_catalog.+) $2, 0)
                  WHERE key_id OPERATOR(pg_catalog.=) $1",
                None,
                &[key_id.into(), n.into()],
            )?;
        }
        Ok(())
    }))
}

/// Write dirty balances (key id, remaining, refilled at µs, version) from shared memory, never
/// waiting on a lock. A balance goes into its key's row when that row is free; when another
/// transaction holds the row (a holder may idle after touching it), into
/// `apikey.held_balances`, which only the worker writes, so what a crash forgets stays bounded
/// by one flush whatever anyone holds. Returns the keys whose balance could be written nowhere
/// (their row and their held balance both locked): they stay dirty for the next flush. A key
/// that no longer exists, or no longer has credits, has nothing to write.
pub fn write_credits(rows: &[(i64, i64, i64, u64)]) -> Vec<i64> {
    let ids: Vec<i64> = rows.iter().map(|r| r.0).collect();
    let left: Vec<i64> = rows.iter().map(|r| r.1.max(0)).collect();
    let at: Vec<Option<TimestampWithTimeZone>> = rows
        .iter()
        .map(|r| TimestampWithTimeZone::try_from(r.2).ok())
        .collect();
    let aside_table = held_balances();
    spi(Spi::connect_mut(|c| {
        let (free, held) = lock_free_keys(c, &ids)?;
        // Held balances another transaction has locked (an administrator's add_credits in
        // progress): neither the row nor the held balance of such a key is written now. Without
        // the table (before ALTER EXTENSION UPDATE) held rows simply wait, as they did in 0.3.0.
        let busy = if aside_table {
            held_balances_locked_elsewhere(c, &ids)?
        } else {
            held.clone()
        };
        // Into the key's row: free, and no held balance someone else is changing.
        let into_row: Vec<i64> = free.into_iter().filter(|id| !busy.contains(id)).collect();
        c.update(
            "UPDATE apikey.keys k SET credits = x.remaining, credits_refilled_at = COALESCE(x.at, k.credits_refilled_at)
               FROM ROWS FROM (pg_catalog.unnest($1::pg_catalog.int8[]), pg_catalog.unnest($2::pg_catalog.int8[]),
                               pg_catalog.unnest($3::pg_catalog.timestamptz[])) AS x(id, remaining, at)
              WHERE k.id OPERATOR(pg_catalog.=) x.id AND k.credits IS NOT NULL
                AND k.id OPERATOR(pg_catalog.=) ANY ($4::pg_catalog.int8[])",
            None,
            &[ids.clone().into(), left.clone().into(), at.clone().into(), into_row.clone().into()],
        )?;
        if !aside_table {
            return Ok(busy);
        }
        c.update(
            "DELETE FROM apikey.held_balances WHERE key_id OPERATOR(pg_catalog.=) ANY ($1::pg_catalog.int8[])",
            None,
            &[into_row.into()],
        )?;
        // Aside: the row is held, and the held balance (if any) is ours to write.
        let into_aside: Vec<i64> = held.into_iter().filter(|id| !busy.contains(id)).collect();
        c.update(
            "INSERT INTO apikey.held_balances AS h (key_id, credits, refilled_at)
             SELECT x.id, x.remaining, x.at
               FROM ROWS FROM (pg_catalog.unnest($1::pg_catalog.int8[]), pg_catalog.unnest($2::pg_catalog.int8[]),
                               pg_catalog.unnest($3::pg_catalog.timestamptz[])) AS x(id, remaining, at)
              WHERE x.id OPERATOR(pg_catalog.=) ANY ($4::pg_catalog.int8[])
             ON CONFLICT (key_id) DO UPDATE
                SET credits = excluded.credits, refilled_at = COALESCE(excluded.refilled_at, h.refilled_at),
                    written_at = pg_catalog.now()",
            None,
            &[ids.into(), left.into(), at.into(), into_aside.into()],
        )?;
        Ok::<_, pgrx::spi::SpiError>(busy)
    }))
}

/// Of the keys `ids`, those whose held balance another transaction has locked; the others'
/// held balances are locked by this one (FOR UPDATE SKIP LOCKED), for the flush to rewrite.
fn held_balances_locked_elsewhere(
    c: &mut pgrx::spi::SpiClient<'_>,
    ids: &[i64],
) -> pgrx::spi::SpiResult<Vec<i64>> {
    let mut ours = Vec::new();
    for row in c.update(
        "SELECT key_id FROM apikey.held_balances
          WHERE key_id OPERATOR(pg_catalog.=) ANY ($1::pg_catalog.int8[]) FOR UPDATE SKIP LOCKED",
        None,
        &[ids.to_vec().into()],
    )? {
        if let Some(id) = row.get_by_name::<i64, _>("key_id")? {
            ours.push(id);
        }
    }
    let mut elsewhere = Vec::new();
    for row in c.select(
        "SELECT key_id FROM apikey.held_balances WHERE key_id OPERATOR(pg_catalog.=) ANY ($1::pg_catalog.int8[])",
        None,
        &[ids.to_vec().into()],
    )? {
        if let Some(id) = row.get_by_name::<i64, _>("key_id")? {
            if !ours.contains(&id) {
                elsewhere.push(id);
            }
        }
    }
    Ok(elsewhere)
}

/// Move balances written aside into their keys' rows once those rows are free (and forget those
/// of keys deleted since), never waiting on a lock; the worker's, at every flush.
pub fn drain_held_balances() {
    if !held_balances() {
        return;
    }
    spi(Spi::connect_mut(|c| {
        c.update(
            "WITH free AS (
                 SELECT h.key_id, h.credits, h.refilled_at
                   FROM apikey.held_balances h
                   JOIN apikey.keys k ON k.id OPERATOR(pg_catalog.=) h.key_id
                    FOR NO KEY UPDATE OF k SKIP LOCKED
                    FOR UPDATE OF h SKIP LOCKED),
             written AS (
                 UPDATE apikey.keys k SET credits = f.credits,
                        credits_refilled_at = COALESCE(f.refilled_at, k.credits_refilled_at)
                   FROM free f
                  WHERE k.id OPERATOR(pg_catalog.=) f.key_id AND k.credits IS NOT NULL)
             DELETE FROM apikey.held_balances h USING free f
              WHERE h.key_id OPERATOR(pg_catalog.=) f.key_id",
            None,
            &[],
        )?;
        c.update(
            "DELETE FROM apikey.held_balances WHERE key_id OPERATOR(pg_catalog.=) ANY (ARRAY(
                 SELECT h.key_id FROM apikey.held_balances h
                  WHERE NOT EXISTS (SELECT FROM apikey.keys k WHERE k.id OPERATOR(pg_catalog.=) h.key_id)
                    FOR UPDATE SKIP LOCKED))",
            None,
            &[],
        )
        .map(|_| ())
    }))
}
