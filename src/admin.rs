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

use crate::errors::{raise, spi};
use crate::privilege;

/// What an administrator may read directly (everything else goes through functions).
const ADMIN_READS: &str =
    "apikey.audit_log, apikey.usage, apikey.usage_live, apikey.rate_limit_state";

/// The role's quoted name, raising Postgres' own 42704 for an unknown role.
fn role(name: &str) -> String {
    let c = std::ffi::CString::new(name)
        .unwrap_or_else(|_| raise(ApiError::InvalidArgument("invalid role name".into())));
    // SAFETY: get_role_oid(missing_ok = false) returns the OID or raises; quote_identifier
    // returns its argument or a palloc'd quoted copy, NUL-terminated; `c` outlives both calls.
    unsafe {
        pg_sys::get_role_oid(c.as_ptr(), false);
        std::ffi::CStr::from_ptr(pg_sys::quote_identifier(c.as_ptr()))
            .to_string_lossy()
            .into_owned()
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
    let name = role(role_name);
    let actor = privilege::caller_name();
    privilege::as_owner(|| {
        spi(Spi::connect_mut(|c| {
            let added = c.update(
                "INSERT INTO apikey.admins (role, granted_by) VALUES ($1::pg_catalog.name, $2)
                 ON CONFLICT (role) DO NOTHING RETURNING role",
                None,
                &[role_name.into(), actor.into()],
            )?;
            c.update(
                &format!("GRANT SELECT ON {ADMIN_READS} TO {name}"),
                None,
                &[],
            )?;
            Ok::<_, pgrx::spi::SpiError>(!added.is_empty())
        }))
    })
}

/// Take administrator rights in this database away from `role`. Superusers only.
#[pg_extern(volatile, strict, parallel_unsafe)]
fn revoke_admin(role_name: &str) -> bool {
    privilege::require_primary("revoke administrator rights");
    require_superuser("revoke pg_apikey administrator rights");
    let name = role(role_name);
    privilege::as_owner(|| {
        spi(Spi::connect_mut(|c| {
            let removed = c.update(
                "DELETE FROM apikey.admins WHERE role OPERATOR(pg_catalog.=) $1::pg_catalog.name RETURNING role",
                None,
                &[role_name.into()],
            )?;
            c.update(
                &format!("REVOKE SELECT ON {ADMIN_READS} FROM {name}"),
                None,
                &[],
            )?;
            Ok::<_, pgrx::spi::SpiError>(!removed.is_empty())
        }))
    })
}

/// Is the current role a pg_apikey administrator in this database (or a superuser)?
#[pg_extern(stable, parallel_restricted)]
fn is_admin() -> bool {
    privilege::caller_is_admin()
}
