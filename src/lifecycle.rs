//! The key lifecycle's SQL API: create, revoke, delete, rotate. Each function only orchestrates:
//! caller → policy (rights never widen) → store → audit.

use crate::jsonarg::Json;
use pg_apikey_core::digest::sha256;
use pg_apikey_core::errors::ApiError;
use pg_apikey_core::format::{last_chars, Format};
use pg_apikey_core::gcra::Rate;
use pg_apikey_core::ipnet::Cidr;
use pg_apikey_core::rights::{self, KeyKind};
use pg_apikey_core::scope;
use pgrx::prelude::*;
use serde_json::json;

use crate::errors::{raise, spi};
use crate::formats;
use crate::key_type::ApiKey;
use crate::policy::{self, Caller};
use crate::privilege;
use crate::quota;
use crate::sealing;
use crate::store;

fn invalid(msg: impl Into<String>) -> ! {
    raise(ApiError::InvalidArgument(msg.into()))
}

fn internal(what: &'static str) -> ! {
    raise(ApiError::Internal(what))
}

fn required<'a>(value: Option<&'a str>, arg: &'static str) -> &'a str {
    match value {
        None => raise(ApiError::NullArgument(arg)),
        Some(v) if v.trim().is_empty() => invalid(format!("{arg} must not be empty")),
        Some(v) if v.chars().count() > 200 => {
            invalid(format!("{arg} must be at most 200 characters"))
        }
        Some(v) => v,
    }
}

/// Metadata is returned by every verify and cached per backend, so it is bounded: key holders
/// may attach at most this much (it is theirs to write, so nothing may trust it for
/// authorization), administrators up to the table's own limit.
const HOLDER_METADATA_BYTES: usize = 4096;
const ADMIN_METADATA_BYTES: usize = 65536;
/// Named limits and allow-list blocks a key may carry, given by a key holder or an
/// administrator.
const HOLDER_MAX_LIMITS: usize = 16;
const ADMIN_MAX_LIMITS: usize = 64;
const HOLDER_MAX_BLOCKS: usize = 32;
const ADMIN_MAX_BLOCKS: usize = 1024;
/// Scopes a key may carry (key holder, administrator), and the size of one scope and of a
/// resource: every verify returns them and every backend caches them.
const HOLDER_MAX_SCOPES: usize = 64;
const ADMIN_MAX_SCOPES: usize = 256;
const MAX_SCOPE_BYTES: usize = 128;
const MAX_RESOURCE_BYTES: usize = 200;

/// A freshly generated key and the parts of it we store.
struct NewKey {
    plaintext: String,
    digest: Vec<u8>,
    display_prefix: String,
    last4: String,
}

fn generate(format: &Format) -> NewKey {
    let plaintext = format
        .generate()
        .unwrap_or_else(|_| internal("the operating system's random generator failed"));
    NewKey {
        digest: sha256(plaintext.as_bytes()).to_vec(),
        display_prefix: format.display_prefix(&plaintext).to_owned(),
        last4: last_chars(&plaintext).to_owned(),
        plaintext,
    }
}

/// `now() + interval` exactly as Postgres computes it (calendar months and days), in microseconds.
fn now_plus(interval: Interval) -> i64 {
    let t: Option<TimestampWithTimeZone> = spi(Spi::get_one_with_args(
        "SELECT pg_catalog.now() OPERATOR(pg_catalog.+) $1",
        &[interval.into()],
    ));
    t.map(Into::into)
        .unwrap_or_else(|| internal("now() + interval was NULL"))
}

fn now() -> i64 {
    // SAFETY: reads a backend global (what now() returns).
    unsafe { pgrx::pg_sys::GetCurrentTransactionStartTimestamp() }
}

fn timestamptz(us: Option<i64>) -> Option<TimestampWithTimeZone> {
    us.map(|t| {
        TimestampWithTimeZone::try_from(t).unwrap_or_else(|_| invalid("expiry is out of range"))
    })
}

/// Named limits as given to `create`: `{"name": {"max": N, "per": "1 hour", "burst": N}}`, each
/// checked like a per-key limit. Returns (name, rate, per as given).
fn parse_named_limits(json: serde_json::Value) -> Vec<(String, Rate, Interval)> {
    let serde_json::Value::Object(map) = json else {
        invalid("limits must be a JSON object of {\"name\": {\"max\": N, \"per\": interval}}")
    };
    map.into_iter()
        .map(|(name, v)| {
            if name.trim().is_empty() || name.len() > 64 {
                invalid("a limit name must be 1 to 64 characters");
            }
            let max = v.get("max").and_then(|x| x.as_i64()).unwrap_or(0);
            let per_text = v.get("per").and_then(|x| x.as_str()).unwrap_or("");
            let per: Option<Interval> = spi(Spi::get_one_with_args(
                "SELECT $1::pg_catalog.interval",
                &[per_text.into()],
            ));
            let per =
                per.unwrap_or_else(|| invalid(format!("limit \"{name}\" needs a per interval")));
            let burst = v.get("burst").and_then(|x| x.as_i64());
            let rate = crate::rates::rate_from(max, per, burst);
            (name, rate, per)
        })
        .collect()
}

/// The `limits` column: given limits as written, then inherited ones not given.
fn named_json(
    given: &[(String, Rate, Interval)],
    inherited: &[(String, Rate)],
) -> serde_json::Value {
    let mut map = serde_json::Map::new();
    for (name, rate) in inherited {
        let per_us = rate.emission_us.saturating_mul(rate.limit as i64);
        map.insert(
            name.clone(),
            json!({"max": rate.limit, "per": Interval::from_micros(per_us).to_string(),
                   "per_us": per_us, "burst": rate.burst}),
        );
    }
    for (name, rate, per) in given {
        let per_us = rate.emission_us.saturating_mul(rate.limit as i64);
        map.insert(
            name.clone(),
            json!({"max": rate.limit, "per": per.to_string(), "per_us": per_us, "burst": rate.burst}),
        );
    }
    serde_json::Value::Object(map)
}

/// The administrator's precondition for new keys (`apikey.creation_check`): a function
/// `(owner text) RETURNS void` that refuses by raising. It runs on every path that makes a key
/// (create and import alike: `prepare` calls it), with the caller's rights (or its own, if it is
/// SECURITY DEFINER), never elevated, and with `search_path = pg_catalog, pg_temp`: a caller's
/// own functions and operators earlier on their search_path cannot change its answer (a check
/// that reads its own tables names them with their schema, or sets its own search_path). A
/// setting that names no such function fails closed.
fn creation_check(owner: &str) {
    let Some(name) = crate::gucs::CREATION_CHECK
        .get()
        .and_then(|c| c.into_string().ok())
        .filter(|s| !s.trim().is_empty())
    else {
        return;
    };
    let fn_oid: Option<pgrx::pg_sys::Oid> = crate::privilege::with_pinned_search_path(|| {
        spi(Spi::get_one_with_args(
            "SELECT (SELECT p.oid FROM pg_catalog.pg_proc p
              WHERE p.oid OPERATOR(pg_catalog.=) pg_catalog.to_regprocedure($1)
                AND p.prorettype OPERATOR(pg_catalog.=) 'pg_catalog.void'::pg_catalog.regtype
                AND p.pronargs OPERATOR(pg_catalog.=) 1
                AND p.proargtypes[0] OPERATOR(pg_catalog.=) 'pg_catalog.text'::pg_catalog.regtype)",
            &[name.clone().into()],
        ))
    });
    let Some(fn_oid) = fn_oid else {
        raise(ApiError::NotRecoverable(format!(
            "apikey.creation_check names no function (owner text) RETURNS void: \"{name}\""
        )))
    };
    use pgrx::IntoDatum;
    let arg = owner.into_datum().unwrap_or_else(|| internal("text datum"));
    crate::privilege::with_pinned_search_path(|| {
        use pgrx::pg_sys;
        // SAFETY: calls a function checked above to take one text argument and return void,
        // with a text datum, through a call frame built as fmgr's FunctionCall1Coll builds one
        // (FmgrInfo from fmgr_info, one argument, no collation) but without its "function
        // returned NULL" check: a `LANGUAGE sql` function returning void returns NULL. The frame
        // is palloc'd in the current memory context with room for its one argument. Errors the
        // function raises cross pg_guard_ffi_boundary as Postgres errors (its own SQLSTATE and
        // message), unwinding our frames (the search_path guard included).
        unsafe {
            let mut flinfo: pg_sys::FmgrInfo = std::mem::zeroed();
            pg_sys::fmgr_info(fn_oid, &mut flinfo);
            let size = std::mem::size_of::<pg_sys::FunctionCallInfoBaseData>()
                + std::mem::size_of::<pg_sys::NullableDatum>();
            let fcinfo = pg_sys::palloc0(size) as *mut pg_sys::FunctionCallInfoBaseData;
            (*fcinfo).flinfo = &mut flinfo;
            (*fcinfo).nargs = 1;
            (*fcinfo).fncollation = pg_sys::InvalidOid;
            (*fcinfo).args.as_mut_slice(1)[0] = pg_sys::NullableDatum {
                value: arg,
                isnull: false,
            };
            let Some(call) = flinfo.fn_addr else {
                internal("creation_check has no entry point")
            };
            #[allow(ffi_unwind_calls)]
            pg_sys::ffi::pg_guard_ffi_boundary(|| call(fcinfo));
        }
    });
}

/// `apikey.max_lifetime`, when set, refuses a longer lifetime or a key that never expires.
fn check_max_lifetime(expires_at: Option<i64>) {
    let Some(max_us) = max_lifetime_us() else {
        return;
    };
    if expires_at.is_none_or(|at| at - now() > max_us) {
        invalid(format!(
            "keys may live at most apikey.max_lifetime ({} seconds); give a shorter expires_in",
            max_us / 1_000_000
        ));
    }
}

fn max_lifetime_us() -> Option<i64> {
    let max = crate::gucs::MAX_LIFETIME.get();
    (max > 0).then_some(max as i64 * 1_000_000)
}

/// The stored columns of an inherited limit: its period is its emission interval times its limit.
fn stored_rate(rate: Option<&Rate>) -> (Option<i32>, Option<Interval>, Option<i32>) {
    match rate {
        None => (None, None, None),
        Some(r) => (
            Some(r.limit.min(i32::MAX as u32) as i32),
            Some(Interval::from_micros(
                r.emission_us.saturating_mul(r.limit as i64),
            )),
            Some(r.burst.min(i32::MAX as u32) as i32),
        ),
    }
}

/// What `create` and `import` accept about a key besides its secret, as given.
pub struct KeyOptions<'a> {
    pub owner: Option<&'a str>,
    pub name: Option<&'a str>,
    pub expires_in: Option<Interval>,
    /// An absolute expiry (imports keep the one they had); excludes `expires_in`.
    pub expires_at: Option<TimestampWithTimeZone>,
    pub scopes: Option<Vec<Option<String>>>,
    pub resource: Option<&'a str>,
    pub kind: Option<&'a str>,
    pub format: Option<&'a str>,
    pub metadata: Option<Json>,
    pub rate_limit: Option<i32>,
    pub rate_period: Option<Interval>,
    pub rate_burst: Option<i32>,
    pub db_role: Option<&'a str>,
    pub allowed_ips: Option<Vec<Option<String>>>,
    pub credits: Option<i64>,
    pub refill_amount: Option<i64>,
    pub refill_interval: Option<Interval>,
    pub limits: Option<Json>,
}

/// A new key's row without its secret, checked and (for a key holder) derived from the
/// caller's own key.
pub struct Prepared<'a> {
    pub owner: &'a str,
    pub name: &'a str,
    pub format: Format,
    pub kind: KeyKind,
    pub scopes: Option<Vec<String>>,
    pub resource: Option<String>,
    pub expires_in: Option<Interval>,
    pub expires_at: Option<i64>,
    pub metadata: Option<Json>,
    pub rate_limit: Option<i32>,
    pub rate_period: Option<Interval>,
    pub rate_burst: Option<i32>,
    pub db_role: Option<String>,
    pub allowed: Option<Vec<Cidr>>,
    pub credits: Option<i64>,
    pub refill_amount: Option<i64>,
    pub refill_interval: Option<Interval>,
    pub limits: serde_json::Value,
}

impl<'a> Prepared<'a> {
    /// The row to insert, given the key's stored parts.
    pub fn row(
        self,
        caller: &Caller,
        display_prefix: String,
        last4: String,
        digest: Vec<u8>,
        sealed: Option<Vec<u8>>,
    ) -> store::NewKeyRow<'a> {
        store::NewKeyRow {
            owner: self.owner,
            name: self.name,
            format: self.format.name,
            kind: self.kind,
            scopes: self.scopes,
            resource: self.resource,
            display_prefix,
            last4,
            digest,
            expires_in: self.expires_in,
            expires_at: timestamptz(self.expires_at),
            created_by: caller.name.clone(),
            metadata: self.metadata.map(|m| m.0),
            sealed,
            rate_limit: self.rate_limit,
            rate_period: self.rate_period,
            rate_burst: self.rate_burst,
            db_role: self.db_role,
            allowed_ips: self
                .allowed
                .map(|l| l.iter().map(Cidr::to_string).collect()),
            credits: self.credits,
            refill_amount: self.refill_amount,
            refill_interval: self.refill_interval,
            limits: self.limits,
        }
    }

    pub fn audit_detail(&self) -> serde_json::Value {
        json!({"format": self.format.name, "kind": self.kind.name(), "scopes": self.scopes,
               "resource": self.resource, "expires_in": self.expires_in.map(|i| i.to_string())})
    }
}

/// Create a key. The plaintext is returned here and never again.
#[allow(clippy::too_many_arguments)]
#[pg_extern(volatile, parallel_unsafe, requires = ["api_key_type"])]
fn create(
    owner: Option<&str>,
    name: Option<&str>,
    expires_in: default!(Option<Interval>, "NULL"),
    scopes: default!(Option<Vec<Option<String>>>, "NULL"),
    resource: default!(Option<&str>, "NULL"),
    kind: default!(Option<&str>, "'user'"),
    format: default!(Option<&str>, "NULL"),
    metadata: default!(Option<Json>, "NULL"),
    rate_limit: default!(Option<i32>, "NULL"),
    rate_period: default!(Option<Interval>, "NULL"),
    rate_burst: default!(Option<i32>, "NULL"),
    db_role: default!(Option<&str>, "NULL"),
    allowed_ips: default!(Option<Vec<Option<String>>>, "NULL"),
    credits: default!(Option<i64>, "NULL"),
    refill_amount: default!(Option<i64>, "NULL"),
    refill_interval: default!(Option<Interval>, "NULL"),
    limits: default!(Option<Json>, "NULL"),
) -> TableIterator<'static, (name!(id, i64), name!(api_key, ApiKey))> {
    privilege::require_primary("create API keys");
    let caller = Caller::get();
    let p = prepare(
        &caller,
        KeyOptions {
            owner,
            name,
            expires_in,
            expires_at: None,
            scopes,
            resource,
            kind,
            format,
            metadata,
            rate_limit,
            rate_period,
            rate_burst,
            db_role,
            allowed_ips,
            credits,
            refill_amount,
            refill_interval,
            limits,
        },
    );
    let key = generate(&p.format);
    let sealed = sealing::seal_for(&p.format.name, &key.plaintext);
    let audit_detail = p.audit_detail();
    let (owner, name) = (p.owner, p.name);
    let id = store::as_owner(|| {
        quota::charge_creation(owner, caller.admin);
        let id = store::insert_key(p.row(
            &caller,
            key.display_prefix.clone(),
            key.last4.clone(),
            key.digest.clone(),
            sealed,
        ))
        .unwrap_or_else(|| internal("a new key's digest is already stored"));
        policy::audit(&caller, "create", id, owner, name, audit_detail);
        id
    });
    TableIterator::once((id, ApiKey::from_generated(key.plaintext)))
}

/// Check `o` for `caller` and, for a key holder, derive it from the caller's own key.
pub fn prepare<'a>(caller: &Caller, o: KeyOptions<'a>) -> Prepared<'a> {
    let KeyOptions {
        owner,
        name,
        expires_in,
        expires_at: given_expires_at,
        scopes,
        resource,
        kind,
        format,
        metadata,
        rate_limit,
        rate_period,
        rate_burst,
        db_role,
        allowed_ips,
        credits,
        refill_amount,
        refill_interval,
        limits,
    } = o;
    // Every named limit and allowed block is carried by every verify of the key and held in each
    // backend's cache: bounded like metadata, tighter for key holders (checked before parsing).
    let (max_limits, max_blocks) = if caller.admin {
        (ADMIN_MAX_LIMITS, ADMIN_MAX_BLOCKS)
    } else {
        (HOLDER_MAX_LIMITS, HOLDER_MAX_BLOCKS)
    };
    if limits
        .as_ref()
        .and_then(|l| l.0.as_object())
        .is_some_and(|m| m.len() > max_limits)
    {
        invalid(format!("a key may have at most {max_limits} named limits"));
    }
    if allowed_ips.as_ref().is_some_and(|l| l.len() > max_blocks) {
        invalid(format!(
            "allowed_ips may list at most {max_blocks} address blocks"
        ));
    }
    let max_scopes = if caller.admin {
        ADMIN_MAX_SCOPES
    } else {
        HOLDER_MAX_SCOPES
    };
    if scopes.as_ref().is_some_and(|l| l.len() > max_scopes) {
        invalid(format!("a key may have at most {max_scopes} scopes"));
    }
    if scopes.as_ref().is_some_and(|l| {
        l.iter()
            .any(|s| s.as_ref().is_some_and(|s| s.len() > MAX_SCOPE_BYTES))
    }) {
        invalid(format!("a scope may be at most {MAX_SCOPE_BYTES} bytes"));
    }
    if resource.is_some_and(|r| r.len() > MAX_RESOURCE_BYTES) {
        invalid(format!(
            "resource may be at most {MAX_RESOURCE_BYTES} bytes"
        ));
    }
    // Request limits live in shared memory: without it such a key could never be used.
    if !crate::shmem::preloaded() && (rate_limit.is_some() || limits.is_some()) {
        raise(ApiError::NotPreloaded("a key with request limits"));
    }
    let named = limits.map(|l| parse_named_limits(l.0)).unwrap_or_default();
    if credits.is_some_and(|c| c < 0) {
        invalid("credits must not be negative");
    }
    if credits.is_some() {
        // Refused now rather than at the key's first use: a key whose credits can never be
        // spent is no key to hand out.
        if let Err(e) = crate::credits::available() {
            raise(e);
        }
    }
    match (refill_amount, refill_interval) {
        (None, None) => {}
        (Some(a), Some(i)) if a > 0 && i.as_micros() > 0 && credits.is_some() => {}
        _ => invalid(
            "a refill needs credits, a positive refill_amount and a positive refill_interval",
        ),
    }
    let allowed: Option<Vec<Cidr>> = allowed_ips.map(|list| {
        list.into_iter()
            .map(|c| {
                let c = c.unwrap_or_else(|| raise(ApiError::NullArgument("an allowed address")));
                Cidr::parse(&c).unwrap_or_else(|e| {
                    invalid(format!("allowed_ips: \"{c}\" is not a CIDR block: {e}"))
                })
            })
            .collect()
    });
    let owner = required(owner, "owner");
    let name = required(name, "name");
    let scopes: Option<Vec<String>> = scopes.map(|list| {
        list.into_iter()
            .map(|s| s.unwrap_or_else(|| raise(ApiError::NullArgument("a scope"))))
            .collect()
    });
    // No expiry given: the database's default lifetime, if it has one.
    let default_lifetime = crate::gucs::DEFAULT_LIFETIME.get();
    let expires_in = expires_in.or_else(|| {
        (default_lifetime > 0).then(|| Interval::from_micros(default_lifetime as i64 * 1_000_000))
    });
    if given_expires_at.is_some() && expires_in.is_some() {
        invalid("give expires_in or expires_at, not both");
    }
    let wanted_expiry = expires_in.map(|i| {
        let at = now_plus(i);
        if i.as_micros() <= 0 || at <= now() {
            invalid("expires_in must be a positive interval, or NULL for a key that never expires");
        }
        at
    });
    let wanted_expiry = match given_expires_at {
        Some(at) if i64::from(at) <= now() => invalid("expires_at must be in the future"),
        Some(at) => Some(i64::from(at)),
        None => wanted_expiry,
    };
    if let Some(list) = &scopes {
        if let Some(bad) = list.iter().find(|s| !scope::is_valid(s)) {
            invalid(format!("invalid scope \"{bad}\": use segments of [a-z0-9_.-] separated by \":\", with \"*\" only as a whole last segment"));
        }
    }
    if resource.is_some_and(|r| r.trim().is_empty()) {
        invalid("resource must not be empty; pass NULL for a key that reaches every resource");
    }
    let kind = KeyKind::parse(kind.unwrap_or("user"))
        .unwrap_or_else(|| invalid("kind must be \"user\" or \"app\""));
    if let Some(m) = &metadata {
        if !m.0.is_object() {
            invalid("metadata must be a JSON object");
        }
        let limit = if caller.admin {
            ADMIN_METADATA_BYTES
        } else {
            HOLDER_METADATA_BYTES
        };
        // Measured as the table's CHECK measures it (jsonb's own text form), so an accepted
        // value never fails the CHECK later.
        let text = m.0.to_string();
        let stored: Option<i32> = if text.len() > 2 * ADMIN_METADATA_BYTES {
            Some(i32::MAX)
        } else {
            spi(Spi::connect(|c| {
                c.select(
                    "SELECT pg_catalog.octet_length(($1::pg_catalog.jsonb)::pg_catalog.text)",
                    Some(1),
                    &[text.into()],
                )?
                .first()
                .get_one()
            }))
        };
        if stored.unwrap_or(i32::MAX) as usize > limit {
            invalid(format!("metadata must be at most {limit} bytes of JSON"));
        }
    }
    let rate = match (rate_limit, rate_period) {
        (Some(limit), Some(period)) => Some(crate::rates::rate_from(
            limit as i64,
            period,
            rate_burst.map(i64::from),
        )),
        (None, None) if rate_burst.is_none() => None,
        _ => invalid(
            "a request limit needs both rate_limit and rate_period (rate_burst is optional)",
        ),
    };
    if !caller.may_manage(owner) {
        raise(ApiError::NotKeyAdmin);
    }
    if db_role.is_some() && !caller.admin {
        raise(ApiError::AdminOnly("give a key its own database role"));
    }
    if db_role.is_some_and(|r| r.is_empty()) {
        invalid("db_role must not be empty; pass NULL for apikey.default_role");
    }
    if let Some(r) = db_role {
        let c = std::ffi::CString::new(r).unwrap_or_else(|_| invalid("db_role is not a role"));
        // SAFETY: get_role_oid(missing_ok = true) returns InvalidOid for an unknown role.
        if unsafe { pgrx::pg_sys::get_role_oid(c.as_ptr(), true) } == pgrx::pg_sys::InvalidOid {
            invalid(format!("db_role \"{r}\" is not a role"));
        }
    }
    let format = formats::by_name(
        &format
            .map(str::to_owned)
            .unwrap_or_else(crate::gucs::default_format),
    );

    // A usage-limited key cannot mint keys: their credits (or their lack of any) would be an
    // allowance the caller's key does not have.
    if caller.holder().is_some_and(|me| me.has_credits) {
        raise(ApiError::Widens(rights::Widening::Credits));
    }
    // A key holder's new key is derived from the key they hold: what they did not give is
    // inherited, and nothing may be wider. Its stored lifetime is the effective one, so a later
    // rotation (by anyone) renews it for no longer than it was allowed to live.
    let (scopes, resource, expires_at, expires_in, rate, db_role, allowed, limits_json) =
        match caller.holder() {
            Some(me) => {
                if kind != KeyKind::User {
                    raise(ApiError::AdminOnly("create application keys"));
                }
                let r = rights::derive(
                    &me.rights(),
                    rights::Request {
                        scopes: scopes.clone(),
                        resource: resource.map(str::to_owned),
                        expires_at: wanted_expiry,
                        rate,
                        allowed: allowed.clone(),
                        named: named.iter().map(|(n, r, _)| (n.clone(), *r)).collect(),
                    },
                )
                .unwrap_or_else(|w| raise(ApiError::Widens(w)));
                check_max_lifetime(r.expires_at);
                // Named limits inherited from the caller's key are stored from their parsed form.
                let named_json = named_json(&named, &r.named);
                let lifetime = match r.expires_at {
                    Some(at) if Some(at) != wanted_expiry => {
                        Some(Interval::from_micros(at.saturating_sub(now()).max(1)))
                    }
                    _ => expires_in,
                };
                (
                    r.scopes,
                    r.resource,
                    r.expires_at,
                    lifetime,
                    r.rate,
                    r.db_role,
                    r.allowed,
                    named_json,
                )
            }
            None => {
                check_max_lifetime(wanted_expiry);
                (
                    scopes,
                    resource.map(str::to_owned),
                    wanted_expiry,
                    expires_in,
                    rate,
                    db_role.map(str::to_owned),
                    allowed,
                    named_json(&named, &[]),
                )
            }
        };
    // Store what was asked for as given; a limit inherited from the caller's key is stored in
    // the same columns, from its parsed form.
    let (rate_limit, rate_period, rate_burst) = if rate_limit.is_some() {
        (rate_limit, rate_period, rate_burst)
    } else {
        stored_rate(rate.as_ref())
    };
    // Last, once the request itself is known to be acceptable: the administrator's own rule.
    creation_check(owner);

    Prepared {
        owner,
        name,
        format,
        kind,
        scopes,
        resource,
        expires_in,
        expires_at,
        metadata,
        rate_limit,
        rate_period,
        rate_burst,
        db_role,
        allowed,
        credits,
        refill_amount,
        refill_interval,
        limits: limits_json,
    }
}

/// Revoke a key now. Returns false if it was already revoked.
#[pg_extern(volatile, strict, parallel_unsafe)]
fn revoke(id: i64) -> bool {
    privilege::require_primary("revoke API keys");
    let caller = Caller::get();
    store::as_owner(|| {
        let key = policy::target(&caller, id, true);
        if key.revoked {
            return false;
        }
        store::revoke_now(id);
        policy::audit(&caller, "revoke", id, &key.owner, &key.name, json!({}));
        true
    })
}

/// Disable a key: refused with 28000 "API key is disabled" until `apikey.enable`. Same rights as
/// revoke (administrators, or a holder of a key whose rights cover it). Returns false if it
/// already was disabled. Audited.
#[pg_extern(volatile, strict, parallel_unsafe)]
fn disable(id: i64) -> bool {
    set_disabled(id, true)
}

/// Enable a disabled key again. Returns false if it was not disabled. Audited.
#[pg_extern(volatile, strict, parallel_unsafe)]
fn enable(id: i64) -> bool {
    set_disabled(id, false)
}

fn set_disabled(id: i64, disabled: bool) -> bool {
    let action = if disabled { "disable" } else { "enable" };
    privilege::require_primary(if disabled {
        "disable API keys"
    } else {
        "enable API keys"
    });
    let caller = Caller::get();
    store::as_owner(|| {
        let key = policy::target(&caller, id, true);
        if key.revoked {
            raise(ApiError::KeyRevoked(id));
        }
        if !store::set_disabled(id, disabled) {
            return false;
        }
        quota::charge(quota::Act::Toggle, &key.owner, caller.admin);
        policy::audit(&caller, action, id, &key.owner, &key.name, json!({}));
        true
    })
}

/// Delete a key now; it is invalid in every session the moment this commits. The audit log keeps
/// its history.
#[pg_extern(volatile, strict, parallel_unsafe)]
fn delete(id: i64) -> bool {
    privilege::require_primary("delete API keys");
    let caller = Caller::get();
    store::as_owner(|| {
        let key = policy::target(&caller, id, true);
        store::delete_key(id);
        policy::audit(&caller, "delete", id, &key.owner, &key.name, json!({}));
        true
    })
}

/// Replace a key with a new one of the same owner, name and settings, shown once. The old key
/// keeps working for `grace` (at most `apikey.max_rotation_grace`, never past its own expiry),
/// then is revoked. A rotation with a grace adds a live key, so it counts against the creation
/// quota like a `create`; an expired key, or one already in a rotation's grace, cannot be rotated.
#[pg_extern(volatile, parallel_unsafe, requires = ["api_key_type"])]
fn rotate(
    id: Option<i64>,
    grace: default!(Option<Interval>, "'0'"),
) -> TableIterator<'static, (name!(id, i64), name!(api_key, ApiKey))> {
    let id = id.unwrap_or_else(|| raise(ApiError::NullArgument("id")));
    privilege::require_primary("rotate API keys");
    let caller = Caller::get();
    let grace = grace.unwrap_or_else(|| Interval::from_micros(0));
    let grace_us = now_plus(grace) - now();
    if grace.as_micros() < 0 || grace_us < 0 {
        invalid("grace must not be negative");
    }
    let max_grace = crate::gucs::MAX_ROTATION_GRACE.get();
    if grace_us > max_grace as i64 * 1_000_000 {
        invalid(format!(
            "grace must be at most apikey.max_rotation_grace ({max_grace} seconds)"
        ));
    }
    let (new_id, plaintext, owner) = store::as_owner(|| {
        let old = policy::target(&caller, id, true);
        if old.revoked {
            raise(ApiError::KeyRevoked(id));
        }
        if old.expired {
            raise(ApiError::KeyExpired(id));
        }
        if old.in_grace {
            raise(ApiError::KeyInGrace(id));
        }
        if old.disabled {
            raise(ApiError::KeyDisabled(id));
        }
        // A rotation makes a key, grace or not: it counts against the creation quota.
        quota::charge_creation(&old.owner, caller.admin);
        // The new key lives as long as the old one was meant to (expires_in from now), but a key
        // holder's rotation never outlives the key they hold.
        // A key with an absolute expiry and no lifetime (an import) keeps that expiry.
        let mut expires_at = old.expires_in.map(now_plus).or(old.rights.expires_at);
        if let Some(mine) = caller.holder().and_then(|i| i.expires_at) {
            expires_at = Some(expires_at.map_or(mine, |e| e.min(mine)));
        }
        // A rotation obeys apikey.max_lifetime by being capped to it (refusing would block the
        // routine rotation of a key made before the maximum was set).
        if let Some(max_us) = max_lifetime_us() {
            let cap = now() + max_us;
            expires_at = Some(expires_at.map_or(cap, |e| e.min(cap)));
        }
        // The successor takes over the old key's balance, and the old key keeps none: rotating
        // must not mint fresh credits.
        let moved = old
            .has_credits
            .then(|| crate::credits::take_all(id, old.refill));
        let key = generate(&formats::by_name(&old.format));
        let new_id = store::rotate(
            id,
            store::Rotated {
                display_prefix: key.display_prefix.clone(),
                last4: key.last4.clone(),
                digest: key.digest.clone(),
                created_by: caller.name.clone(),
                sealed: sealing::seal_for(&old.format, &key.plaintext),
                expires_at: timestamptz(expires_at),
                credits: moved,
            },
            grace,
        );
        policy::audit(
            &caller,
            "rotate",
            id,
            &old.owner,
            &old.name,
            json!({"new_key_id": new_id, "grace": grace.to_string()}),
        );
        (new_id, key.plaintext, old.owner)
    });
    // A rotation makes a key: the administrator's rule for new keys holds for it too, with the
    // caller's rights as for create (a refusal rolls the rotation back).
    creation_check(&owner);
    TableIterator::once((new_id, ApiKey::from_generated(plaintext)))
}

/// The credits key `id` has left (NULL: not usage-limited). Administrators, or a holder of a key
/// whose rights cover it.
#[pg_extern(volatile, strict, parallel_restricted)]
fn credits(id: i64) -> Option<i64> {
    let caller = Caller::get();
    let key = store::as_owner(|| policy::target(&caller, id, false));
    key.has_credits
        .then(|| crate::credits::balance(id, key.refill))
}

/// Add `n` credits to key `id` (negative takes some away, never below zero). Administrators only;
/// audited. Returns the balance now.
#[pg_extern(volatile, strict, parallel_unsafe)]
fn add_credits(id: i64, n: i64) -> i64 {
    let caller = Caller::admin_only("add credits");
    store::as_owner(|| {
        let key = policy::target(&caller, id, true);
        if !key.has_credits {
            invalid(format!(
                "API key {id} has no credits: create it with credits => …"
            ));
        }
        crate::credits::add(id, n);
        policy::audit(
            &caller,
            "add_credits",
            id,
            &key.owner,
            &key.name,
            json!({"credits": n}),
        );
        crate::credits::balance(id, key.refill)
    })
}
