//! Administrators.

use super::*;

/// The administrator roles: (OID, the name it had when granted).
/// A row of `apikey.admins`: a role, and the name it was granted under.
pub struct AdminRole {
    pub role: pg_sys::Oid,
    pub granted_as: String,
}

pub fn admin_roles() -> Vec<AdminRole> {
    // Under the latest snapshot: a revoke_admin committed after a REPEATABLE READ transaction
    // began takes effect in it at once.
    latest(
        c"SELECT role, role_name::pg_catalog.text FROM apikey.admins",
        &[],
        |r| {
            r.get::<pg_sys::Oid>(1)
                .zip(r.get::<String>(2))
                .map(|(role, granted_as)| AdminRole { role, granted_as })
        },
    )
    .into_iter()
    .flatten()
    .collect()
}

/// What an administrator may read directly (everything else goes through functions).
const ADMIN_READS: &str =
    "apikey.audit_log, apikey.usage, apikey.usage_live, apikey.rate_limit_state, apikey.owner_limits, apikey.events";

/// Add role `oid` (named `name`, quoted `quoted`) to the administrators; false if it was one.
pub fn add_admin(oid: pg_sys::Oid, name: &str, quoted: &str, granted_by: &str) -> bool {
    spi(Spi::connect_mut(|c| {
        let added = c.update(
            "INSERT INTO apikey.admins (role, role_name, granted_by) VALUES ($1, $2::pg_catalog.name, $3)
             ON CONFLICT (role) DO NOTHING RETURNING role",
            None,
            &[oid.into(), name.into(), granted_by.into()],
        )?;
        c.update(
            &format!("GRANT SELECT ON {ADMIN_READS} TO {quoted}"),
            None,
            &[],
        )?;
        Ok::<_, pgrx::spi::SpiError>(!added.is_empty())
    }))
}

pub fn remove_admin(oid: pg_sys::Oid, quoted: &str) -> bool {
    spi(Spi::connect_mut(|c| {
        let removed = c.update(
            "DELETE FROM apikey.admins WHERE role OPERATOR(pg_catalog.=) $1 RETURNING role",
            None,
            &[oid.into()],
        )?;
        c.update(
            &format!("REVOKE SELECT ON {ADMIN_READS} FROM {quoted}"),
            None,
            &[],
        )?;
        Ok::<_, pgrx::spi::SpiError>(!removed.is_empty())
    }))
}
