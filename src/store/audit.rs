//! The audit log.

use super::*;

pub struct AuditRow<'a> {
    pub action: &'a str,
    pub key_id: i64,
    pub owner: &'a str,
    pub key_name: &'a str,
    pub actor: &'a str,
    pub actor_key_id: Option<i64>,
    pub detail: serde_json::Value,
}

pub fn audit(row: AuditRow) {
    spi(Spi::connect_mut(|c| {
        c.update(
            "INSERT INTO apikey.audit_log (action, key_id, owner, key_name, actor, session_actor, actor_key_id, detail)
             VALUES ($1, $2, $3, $4, $5, session_user, $6, $7)",
            None,
            &[
                row.action.into(),
                row.key_id.into(),
                row.owner.into(),
                row.key_name.into(),
                row.actor.into(),
                row.actor_key_id.into(),
                JsonB(row.detail).into(),
            ],
        )
        .map(|_| ())
    }))
}
