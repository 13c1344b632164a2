//! Administrators, per database.
//!
//! Roles are shared by every database of a cluster, so a role such as `apikey_admin` would make
//! an administrator of one tenant's database an administrator of all of them. Instead each
//! database lists its administrators in `apikey.admins` (a role there, or any member of it), and
//! only a superuser changes that list. Granting also grants read access to the audit log and usage
//! tables of this database; revoking takes it back.

use pg_apikey_core::errors::ApiError;
use pgrx::pg_sys;
use pgrx::prelude::*;

use crate::errors::raise;
use crate::privilege;
use crate::store;

/// The role's OID and quoted name, raising Postgres' own 42704 for an unknown role.
fn role(name: &str) -> (pg_sys::Oid, String) {
    let c = std::ffi::CString::new(name)
        .unwrap_or_else(|_| raise(ApiError::InvalidArgument("invalid role name".into())));
    // SAFETY: get_role_oid(missing_ok = false) returns the OID or raises; quote_identifier
    // returns its argument or a palloc'd quoted copy, NUL-terminated; `c` outlives both calls.
    unsafe {
        let oid = pg_sys::get_role_oid(c.as_ptr(), false);
        let quoted = std::ffi::CStr::from_ptr(pg_sys::quote_identifier(c.as_ptr()))
            .to_string_lossy()
            .into_owned();
        (oid, quoted)
    }
}

fn require_superuser(what: &'static str) {
    if !privilege::caller_is_superuser() {
        raise(ApiError::SuperuserOnly(what));
    }
}

/// Make `role` (and its members) administrators of pg_apikey in this database. Superusers only.
#[pg_extern(volatile, strict, parallel_unsafe)]
fn grant_admin(role_name: &str) -> bool {
    privilege::require_primary("grant administrator rights");
    require_superuser("grant pg_apikey administrator rights");
    let (oid, quoted) = role(role_name);
    let actor = privilege::caller_name();
    store::as_owner(|| store::add_admin(oid, role_name, &quoted, &actor))
}

/// Take administrator rights in this database away from `role`. Superusers only.
#[pg_extern(volatile, strict, parallel_unsafe)]
fn revoke_admin(role_name: &str) -> bool {
    privilege::require_primary("revoke administrator rights");
    require_superuser("revoke pg_apikey administrator rights");
    let (oid, quoted) = role(role_name);
    store::as_owner(|| store::remove_admin(oid, &quoted))
}

/// Is the current role a pg_apikey administrator in this database (or a superuser)?
#[pg_extern(stable, parallel_restricted)]
fn is_admin() -> bool {
    caller_is_admin()
}

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
    store::as_owner(store::admin_roles).into_iter().any(|a| {
        // SAFETY: GetUserNameFromId(noerr = true) returns NULL for a role that no longer
        // exists, else a palloc'd NUL-terminated name; has_privs_of_role only reads the
        // role-membership cache.
        unsafe {
            let name = pg_sys::GetUserNameFromId(a.role, true);
            !name.is_null()
                && std::ffi::CStr::from_ptr(name).to_bytes() == a.granted_as.as_bytes()
                && pg_sys::has_privs_of_role(me, a.role)
        }
    })
}

/// Refuse what only administrators may do (`what`, as the refusal names it): 25006 on a standby,
/// 42501 for anyone else.
pub fn require_admin(what: &'static str) {
    privilege::require_primary(what);
    if !caller_is_admin() {
        raise(ApiError::AdminOnly(what));
    }
}
