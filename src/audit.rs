//! The audit log and the event each audited act announces: one place for both, used by the
//! management functions (through `policy::audit`) and by the request path's rehash.

use crate::store;

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
