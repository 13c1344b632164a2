//! Who may do what: administrators per database, and the rule that a key holder acts only within
//! the rights of the key they authenticated with (`rights::within` in the core).

use pg_apikey_core::errors::ApiError;
use pg_apikey_core::rights;
use pgrx::pg_sys;

use crate::errors::raise;
use crate::identity::{self, Identity};
use crate::privilege;
use crate::store::{self, Target};

/// Superusers, and roles listed in this database's `apikey.admins` (and their members), manage
/// every key of this database. Roles are cluster-wide, so the list is a table: being an
/// administrator in one database says nothing about another. Entries are role OIDs, and count
/// only while that role still has the name it was granted under: a dropped role's entry is never
/// adopted by a new role of the same name, and a renamed role loses its rights (fail closed).
pub fn caller_is_admin() -> bool {
    if privilege::caller_is_superuser() {
        return true;
    }
    let me = privilege::caller();
    store::as_owner(store::admin_roles)
        .into_iter()
        .any(|(role, granted_as)| {
            // SAFETY: GetUserNameFromId(noerr = true) returns NULL for a role that no longer
            // exists, else a palloc'd NUL-terminated name; has_privs_of_role only reads the
            // role-membership cache.
            unsafe {
                let name = pg_sys::GetUserNameFromId(role, true);
                !name.is_null()
                    && std::ffi::CStr::from_ptr(name).to_bytes() == granted_as.as_bytes()
                    && pg_sys::has_privs_of_role(me, role)
            }
        })
}

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
            admin: caller_is_admin(),
            identity: identity::current(),
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
    audit_as(
        &caller.name,
        caller.actor_key_id(),
        action,
        key_id,
        owner,
        key_name,
        detail,
    );
}

/// Write an audit row for `actor`, and the event it announces. Runs inside `store::as_owner`.
pub fn audit_as(
    actor: &str,
    actor_key_id: Option<i64>,
    action: &str,
    key_id: i64,
    owner: &str,
    key_name: &str,
    detail: serde_json::Value,
) {
    store::audit(store::AuditRow {
        action,
        key_id,
        owner,
        key_name,
        actor,
        actor_key_id,
        detail: detail.clone(),
    });
    crate::events::key_event(action, key_id, owner, key_name, detail);
}
