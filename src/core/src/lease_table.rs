//! A standby's leases of credits, kept in its credit balances (`credits_table::Balance::lease`),
//! and the rules that size them.
//!
//! The primary is the ledger: it takes what it grants out of the key's balance before the standby
//! may spend it, so what a standby holds is already deducted there and nothing a standby does can
//! spend a credit twice. A standby spends from its leases under the partition's lock (exact on
//! the server, like the primary's balances); when a request finds too little, it asks its worker,
//! which asks the primary (`apikey.lease_exchange`) and answers every waiting request at once.
//!
//! ## Slices
//! A first use asks for what the request lacks plus [`FIRST_SLICE`]. The worker looks at every
//! lease at each tick and keeps busy keys ahead: a key holding less than [`RENEW_WINDOWS`] times
//! what it spent in the last [`WINDOW_US`] (about 2 s of spending) asks for [`SLICE_WINDOWS`]
//! times that spending (about 10 s, at least [`FIRST_SLICE`]), so a key used hard there gets
//! larger slices and one used once a small one, and a busy key rarely waits or asks. The
//! primary grants at most half of what the key has left (all of what a waiting request lacks when
//! that is more), so one standby cannot take a busy key's whole balance from the others; none when
//! it has less than the request lacks, so nothing is stranded on a server that cannot use it. A
//! standby gives back what a key did not spend for [`IDLE_US`] when the primary said the key is
//! short (it has less left than twice what was asked; [`IDLE_PLENTY_US`] otherwise), what a key
//! may no longer lease, and everything at shutdown; it renews a lease it holds when less than
//! half its time is left, and stops spending a lease the primary did not renew at its expiry.

use crate::credits_table::{start_slot, Balance, Lease};
use crate::slots::{probe, Probe};

/// What a first use asks for beyond what the request lacks.
pub const FIRST_SLICE: i64 = 100;
/// Time without spending after which a key's lease goes back to the primary (µs) when the
/// primary said its balance is short; [`IDLE_PLENTY_US`] otherwise.
pub const IDLE_US: i64 = 5_000_000;
pub const IDLE_PLENTY_US: i64 = 30_000_000;
/// The window a key's spending is measured over, for its renewals (µs).
pub const WINDOW_US: i64 = 200_000;
/// A key holding less than this many windows of its spending asks for more.
pub const RENEW_WINDOWS: i64 = 10;
/// ... and asks for this many windows of it.
pub const SLICE_WINDOWS: i64 = 50;
/// The largest slice asked for at once.
pub const MAX_SLICE: i64 = 1 << 40;

/// What a standby's spend found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LeaseSpend {
    /// Spent; the lease holds this much more.
    Spent(i64),
    /// Too little here: the worker is asked (wake it and wait).
    Asked,
    /// The worker has not answered yet.
    Waiting,
    /// The primary granted too little: the key has no credits left to lease.
    Empty,
    /// The primary could not be reached, and what is held here does not cover the cost.
    Unreachable,
    /// Every slot holds a lease or a waiting request of another key.
    Full,
}

fn find(part: &[Balance], db: u32, key_id: i64) -> Probe {
    probe(
        part.len(),
        start_slot(key_id, part.len()),
        |i| part[i].db == db && part[i].key_id == key_id && part[i].lease.leased,
        |i| {
            // Never a balance with unwritten spending (one a backend of the server this standby
            // just became loaded and spent from), nor a lease that still holds credits.
            let b = &part[i];
            b.db == 0
                || (!b.lease.leased && !b.dirty())
                || (b.lease.leased && b.remaining == 0 && !b.lease.pending)
        },
    )
}

/// Spend `cost` of key `key_id`'s lease at `now` (µs). With `ask`, a shortfall asks the worker
/// (the caller wakes it, then calls again without `ask` until the answer comes).
pub fn spend(
    part: &mut [Balance],
    db: u32,
    key_id: i64,
    cost: i64,
    now: i64,
    ask: bool,
) -> LeaseSpend {
    let idx = match find(part, db, key_id) {
        Probe::Found(i) => i,
        Probe::Vacant(i) if ask => {
            part[i] = Balance {
                db,
                key_id,
                lease: Lease {
                    leased: true,
                    last_used: now,
                    window: now,
                    ..Lease::default()
                },
                ..Balance::FREE
            };
            i
        }
        Probe::Vacant(_) => return LeaseSpend::Empty,
        Probe::Full => return LeaseSpend::Full,
    };
    let b = &mut part[idx];
    if b.lease.expires != 0 && now >= b.lease.expires {
        // Never renewed in time: the primary counts it spent, so it is not spent here either.
        b.remaining = 0;
        b.lease.expires = 0;
    }
    let cost = cost.max(0);
    // A key with nothing left is refused even at cost 0, as on the primary.
    if b.remaining >= cost.max(1) && !b.lease.ended {
        b.remaining -= cost;
        b.lease.spent = b.lease.spent.saturating_add(cost);
        // A check at cost 0 keeps nothing in use (it would hold a slot without spending).
        if cost > 0 {
            b.lease.last_used = now;
        }
        return LeaseSpend::Spent(b.remaining);
    }
    if b.lease.pending {
        return LeaseSpend::Waiting;
    }
    if !ask {
        return if b.lease.unreachable {
            LeaseSpend::Unreachable
        } else {
            LeaseSpend::Empty
        };
    }
    let lacks = cost.max(1) - b.remaining.max(0);
    b.lease.pending = true;
    b.lease.unreachable = false;
    b.lease.need = b.lease.need.max(lacks);
    b.lease.want = b.lease.want.max(slice(lacks, b.lease.spent));
    LeaseSpend::Asked
}

/// Give back `cost` spent from key `key_id`'s lease by a request another of pg_apikey's checks
/// refused in the same call.
pub fn refund(part: &mut [Balance], db: u32, key_id: i64, cost: i64) {
    if let Probe::Found(i) = find(part, db, key_id) {
        part[i].remaining = part[i].remaining.saturating_add(cost);
        part[i].lease.spent = part[i].lease.spent.saturating_sub(cost).max(0);
    }
}

/// What a standby asks for: what the request lacks plus [`SLICE_WINDOWS`] times the spending of
/// the last window, at least [`FIRST_SLICE`] (see the module comment), capped.
pub fn slice(lacks: i64, spent: i64) -> i64 {
    lacks
        .saturating_add(spent.saturating_mul(SLICE_WINDOWS).max(FIRST_SLICE))
        .min(MAX_SLICE)
}

/// The primary's rule: of `available` credits, grant a standby that lacks `need` and wants
/// `want` (see the module comment).
pub fn grant(available: i64, need: i64, want: i64) -> i64 {
    let (available, need, want) = (available.max(0), need.max(0), want.max(need).max(0));
    if available < need.max(1) && want > 0 {
        return 0;
    }
    available.min(need.max(want.min(available / 2)))
}

/// One key in an exchange: (key id, credits a waiting request lacks, credits wanted, credits
/// still held here). A key with need and want 0 is only held: the primary renews its lease (or
/// ends it) and records what is left of it.
pub type Ask = (i64, i64, i64, i64);

/// What the worker sends at an exchange: every key held or asked for, and what goes back. What
/// goes back is taken out of the leases here, before it is sent.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Plan {
    pub asks: Vec<Ask>,
    pub returns: Vec<(i64, i64)>,
}

impl Plan {
    pub fn is_empty(&self) -> bool {
        self.asks.is_empty() && self.returns.is_empty()
    }
}

/// The worker's next exchange at `now`: renewals for keys about to run out (they hold less than
/// [`RENEW_WINDOWS`] times what they spent over the last window), waiting requests, leases to extend (expiring
/// within `renew_within` µs), and what idle, ended and expired leases give back. `all` gives
/// everything back (shutdown).
pub fn plan(part: &mut [Balance], db: u32, now: i64, renew_within: i64, all: bool) -> Plan {
    let mut out = Plan::default();
    for b in part.iter_mut().filter(|b| b.db == db && b.lease.leased) {
        let l = &mut b.lease;
        if l.expires != 0 && now >= l.expires {
            b.remaining = 0;
            l.expires = 0;
        }
        let window_done = now.saturating_sub(l.window) >= WINDOW_US;
        let idle =
            now.saturating_sub(l.last_used) >= if l.scarce { IDLE_US } else { IDLE_PLENTY_US };
        let give_back = all || l.ended || (idle && !l.pending);
        if give_back {
            if b.remaining > 0 {
                out.returns.push((b.key_id, b.remaining));
            }
            b.remaining = 0;
            l.expires = 0;
            l.spent = 0;
            l.window = now;
            if !l.pending {
                continue;
            }
        }
        let held = b.remaining.max(0);
        if l.pending {
            out.asks.push((b.key_id, l.need, l.want, held));
        } else if window_done && b.remaining < l.spent.saturating_mul(RENEW_WINDOWS) {
            out.asks.push((b.key_id, 0, slice(0, l.spent), held));
        } else if b.remaining > 0 && l.expires.saturating_sub(now) < renew_within {
            out.asks.push((b.key_id, 0, 0, held));
        }
        if window_done {
            l.spent = 0;
            l.window = now;
        }
    }
    out
}

/// The exchange was not sent (no connection): what was to go back is held again, and waiting
/// requests learn that the primary cannot be reached.
pub fn not_sent(part: &mut [Balance], db: u32, plan: &Plan) {
    for &(key_id, n) in &plan.returns {
        if let Probe::Found(i) = find(part, db, key_id) {
            part[i].remaining = part[i].remaining.saturating_add(n);
        }
    }
    unreachable(part, db);
}

/// Waiting requests learn that the primary cannot be reached (the exchange's outcome is unknown:
/// what went back is lost, never held twice).
pub fn unreachable(part: &mut [Balance], db: u32) {
    for b in part
        .iter_mut()
        .filter(|b| b.db == db && b.lease.leased && b.lease.pending)
    {
        b.lease.pending = false;
        b.lease.unreachable = true;
        b.lease.need = 0;
        b.lease.want = 0;
    }
}

/// The primary's answer: `granted` (key id, credits) are added to the leases, which now last
/// until `expires`; `ended` keys may lease no more; `busy` keys' rows were held by another
/// transaction there (a waiting request stays waiting, asked for again at the next exchange,
/// rather than told that the key has nothing left).
/// Every key asked about is answered.
#[allow(clippy::too_many_arguments)]
pub fn answer(
    part: &mut [Balance],
    db: u32,
    asked: &[Ask],
    granted: &[(i64, i64)],
    ended: &[i64],
    busy: &[i64],
    scarce: &[i64],
    expires: i64,
) {
    let granted: std::collections::HashMap<i64, i64> = granted.iter().copied().collect();
    let ended: std::collections::HashSet<i64> = ended.iter().copied().collect();
    let busy: std::collections::HashSet<i64> = busy.iter().copied().collect();
    let scarce: std::collections::HashSet<i64> = scarce.iter().copied().collect();
    for &(key_id, ..) in asked {
        let Probe::Found(i) = find(part, db, key_id) else {
            continue;
        };
        let b = &mut part[i];
        if busy.contains(&key_id) && b.lease.pending {
            // Asked again at the next exchange; the waiting request keeps waiting.
            continue;
        }
        b.lease.pending = false;
        b.lease.unreachable = false;
        b.lease.need = 0;
        b.lease.want = 0;
        if ended.contains(&key_id) {
            b.lease.ended = true;
            continue;
        }
        b.lease.ended = false;
        if let Some(&g) = granted.get(&key_id) {
            b.remaining = b.remaining.saturating_add(g.max(0));
            b.lease.scarce = scarce.contains(&key_id);
        } else if scarce.contains(&key_id) {
            b.lease.scarce = true;
        }
        if b.remaining > 0 {
            b.lease.expires = expires;
        }
    }
}

/// After a promotion: leases are not balances; what they held is forfeited (the ledger took it
/// out already, so nothing is minted) and the slots are freed.
pub fn forget(part: &mut [Balance], db: u32) -> i64 {
    let mut forfeited = 0i64;
    for b in part.iter_mut().filter(|b| b.db == db && b.lease.leased) {
        forfeited = forfeited.saturating_add(b.remaining.max(0));
        *b = Balance::FREE;
    }
    forfeited
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: i64 = 1_000_000;
    const R: i64 = 30 * S;

    #[test]
    fn a_first_use_asks_and_spends_what_was_granted() {
        let mut part = [Balance::FREE; 8];
        assert_eq!(spend(&mut part, 1, 7, 3, 0, true), LeaseSpend::Asked);
        assert_eq!(spend(&mut part, 1, 7, 3, 0, false), LeaseSpend::Waiting);
        let p = plan(&mut part, 1, 0, R, false);
        assert_eq!(p.asks, vec![(7, 3, 3 + FIRST_SLICE, 0)]);
        answer(&mut part, 1, &p.asks, &[(7, 4)], &[], &[], &[], 60 * S);
        assert_eq!(spend(&mut part, 1, 7, 3, S, false), LeaseSpend::Spent(1));
        assert_eq!(spend(&mut part, 1, 7, 3, S, false), LeaseSpend::Empty);
    }

    #[test]
    fn too_little_granted_is_empty_and_unreachable_is_its_own_answer() {
        let mut part = [Balance::FREE; 8];
        assert_eq!(spend(&mut part, 1, 7, 2, 0, true), LeaseSpend::Asked);
        let p = plan(&mut part, 1, 0, R, false);
        answer(&mut part, 1, &p.asks, &[], &[], &[], &[], 60 * S);
        assert_eq!(spend(&mut part, 1, 7, 2, 0, false), LeaseSpend::Empty);
        assert_eq!(spend(&mut part, 1, 7, 2, 0, true), LeaseSpend::Asked);
        let p = plan(&mut part, 1, 0, R, false);
        not_sent(&mut part, 1, &p);
        assert_eq!(spend(&mut part, 1, 7, 2, 0, false), LeaseSpend::Unreachable);
    }

    #[test]
    fn a_busy_key_row_on_the_primary_is_asked_again_not_an_empty_key() {
        let mut part = [Balance::FREE; 8];
        spend(&mut part, 1, 7, 1, 0, true);
        let p = plan(&mut part, 1, 0, R, false);
        answer(&mut part, 1, &p.asks, &[], &[], &[7], &[], 60 * S);
        assert_eq!(spend(&mut part, 1, 7, 1, 0, false), LeaseSpend::Waiting);
        assert_eq!(plan(&mut part, 1, 0, R, false).asks, p.asks);
    }

    #[test]
    fn a_dirty_balance_is_never_taken_for_a_lease() {
        let mut part = [Balance::FREE; 1];
        part[0] = Balance {
            db: 1,
            key_id: 9,
            remaining: 5,
            version: 1,
            ..Balance::FREE
        };
        assert_eq!(spend(&mut part, 1, 7, 1, 0, true), LeaseSpend::Full);
        part[0].version = 0;
        assert_eq!(spend(&mut part, 1, 7, 1, 0, true), LeaseSpend::Asked);
    }

    #[test]
    fn an_expired_lease_is_not_spent() {
        let mut part = [Balance::FREE; 8];
        spend(&mut part, 1, 7, 1, 0, true);
        let p = plan(&mut part, 1, 0, R, false);
        answer(&mut part, 1, &p.asks, &[(7, 10)], &[], &[], &[], 60 * S);
        assert_eq!(
            spend(&mut part, 1, 7, 1, 59 * S, false),
            LeaseSpend::Spent(9)
        );
        assert_eq!(spend(&mut part, 1, 7, 1, 60 * S, false), LeaseSpend::Empty);
        // And nothing of it goes back: the primary counts it spent.
        assert_eq!(plan(&mut part, 1, 61 * S, R, true).returns, vec![]);
    }

    #[test]
    fn busy_keys_renew_idle_and_ended_ones_give_back() {
        let mut part = [Balance::FREE; 8];
        spend(&mut part, 1, 7, 1, 0, true);
        let p = plan(&mut part, 1, 0, R, false);
        answer(&mut part, 1, &p.asks, &[(7, 10)], &[], &[], &[], 60 * S);
        for _ in 0..8 {
            spend(&mut part, 1, 7, 1, 0, false);
        }
        // Spent 8 in the window, holds 2 (less than ten windows of spending): asks for fifty.
        assert_eq!(
            plan(&mut part, 1, WINDOW_US, R, false).asks,
            vec![(7, 0, 400, 2)]
        );
        // The primary says the key is short: an idle slice goes back after IDLE_US.
        answer(
            &mut part,
            1,
            &[(7, 0, 400, 2)],
            &[(7, 14)],
            &[],
            &[],
            &[7],
            60 * S,
        );
        let p = plan(&mut part, 1, IDLE_US - 1, R, false);
        assert_eq!(p.returns, vec![]);
        let p = plan(&mut part, 1, IDLE_US, R, false);
        assert_eq!(p.returns, vec![(7, 16)]);
        // Ended: what is left goes back at once, and nothing more is spent.
        spend(&mut part, 1, 8, 1, 0, true);
        let p = plan(&mut part, 1, 0, R, false);
        answer(&mut part, 1, &p.asks, &[(8, 5)], &[], &[], &[], 60 * S);
        answer(&mut part, 1, &[(8, 0, 0, 5)], &[], &[8], &[], &[], 60 * S);
        assert_eq!(spend(&mut part, 1, 8, 1, 0, false), LeaseSpend::Empty);
        assert_eq!(plan(&mut part, 1, 0, R, false).returns, vec![(8, 5)]);
    }

    #[test]
    fn a_key_with_plenty_left_keeps_its_idle_slice_longer() {
        let mut part = [Balance::FREE; 8];
        spend(&mut part, 1, 7, 1, 0, true);
        let p = plan(&mut part, 1, 0, R, false);
        answer(&mut part, 1, &p.asks, &[(7, 10)], &[], &[], &[], 60 * S);
        assert_eq!(plan(&mut part, 1, IDLE_US, R, false).returns, vec![]);
        assert_eq!(
            plan(&mut part, 1, IDLE_PLENTY_US, R, false).returns,
            vec![(7, 10)]
        );
    }

    #[test]
    fn a_held_lease_is_renewed_only_when_half_its_time_is_left() {
        let mut part = [Balance::FREE; 8];
        spend(&mut part, 1, 7, 1, 0, true);
        let p = plan(&mut part, 1, 0, R, false);
        answer(&mut part, 1, &p.asks, &[(7, 1000)], &[], &[], &[], 60 * S);
        assert_eq!(plan(&mut part, 1, 4 * S, R, false).asks, vec![]);
        // Used now and then (so not idle), and less than half its time left: renewed.
        spend(&mut part, 1, 7, 1, 30 * S, false);
        assert_eq!(
            plan(&mut part, 1, 31 * S, R, false).asks,
            vec![(7, 0, 0, 999)]
        );
    }

    #[test]
    fn a_large_spender_asks_for_fifty_windows_of_its_spending() {
        assert_eq!(slice(0, 1000), 50_000);
        assert_eq!(slice(5, 0), 5 + FIRST_SLICE);
        assert_eq!(slice(i64::MAX, i64::MAX), MAX_SLICE);
    }

    #[test]
    fn what_could_not_be_sent_is_held_again() {
        let mut part = [Balance::FREE; 8];
        spend(&mut part, 1, 7, 1, 0, true);
        let p = plan(&mut part, 1, 0, R, false);
        answer(&mut part, 1, &p.asks, &[(7, 3)], &[], &[], &[], 60 * S);
        let p = plan(&mut part, 1, 0, R, true);
        assert_eq!(p.returns, vec![(7, 3)]);
        not_sent(&mut part, 1, &p);
        assert_eq!(spend(&mut part, 1, 7, 3, 0, false), LeaseSpend::Spent(0));
    }

    #[test]
    fn the_primary_grants_half_at_most_and_never_strands() {
        assert_eq!(grant(100, 0, 80), 50);
        assert_eq!(grant(100, 70, 80), 70);
        assert_eq!(grant(100, 0, 10), 10);
        assert_eq!(grant(3, 5, 10), 0);
        assert_eq!(grant(1, 1, 3), 1);
        assert_eq!(grant(1, 0, 3), 0);
        assert_eq!(grant(0, 0, 0), 0);
    }

    #[test]
    fn promotion_forfeits_leases_and_frees_their_slots() {
        let mut part = [Balance::FREE; 4];
        spend(&mut part, 1, 7, 1, 0, true);
        let p = plan(&mut part, 1, 0, R, false);
        answer(&mut part, 1, &p.asks, &[(7, 6)], &[], &[], &[], 60 * S);
        assert_eq!(forget(&mut part, 1), 6);
        assert!(part.iter().all(|b| *b == Balance::FREE));
    }
}
