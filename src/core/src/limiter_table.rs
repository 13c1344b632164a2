//! One partition of the shared-memory limiter: GCRA buckets in fixed slots.
//!
//! The extension keeps these partitions in shared memory behind LWLocks and calls [`charge`] with
//! the lock held; everything that decides what happens to a slot is here, tested without a server.
//! The eviction rule is the one of [`crate::slots`]: a slot is taken only when free or *idle* (its
//! bucket is full again, so forgetting it changes no decision); a partition without such a slot
//! refuses a new bucket.

use crate::gcra::{self, Outcome, Rate};
use crate::slots::{probe, Probe};

pub const LABEL: usize = 48;

/// One bucket. `db == 0` marks a free slot (no database has OID 0).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(C)]
pub struct Bucket {
    pub db: u32,
    /// Who made it within the database (a role's OID for named buckets, 0 for keys' own).
    pub owner: u32,
    pub hash: u64,
    /// The GCRA theoretical arrival time, microseconds.
    pub tat: i64,
    /// The bucket's name, truncated, for the administrators' state view.
    pub label: [u8; LABEL],
}

impl Bucket {
    pub const FREE: Bucket = Bucket {
        db: 0,
        owner: 0,
        hash: 0,
        tat: 0,
        label: [0; LABEL],
    };

    /// Holds no limit any more: free, or full again at `now`.
    pub fn idle(&self, now: i64) -> bool {
        self.db == 0 || self.tat <= now
    }

    pub fn label(&self) -> &[u8] {
        let end = self.label.iter().position(|&b| b == 0).unwrap_or(LABEL);
        &self.label[..end]
    }
}

/// The partition had no free or idle slot for a new bucket, or the database already holds its
/// share of live buckets there.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Full;

/// How much of a partition a new bucket's database, and its owner within the database, may
/// hold: a new bucket is refused when either already holds that many live buckets there.
#[derive(Clone, Copy, Debug)]
pub struct Share {
    pub db: u32,
    pub owner: u32,
    pub per_db: usize,
    pub per_owner: usize,
}

/// What charging a bucket would do, decided but not yet written.
#[derive(Clone, Copy, Debug)]
pub struct Planned {
    idx: usize,
    pub outcome: Outcome,
}

/// Charge one request at `now` to the bucket (`db`, `hash`), probing from `start`. A new bucket
/// is refused when `db` already holds `db_share` live buckets in this partition, so no single
/// database can take a partition from the others (with a share of half, another database always
/// finds room).
pub fn charge(
    part: &mut [Bucket],
    start: usize,
    share: Share,
    hash: u64,
    name: &str,
    rate: &Rate,
    now: i64,
) -> Result<Outcome, Full> {
    let planned = plan(part, start, share, hash, rate, now, 1)?;
    commit(part, &planned, share, hash, name);
    Ok(planned.outcome)
}

/// Write a planned charge if it was allowed (a refusal changes nothing). With `plan`, several
/// buckets are charged all-or-nothing: plan each under its lock, commit all only if all allow.
pub fn commit(part: &mut [Bucket], planned: &Planned, share: Share, hash: u64, name: &str) {
    if planned.outcome.allowed {
        let mut label = [0u8; LABEL];
        let n = name.len().min(LABEL);
        label[..n].copy_from_slice(&name.as_bytes()[..n]);
        part[planned.idx] = Bucket {
            db: share.db,
            owner: share.owner,
            hash,
            tat: planned.outcome.tat,
            label,
        };
    }
}

/// Give back `amount` microseconds of a bucket's TAT (requests a refused request was charged);
/// a bucket that is full again, or gone, needs nothing.
pub fn refund(part: &mut [Bucket], start: usize, db: u32, hash: u64, amount: i64, now: i64) {
    if let Probe::Found(i) = probe(
        part.len(),
        start,
        |i| part[i].db == db && part[i].hash == hash,
        |_| false,
    ) {
        part[i].tat = part[i].tat.saturating_sub(amount).max(now.min(part[i].tat));
    }
}

/// Decide a charge without writing it.
pub fn plan(
    part: &[Bucket],
    start: usize,
    share: Share,
    hash: u64,
    rate: &Rate,
    now: i64,
    cost: u32,
) -> Result<Planned, Full> {
    let db = share.db;
    let (idx, tat) = match probe(
        part.len(),
        start,
        |i| part[i].db == db && part[i].hash == hash,
        |i| part[i].idle(now),
    ) {
        Probe::Found(i) => (i, Some(part[i].tat)),
        Probe::Vacant(i) => {
            let live = |b: &&Bucket| b.db == db && !b.idle(now);
            let held = part.iter().filter(live).count();
            let by_owner = part
                .iter()
                .filter(live)
                .filter(|b| b.owner == share.owner)
                .count();
            if held >= share.per_db || by_owner >= share.per_owner {
                return Err(Full);
            }
            (i, None)
        }
        Probe::Full => return Err(Full),
    };
    Ok(Planned {
        idx,
        outcome: gcra::charge_n(rate, tat, now, cost),
    })
}

/// For a standby's lease of a global limit: take tokens out of the bucket at `now`, by the
/// rule of [`crate::lease_table::grant`] over what the bucket would admit now (at most half,
/// or all a waiting request lacks). Returns (tokens taken, µs until the bucket admits `need`
/// when it took none).
#[allow(clippy::too_many_arguments)]
pub fn take(
    part: &mut [Bucket],
    start: usize,
    share: Share,
    hash: u64,
    name: &str,
    rate: &Rate,
    now: i64,
    need: i64,
    want: i64,
) -> Result<(i64, i64), Full> {
    let need = need.clamp(0, rate.burst as i64);
    let probe = plan(part, start, share, hash, rate, now, 0)?;
    let available = probe.outcome.remaining as i64;
    let granted = crate::lease_table::grant(available, need, want.min(rate.burst as i64));
    if granted <= 0 {
        // When the bucket admits `need` again: its TAT (now at the least) plus what `need` adds,
        // less the tolerance of a burst.
        let tat = probe.outcome.tat.max(now);
        let at = tat + rate.emission_us * need.max(1) - rate.emission_us - rate.tolerance_us;
        return Ok((0, (at - now).max(1)));
    }
    let planned = plan(part, start, share, hash, rate, now, granted as u32)?;
    debug_assert!(planned.outcome.allowed);
    if !planned.outcome.allowed {
        return Ok((0, rate.emission_us));
    }
    commit(part, &planned, share, hash, name);
    Ok((granted, 0))
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: i64 = 1_000_000;

    fn sh(db: u32, per_db: usize) -> Share {
        Share {
            db,
            owner: 0,
            per_db,
            per_owner: per_db,
        }
    }

    #[test]
    fn a_refused_request_changes_nothing() {
        let rate = Rate::new(1, 60 * S, None).unwrap();
        let mut part = [Bucket::FREE; 4];
        assert!(
            charge(&mut part, 0, sh(1, 4), 7, "b", &rate, 0)
                .unwrap()
                .allowed
        );
        let before = part;
        assert!(
            !charge(&mut part, 0, sh(1, 4), 7, "b", &rate, S)
                .unwrap()
                .allowed
        );
        assert_eq!(part, before);
    }

    #[test]
    fn a_full_partition_refuses_new_buckets_until_one_is_idle() {
        let rate = Rate::new(1, 60 * S, None).unwrap();
        let mut part = [Bucket::FREE; 3];
        for h in 1..=3 {
            assert!(charge(&mut part, 0, sh(1, 3), h, "x", &rate, 0).is_ok());
        }
        assert_eq!(
            charge(&mut part, 0, sh(1, 3), 99, "new", &rate, S),
            Err(Full)
        );
        // A minute later the first buckets are full again: their slots may be reused.
        assert!(
            charge(&mut part, 0, sh(1, 3), 99, "new", &rate, 61 * S)
                .unwrap()
                .allowed
        );
    }

    #[test]
    fn never_evicts_a_bucket_that_still_holds_a_limit() {
        // Random buckets, rates and times against a small partition: after every charge, each
        // bucket that was limiting someone (TAT in the future) is still there, unchanged unless
        // it was the one charged.
        let mut next = crate::test_rng::xorshift(0xDEADBEEF);
        let mut part = [Bucket::FREE; 8];
        let mut now = 0i64;
        for _ in 0..50_000 {
            now += (next() % (5 * S as u64)) as i64;
            let hash = 1 + next() % 20;
            let db = 1 + (next() % 3) as u32;
            let rate = Rate::new(
                1 + (next() % 5) as i64,
                (1 + (next() % 30) as i64) * S,
                None,
            )
            .unwrap();
            let before = part;
            let _ = charge(
                &mut part,
                (next() % 8) as usize,
                sh(db, 8),
                hash,
                "n",
                &rate,
                now,
            );
            for (b, a) in before.iter().zip(&part) {
                if b.db != 0 && b.tat > now && !(b.db == db && b.hash == hash) {
                    assert_eq!(b, a, "a live bucket was evicted");
                }
            }
            // No bucket appears twice.

            for (i, x) in part.iter().enumerate().filter(|(_, x)| x.db != 0) {
                assert!(!part[i + 1..]
                    .iter()
                    .any(|y| y.db == x.db && y.hash == x.hash));
            }
        }
    }

    #[test]
    fn one_database_cannot_take_a_partition_from_another() {
        let rate = Rate::new(1, 3600 * S, None).unwrap();
        let mut part = [Bucket::FREE; 8];
        let taken = (1..=20u64)
            .filter(|&h| charge(&mut part, 0, sh(1, 4), h, "flood", &rate, 0).is_ok())
            .count();
        assert_eq!(taken, 4, "the flooding database stops at its share");
        // Within a database, one owner stops at its own share.
        let mut part = [Bucket::FREE; 8];
        let role = |owner| Share {
            db: 3,
            owner,
            per_db: 8,
            per_owner: 2,
        };
        let mine = (1..=9u64)
            .filter(|&h| charge(&mut part, 0, role(7), h, "r", &rate, 0).is_ok())
            .count();
        assert_eq!(mine, 2);
        assert!(charge(&mut part, 0, role(8), 50, "other role", &rate, 0).is_ok());
        for h in 1..=4u64 {
            let o = charge(&mut part, h as usize, sh(2, 4), 100 + h, "victim", &rate, S);
            assert!(o.unwrap().allowed);
        }
    }

    #[test]
    fn a_refund_gives_back_what_was_charged() {
        let rate = Rate::new(2, 60 * S, None).unwrap();
        let mut part = [Bucket::FREE; 2];
        assert!(
            charge(&mut part, 0, sh(1, 2), 7, "b", &rate, 0)
                .unwrap()
                .allowed
        );
        assert!(
            charge(&mut part, 0, sh(1, 2), 7, "b", &rate, 0)
                .unwrap()
                .allowed
        );
        assert!(
            !charge(&mut part, 0, sh(1, 2), 7, "b", &rate, 0)
                .unwrap()
                .allowed
        );
        refund(&mut part, 0, 1, 7, rate.emission_us, 0);
        assert!(
            charge(&mut part, 0, sh(1, 2), 7, "b", &rate, 0)
                .unwrap()
                .allowed
        );
    }

    #[test]
    fn a_take_grants_at_most_half_of_what_the_bucket_admits() {
        let rate = Rate::new(600, 60 * S, None).unwrap();
        let mut part = [Bucket::FREE; 4];
        assert_eq!(
            take(&mut part, 0, sh(1, 4), 7, "b", &rate, 0, 1, 1000),
            Ok((300, 0))
        );
        assert_eq!(
            take(&mut part, 0, sh(1, 4), 7, "b", &rate, 0, 0, 1000),
            Ok((150, 0))
        );
        // The tokens are gone from the bucket: its own requests see what is left.
        let left = plan(&part, 0, sh(1, 4), 7, &rate, 0, 0)
            .unwrap()
            .outcome
            .remaining;
        assert_eq!(left, 150);
        assert_eq!(
            take(&mut part, 0, sh(1, 4), 7, "b", &rate, 0, 150, 150),
            Ok((150, 0))
        );
        // Empty: nothing, and when one request will pass (10 per second).
        assert_eq!(
            take(&mut part, 0, sh(1, 4), 7, "b", &rate, 0, 1, 5),
            Ok((0, S / 10))
        );
        assert_eq!(
            take(&mut part, 0, sh(1, 4), 7, "b", &rate, S / 10, 1, 5),
            Ok((1, 0))
        );
    }
}
