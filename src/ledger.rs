//! The primary's side of credit leases: `apikey.lease_exchange`, which a standby's worker calls
//! over its replication connection (see `worker::leases`, `lease_table`).
//!
//! The primary is the ledger. A grant is taken out of the key's balance in shared memory (where
//! every backend of the primary spends it, so nothing spends it twice), written into the key's
//! row and recorded in `apikey.leases` in the same transaction; only then does the standby spend
//! it. What a standby gives back is added to the balance, never more than its lease still holds.
//! A lease the standby does not renew expires: the primary forgets it and counts its remainder
//! spent (the standby stops spending at the same time), so nothing is ever spent twice. A key
//! that is revoked, disabled, expired, deleted or without credits gets no more and its leases
//! end: the standby gives back what it holds at its next exchange.

use pg_apikey_core::errors::ApiError;
use pgrx::pg_sys;
use pgrx::prelude::*;

use crate::errors::{raise, spi};

/// How long a lease lasts without a renewal (the standby's worker uses the same).
const TTL_SECONDS: i64 = 60;
/// Limits on what a standby may send at once.
const MAX_REQUEST: usize = 1 << 20;
const MAX_ENTRIES: usize = 8192;
const MAX_NAME: usize = 64;

struct Request {
    asks: Vec<(i64, i64, i64, i64)>,
    returns: Vec<(i64, i64)>,
}

fn parse(text: &str) -> Option<Request> {
    let v: serde_json::Value = serde_json::from_str(text).ok()?;
    let n = |x: &serde_json::Value| x.as_i64().filter(|n| *n >= 0);
    let asks = v
        .get("asks")?
        .as_array()?
        .iter()
        .map(|a| {
            Some((
                a.get(0)?.as_i64()?,
                n(a.get(1)?)?,
                n(a.get(2)?)?,
                n(a.get(3)?)?,
            ))
        })
        .collect::<Option<Vec<_>>>()?;
    let returns = v
        .get("returns")?
        .as_array()?
        .iter()
        .map(|a| Some((a.get(0)?.as_i64()?, n(a.get(1)?)?)))
        .collect::<Option<Vec<_>>>()?;
    (asks.len() + returns.len() <= MAX_ENTRIES).then_some(Request { asks, returns })
}

/// Exchange leases with standby `standby`: `request` is `{"asks": [[key id, credits a waiting
/// request lacks, credits wanted, credits it still holds], …], "returns": [[key id, credits], …]}`; the answer is
/// `{"granted": [[key id, credits], …], "ended": [key id, …], "ttl": seconds}`. For the
/// workers of standbys: superusers and roles with REPLICATION only.
#[pg_extern(volatile, parallel_unsafe)]
fn lease_exchange(standby: Option<&str>, request: Option<&str>) -> String {
    crate::privilege::require_primary("lease credits");
    // SAFETY: reads the current user's attributes from the syscache.
    let allowed = unsafe { pg_sys::superuser() || pg_sys::has_rolreplication(pg_sys::GetUserId()) };
    if !allowed {
        raise(ApiError::ReplicationOnly("lease credits"));
    }
    let standby = standby.unwrap_or_else(|| raise(ApiError::NullArgument("standby")));
    let request = request.unwrap_or_else(|| raise(ApiError::NullArgument("request")));
    if standby.is_empty()
        || standby.len() > MAX_NAME
        || !standby.bytes().all(|b| b.is_ascii_alphanumeric())
    {
        raise(ApiError::InvalidArgument(format!(
            "standby must be 1 to {MAX_NAME} letters and digits"
        )));
    }
    if request.len() > MAX_REQUEST {
        raise(ApiError::InvalidArgument(format!(
            "request must be at most {MAX_REQUEST} bytes"
        )));
    }
    let req = parse(request).unwrap_or_else(|| {
        raise(ApiError::InvalidArgument(
            "request must be {\"asks\": [[id, need, want, held], ...], \"returns\": [[id, n], ...]} with at most 8192 entries".into(),
        ))
    });
    crate::credits::available().unwrap_or_else(|e| raise(e));
    let mut ids: Vec<i64> = req
        .asks
        .iter()
        .map(|a| a.0)
        .chain(req.returns.iter().map(|r| r.0))
        .collect();
    ids.sort_unstable();
    ids.dedup();
    let (granted, ended) = crate::store::as_owner(|| {
        // With synchronous standbys, a grant reaches them before the standby that asked may spend
        // it (what a failover to one of them forgives shrinks to nothing).
        spi(Spi::connect_mut(|c| {
            c.update(
                "SELECT pg_catalog.set_config('synchronous_commit', 'remote_apply', true)",
                None,
                &[],
            )?;
            Ok::<_, pgrx::spi::SpiError>(())
        }));
        crate::store::expire_leases();
        let states = crate::store::key_states(&ids);
        let state = |id: i64| states.iter().find(|s| s.id == id);
        for &(key_id, n) in &req.returns {
            let back = crate::store::give_back_lease(standby, key_id, n);
            if let Some(s) = state(key_id) {
                crate::credits::give_back(key_id, s.refill, back);
            }
        }
        let wanting: Vec<i64> = req
            .asks
            .iter()
            .filter(|a| a.2 > 0 && state(a.0).is_some_and(|s| s.active))
            .map(|a| a.0)
            .collect();
        let free = crate::store::lock_free_key_rows(&wanting);
        let mut granted = Vec::new();
        let mut ended = Vec::new();
        for &(key_id, need, want, holds) in &req.asks {
            let Some(s) = state(key_id).filter(|s| s.active) else {
                ended.push(key_id);
                crate::store::end_lease(standby, key_id, holds);
                continue;
            };
            // A key row someone else holds gets nothing this time (the standby asks again).
            let g = if want > 0 && free.contains(&key_id) {
                crate::credits::lease_out(key_id, s.refill, need, want)
            } else {
                0
            };
            crate::store::record_lease(standby, key_id, g, holds, TTL_SECONDS);
            if g > 0 {
                granted.push((key_id, g));
            }
        }
        (granted, ended)
    });
    serde_json::json!({ "granted": granted, "ended": ended, "ttl": TTL_SECONDS }).to_string()
}
