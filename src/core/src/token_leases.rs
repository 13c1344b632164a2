//! A standby's leases of global request limits: tokens the primary took out of a limit's bucket
//! for this standby, spent here with no round trip.
//!
//! A request limit marked global (an owner limit set with `global => true`) has one bucket, on
//! the primary. A standby's request spends a token it holds; a token is taken out of the
//! primary's bucket by the same GCRA arithmetic as the primary's own requests
//! ([`crate::limiter_table::take`]) before the standby may spend it, and is spent at most
//! [`TTL_US`] after the standby asked for it (so at most that long after it was taken). Hence,
//! for a limit of rate `r` and burst `b`, the requests admitted by all servers together in any
//! interval of length `W` are at most `b + r·(W + TTL)`: they spent tokens taken within an
//! interval of length `W + TTL`, which the bucket bounds like any other. Tokens are never given
//! back (they expire): a limit can only be under-served by what a standby did not use.
//!
//! ## Slices
//! A first use asks for what the request lacks plus [`FIRST_SLICE`]. At each of its worker's
//! ticks, a bucket holding less than [`RENEW_WINDOWS`] times what it spent over the last
//! [`WINDOW_US`] asks for [`SLICE_WINDOWS`] times that (about 1.6 s of its spending, so a
//! bucket used hard here gets larger slices); a request that leaves less than the current window
//! spent wakes the worker to renew at once, without waiting for it. The primary grants at most half of what its bucket
//! would admit now (what a waiting request lacks when that is more), so one standby cannot take a
//! burst from the others, and nothing when it cannot cover what the request lacks: the standby
//! then refuses its requests until the primary said the bucket admits them again.

use crate::slots::{probe, Probe};

/// How long after asking a standby may spend the tokens granted (µs).
pub const TTL_US: i64 = 2_000_000;
/// What a first use asks for beyond what the request lacks.
pub const FIRST_SLICE: i64 = 50;
/// The window a bucket's spending is measured over (µs).
pub const WINDOW_US: i64 = 200_000;
pub const RENEW_WINDOWS: i64 = 5;
pub const SLICE_WINDOWS: i64 = 8;
/// Grants kept apart, each with its own deadline (a standby renews a busy limit several times
/// within [`TTL_US`]).
pub const GENERATIONS: usize = 4;

/// What a spend took from each generation: (its deadline, tokens), for a refund to put back
/// exactly there.
pub type Receipt = [(i64, i64); GENERATIONS];
/// The longest limit name (as `apikey.charge` accepts).
pub const NAME: usize = 64;

/// One global limit's bucket as a standby holds it. `db == 0` marks a free slot.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(C)]
pub struct TokenLease {
    pub db: u32,
    name_len: u32,
    /// The bucket (owner and limit name), hashed by the caller.
    pub hash: u64,
    /// A key of the bucket's owner that used it here: the primary finds the owner by it.
    pub key_id: i64,
    name: [u8; NAME],
    /// Generations of tokens, each spendable until its own expiry, earliest first (empty ones
    /// last).
    tokens: [i64; GENERATIONS],
    expires: [i64; GENERATIONS],
    pending: bool,
    /// A request found the tokens running low and woke the worker: renew at its next exchange.
    renew: bool,
    unreachable: bool,
    need: i64,
    want: i64,
    spent: i64,
    window: i64,
    /// The primary said its bucket cannot admit `refused_need` more before this time (µs).
    refused_until: i64,
    refused_need: i64,
}

impl TokenLease {
    pub const FREE: TokenLease = TokenLease {
        db: 0,
        name_len: 0,
        hash: 0,
        key_id: 0,
        name: [0; NAME],
        tokens: [0; GENERATIONS],
        expires: [0; GENERATIONS],
        pending: false,
        renew: false,
        unreachable: false,
        need: 0,
        want: 0,
        spent: 0,
        window: 0,
        refused_until: 0,
        refused_need: 0,
    };

    pub fn name(&self) -> &str {
        std::str::from_utf8(&self.name[..self.name_len as usize]).unwrap_or("")
    }

    fn expire(&mut self, now: i64) {
        for g in 0..GENERATIONS {
            if now >= self.expires[g] {
                self.tokens[g] = 0;
            }
        }
    }

    /// Tokens spendable at `now`.
    pub fn held(&self, now: i64) -> i64 {
        (0..GENERATIONS)
            .filter(|&g| now < self.expires[g])
            .map(|g| self.tokens[g].max(0))
            .sum()
    }

    fn idle(&self, now: i64) -> bool {
        self.db == 0 || (!self.pending && self.held(now) == 0 && self.refused_until <= now)
    }

    /// Add a grant spendable until `expires`. With every generation holding tokens, the two
    /// earliest merge under the earlier expiry (a token is never spent later than its own grant
    /// allows; at worst sooner).
    fn add(&mut self, n: i64, expires: i64, now: i64) {
        self.expire(now);
        let mut live: Vec<(i64, i64)> = (0..GENERATIONS)
            .filter(|&g| self.tokens[g] > 0)
            .map(|g| (self.expires[g], self.tokens[g]))
            .collect();
        live.push((expires, n));
        live.sort_unstable();
        if live.len() > GENERATIONS {
            let (e, t) = live.remove(0);
            live[0] = (e.min(live[0].0), live[0].1.saturating_add(t));
        }
        self.tokens = [0; GENERATIONS];
        self.expires = [0; GENERATIONS];
        for (g, (e, t)) in live.into_iter().enumerate() {
            self.tokens[g] = t;
            self.expires[g] = e;
        }
    }

    fn take(&mut self, mut n: i64) -> Receipt {
        let mut receipt = [(0, 0); GENERATIONS];
        for (g, r) in receipt.iter_mut().enumerate() {
            let t = n.min(self.tokens[g]).max(0);
            self.tokens[g] -= t;
            n -= t;
            *r = (self.expires[g], t);
        }
        receipt
    }
}

/// What a standby's spend found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TokenSpend {
    /// Spent; with `true`, what is left is running low: wake the worker (without waiting), which
    /// renews at once rather than at its next tick. The receipt is for [`refund`].
    Spent(bool, Receipt),
    /// Too few here: the worker is asked (wake it and wait).
    Asked,
    /// The worker has not answered yet.
    Waiting,
    /// Too few here, and nobody asked: ask.
    Short,
    /// The primary's bucket admits nothing for this long (µs).
    Refused(i64),
    /// The primary could not be reached, and what is held here does not cover the cost.
    Unreachable,
    /// Every slot holds another bucket's tokens or a waiting request.
    Full,
}

fn find(part: &[TokenLease], db: u32, hash: u64, start: usize, now: i64) -> Probe {
    probe(
        part.len(),
        start % part.len().max(1),
        |i| part[i].db == db && part[i].hash == hash,
        |i| part[i].idle(now),
    )
}

/// Spend `cost` tokens of bucket `hash` (limit `name` of the owner of key `key_id`) at `now`.
/// With `ask`, a shortfall asks the worker.
#[allow(clippy::too_many_arguments)]
pub fn spend(
    part: &mut [TokenLease],
    db: u32,
    hash: u64,
    key_id: i64,
    name: &str,
    cost: i64,
    now: i64,
    ask: bool,
) -> TokenSpend {
    let start = hash as usize;
    let idx = match find(part, db, hash, start, now) {
        Probe::Found(i) => i,
        // A name longer than a slot holds cannot be asked for (`apikey.charge` and global owner
        // limits refuse such names first).
        Probe::Vacant(_) if ask && name.len() > NAME => return TokenSpend::Full,
        Probe::Vacant(i) if ask => {
            let mut fresh = TokenLease {
                db,
                hash,
                window: now,
                ..TokenLease::FREE
            };
            fresh.name[..name.len()].copy_from_slice(name.as_bytes());
            fresh.name_len = name.len() as u32;
            part[i] = fresh;
            i
        }
        Probe::Vacant(_) => return TokenSpend::Short,
        Probe::Full => return TokenSpend::Full,
    };
    let t = &mut part[idx];
    t.expire(now);
    let cost = cost.max(0);
    let held = t.held(now);
    if held >= cost {
        let receipt = t.take(cost);
        t.spent = t.spent.saturating_add(cost);
        // Less left than this window spent so far: ask now, before a request has to wait.
        let low = !t.pending && !t.renew && t.held(now) < t.spent;
        t.renew |= low;
        return TokenSpend::Spent(low, receipt);
    }
    // The primary's refusal stands for requests lacking as much as the one it refused; one
    // lacking at most half of that asks again (the bucket may admit it sooner): a run of ever
    // smaller requests costs the primary a few exchanges per refusal, not one each.
    if t.refused_until > now && (cost - held).saturating_mul(2) > t.refused_need {
        return TokenSpend::Refused(t.refused_until - now);
    }
    if t.pending {
        return TokenSpend::Waiting;
    }
    if !ask {
        return if t.unreachable {
            TokenSpend::Unreachable
        } else {
            TokenSpend::Short
        };
    }
    let lacks = cost - t.held(now);
    t.pending = true;
    t.unreachable = false;
    t.key_id = key_id;
    t.need = t.need.max(lacks);
    t.want = t.want.max(lacks.saturating_add(slice(t.spent)));
    TokenSpend::Asked
}

/// Give back what a spend of this very call took (its receipt), when another limit refused the
/// request: each token returns to the generation it came from if that is still live with the
/// same deadline, else it is dropped. A token never outlives its own grant's deadline.
pub fn refund(part: &mut [TokenLease], db: u32, hash: u64, receipt: &Receipt, now: i64) {
    if let Probe::Found(i) = find(part, db, hash, hash as usize, now) {
        let t = &mut part[i];
        for &(deadline, n) in receipt.iter().filter(|r| r.1 > 0 && now < r.0) {
            if let Some(g) = (0..GENERATIONS).find(|&g| t.expires[g] == deadline) {
                t.tokens[g] = t.tokens[g].saturating_add(n);
            }
        }
        let back: i64 = receipt.iter().map(|r| r.1).sum();
        t.spent = (t.spent - back).max(0);
    }
}

fn slice(spent: i64) -> i64 {
    spent.saturating_mul(SLICE_WINDOWS).max(FIRST_SLICE)
}

/// One bucket asked about in an exchange.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ask {
    pub hash: u64,
    pub key_id: i64,
    pub name: String,
    pub need: i64,
    pub want: i64,
}

/// The worker's asks at `now`: waiting requests, and busy buckets running low.
pub fn plan(part: &mut [TokenLease], db: u32, now: i64) -> Vec<Ask> {
    let mut out = Vec::new();
    for t in part.iter_mut().filter(|t| t.db == db) {
        t.expire(now);
        let window_done = now.saturating_sub(t.window) >= WINDOW_US;
        let ask = |t: &TokenLease, need, want| Ask {
            hash: t.hash,
            key_id: t.key_id,
            name: t.name().to_owned(),
            need,
            want,
        };
        if t.pending {
            out.push(ask(t, t.need, t.want));
        } else if t.refused_until <= now
            && (t.renew
                || (window_done
                    && t.spent > 0
                    && t.held(now) < t.spent.saturating_mul(RENEW_WINDOWS)))
        {
            out.push(ask(t, 0, slice(t.spent)));
        }
        t.renew = false;
        if window_done {
            t.spent = 0;
            t.window = now;
        }
    }
    out
}

/// The primary's answer, in the order asked: (tokens granted, µs until its bucket admits what
/// was lacking when it granted none). Tokens asked for at `sent` are spendable until
/// `sent + TTL_US`.
/// An ask the answer has no entry for (a primary whose pg_apikey predates global limits) is
/// answered as unreachable: its requests are refused with 57P03, never left waiting.
pub fn answer(part: &mut [TokenLease], db: u32, asked: &[Ask], answers: &[(i64, i64)], sent: i64) {
    let answers = answers
        .iter()
        .copied()
        .map(Some)
        .chain(std::iter::repeat(None));
    for (a, answer) in asked.iter().zip(answers) {
        let Probe::Found(i) = find(part, db, a.hash, a.hash as usize, sent) else {
            continue;
        };
        let t = &mut part[i];
        t.pending = false;
        t.need = 0;
        t.want = 0;
        let Some((granted, wait)) = answer else {
            t.unreachable = true;
            continue;
        };
        t.unreachable = false;
        if granted > 0 {
            t.add(granted, sent.saturating_add(TTL_US), sent);
        } else if a.need > 0 {
            t.refused_until = sent.saturating_add(wait.max(1));
            t.refused_need = a.need;
        }
    }
}

/// Does a request wait for an exchange, or a bucket want renewing now?
pub fn asked(part: &[TokenLease], db: u32) -> bool {
    part.iter().any(|t| t.db == db && (t.pending || t.renew))
}

/// Waiting requests learn that the primary cannot be reached.
pub fn unreachable(part: &mut [TokenLease], db: u32) {
    for t in part.iter_mut().filter(|t| t.db == db && t.pending) {
        t.pending = false;
        t.unreachable = true;
        t.need = 0;
        t.want = 0;
    }
}

/// After a promotion: this server's own buckets take over; tokens leased from the old primary
/// are dropped.
pub fn forget(part: &mut [TokenLease], db: u32) {
    for t in part.iter_mut().filter(|t| t.db == db) {
        *t = TokenLease::FREE;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: i64 = 1_000_000;

    fn spend1(part: &mut [TokenLease], cost: i64, now: i64, ask: bool) -> TokenSpend {
        spend(part, 1, 42, 7, "requests", cost, now, ask)
    }

    /// A request for `cost` at time 0 finding no tokens, the worker's ask for it, and the
    /// primary's `answers` to that ask.
    fn first_use(part: &mut [TokenLease], cost: i64, answers: &[(i64, i64)]) {
        spend1(part, cost, 0, true);
        let asks = plan(part, 1, 0);
        answer(part, 1, &asks, answers, 0);
    }

    /// The worker renewing bucket 42 by itself (no request waiting).
    fn renewal() -> Vec<Ask> {
        vec![Ask {
            hash: 42,
            key_id: 7,
            name: "requests".into(),
            need: 0,
            want: 1,
        }]
    }

    #[test]
    fn a_first_use_asks_then_spends_what_was_granted() {
        let mut part = [TokenLease::FREE; 4];
        assert_eq!(spend1(&mut part, 1, 0, true), TokenSpend::Asked);
        assert_eq!(spend1(&mut part, 1, 0, false), TokenSpend::Waiting);
        let asks = plan(&mut part, 1, 0);
        assert_eq!(asks.len(), 1);
        assert_eq!((asks[0].key_id, asks[0].name.as_str()), (7, "requests"));
        assert_eq!((asks[0].need, asks[0].want), (1, 1 + FIRST_SLICE));
        answer(&mut part, 1, &asks, &[(3, 0)], 0);
        for _ in 0..3 {
            assert!(matches!(
                spend1(&mut part, 1, S / 10, false),
                TokenSpend::Spent(..)
            ));
        }
        assert_eq!(spend1(&mut part, 1, S / 10, false), TokenSpend::Short);
    }

    #[test]
    fn tokens_expire_at_their_own_grants_deadline() {
        let mut part = [TokenLease::FREE; 4];
        first_use(&mut part, 1, &[(5, 0)]);
        // A second grant later does not extend the first's tokens.
        spend1(&mut part, 6, S, true);
        let asks = plan(&mut part, 1, S);
        answer(&mut part, 1, &asks, &[(4, 0)], S);
        assert_eq!(part[find_idx(&part)].held(S), 9);
        assert_eq!(part[find_idx(&part)].held(TTL_US), 4);
        assert_eq!(part[find_idx(&part)].held(S + TTL_US), 0);
    }

    #[test]
    fn more_generations_than_kept_merge_under_the_earliest_expiry() {
        let mut part = [TokenLease::FREE; 1];
        spend1(&mut part, 1, 0, true);
        for (i, at) in [0, S / 4, S / 2, 3 * S / 4, S].into_iter().enumerate() {
            let asks = renewal();
            answer(&mut part, 1, &asks, &[(i as i64 + 1, 0)], at);
        }
        // Five grants, four kept: 1 (until 2 s) and 2 (until 2.25 s) merged until 2 s.
        assert_eq!(part[0].held(S), 15);
        assert_eq!(part[0].held(TTL_US), 12);
        assert_eq!(part[0].held(TTL_US + S / 2), 9);
        assert_eq!(part[0].held(TTL_US + S), 0);
    }

    #[test]
    fn spending_takes_the_earliest_expiring_tokens_first() {
        let mut part = [TokenLease::FREE; 1];
        first_use(&mut part, 1, &[(2, 0)]);
        let asks = renewal();
        answer(&mut part, 1, &asks, &[(2, 0)], S);
        assert!(matches!(
            spend1(&mut part, 2, S, false),
            TokenSpend::Spent(..)
        ));
        // The first grant's two were spent; the second's two outlive its deadline.
        assert_eq!(part[0].held(TTL_US), 2);
    }

    #[test]
    fn a_refusal_is_kept_until_the_primary_said() {
        let mut part = [TokenLease::FREE; 4];
        first_use(&mut part, 1, &[(0, 300_000)]);
        assert_eq!(spend1(&mut part, 1, 1, true), TokenSpend::Refused(299_999));
        assert_eq!(spend1(&mut part, 1, 300_000, true), TokenSpend::Asked);
    }

    #[test]
    fn an_unreachable_primary_refuses_only_past_what_is_held() {
        let mut part = [TokenLease::FREE; 4];
        first_use(&mut part, 1, &[(1, 0)]);
        spend1(&mut part, 2, 1, true);
        plan(&mut part, 1, 1);
        unreachable(&mut part, 1);
        assert!(matches!(
            spend1(&mut part, 1, 2, false),
            TokenSpend::Spent(..)
        ));
        assert_eq!(spend1(&mut part, 1, 3, false), TokenSpend::Unreachable);
    }

    #[test]
    fn a_busy_bucket_renews_in_proportion_to_its_spending() {
        let mut part = [TokenLease::FREE; 4];
        first_use(&mut part, 1, &[(100, 0)]);
        for _ in 0..40 {
            assert!(matches!(
                spend1(&mut part, 1, 1000, false),
                TokenSpend::Spent(..)
            ));
        }
        let asks = plan(&mut part, 1, WINDOW_US + 1);
        // 60 held < RENEW_WINDOWS × 40 spent: asks for SLICE_WINDOWS × 40.
        assert_eq!((asks[0].need, asks[0].want), (0, 40 * SLICE_WINDOWS));
        // A quiet window asks nothing.
        assert!(plan(&mut part, 1, 2 * WINDOW_US + 2).is_empty());
    }

    #[test]
    fn running_low_wakes_the_worker_once_and_renews_at_its_next_exchange() {
        let mut part = [TokenLease::FREE; 4];
        first_use(&mut part, 1, &[(6, 0)]);
        let low = |r| match r {
            TokenSpend::Spent(low, _) => low,
            other => panic!("{other:?}"),
        };
        assert!(!low(spend1(&mut part, 1, 1, false)));
        assert!(!low(spend1(&mut part, 1, 1, false)));
        // 2 left < 4 spent this window: wake, once.
        assert!(low(spend1(&mut part, 2, 1, false)));
        assert!(!low(spend1(&mut part, 1, 1, false)));
        let asks = plan(&mut part, 1, 2);
        assert_eq!((asks.len(), asks[0].need), (1, 0));
        assert!(plan(&mut part, 1, 3).is_empty());
    }

    fn receipt(r: TokenSpend) -> Receipt {
        match r {
            TokenSpend::Spent(_, receipt) => receipt,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_refund_never_revives_an_expired_token() {
        let mut part = [TokenLease::FREE; 1];
        first_use(&mut part, 1, &[(1, 0)]);
        let r = receipt(spend1(&mut part, 1, 1, false));
        refund(&mut part, 1, 42, &r, TTL_US);
        assert_eq!(part[0].held(TTL_US), 0);
        refund(&mut part, 1, 42, &r, 2);
        assert_eq!(part[0].held(2), 1);
    }

    #[test]
    fn a_refund_returns_tokens_to_their_own_deadline_never_a_later_one() {
        let mut part = [TokenLease::FREE; 1];
        first_use(&mut part, 1, &[(2, 0)]);
        let later = renewal();
        answer(&mut part, 1, &later, &[(5, 0)], S);
        // Two from the first grant (until 2 s), one from the second (until 3 s).
        let r = receipt(spend1(&mut part, 3, S, false));
        refund(&mut part, 1, 42, &r, S);
        assert_eq!(part[0].held(S), 7);
        assert_eq!(part[0].held(TTL_US), 5);
        // Refused over and over, the same tokens keep their deadline.
        for _ in 0..10 {
            let r = receipt(spend1(&mut part, 7, S, false));
            refund(&mut part, 1, 42, &r, S);
        }
        assert_eq!(part[0].held(TTL_US), 5);
    }

    #[test]
    fn a_refusal_holds_for_requests_lacking_as_much_and_not_less() {
        let mut part = [TokenLease::FREE; 4];
        first_use(&mut part, 600, &[(0, 60 * S)]);
        assert_eq!(
            spend1(&mut part, 600, 1, true),
            TokenSpend::Refused(60 * S - 1)
        );
        assert_eq!(
            spend1(&mut part, 301, 1, true),
            TokenSpend::Refused(60 * S - 1)
        );
        assert_eq!(spend1(&mut part, 300, 1, true), TokenSpend::Asked);
    }

    #[test]
    fn an_answer_without_an_entry_for_an_ask_leaves_no_request_waiting() {
        let mut part = [TokenLease::FREE; 4];
        first_use(&mut part, 1, &[]);
        assert!(!asked(&part, 1));
        assert_eq!(spend1(&mut part, 1, 1, false), TokenSpend::Unreachable);
    }

    #[test]
    fn other_databases_and_full_tables() {
        let mut part = [TokenLease::FREE; 1];
        assert_eq!(spend1(&mut part, 1, 0, true), TokenSpend::Asked);
        assert_eq!(
            spend(&mut part, 2, 42, 7, "requests", 1, 0, true),
            TokenSpend::Full
        );
        forget(&mut part, 1);
        assert_eq!(
            spend(&mut part, 2, 42, 7, "requests", 1, 0, true),
            TokenSpend::Asked
        );
        assert!(plan(&mut part, 1, 0).is_empty());
    }

    fn find_idx(part: &[TokenLease]) -> usize {
        part.iter().position(|t| t.db == 1).unwrap()
    }
}
