//! Authentication and the transaction identity's SQL face: `apikey.authenticate` and the readers
//! and checks that row-level security policies call.
//!
//! The readers are STABLE (so `(SELECT apikey.current_owner())` is evaluated once per query) and
//! PARALLEL RESTRICTED: the identity lives in this backend's memory, which parallel workers do not
//! share, so they must run in the leader. None is LEAKPROOF.

use pg_apikey_core::errors::ApiError;
use pg_apikey_core::permexpr;
use pg_apikey_core::rights::KeyKind;
use pgrx::pg_sys;
use pgrx::prelude::*;

use crate::authority;
use crate::errors::raise;
use crate::identity::{self, Identity};
use crate::key_type::ApiKey;
use crate::lookup;
use crate::store::StoredKey;

fn identity_of(row: StoredKey, app: Option<(i64, String)>) -> Identity {
    row.identity(app)
}

/// The keys' request limits are charged only once every key has proved valid, all or nothing (a
/// two-key request refused by the user key's limit spends no part of the application's). A key
/// created by this very transaction is not charged: nobody else can use it before it commits, and
/// shared memory does not roll back, so charging it would let a transaction that creates, uses and
/// rolls back keys fill the limiter with buckets of keys that never existed.
fn charge(rows: &[&StoredKey], cost: i64) -> Result<(), ApiError> {
    // Credits first: they can be given back exactly if a limit then refuses the request. This
    // is the only refund there is: the request was refused before it was served.
    let mut spent = Vec::new();
    let give_back = |spent: &[i64]| {
        spent
            .iter()
            .for_each(|id| crate::credits::refund(*id, cost))
    };
    // A key with credits made by this transaction (a create, a rotation's successor) is not
    // spent from: the worker cannot see its row before the commit, so the spending could not be
    // made durable, and after a restart the balance would come back.
    if rows
        .iter()
        .any(|r| r.rights.metered && (r.created_here || crate::store::inserted_here(r.id)))
    {
        return Err(ApiError::UncommittedCredits);
    }
    for r in rows.iter().filter(|r| r.rights.metered) {
        if let Err(e) = crate::credits::spend(r, cost) {
            give_back(&spent);
            crate::usage::record(r.id, crate::usage::Event::RateLimited);
            return Err(e);
        }
        spent.push(r.id);
    }
    // Every limit a request charges, all or nothing: each key's own limit (a key created by this
    // transaction excepted, see above), its named `requests` limit, and its owner's.
    let owner_rates: Vec<Option<crate::limits::OwnerRate>> = rows
        .iter()
        .map(|r| crate::limits::owner_requests(&r.owner))
        .collect();
    let mut items = Vec::new();
    for (r, owner_rate) in rows.iter().zip(&owner_rates) {
        // A rotation's successor is inserted here too, but draws on its lineage's committed
        // bucket: only a key that is its own lineage is exempt.
        let exempt = r.created_here && r.lineage == r.id;
        if let Some(rate) = r.rights.rate.as_ref().filter(|_| !exempt) {
            items.push(crate::limiter::Charge {
                // The lineage's bucket: a rotation hands out no fresh allowance, and a key and
                // its successor in their grace period share one.
                bucket: format!("key:{}", r.lineage),
                rate,
                cost: 1,
                key_id: r.id,
                what: "API key".into(),
                global: None,
            });
        }
        let own =
            crate::limits::named(&r.rights.named, crate::limits::DEFAULT_NAME).filter(|_| !exempt);
        // Two keys of one owner share that owner's bucket: charge it once.
        let owner_bucket = format!("owner:{}:{}", r.owner, crate::limits::DEFAULT_NAME);
        let owner_rate = owner_rate
            .as_ref()
            .filter(|_| !items.iter().any(|c| c.bucket == owner_bucket));
        items.extend(crate::limits::charges_for(
            r.id,
            r.lineage,
            &r.owner,
            own,
            owner_rate,
            crate::limits::DEFAULT_NAME,
            1,
        ));
    }
    if let Err(e) = crate::limiter::charge_all(&items) {
        give_back(&spent);
        return Err(e);
    }
    for r in rows {
        crate::usage::record(r.id, crate::usage::Event::Use);
    }
    Ok(())
}

/// A refused scope or resource check, counted against the key that asked. Nothing the request
/// was charged comes back: the client may already have seen rows it read after authenticating,
/// and chose to call the check that refused (see docs/limits.md, "Charges are final").
fn denied(err: ApiError) -> ! {
    if let Some(me) = authority::current() {
        crate::usage::record(me.key_id, crate::usage::Event::Denied);
    }
    crate::shmem::regions::count(pg_apikey_core::stat::refusal(&err));
    raise(err)
}

/// How a presented key is found: `lookup::try_lookup` for an `api_key` value (its input function
/// has checked the shape already), `unchecked_key` for raw header text.
type Find = fn(&str) -> Result<StoredKey, ApiError>;

/// Check the shape of a key that did not come through the `api_key` type, then look it up.
fn unchecked_key(text: &str) -> Result<StoredKey, ApiError> {
    crate::formats::try_detect(text)?;
    lookup::try_lookup(text)
}

/// One key: a user key. An application key alone never grants an identity (it is half of a
/// two-key pair, and would otherwise manage its owner's user keys).
fn one_key(key: &str, find: Find, cost: i64) -> Result<Identity, ApiError> {
    let row = find(key)?;
    if row.rights.kind != KeyKind::User {
        return Err(ApiError::WrongKind { expected: "user" });
    }
    charge(&[&row], cost)?;
    Ok(identity_of(row, None))
}

fn app_and_user(
    app_key: Option<&str>,
    user_key: Option<&str>,
    find: Find,
) -> Result<Identity, ApiError> {
    let app_key = app_key.ok_or(ApiError::KeyRequired("application"))?;
    let user_key = user_key.ok_or(ApiError::KeyRequired("user"))?;
    let app = find(app_key)?;
    if app.rights.kind != KeyKind::App {
        return Err(ApiError::WrongKind {
            expected: "application",
        });
    }
    let user = find(user_key)?;
    if user.rights.kind != KeyKind::User {
        return Err(ApiError::WrongKind { expected: "user" });
    }
    charge(&[&app, &user], 1)?;
    // Both keys' policies apply: the identity is the user's, bounded by the application key's
    // scopes and resource as well.
    let mut id = identity_of(user, Some((app.id, app.owner.clone())));
    id.app_bounds = Some((app.rights.scopes.clone(), app.rights.resource.clone()));
    id.app_digest = Some(crate::identity::Digest(app.digest));
    id.app_named = app.rights.named.clone();
    id.app_lineage = app.lineage;
    Ok(id)
}

/// Verify `key` and make its owner the identity of the current transaction. Returns the owner.
#[pg_extern(volatile, strict, parallel_unsafe, requires = ["api_key_type"])]
fn authenticate(key: ApiKey) -> String {
    authenticate_cost(key, 1)
}

/// `authenticate`, spending `cost` credits of a usage-limited key (at least 1; an administrator
/// may pass 0 to check a key without spending, but an exhausted key is refused even then). Spending is final:
/// a rollback gives nothing back (docs/limits.md, "Charges are final").
#[pg_extern(name = "authenticate", volatile, strict, parallel_unsafe, requires = ["api_key_type"])]
fn authenticate_cost(key: ApiKey, cost: i64) -> String {
    // The caller names the cost, so a key holder at a SQL prompt could spend nothing forever:
    // only administrators (a billing job checking a key) may authenticate for free.
    if cost < 1 && !(cost == 0 && crate::admin::caller_is_admin()) {
        raise(ApiError::InvalidArgument(
            "cost must be at least 1 (0 for administrators only)".into(),
        ));
    }
    let id = crate::counting::counted(one_key(key.as_str(), lookup::try_lookup, cost))
        .unwrap_or_else(|e| raise(e));
    let owner = id.owner.clone();
    identity::set(id);
    owner
}

/// A two-key request: an application key (kind 'app') and a user key (kind 'user'), both valid.
/// The identity is the user's, and `current_app()` names the application. Returns the user.
#[pg_extern(name = "authenticate", volatile, parallel_unsafe, requires = ["api_key_type"])]
fn authenticate_app_user(app_key: Option<ApiKey>, user_key: Option<ApiKey>) -> String {
    let id = crate::counting::counted(app_and_user(
        app_key.as_ref().map(ApiKey::as_str),
        user_key.as_ref().map(ApiKey::as_str),
        lookup::try_lookup,
    ))
    .unwrap_or_else(|e| raise(e));
    let owner = id.owner.clone();
    identity::set(id);
    owner
}

fn request_setting(name: &std::ffi::CStr) -> Option<String> {
    // SAFETY: GetConfigOption(missing_ok = true) returns NULL or a NUL-terminated string owned by
    // the GUC machinery, valid until the setting changes; we copy it at once.
    unsafe {
        let raw = pg_sys::GetConfigOption(name.as_ptr(), true, false);
        (!raw.is_null()).then(|| std::ffi::CStr::from_ptr(raw).to_string_lossy().into_owned())
    }
}

/// May a request without an API key go on as PostgREST's anonymous role? Only where the
/// administrator said so in `apikey.anonymous_paths` ('*' for every path), or when PostgREST
/// authenticated it with a JWT (it refuses a bad one before the pre-request runs).
fn anonymous_allowed(headers: &serde_json::Map<String, serde_json::Value>) -> bool {
    if jwt_verified(headers) {
        return true;
    }
    let path = request_setting(c"request.path").unwrap_or_default();
    crate::gucs::anonymous_paths()
        .iter()
        .any(|p| p == "*" || *p == path)
}

/// Did PostgREST verify a JWT for this request? Read from what PostgREST verified, never from
/// the headers alone: PostgREST checks the *first* `Authorization` header, while
/// `request.headers` shows the *last* one, so a client that reaches PostgREST directly can show
/// a JWT-shaped header it never verified. `request.jwt.claims` holds the verified token's
/// claims, or `{"role": <anonymous role>}` when there was none:
/// - when PostgREST's in-database setting `pgrst.db_anon_role` names the anonymous role, a JWT
///   was verified exactly when the claims name another role;
/// - otherwise the claims must be exactly the payload of the `Authorization` header shown, and
///   name a role (a forged token whose payload equals the anonymous claims would need the
///   anonymous role's name; set `pgrst.db_anon_role` to close even that).
fn jwt_verified(headers: &serde_json::Map<String, serde_json::Value>) -> bool {
    let Some(claims) = request_setting(c"request.jwt.claims")
        .filter(|c| c.len() <= 65536)
        .and_then(|c| serde_json::from_str::<serde_json::Value>(&c).ok())
    else {
        return false;
    };
    let Some(role) = claims.get("role").and_then(|r| r.as_str()) else {
        return false;
    };
    if let Some(anon) = request_setting(c"pgrst.db_anon_role").filter(|a| !a.is_empty()) {
        return role != anon;
    }
    headers
        .get("authorization")
        .and_then(|v| v.as_str())
        .and_then(|v| pg_apikey_core::format::bearer_jwt_payload(v.as_bytes()))
        .and_then(|p| serde_json::from_slice::<serde_json::Value>(&p).ok())
        .is_some_and(|payload| payload == claims)
}

/// The work of `apikey.pre_request`: read PostgREST's `request.headers`, authenticate
/// (`x-api-key`, or the `x-api-app-authorization` + `x-api-authorization` pair) and switch to
/// the key's role. A bad, expired or rate-limited key, or a missing one where anonymous requests
/// are not allowed, is *returned* as JSON `{sqlstate, message, detail, two_key}` for
/// `apikey.pre_request` to answer over HTTP, so the common path needs no exception block (a
/// subtransaction per request). NULL: authenticated, or an allowed anonymous request.
#[pg_extern(volatile, parallel_unsafe)]
fn authenticate_request() -> Option<String> {
    let headers = request_setting(c"request.headers").unwrap_or_default();
    let headers: serde_json::Map<String, serde_json::Value> =
        serde_json::from_str(&headers).unwrap_or_default();
    hide_keys(&headers);
    // Spaces and tabs around a pasted key are not part of it.
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.as_str())
            .map(|v| v.trim_matches([' ', '\t']))
            .filter(|v| !v.is_empty())
    };
    let (single, app, user) = (
        header("x-api-key"),
        header("x-api-app-authorization"),
        header("x-api-authorization"),
    );
    let two_key = app.is_some() || user.is_some();
    let key_sent = two_key || single.is_some();
    let outcome = crate::counting::counted(match (single, two_key) {
        // A single key and a pair in one request: two different keys, whichever would pass.
        (Some(_), true) => Err(ApiError::InvalidKey),
        (None, true) => app_and_user(app, user, unchecked_key),
        (Some(key), false) => one_key(key, unchecked_key, 1),
        (None, false) if anonymous_allowed(&headers) => return None,
        (None, false) => Err(ApiError::KeyRequired("")),
    });
    match outcome {
        Ok(id) => {
            identity::set(id);
            if let Some(role) = current_db_role() {
                let role = std::ffi::CString::new(role).unwrap_or_default();
                // SAFETY: SET LOCAL role through the GUC machinery, with the caller's rights
                // (membership is checked by the role GUC's check hook); the string outlives the
                // call, which copies it.
                unsafe {
                    pg_sys::set_config_option(
                        c"role".as_ptr(),
                        role.as_ptr(),
                        pg_sys::GucContext::PGC_USERSET,
                        pg_sys::GucSource::PGC_S_SESSION,
                        pg_sys::GucAction::GUC_ACTION_LOCAL,
                        true,
                        0,
                        false,
                    )
                };
            }
            None
        }
        Err(e) => Some(
            serde_json::json!({
                "sqlstate": e.sqlstate().code(),
                "message": e.to_string(),
                "detail": e.detail(),
                "hint": e.hint(),
                "two_key": two_key,
                "key_sent": key_sent,
            })
            .to_string(),
        ),
    }
}

/// The headers that carry keys (and any `Authorization`), which endpoint code must never read:
/// once read here, `request.headers` is set again without them for the rest of the
/// transaction, so a logging trigger or a function that stores `request.headers` holds no key.
const KEY_HEADERS: [&str; 4] = [
    "x-api-key",
    "x-api-app-authorization",
    "x-api-authorization",
    "authorization",
];

fn hide_keys(headers: &serde_json::Map<String, serde_json::Value>) {
    if !KEY_HEADERS.iter().any(|h| headers.contains_key(*h)) {
        return;
    }
    let mut kept = headers.clone();
    for h in KEY_HEADERS {
        kept.remove(h);
    }
    let text =
        std::ffi::CString::new(serde_json::Value::Object(kept).to_string()).unwrap_or_default();
    // SAFETY: SET LOCAL through the GUC machinery (PostgREST set it the same way, local to the
    // transaction); both strings outlive the call, which copies them.
    unsafe {
        pg_sys::set_config_option(
            c"request.headers".as_ptr(),
            text.as_ptr(),
            pg_sys::GucContext::PGC_USERSET,
            pg_sys::GucSource::PGC_S_SESSION,
            pg_sys::GucAction::GUC_ACTION_LOCAL,
            true,
            0,
            false,
        )
    };
}

/// The authenticated owner of this transaction, or NULL.
#[pg_extern(stable, parallel_restricted)]
fn current_owner() -> Option<String> {
    authority::current().map(|i| i.owner)
}

/// The id of the key that authenticated this transaction, or NULL.
#[pg_extern(stable, parallel_restricted)]
fn current_key_id() -> Option<i64> {
    authority::current().map(|i| i.key_id)
}

/// The scopes of the authenticating key; NULL when nobody authenticated or the key is unscoped.
#[pg_extern(stable, parallel_restricted)]
fn current_scopes() -> Option<Vec<String>> {
    authority::current().and_then(|i| i.effective_scopes())
}

/// The resource the authenticating key is limited to, or NULL (none, or unlimited).
#[pg_extern(stable, parallel_restricted)]
fn current_resource() -> Option<String> {
    authority::current().and_then(|i| i.effective_resource())
}

/// The database role for this transaction's key: its own, else `apikey.default_role`, else NULL.
#[pg_extern(stable, parallel_restricted)]
fn current_db_role() -> Option<String> {
    let me = authority::current()?;
    me.db_role.or_else(|| {
        crate::gucs::DEFAULT_ROLE
            .get()
            .and_then(|c| c.into_string().ok())
            .filter(|r| !r.is_empty())
    })
}

/// For a two-key request, the application (owner of the app key); otherwise NULL.
#[pg_extern(stable, parallel_restricted)]
fn current_app() -> Option<String> {
    authority::current().and_then(|i| i.app.map(|(_, owner)| owner))
}

/// Does the authenticated key hold `scope`? An unscoped key holds every scope; no key, none.
#[pg_extern(stable, strict, parallel_restricted)]
fn has_scope(scope: &str) -> bool {
    authority::current().is_some_and(|i| i.holds_scope(scope))
}

/// May the authenticated key reach `resource`? A key without a resource reaches every one.
#[pg_extern(stable, strict, parallel_restricted)]
fn in_resource(resource: &str) -> bool {
    authority::current().is_some_and(|i| i.reaches(resource))
}

/// Raise 28000 without an authenticated key, 42501 naming the scope if the key lacks it.
#[pg_extern(stable, strict, parallel_restricted)]
fn require_scope(scope: &str) -> bool {
    if authority::current().is_none() {
        raise(ApiError::KeyRequired(""));
    }
    if !has_scope(scope) {
        denied(ApiError::MissingScope(scope.to_owned()));
    }
    true
}

/// Raise 28000 without an authenticated key, 42501 naming the resource if the key may not reach it.
#[pg_extern(stable, strict, parallel_restricted)]
fn require_resource(resource: &str) -> bool {
    if authority::current().is_none() {
        raise(ApiError::KeyRequired(""));
    }
    if !in_resource(resource) {
        denied(ApiError::OutsideResource(resource.to_owned()));
    }
    true
}

thread_local! {
    /// Parsed permission expressions of this backend: policies repeat a handful of them.
    static PARSED: std::cell::RefCell<std::collections::HashMap<String, Result<permexpr::Expr, permexpr::ParseError>>> =
        std::cell::RefCell::new(std::collections::HashMap::new());
}

/// Does the authenticated key satisfy a permission expression over its scopes, such as
/// `surveys:read AND (metrics:read OR admin:*)`? False without a key; 22023 naming the character
/// position for a syntax error. Each expression is parsed once per backend.
#[pg_extern(stable, strict, parallel_restricted)]
fn has_permissions(expression: &str) -> bool {
    let parsed = PARSED.with_borrow_mut(|cache| {
        if let Some(p) = cache.get(expression) {
            return p.clone();
        }
        if cache.len() >= 256 {
            cache.clear();
        }
        let p = permexpr::parse(expression);
        cache.insert(expression.to_owned(), p.clone());
        p
    });
    let expr = parsed.unwrap_or_else(|e| raise(ApiError::InvalidArgument(e.to_string())));
    // A scope tested with NOT is a restriction: only one declared as such is inherited by every
    // key its holder creates, so NOT over any other scope could be escaped by shedding it.
    let declared = crate::gucs::deny_scopes();
    if let Some(s) = permexpr::negated(&expr)
        .into_iter()
        .find(|s| !declared.iter().any(|d| d == s))
    {
        raise(ApiError::InvalidArgument(format!(
            "permission expression tests NOT {s}, which apikey.deny_scopes does not list: a key could shed it by creating a key without it"
        )));
    }
    authority::current().is_some_and(|i| permexpr::eval(&expr, &|s| i.holds_scope(s)))
}
