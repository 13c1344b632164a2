//! The identity of the current transaction: set only by a successful `apikey.authenticate`, held in
//! this backend's memory (never in a GUC a caller could `set_config`), and cleared at COMMIT,
//! ROLLBACK and PREPARE. A subtransaction that authenticated and then rolled back takes its
//! identity with it. A pooled connection therefore never carries one request's owner into the next.

use std::cell::RefCell;

use pg_apikey_core::gcra::Rate;
use pg_apikey_core::rights::{KeyKind, Rights};
use pg_apikey_core::scope;
use pg_apikey_core::subxact;
use pgrx::pg_sys;
use pgrx::prelude::*;

/// A key's digest, kept so that its row can be read again at every act (`authority`). Never
/// printed: its `Debug` form says only what it is.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Digest(pub [u8; pg_apikey_core::digest::DIGEST_LEN]);

impl std::fmt::Debug for Digest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Digest(..)")
    }
}

#[derive(Clone, Debug)]
pub struct Identity {
    pub key_id: i64,
    /// The key's rotation lineage (see `StoredKey::lineage`), and for a two-key request the
    /// application key's: the limiter's buckets belong to them.
    pub lineage: i64,
    pub app_lineage: i64,
    /// The digests of the key (and, for a two-key request, of the application key) that
    /// authenticated: `authority` finds their rows again by them.
    pub digest: Digest,
    pub app_digest: Option<Digest>,
    /// For a bcrypt import used before its rehash is applied (a READ ONLY transaction queues
    /// it): the stand-in digest its row is still found under.
    pub stand_in: Option<Digest>,
    pub owner: String,
    pub kind: KeyKind,
    pub scopes: Option<Vec<String>>,
    pub resource: Option<String>,
    /// For two-key requests: the application key's id and owner (the application).
    pub app: Option<(i64, String)>,
    /// The database role the key asks for (NULL: apikey.default_role).
    pub db_role: Option<String>,
    /// The key's expiry (microseconds, Postgres epoch), which bounds keys it manages.
    pub expires_at: Option<i64>,
    /// The key's own request limit, which bounds keys it creates.
    pub rate: Option<Rate>,
    /// For two-key requests: the application key's scopes and resource, which bound the user's.
    pub app_bounds: Option<(Option<Vec<String>>, Option<String>)>,
    /// The addresses the key may be used from, which bound keys it manages.
    pub allowed: Option<Vec<pg_apikey_core::ipnet::Cidr>>,
    /// A usage-limited key: it may not mint keys (their allowance would be new money).
    pub has_credits: bool,
    /// The key's named limits, charged by `apikey.charge(name)`.
    pub named: Vec<(String, Rate)>,
    /// For two-key requests: the application key's named limits, charged by `charge(name)` too.
    pub app_named: Vec<(String, Rate)>,
}

impl Identity {
    fn app_scopes(&self) -> Option<&Vec<String>> {
        self.app_bounds.as_ref().and_then(|(s, _)| s.as_ref())
    }

    fn app_resource(&self) -> Option<&String> {
        self.app_bounds.as_ref().and_then(|(_, r)| r.as_ref())
    }

    /// Does the identity hold `scope`? The user key must, and in a two-key request so must the
    /// application key (an unscoped key holds every scope). A restricting scope
    /// (`apikey.deny_scopes`) is held when *either* key holds it: a restriction of one half of a
    /// pair is not shed by pairing it with a key that lacks it.
    pub fn holds_scope(&self, wanted: &str) -> bool {
        let user = self
            .scopes
            .as_ref()
            .is_none_or(|s| scope::covers(s, wanted));
        let app = self.app_scopes().is_none_or(|s| scope::covers(s, wanted));
        if self.app_bounds.is_some() && crate::gucs::deny_scopes().iter().any(|d| d == wanted) {
            return user || app;
        }
        user && app
    }

    /// May the identity reach `resource`? Both keys' resources must allow it.
    pub fn reaches(&self, resource: &str) -> bool {
        self.resource.as_deref().is_none_or(|r| r == resource)
            && self.app_resource().is_none_or(|r| r == resource)
    }

    /// The scopes in force: the user key's, narrowed by the application key's, plus every
    /// restricting scope (`apikey.deny_scopes`) either key holds.
    pub fn effective_scopes(&self) -> Option<Vec<String>> {
        let mut both = match (&self.scopes, self.app_scopes()) {
            (mine, None) => return mine.clone(),
            (None, Some(app)) => app.clone(),
            (Some(mine), Some(app)) => mine
                .iter()
                .filter(|s| scope::covers(app, s))
                .chain(app.iter().filter(|s| scope::covers(mine, s)))
                .cloned()
                .collect(),
        };
        for d in crate::gucs::deny_scopes() {
            if self.holds_scope(&d) && !scope::covers(&both, &d) {
                both.push(d);
            }
        }
        both.sort();
        both.dedup();
        Some(both)
    }

    /// The resource in force: the user key's, else the application key's.
    pub fn effective_resource(&self) -> Option<String> {
        self.resource
            .clone()
            .or_else(|| self.app_resource().cloned())
    }

    /// What the key holds, for the "rights never widen" rule.
    pub fn rights(&self) -> Rights {
        Rights {
            kind: self.kind,
            scopes: self.effective_scopes(),
            resource: self.effective_resource(),
            expires_at: self.expires_at,
            rate: self.rate,
            db_role: self.db_role.clone(),
            allowed: self.allowed.clone(),
            named: self.named.clone(),
            metered: self.has_credits,
            deny: crate::gucs::deny_scopes(),
        }
    }
}

thread_local! {
    /// Identities set in this transaction, innermost last, each with the subtransaction that set it.
    static STACK: RefCell<Vec<(pg_sys::SubTransactionId, Identity)>> = const { RefCell::new(Vec::new()) };
}

/// The identity `authenticate` set in this transaction, as it was then. Whether its keys still
/// hold is `authority`'s question: everything that acts on an identity asks there.
pub fn remembered() -> Option<Identity> {
    STACK.with_borrow(|s| s.last().map(|(_, id)| id.clone()))
}

/// Authenticating again in the same (sub)transaction replaces the identity rather than stacking
/// it, so a loop of authenticates does not grow the stack.
pub fn set(identity: Identity) {
    // SAFETY: reads a backend global of the transaction state; no preconditions.
    let sub = unsafe { pg_sys::GetCurrentSubTransactionId() };
    STACK.with_borrow_mut(|s| match s.last_mut() {
        Some(top) if top.0 == sub => top.1 = identity,
        _ => s.push((sub, identity)),
    });
}

#[pg_guard]
unsafe extern "C-unwind" fn on_xact(event: pg_sys::XactEvent::Type, _arg: *mut std::ffi::c_void) {
    use pg_sys::XactEvent::*;
    if matches!(
        event,
        XACT_EVENT_COMMIT
            | XACT_EVENT_ABORT
            | XACT_EVENT_PREPARE
            | XACT_EVENT_PARALLEL_COMMIT
            | XACT_EVENT_PARALLEL_ABORT
    ) {
        STACK.with_borrow_mut(|s| s.clear());
    }
}

#[pg_guard]
unsafe extern "C-unwind" fn on_subxact(
    event: pg_sys::SubXactEvent::Type,
    my_subid: pg_sys::SubTransactionId,
    parent_subid: pg_sys::SubTransactionId,
    _arg: *mut std::ffi::c_void,
) {
    use pg_sys::SubXactEvent::*;
    STACK.with_borrow_mut(|s| match event {
        SUBXACT_EVENT_ABORT_SUB => {
            subxact::abort(s, my_subid);
        }
        SUBXACT_EVENT_COMMIT_SUB => subxact::commit(s, my_subid, parent_subid),
        _ => {}
    });
}

pub fn init() {
    // SAFETY: registering static callbacks once, from _PG_init.
    unsafe {
        pg_sys::RegisterXactCallback(Some(on_xact), std::ptr::null_mut());
        pg_sys::RegisterSubXactCallback(Some(on_subxact), std::ptr::null_mut());
    }
}
