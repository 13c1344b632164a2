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

use crate::errors::raise;

/// How long a lease lasts without a renewal (the standby's worker uses the same).
const TTL_SECONDS: i64 = 60;
/// Limits on what a standby may send at once.
const MAX_REQUEST: usize = 1 << 20;
const MAX_ENTRIES: usize = 8192;
const MAX_NAME: usize = 64;
/// Key owners a session keeps for global limits' tokens (see `global_tokens`).
const MAX_OWNERS: usize = 10_000;

thread_local! {
    /// When this session last removed expired credit leases.
    static EXPIRED_AT: std::cell::Cell<Option<std::time::Instant>> = const { std::cell::Cell::new(None) };
    static OWNERS: std::cell::RefCell<std::collections::HashMap<i64, String>> =
        std::cell::RefCell::new(std::collections::HashMap::new());
}

/// Any relcache invalidation (a key deleted or changed sends one, a TRUNCATE one for all) drops
/// the owners kept: a lookup is one query, and nothing stale can name a bucket.
pub fn invalidate(_relid: pg_sys::Oid) {
    OWNERS.with_borrow_mut(|o| o.clear());
}

struct Request {
    asks: Vec<(i64, i64, i64, i64)>,
    returns: Vec<(i64, i64)>,
    /// Global limits' tokens: (a key of the bucket's owner, limit name, lacking, wanted).
    limits: Vec<(i64, String, i64, i64)>,
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
    let limits = match v.get("limits") {
        None => Vec::new(),
        Some(l) => l
            .as_array()?
            .iter()
            .map(|a| {
                // The limit's name in hexadecimal (see `worker::leases`).
                let name = String::from_utf8(hex::decode(a.get(1)?.as_str()?).ok()?).ok()?;
                (!name.is_empty() && name.len() <= MAX_NAME).then_some(())?;
                Some((a.get(0)?.as_i64()?, name, n(a.get(2)?)?, n(a.get(3)?)?))
            })
            .collect::<Option<Vec<_>>>()?,
    };
    (asks.len() + returns.len() + limits.len() <= MAX_ENTRIES).then_some(Request {
        asks,
        returns,
        limits,
    })
}

/// Exchange leases with standby `standby`. `request` is `{"asks": [[key id, credits a waiting
/// request lacks, credits wanted, credits it still holds], …], "returns": [[key id, credits],
/// …]}`; the answer is `{"granted": [[key id, credits], …], "ended": [key id, …], "busy": [key
/// id, …], "scarce": [key id, …], "ttl": seconds}` (busy: the key's row was held by another
/// transaction, ask again; scarce: the key has less left than twice what was asked, give idle
/// slices back soon). For the workers of standbys: superusers and roles with REPLICATION only.
#[pg_extern(volatile, parallel_unsafe)]
fn lease_exchange(standby: Option<&str>, request: Option<&str>) -> String {
    crate::privilege::require_primary("lease credits");
    // SAFETY: reads the current user's attributes from the syscache.
    let allowed = unsafe { pg_sys::superuser() || pg_sys::has_rolreplication(pg_sys::GetUserId()) };
    if !allowed {
        raise(ApiError::ReplicationOnly("lease credits"));
    }
    let name = standby.unwrap_or_else(|| raise(ApiError::NullArgument("standby")));
    let request = request.unwrap_or_else(|| raise(ApiError::NullArgument("request")));
    // One statement, committed on its own: grants and returns change shared memory, which only
    // the commit (returns) or an abort (grants put back) settles.
    // SAFETY: a NUL-terminated constant; raises an ERROR inside a transaction block.
    unsafe { pg_sys::PreventInTransactionBlock(true, c"apikey.lease_exchange()".as_ptr()) };
    if name.is_empty() || name.len() > MAX_NAME || !name.bytes().all(|b| b.is_ascii_alphanumeric())
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
    let Request {
        mut asks,
        returns,
        limits,
    } = parse(request).unwrap_or_else(|| {
        raise(ApiError::InvalidArgument(
            "request must be {\"asks\": [[id, need, want, held], ...], \"returns\": [[id, n], ...], \"limits\": [[id, hex name, need, want], ...]} with at most 8192 entries".into(),
        ))
    });
    crate::credits::available().unwrap_or_else(|e| raise(e));
    // A lease belongs to the role that took it: another role's exchange under the same name
    // cannot give back (and so double) what that standby still spends.
    // SAFETY: reads the current user id.
    let role = u32::from(unsafe { pg_sys::GetUserId() });
    let standby = format!("{role}:{name}");
    let standby = standby.as_str();
    // One ask per key: the first (a grant is recorded once per key and exchange).
    let mut seen = std::collections::HashSet::new();
    asks.retain(|a| seen.insert(a.0));
    let mut ids: Vec<i64> = asks
        .iter()
        .map(|a| a.0)
        .chain(returns.iter().map(|r| r.0))
        .collect();
    ids.sort_unstable();
    ids.dedup();
    // An exchange of global limits' tokens only touches no credit, and cleans up expired
    // credit leases (a standby that restarted under a new name left some) once a lease lifetime.
    let now = std::time::Instant::now();
    let cleanup = EXPIRED_AT
        .get()
        .is_none_or(|t| now.duration_since(t).as_secs() >= TTL_SECONDS as u64);
    let credits = !asks.is_empty() || !returns.is_empty() || cleanup;
    if credits {
        EXPIRED_AT.set(Some(now));
    }
    let (granted, ended, busy, scarce) = if !credits {
        Default::default()
    } else {
        crate::store::as_owner(|| {
            crate::store::expire_leases();
            let states: std::collections::HashMap<i64, crate::store::KeyState> =
                crate::store::key_states(&ids)
                    .into_iter()
                    .map(|s| (s.id, s))
                    .collect();
            for &(key_id, n) in &returns {
                let back = crate::store::give_back_lease(standby, key_id, n);
                // A key that refills gets nothing back: a refill since the grant set its balance
                // anew, and the return on top would carry an old interval's allowance over.
                if let Some(s) = states.get(&key_id).filter(|s| s.refill.is_none()) {
                    crate::credits::give_back(key_id, s.refill, back);
                }
            }
            let wanting: Vec<i64> = asks
                .iter()
                .filter(|a| a.2 > 0 && states.get(&a.0).is_some_and(|s| s.active))
                .map(|a| a.0)
                .collect();
            let free: std::collections::HashSet<i64> = crate::store::lock_free_key_rows(&wanting)
                .into_iter()
                .collect();
            let mut granted = Vec::new();
            let mut ended = Vec::new();
            let mut busy = Vec::new();
            let mut scarce = Vec::new();
            let mut recorded = Vec::new();
            for &(key_id, need, want, holds) in &asks {
                let Some(s) = states.get(&key_id).filter(|s| s.active) else {
                    ended.push(key_id);
                    crate::store::end_lease(standby, key_id, holds);
                    continue;
                };
                // A key row someone else holds (another standby's exchange, an administrator) gets
                // nothing this time: the standby asks again at its next exchange.
                let g = if want > 0 && free.contains(&key_id) {
                    let (g, left) = crate::credits::lease_out(key_id, s.refill, need, want);
                    if left < want.max(need).saturating_mul(2) {
                        scarce.push(key_id);
                    }
                    g
                } else {
                    if want > 0 {
                        busy.push(key_id);
                    }
                    0
                };
                recorded.push((key_id, g, holds));
                if g > 0 {
                    granted.push((key_id, g));
                }
            }
            crate::store::record_leases(standby, &recorded, TTL_SECONDS);
            (granted, ended, busy, scarce)
        })
    };
    let tokens = global_tokens(&limits);
    serde_json::json!({
        "granted": granted, "ended": ended, "busy": busy, "scarce": scarce, "ttl": TTL_SECONDS,
        "limits": tokens
    })
    .to_string()
}

/// What a standby gets for a limit that is not global here, a key that is gone, or a full
/// limiter: nothing, and a second to wait (its copy of `apikey.owner_limits` or of the key
/// catches up meanwhile); fail closed, without an exchange per request.
const NOT_HERE: (i64, i64) = (0, 1_000_000);

/// Tokens of global limits for a standby, in the order asked: (granted, µs until the bucket
/// admits what was lacking when none were). The rate is this server's (the standby's copy of
/// `apikey.owner_limits` may lag). Tokens are final once taken: an exchange that aborts loses
/// them, which only under-serves the limit.
fn global_tokens(limits: &[(i64, String, i64, i64)]) -> Vec<(i64, i64)> {
    if limits.is_empty() {
        return Vec::new();
    }
    // A key's owner never changes and its id is never reused: the owners this session looked
    // up are kept (a standby asks for its busy limits several times a second).
    let mut ids: Vec<i64> = limits
        .iter()
        .map(|l| l.0)
        .filter(|id| OWNERS.with_borrow(|o| !o.contains_key(id)))
        .collect();
    ids.sort_unstable();
    ids.dedup();
    if !ids.is_empty() {
        let found = crate::store::as_owner(|| crate::store::key_owners(&ids));
        OWNERS.with_borrow_mut(|o| {
            if o.len() + found.len() > MAX_OWNERS {
                o.clear();
            }
            o.extend(found);
        });
    }
    limits
        .iter()
        .map(|(key_id, name, need, want)| {
            let Some(owner) = OWNERS.with_borrow(|o| o.get(key_id).cloned()) else {
                return NOT_HERE;
            };
            match crate::limits::owner_limit(&owner, name).filter(|o| o.global) {
                Some(o) => crate::limiter::take_tokens(
                    &format!("owner:{owner}:{name}"),
                    &o.rate,
                    *need,
                    *want,
                )
                .unwrap_or(NOT_HERE),
                None => NOT_HERE,
            }
        })
        .collect()
}
