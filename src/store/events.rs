//! Events.

use super::*;

/// Record an event and announce it on channel `apikey_events` at commit. The notification
/// carries no owner, name or detail: any role may LISTEN on any channel, so those stay in
/// `apikey.events`, which only administrators read.
pub fn emit_event(
    event: &str,
    key_id: Option<i64>,
    owner: Option<&str>,
    key_name: Option<&str>,
    detail: serde_json::Value,
) -> i64 {
    spi(Spi::connect_mut(|c| {
        let t = c.update(
            "WITH e AS (INSERT INTO apikey.events (event, key_id, owner, key_name, detail)
                        VALUES ($1, $2, $3, $4, $5) RETURNING id, at)
             SELECT e.id, pg_catalog.pg_notify('apikey_events',
                        pg_catalog.json_build_object('id', e.id, 'event', $1::pg_catalog.text,
                                                     'key_id', $2::pg_catalog.int8, 'at', e.at)::pg_catalog.text) AS sent
               FROM e",
            Some(1),
            &[
                event.into(),
                key_id.into(),
                owner.into(),
                key_name.into(),
                JsonB(detail).into(),
            ],
        )?;
        t.first()
            .get_by_name::<i64, _>("id")
            .map(|id| id.unwrap_or(0))
    }))
}

/// Delete events older than `retention_s` seconds, and `limited` marks of past windows.
pub fn prune_events(retention_s: i64, window_s: i64) {
    spi(Spi::connect_mut(|c| {
        c.update(
            "DELETE FROM apikey.events
              WHERE at OPERATOR(pg_catalog.<) (pg_catalog.now() OPERATOR(pg_catalog.-) pg_catalog.make_interval(secs => $1))",
            None,
            &[(retention_s as f64).into()],
        )?;
        c.update(
            "DELETE FROM apikey.announcements
              WHERE event OPERATOR(pg_catalog.=) 'limited'
                AND at OPERATOR(pg_catalog.<) (pg_catalog.now() OPERATOR(pg_catalog.-) pg_catalog.make_interval(secs => $1))",
            None,
            &[(2.0 * window_s as f64).into()],
        )
        .map(|_| ())
    }))
}

/// A key event the worker announces.
pub struct Announced {
    pub key_id: i64,
    pub owner: String,
    pub name: String,
    pub detail: serde_json::Value,
}

fn announced_rows(t: pgrx::spi::SpiTupleTable) -> SpiResult<Vec<Announced>> {
    let mut out = Vec::new();
    for row in t {
        out.push(Announced {
            key_id: col::<i64>(&row, "id")?.unwrap_or(0),
            owner: col::<String>(&row, "owner")?.unwrap_or_default(),
            name: col::<String>(&row, "name")?.unwrap_or_default(),
            detail: col::<JsonB>(&row, "detail")?
                .map(|j| j.0)
                .unwrap_or_default(),
        });
    }
    Ok(out)
}

/// Live keys expiring within one of `days`, not yet announced for that threshold; marks them.
pub fn due_expiry_notices(days: &[i32]) -> Vec<Announced> {
    spi(Spi::connect_mut(|c| {
        let t = c.update(
            "WITH due AS (
                 SELECT k.id, k.owner, k.name, k.expires_at, t.days
                   FROM pg_catalog.unnest($1::pg_catalog.int4[]) AS t(days)
                   JOIN apikey.keys k
                     ON k.expires_at OPERATOR(pg_catalog.>) pg_catalog.now()
                    AND k.expires_at OPERATOR(pg_catalog.<=) (pg_catalog.now() OPERATOR(pg_catalog.+) pg_catalog.make_interval(days => t.days))
                  WHERE (k.revoked_at IS NULL OR k.revoked_at OPERATOR(pg_catalog.>) pg_catalog.now())
             ), marked AS (
                 INSERT INTO apikey.announcements (key_id, event, threshold)
                 SELECT id, 'expiring', days::pg_catalog.text FROM due
                 ON CONFLICT DO NOTHING RETURNING key_id, threshold
             )
             SELECT d.id, d.owner, d.name,
                    pg_catalog.jsonb_build_object('expires_at', d.expires_at, 'within_days', d.days) AS detail
               FROM due d JOIN marked m
                 ON m.key_id OPERATOR(pg_catalog.=) d.id AND m.threshold OPERATOR(pg_catalog.=) d.days::pg_catalog.text
              ORDER BY d.id, d.days DESC",
            None,
            &[days.to_vec().into()],
        )?;
        announced_rows(t)
    }))
}

/// Of keys `ids`, those whose credits fell below `percent` % of their refill amount (or of the
/// most they held), not yet announced since they last were above it; marks them, and forgets
/// the mark of keys that are above it again.
pub fn due_credit_notices(ids: &[i64], percent: i32) -> Vec<Announced> {
    spi(Spi::connect_mut(|c| {
        let threshold = format!("{percent}%");
        c.update(
            "DELETE FROM apikey.announcements a USING apikey.keys k
              WHERE a.key_id OPERATOR(pg_catalog.=) k.id AND a.event OPERATOR(pg_catalog.=) 'credits_low'
                AND k.id OPERATOR(pg_catalog.=) ANY ($1::pg_catalog.int8[])
                AND (k.credits OPERATOR(pg_catalog.*) 100) OPERATOR(pg_catalog.>=)
                    (COALESCE(k.refill_amount, k.credits_peak) OPERATOR(pg_catalog.*) $2)",
            None,
            &[ids.to_vec().into(), percent.into()],
        )?;
        let t = c.update(
            "WITH low AS (
                 SELECT k.id, k.owner, k.name, k.credits, COALESCE(k.refill_amount, k.credits_peak) AS reference
                   FROM apikey.keys k
                  WHERE k.id OPERATOR(pg_catalog.=) ANY ($1::pg_catalog.int8[])
                    AND k.credits IS NOT NULL
                    AND (k.credits OPERATOR(pg_catalog.*) 100) OPERATOR(pg_catalog.<)
                        (COALESCE(k.refill_amount, k.credits_peak) OPERATOR(pg_catalog.*) $2)
             ), marked AS (
                 INSERT INTO apikey.announcements (key_id, event, threshold)
                 SELECT id, 'credits_low', $3 FROM low ON CONFLICT DO NOTHING RETURNING key_id
             )
             SELECT l.id, l.owner, l.name,
                    pg_catalog.jsonb_build_object('credits', l.credits, 'of', l.reference, 'below_percent', $2) AS detail
               FROM low l JOIN marked m ON m.key_id OPERATOR(pg_catalog.=) l.id",
            None,
            &[ids.to_vec().into(), percent.into(), threshold.into()],
        )?;
        announced_rows(t)
    }))
}

/// Of keys `ids` (refused by a limit since the last flush), those not yet announced in the
/// window numbered `window`; marks them.
pub fn due_limit_notices(ids: &[i64], window: i64) -> Vec<Announced> {
    spi(Spi::connect_mut(|c| {
        let t = c.update(
            "WITH marked AS (
                 INSERT INTO apikey.announcements (key_id, event, threshold)
                 SELECT k.id, 'limited', $2 FROM apikey.keys k
                  WHERE k.id OPERATOR(pg_catalog.=) ANY ($1::pg_catalog.int8[])
                 ON CONFLICT DO NOTHING RETURNING key_id
             )
             SELECT k.id, k.owner, k.name, '{}'::pg_catalog.jsonb AS detail
               FROM apikey.keys k JOIN marked m ON m.key_id OPERATOR(pg_catalog.=) k.id",
            None,
            &[ids.to_vec().into(), window.to_string().into()],
        )?;
        announced_rows(t)
    }))
}
