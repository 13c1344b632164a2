//! Owner-wide and named limits.
//!
//! A key may carry named limits (`expensive`: 10/hour); `apikey.charge(name, cost)` charges the
//! authenticated key's limit of that name. Limits set on an owner (`apikey.set_owner_limit`) are
//! shared by every key of that owner, so many keys cannot multiply the allowance; the key's own
//! limit of the same name applies as well, and both are charged all or nothing. The owner limit
//! that applies is the exact owner's, else the longest matching pattern's, else `*`'s
//! (`core::owner_limits`). The limit named `requests` is charged by every `apikey.authenticate`.

use std::cell::RefCell;

use pg_apikey_core::errors::ApiError;
use pg_apikey_core::gcra::Rate;
use pg_apikey_core::owner_limits;
use pgrx::pg_sys;
use pgrx::prelude::*;

use crate::errors::raise;
use crate::limiter::{self, Charge};
use crate::policy::Caller;
use crate::store;

/// The name `apikey.authenticate` charges.
pub const DEFAULT_NAME: &str = "requests";

thread_local! {
    /// (owner or pattern, name, rate) of `apikey.owner_limits`, loaded on first use; dropped by
    /// the relcache callback when the table changes.
    static OWNER_LIMITS: RefCell<Option<Vec<(String, String, OwnerRate)>>> = const { RefCell::new(None) };
    static OWNER_LIMITS_RELID: std::cell::Cell<pg_sys::Oid> = const { std::cell::Cell::new(pg_sys::InvalidOid) };
}

pub fn invalidate(relid: pg_sys::Oid) {
    let ours = OWNER_LIMITS_RELID.get();
    if relid == pg_sys::InvalidOid || relid == ours || ours == pg_sys::InvalidOid {
        OWNER_LIMITS.with_borrow_mut(|c| *c = None);
    }
}

/// An owner limit: its rate, and whether it is global (one bucket, on the primary, which its
/// standbys lease tokens of: `token_leases`).
#[derive(Clone, Copy)]
pub struct OwnerRate {
    pub rate: Rate,
    pub global: bool,
}

pub fn owner_limit(owner: &str, name: &str) -> Option<OwnerRate> {
    if OWNER_LIMITS.with_borrow(|c| c.is_none()) {
        // Before ALTER EXTENSION UPDATE adds the table, no owner has a limit.
        let relid = crate::catalog::get().relation_if_present("owner_limits")?;
        OWNER_LIMITS_RELID.set(relid);
        let rows: Vec<(String, String, OwnerRate)> = store::as_owner(store::owner_limits)
            .into_iter()
            .map(|l| {
                let rate = crate::rates::rate_from(l.max as i64, l.per, l.burst.map(i64::from));
                (
                    l.owner,
                    l.name,
                    OwnerRate {
                        rate,
                        global: l.global,
                    },
                )
            })
            .collect();
        OWNER_LIMITS.with_borrow_mut(|c| *c = Some(rows));
    }
    OWNER_LIMITS.with_borrow(|c| {
        c.as_ref()
            .and_then(|rows| owner_limits::resolve(rows, owner, name).copied())
    })
}

/// The buckets a request of `cost` against limit `name` charges for this key: its own limit of
/// that name (named, or the per-key columns for `requests`), and its owner's.
pub fn charges_for<'a>(
    key_id: i64,
    lineage: i64,
    owner: &str,
    own: Option<&'a Rate>,
    owner_rate: Option<&'a OwnerRate>,
    name: &str,
    cost: u32,
) -> Vec<Charge<'a>> {
    let mut out = Vec::new();
    if let Some(rate) = own {
        out.push(Charge {
            bucket: format!("key:{lineage}:{name}"),
            rate,
            cost,
            key_id,
            what: format!("API key \"{name}\""),
            global: None,
        });
    }
    if let Some(o) = owner_rate {
        out.push(Charge {
            bucket: format!("owner:{owner}:{name}"),
            rate: &o.rate,
            cost,
            key_id,
            what: format!("Owner \"{name}\""),
            global: o.global.then(|| name.to_owned()),
        });
    }
    out
}

/// The owner-wide `requests` limit of `owner`, if one applies (authenticate charges it).
pub fn owner_requests(owner: &str) -> Option<OwnerRate> {
    owner_limit(owner, DEFAULT_NAME)
}

/// A key's own named limit `name`, if it has one.
pub fn named<'a>(limits: &'a [(String, Rate)], name: &str) -> Option<&'a Rate> {
    limits.iter().find(|(n, _)| n == name).map(|(_, r)| r)
}

/// One key a `charge(name)` spends from: its own limit of that name and its owner's.
struct Charged {
    id: i64,
    lineage: i64,
    owner: String,
    own: Option<Rate>,
    owner_rate: Option<OwnerRate>,
}

impl Charged {
    fn of(id: i64, lineage: i64, owner: &str, own: Option<&Rate>, name: &str) -> Self {
        Charged {
            id,
            lineage,
            owner: owner.to_owned(),
            own: own.copied(),
            owner_rate: owner_limit(owner, name),
        }
    }
}

/// Charge `cost` against the limit `name` of the authenticated key and its owner (and, for a
/// two-key request, of the application key and its owner), all or nothing. True when a limit
/// applied. A name none of them defines is an error (22023), as Unkey refuses a rate limit it
/// does not know: a misspelt name must not pass every request; `if_defined => true` makes it a
/// pass (false) instead, for an endpoint that limits only the keys given such a limit. 53400 with
/// the seconds to wait when refused; 28000 without an authenticated key, or once that key no
/// longer holds.
#[pg_extern(volatile, parallel_unsafe)]
fn charge(
    name: Option<&str>,
    cost: default!(Option<i32>, "1"),
    if_defined: default!(Option<bool>, "false"),
) -> bool {
    let name = name.unwrap_or_else(|| raise(ApiError::NullArgument("name")));
    if name.len() > 64 {
        raise(ApiError::InvalidArgument(
            "a limit name is at most 64 characters".into(),
        ));
    }
    let cost = cost.unwrap_or(1);
    if cost < 0 {
        raise(ApiError::InvalidArgument(
            "cost must not be negative".into(),
        ));
    }
    let Some(me) = crate::authority::acting() else {
        raise(ApiError::KeyRequired(""))
    };
    // The user key and, for a two-key request, the application key: each with its own limit of
    // that name and its owner's, all charged or none (the application's are no free pass).
    let mut keys = vec![Charged::of(
        me.key_id,
        me.lineage,
        &me.owner,
        named(&me.named, name),
        name,
    )];
    if let Some((app_id, app_owner)) = &me.app {
        keys.push(Charged::of(
            *app_id,
            me.app_lineage,
            app_owner,
            named(&me.app_named, name),
            name,
        ));
    }
    for k in &keys {
        for rate in k.own.iter().chain(k.owner_rate.iter().map(|o| &o.rate)) {
            if cost as u32 > rate.burst {
                raise(ApiError::InvalidArgument(format!(
                    "cost {cost} exceeds the burst of limit \"{name}\" ({}): it could never pass",
                    rate.burst
                )));
            }
        }
    }
    let mut items = Vec::new();
    for k in &keys {
        // Two keys of one owner share that owner's bucket: charge it once.
        let owner = &k.owner;
        let owner_rate = k.owner_rate.as_ref().filter(|_| {
            !items
                .iter()
                .any(|c: &Charge| c.bucket == format!("owner:{owner}:{name}"))
        });
        items.extend(charges_for(
            k.id,
            k.lineage,
            owner,
            k.own.as_ref(),
            owner_rate,
            name,
            cost as u32,
        ));
    }
    if items.is_empty() {
        if if_defined.unwrap_or(false) {
            return false;
        }
        raise(ApiError::InvalidArgument(format!(
            "no limit named \"{name}\" applies to this API key: give it one (limits => …, or apikey.set_owner_limit), or charge with if_defined => true"
        )));
    }
    limiter::charge_all(&items).unwrap_or_else(|e| {
        crate::shmem::regions::count(pg_apikey_core::stat::refusal(&e));
        raise(e)
    });
    true
}

fn require_admin(what: &'static str) -> Caller {
    crate::privilege::require_primary("change owner limits");
    let caller = Caller::get();
    if !caller.admin {
        raise(ApiError::AdminOnly(what));
    }
    caller
}

/// Set a limit shared by every key of `owner` (an owner, a pattern with `*`, or `*` for every
/// owner): at most `max` per `per`, bursts of `burst`. `global`: one bucket for the primary and
/// all its standbys (they lease tokens of it, see docs/limits.md), instead of one per server
/// scaled by `apikey.limit_scale`. Administrators only.
#[pg_extern(volatile, parallel_unsafe)]
fn set_owner_limit(
    owner: Option<&str>,
    name: Option<&str>,
    max: Option<i32>,
    per: Option<pgrx::datum::Interval>,
    burst: default!(Option<i32>, "NULL"),
    global: default!(Option<bool>, "false"),
) -> bool {
    let owner = owner.unwrap_or_else(|| raise(ApiError::NullArgument("owner")));
    let name = name.unwrap_or_else(|| raise(ApiError::NullArgument("name")));
    let max = max.unwrap_or_else(|| raise(ApiError::NullArgument("max")));
    let per = per.unwrap_or_else(|| raise(ApiError::NullArgument("per")));
    let caller = require_admin("set owner limits");
    if owner.trim().is_empty() || name.trim().is_empty() {
        raise(ApiError::InvalidArgument(
            "owner and name must not be empty".into(),
        ));
    }
    crate::rates::rate_from(max as i64, per, burst.map(i64::from));
    let global = global.unwrap_or(false);
    if global && name.len() > pg_apikey_core::token_leases::NAME {
        raise(ApiError::InvalidArgument(format!(
            "a global limit's name is at most {} bytes",
            pg_apikey_core::token_leases::NAME
        )));
    }
    store::as_owner(|| store::set_owner_limit(owner, name, max, per, burst, global, &caller.name));
    true
}

/// Remove an owner limit; false if there was none. Administrators only.
#[pg_extern(volatile, strict, parallel_unsafe)]
fn clear_owner_limit(owner: &str, name: &str) -> bool {
    require_admin("clear owner limits");
    store::as_owner(|| store::clear_owner_limit(owner, name))
}
