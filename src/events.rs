//! Key events: every audited change is also an event (a row in `apikey.events` and a NOTIFY on
//! channel `apikey_events`, both sent only if the transaction commits), and the usage worker
//! announces what no statement does: keys about to expire, credits running low, a key first
//! refused by a limit in a window.
//!
//! The notification carries only the event's id, name, key id and time. Any role can LISTEN on
//! any channel, so owners, names and details stay in `apikey.events`, which administrators read.

use std::cell::Cell;

use pg_apikey_core::events::{self, notice_days, window_number};

use crate::gucs;
use crate::store;

/// A database whose worker is not running prunes its events itself, every this many events.
const PRUNE_EVERY: i64 = 1000;

/// The event of an audited `action` on a key. Runs inside `store::as_owner`.
pub fn key_event(
    action: &str,
    key_id: i64,
    owner: &str,
    key_name: &str,
    detail: serde_json::Value,
) {
    let id = store::emit_event(
        events::for_action(action),
        Some(key_id),
        Some(owner),
        Some(key_name),
        detail,
    );
    if id % PRUNE_EVERY == 0 && !crate::shmem::regions::mine().is_some_and(|r| r.has_worker()) {
        store::prune_events(retention_s(), window_s());
    }
}

fn retention_s() -> i64 {
    i64::from(gucs::EVENT_RETENTION.get().max(60))
}

fn window_s() -> i64 {
    i64::from(gucs::LIMIT_EVENT_WINDOW.get().max(1))
}

thread_local! {
    /// When the worker last looked for expiring keys and pruned (epoch milliseconds).
    static LAST_SWEEP: Cell<i64> = const { Cell::new(0) };
}

/// The worker looks for keys about to expire, and prunes, every this many flushes.
const SWEEP_EVERY_FLUSHES: i64 = 10;

fn epoch_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

fn epoch_s() -> i64 {
    epoch_ms() / 1000
}

/// The worker's share, after a flush: `limited` are keys refused by a limit since the last
/// flush, `credited` keys whose balances it just wrote. Runs in the worker's transaction.
pub fn worker_tick(limited: &[i64], credited: &[i64]) {
    let mut due = Vec::new();
    store::as_owner(|| {
        if !limited.is_empty() {
            let window = window_number(epoch_s(), window_s());
            for a in store::due_limit_notices(limited, window) {
                let detail = serde_json::json!({"window_seconds": window_s()});
                due.push(("limited", a.key_id, a.owner, a.name, detail));
            }
        }
        let percent = gucs::CREDITS_LOW_PERCENT.get();
        if !credited.is_empty() && percent > 0 {
            for a in store::due_credit_notices(credited, percent) {
                due.push(("credits_low", a.key_id, a.owner, a.name, a.detail));
            }
        }
        let now = epoch_ms();
        let every = SWEEP_EVERY_FLUSHES * i64::from(gucs::USAGE_FLUSH_INTERVAL.get().max(10));
        if now - LAST_SWEEP.get() >= every {
            LAST_SWEEP.set(now);
            let days = notice_days(&gucs::expiry_notice_days());
            if !days.is_empty() {
                for a in store::due_expiry_notices(&days) {
                    due.push(("expiring", a.key_id, a.owner, a.name, a.detail));
                }
            }
            store::prune_events(retention_s(), window_s());
        }
        for (event, id, owner, name, detail) in due {
            store::emit_event(event, Some(id), Some(&owner), Some(&name), detail);
        }
    });
}
