//! One partition of the shared-memory credit balances (usage-limited keys).
//!
//! A key's balance lives here while it is in use, so spending works in READ ONLY transactions and
//! on standbys and is exact under concurrency (the extension holds the partition's LWLock around
//! every call). A balance whose spending is not yet written to the table is *dirty* and is never
//! evicted; the flush worker writes it and `settle` marks it clean unless it changed meanwhile.
//! Refills are applied lazily: at each whole interval since the last refill the balance is *set*
//! to the refill amount, unless it holds more (an administrator topped it up): a refill never
//! lowers a balance, as Unkey skips keys that are already full.

use crate::slots::{probe, Probe};

/// `db == 0` marks a free slot.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(C)]
pub struct Balance {
    pub db: u32,
    pub key_id: i64,
    pub remaining: i64,
    /// When the balance was last refilled (microseconds); refills count from here.
    pub refilled_at: i64,
    /// Changes since the table was last written; 0 = clean.
    pub version: u64,
    /// On a standby: the balance is a lease of the primary's (`lease_table`), never written here.
    pub lease: Lease,
}

/// A standby's lease of a key's credits (see `lease_table`); all zero on a primary.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
#[repr(C)]
pub struct Lease {
    /// The slot holds a lease (`remaining` is what the primary granted and this server did not
    /// spend yet), not a balance loaded from the table.
    pub leased: bool,
    /// A request waits for the worker to ask the primary.
    pub pending: bool,
    /// The last exchange with the primary failed.
    pub unreachable: bool,
    /// The primary said the key may not lease any more (revoked, disabled, expired, deleted or
    /// without credits): what is left goes back at the next exchange.
    pub ended: bool,
    /// The primary said the key's balance is short (it has less left than twice what was
    /// asked): an idle slice goes back soon, for the other servers to use.
    pub scarce: bool,
    /// When the key last spent here (µs): a lease idle for `lease_table::IDLE_US` goes back.
    pub last_used: i64,
    /// When the current spending window began (µs): `spent` counts from here.
    pub window: i64,
    /// Asked for at the next exchange: (credits the waiting request lacks, credits wanted).
    pub need: i64,
    pub want: i64,
    /// Spent here since the last exchange: the next slice's size.
    pub spent: i64,
    /// This server stops spending the lease at this time (µs); the primary forgets it later.
    pub expires: i64,
}

impl Balance {
    pub const FREE: Balance = Balance {
        db: 0,
        key_id: 0,
        remaining: 0,
        refilled_at: 0,
        version: 0,
        lease: Lease {
            leased: false,
            pending: false,
            unreachable: false,
            ended: false,
            scarce: false,
            last_used: 0,
            window: 0,
            need: 0,
            want: 0,
            spent: 0,
            expires: 0,
        },
    };

    pub fn dirty(&self) -> bool {
        self.version != 0
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Refill {
    pub amount: i64,
    pub interval_us: i64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Spend {
    /// Spent; the balance left.
    Spent(i64),
    /// Not enough credits; seconds until the next refill, if the key refills.
    Empty { retry_after: Option<u64> },
    /// The key has no balance here yet: load it from the table and call `spend` again with it.
    Unknown,
    /// Every slot holds unwritten spending of other keys.
    Full,
}

fn start_of(key_id: i64, len: usize) -> usize {
    ((key_id as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 32) as usize % len
}

pub(crate) fn start_slot(key_id: i64, len: usize) -> usize {
    start_of(key_id, len)
}

/// A balance of the table's, never a lease: after a promotion, what the standby held under lease
/// is not the key's balance (it is forfeited, see `lease_table`).
fn find(part: &[Balance], db: u32, key_id: i64, evictable: bool) -> Probe {
    probe(
        part.len(),
        start_of(key_id, part.len()),
        |i| part[i].db == db && part[i].key_id == key_id && !part[i].lease.leased,
        |i| part[i].db == 0 || evictable || !part[i].dirty(),
    )
}

fn apply_refill(b: &mut Balance, refill: Option<Refill>, now: i64) {
    if let Some(r) = refill.filter(|r| r.interval_us > 0) {
        if now >= b.refilled_at.saturating_add(r.interval_us) {
            let n = (now - b.refilled_at) / r.interval_us;
            b.refilled_at = b
                .refilled_at
                .saturating_add(n.saturating_mul(r.interval_us));
            b.remaining = b.remaining.max(r.amount);
            b.version += 1;
        }
    }
}

/// Spend `cost` credits of key `key_id`. `loaded` is the table's (remaining, refilled_at) when the
/// caller has read it (after `Spend::Unknown`). `evictable`: clean and dirty slots alike may be
/// reused (a standby, whose spending is never written anyway).
#[allow(clippy::too_many_arguments)]
pub fn spend(
    part: &mut [Balance],
    db: u32,
    key_id: i64,
    cost: i64,
    refill: Option<Refill>,
    now: i64,
    loaded: Option<(i64, i64)>,
    evictable: bool,
) -> Spend {
    let idx = match (find(part, db, key_id, evictable), loaded) {
        (Probe::Found(i), _) => i,
        (Probe::Vacant(i), Some((remaining, refilled_at))) => {
            part[i] = Balance {
                db,
                key_id,
                remaining,
                refilled_at,
                ..Balance::FREE
            };
            i
        }
        (Probe::Vacant(_), None) => return Spend::Unknown,
        (Probe::Full, _) => return Spend::Full,
    };
    let b = &mut part[idx];
    apply_refill(b, refill, now);
    // A key with nothing left is refused even at cost 0: a zero cost checks a key without
    // spending, it does not let an exhausted key in.
    if b.remaining < cost.max(1) {
        let retry_after = refill.filter(|r| r.interval_us > 0).map(|r| {
            let next = b.refilled_at.saturating_add(r.interval_us);
            ((next - now).max(1) as u64).div_ceil(1_000_000)
        });
        return Spend::Empty { retry_after };
    }
    if cost > 0 {
        b.remaining -= cost;
        b.version += 1;
    }
    Spend::Spent(b.remaining)
}

/// Take credits out of key `key_id`'s balance for a standby's lease, by the primary's rule
/// (`lease_table::grant`): like a spend, final here and written by the flush. `Ok(granted)`, or
/// `Err` with `spend`'s `Unknown` (load the table's balance and call again) or `Full`. With the
/// grant, when the balance was last refilled (see `put_back_lease`).
#[allow(clippy::too_many_arguments)]
pub fn lease_out(
    part: &mut [Balance],
    db: u32,
    key_id: i64,
    need: i64,
    want: i64,
    refill: Option<Refill>,
    now: i64,
    loaded: Option<(i64, i64)>,
) -> Result<Leased, Spend> {
    match spend(part, db, key_id, 0, refill, now, loaded, false) {
        Spend::Spent(_) | Spend::Empty { .. } => {}
        other => return Err(other),
    }
    let Probe::Found(i) = find(part, db, key_id, false) else {
        return Err(Spend::Unknown);
    };
    let g = crate::lease_table::grant(part[i].remaining, need, want);
    if g > 0 {
        part[i].remaining -= g;
        part[i].version += 1;
    }
    Ok(Leased {
        granted: g,
        left: part[i].remaining,
        refilled_at: part[i].refilled_at,
    })
}

/// What `lease_out` took: the grant, what the balance has left, and when it was last refilled.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Leased {
    pub granted: i64,
    pub left: i64,
    pub refilled_at: i64,
}

/// Put back a grant whose exchange did not commit, unless the balance was refilled since it was
/// taken (`refilled_at` then moved): a refill set the balance anew, and adding the grant on top
/// would carry an old interval's allowance into the new one.
pub fn put_back_lease(part: &mut [Balance], db: u32, key_id: i64, n: i64, refilled_at: i64) {
    if let Probe::Found(i) = find(part, db, key_id, false) {
        if part[i].refilled_at == refilled_at {
            part[i].remaining = part[i].remaining.saturating_add(n);
            part[i].version += 1;
        }
    }
}

/// Give back `cost` credits spent by a transaction that rolled back (or a request another check
/// refused). A balance that is gone (it can only be a clean one) needs nothing: the table never
/// saw the spending.
pub fn refund(part: &mut [Balance], db: u32, key_id: i64, cost: i64) {
    if let Probe::Found(i) = find(part, db, key_id, false) {
        part[i].remaining = part[i].remaining.saturating_add(cost);
        part[i].version += 1;
    }
}

/// Add credits (an administrator's top-up) to a balance held here; false if none is held.
pub fn add(part: &mut [Balance], db: u32, key_id: i64, n: i64) -> bool {
    match find(part, db, key_id, false) {
        Probe::Found(i) => {
            part[i].remaining = part[i].remaining.saturating_add(n);
            part[i].version += 1;
            true
        }
        _ => false,
    }
}

/// Take a held balance whole (a due refill applied first) and leave nothing: what a rotation
/// moves to the successor. One step under the caller's lock, so no spend slips in between.
/// None when the key's balance is not held here.
pub fn take_all(
    part: &mut [Balance],
    db: u32,
    key_id: i64,
    refill: Option<Refill>,
    now: i64,
) -> Option<i64> {
    match find(part, db, key_id, false) {
        Probe::Found(i) => {
            let b = &mut part[i];
            apply_refill(b, refill, now);
            let left = b.remaining.max(0);
            b.remaining = 0;
            b.version += 1;
            Some(left)
        }
        _ => None,
    }
}

/// What a balance of `remaining`, last refilled at `refilled_at`, holds at `now`.
pub fn remaining_at(remaining: i64, refilled_at: i64, refill: Option<Refill>, now: i64) -> i64 {
    let mut b = Balance {
        remaining,
        refilled_at,
        ..Balance::FREE
    };
    apply_refill(&mut b, refill, now);
    b.remaining
}

/// The balance held here for a key, if any (after applying a due refill, without writing it).
pub fn peek(
    part: &[Balance],
    db: u32,
    key_id: i64,
    refill: Option<Refill>,
    now: i64,
) -> Option<i64> {
    match find(part, db, key_id, false) {
        Probe::Found(i) => Some(remaining_at(
            part[i].remaining,
            part[i].refilled_at,
            refill,
            now,
        )),
        _ => None,
    }
}

/// Dirty balances of `db`: (key id, remaining, refilled_at, version) for the flush.
pub fn collect(part: &[Balance], db: u32) -> Vec<(i64, i64, i64, u64)> {
    part.iter()
        .filter(|b| b.db == db && b.dirty())
        .map(|b| (b.key_id, b.remaining, b.refilled_at, b.version))
        .collect()
}

/// Mark written balances clean, unless they changed after `collect`.
pub fn settle(part: &mut [Balance], db: u32, written: &[(i64, i64, i64, u64)]) {
    for &(key_id, _, _, version) in written {
        if let Probe::Found(i) = find(part, db, key_id, false) {
            if part[i].version == version {
                part[i].version = 0;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: i64 = 1_000_000;

    fn spend_loaded(part: &mut [Balance], key: i64, cost: i64, now: i64, init: i64) -> Spend {
        match spend(part, 1, key, cost, None, now, None, false) {
            Spend::Unknown => spend(part, 1, key, cost, None, now, Some((init, 0)), false),
            s => s,
        }
    }

    #[test]
    fn exactly_the_balance_is_spent_and_refunds_restore() {
        let mut part = [Balance::FREE; 4];
        let spent = (0..10)
            .filter(|_| matches!(spend_loaded(&mut part, 7, 1, 0, 5), Spend::Spent(_)))
            .count();
        assert_eq!(spent, 5);
        refund(&mut part, 1, 7, 2);
        assert_eq!(
            spend_loaded(&mut part, 7, 0, 0, 5),
            Spend::Spent(2),
            "cost 0 is allowed"
        );
        assert_eq!(spend_loaded(&mut part, 7, 2, 0, 5), Spend::Spent(0));
    }

    #[test]
    fn refills_set_the_balance_and_say_when() {
        let mut part = [Balance::FREE; 2];
        let r = Some(Refill {
            amount: 3,
            interval_us: 60 * S,
        });
        assert_eq!(
            spend(&mut part, 1, 9, 1, r, 0, Some((1, 0)), false),
            Spend::Spent(0)
        );
        assert_eq!(
            spend(&mut part, 1, 9, 1, r, 20 * S, None, false),
            Spend::Empty {
                retry_after: Some(40)
            }
        );
        assert_eq!(
            spend(&mut part, 1, 9, 1, r, 61 * S, None, false),
            Spend::Spent(2)
        );
        // Three intervals later: set to the amount, not added up.
        assert_eq!(
            spend(&mut part, 1, 9, 0, r, 250 * S, None, false),
            Spend::Spent(3)
        );
    }

    #[test]
    fn a_refill_never_lowers_a_topped_up_balance() {
        let r = Some(Refill {
            amount: 10,
            interval_us: 60 * S,
        });
        // Topped up to 100 (above the refill amount of 10): a due refill leaves it as it is.
        assert_eq!(remaining_at(100, 0, r, 61 * S), 100);
        // Below the amount: filled up to it.
        assert_eq!(remaining_at(4, 0, r, 61 * S), 10);
        let mut part = [Balance::FREE; 2];
        assert_eq!(
            spend(&mut part, 1, 9, 1, r, 120 * S, Some((50, 0)), false),
            Spend::Spent(49)
        );
    }

    #[test]
    fn take_all_leaves_nothing_and_counts_a_due_refill() {
        let mut part = [Balance::FREE; 4];
        let r = Some(Refill {
            amount: 5,
            interval_us: 10,
        });
        assert_eq!(take_all(&mut part, 1, 3, r, 0), None);
        assert_eq!(
            spend(&mut part, 1, 3, 2, r, 0, Some((4, 0)), false),
            Spend::Spent(2)
        );
        assert_eq!(take_all(&mut part, 1, 3, r, 15), Some(5));
        assert_eq!(peek(&part, 1, 3, None, 15), Some(0));
    }

    #[test]
    fn an_exhausted_key_is_refused_even_at_cost_zero() {
        let mut part = [Balance::FREE; 4];
        // Key 5 holds 1 credit and spends it (cost 1 at time 0).
        assert_eq!(spend_loaded(&mut part, 5, 1, 0, 1), Spend::Spent(0));
        assert_eq!(
            spend(&mut part, 1, 5, 0, None, 0, None, false),
            Spend::Empty { retry_after: None }
        );
    }

    #[test]
    fn dirty_balances_are_never_evicted_and_settle_respects_later_changes() {
        let mut part = [Balance::FREE; 2];
        spend_loaded(&mut part, 1, 1, 0, 10);
        spend_loaded(&mut part, 2, 1, 0, 10);
        assert_eq!(spend_loaded(&mut part, 3, 1, 0, 10), Spend::Full);
        let batch = collect(&part, 1);
        spend_loaded(&mut part, 1, 1, 0, 10); // changes after collect
        settle(&mut part, 1, &batch);
        assert!(
            part.iter().any(|b| b.key_id == 1 && b.dirty()),
            "key 1 changed: still dirty"
        );
        assert!(part.iter().any(|b| b.key_id == 2 && !b.dirty()));
        assert!(
            matches!(spend_loaded(&mut part, 3, 1, 0, 10), Spend::Spent(9)),
            "key 2's clean slot reused"
        );
    }

    #[test]
    fn random_spending_and_refunds_balance_out() {
        let mut next = crate::test_rng::xorshift(99);
        let mut part = [Balance::FREE; 8];
        let initial = 1000;
        let mut spent = [0i64; 5];
        for _ in 0..20_000 {
            let key = (next() % 5) as i64;
            let cost = (next() % 4) as i64;
            match spend_loaded(&mut part, key, cost, 0, initial) {
                Spend::Spent(_) => {
                    if next().is_multiple_of(3) {
                        refund(&mut part, 1, key, cost);
                    } else {
                        spent[key as usize] += cost;
                    }
                }
                Spend::Empty { .. } => assert!(spent[key as usize] + cost.max(1) > initial),
                other => panic!("{other:?}"),
            }
        }
        for key in 0..5i64 {
            let left = peek(&part, 1, key, None, 0).unwrap();
            assert_eq!(left + spent[key as usize], initial);
            assert!(left >= 0);
        }
    }
}
