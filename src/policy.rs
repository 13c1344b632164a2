//! Who may do what: administrators per database, and the rule that a key holder acts only within
//! the rights of the key they authenticated with (`rights::within` in the core).

use pg_apikey_core::errors::ApiError;
use pg_apikey_core::rights;

use crate::authority;
use crate::errors::raise;
use crate::identity::Identity;
use crate::privilege;
use crate::store::{self, Target};

/// Who is calling a management function, captured before switching to the extension owner.
pub struct Caller {
    pub name: String,
    pub admin: bool,
    pub identity: Option<Identity>,
}

impl Caller {
    pub fn get() -> Self {
        Caller {
            name: privilege::caller_name(),
            admin: crate::admin::caller_is_admin(),
            // Checked again now: the key may have lost its rights since it authenticated.
            identity: authority::acting(),
        }
    }

    /// The caller of something only administrators may do (`what`, as the refusals name it);
    /// refused on a standby (25006) and for anyone else (42501).
    pub fn admin_only(what: &'static str) -> Self {
        privilege::require_primary(what);
        let caller = Caller::get();
        if !caller.admin {
            raise(ApiError::AdminOnly(what));
        }
        caller
    }

    /// The caller as a key holder only (for paths that administrators may not take, like reveal).
    pub fn holder_only() -> Self {
        Caller {
            admin: false,
            ..Caller::get()
        }
    }

    /// Admins manage every key; anyone else only keys of the owner they authenticated as.
    pub fn may_manage(&self, owner: &str) -> bool {
        self.admin || self.identity.as_ref().is_some_and(|i| i.owner == owner)
    }

    /// The key this caller acts through, when they are not an administrator.
    pub fn holder(&self) -> Option<&Identity> {
        (!self.admin).then_some(self.identity.as_ref()).flatten()
    }

    pub fn actor_key_id(&self) -> Option<i64> {
        self.identity.as_ref().map(|i| i.key_id)
    }
}

/// Load key `id` for `caller` (locking it when `lock`). Keys of other owners are reported as
/// missing (and not even read); keys of the caller's owner that hold more than the caller's own
/// key are refused with 42501. Runs inside `store::as_owner`.
pub fn target(caller: &Caller, id: i64, lock: bool) -> Target {
    if !caller.admin && caller.identity.is_none() {
        raise(ApiError::KeyNotFound(id));
    }
    let holder = caller.holder();
    let found = store::load_target(id, holder.map(|h| h.owner.as_str()), lock);
    let Some(t) = found.filter(|t| caller.may_manage(&t.owner)) else {
        raise(ApiError::KeyNotFound(id))
    };
    if let Some(me) = holder {
        rights::within(&me.rights(), &t.rights).unwrap_or_else(|w| raise(ApiError::Widens(w)));
        // A key with credits manages only itself: a sibling's balance (or its refill) is an
        // allowance the caller's key does not have, and rotating or revealing the sibling would
        // hand it over.
        if me.has_credits && t.id != me.key_id {
            raise(ApiError::Widens(rights::Widening::Credits));
        }
    }
    t
}

/// Write an audit row for `caller`'s `action` on key `key_id`. Runs inside `store::as_owner`.
pub fn audit(
    caller: &Caller,
    action: &str,
    key_id: i64,
    owner: &str,
    key_name: &str,
    detail: serde_json::Value,
) {
    crate::audit::audit_as(
        &caller.name,
        caller.actor_key_id(),
        action,
        key_id,
        owner,
        key_name,
        detail,
    );
}
