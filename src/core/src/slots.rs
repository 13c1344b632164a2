//! The probing and eviction rule of the fixed-capacity tables kept in shared memory.
//!
//! A table is split into partitions; a key's keyed hash picks the partition and the first slot to
//! probe. The rule that keeps one tenant from resetting another's limits: a slot that holds live
//! state is never taken. A probe finds the key's own slot, else the first free or *reclaimable*
//! slot (one whose state is spent: a bucket that is full again, a count that was flushed), else
//! reports the table full, and the caller fails closed.

/// Where a key goes in one partition.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Probe {
    /// The key's own slot.
    Found(usize),
    /// A free or reclaimable slot the key may take.
    Vacant(usize),
    /// Every slot holds live state for another key.
    Full,
}

/// Probe `len` slots starting at `start` (wrapping). `is_mine` recognises the key's slot;
/// `reclaimable` says a slot may be taken (free, or its state spent). The key's own slot wins
/// over an earlier vacant one, so a key never occupies two slots.
pub fn probe(
    len: usize,
    start: usize,
    is_mine: impl Fn(usize) -> bool,
    reclaimable: impl Fn(usize) -> bool,
) -> Probe {
    probe_window(len, start, len, is_mine, reclaimable)
}

/// [`probe`] over the `window` slots from `start` only. A table whose keys all go through this
/// with the same window keeps every key within its window, so a lookup costs `window` slots
/// however large the table; the price is a table reported full while other windows have room.
pub fn probe_window(
    len: usize,
    start: usize,
    window: usize,
    is_mine: impl Fn(usize) -> bool,
    reclaimable: impl Fn(usize) -> bool,
) -> Probe {
    let mut vacant = None;
    for i in 0..window.min(len) {
        let idx = (start + i) % len;
        if is_mine(idx) {
            return Probe::Found(idx);
        }
        if vacant.is_none() && reclaimable(idx) {
            vacant = Some(idx);
        }
    }
    vacant.map_or(Probe::Full, Probe::Vacant)
}

/// A 64-bit SipHash-2-4 of `parts` under a server secret, so nobody can compute offline which
/// names land in which partition (and fill one partition to target a victim). Never 0, which
/// tables use for "free".
pub fn keyed_hash(secret: [u64; 2], parts: &[&[u8]]) -> u64 {
    use std::hash::Hasher;
    // SipHasher is deprecated only in favour of unstable or external crates; its algorithm is
    // the keyed SipHash-2-4 this needs.
    #[allow(deprecated)]
    let mut h = std::hash::SipHasher::new_with_keys(secret[0], secret[1]);
    for p in parts {
        h.write_usize(p.len());
        h.write(p);
    }
    h.finish().max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A toy table: Some((key, live)) or None for free.
    fn run(table: &mut [Option<(u32, bool)>], key: u32, start: usize) -> Probe {
        let p = probe(
            table.len(),
            start,
            |i| table[i].is_some_and(|(k, _)| k == key),
            |i| table[i].is_none_or(|(_, live)| !live),
        );
        if let Probe::Vacant(i) = p {
            table[i] = Some((key, true));
        }
        p
    }

    #[test]
    fn finds_own_slot_before_an_earlier_vacant_one() {
        let mut t = vec![None, Some((7, true)), None];
        assert_eq!(run(&mut t, 7, 0), Probe::Found(1));
    }

    #[test]
    fn reclaims_spent_slots_only() {
        let mut t = vec![Some((1, true)), Some((2, false)), Some((3, true))];
        assert_eq!(run(&mut t, 9, 0), Probe::Vacant(1));
        assert_eq!(run(&mut t, 10, 0), Probe::Full);
    }

    #[test]
    fn never_evicts_live_state_under_random_load() {
        let mut next = crate::test_rng::xorshift(12345);
        let mut t: Vec<Option<(u32, bool)>> = vec![None; 16];
        for _ in 0..20_000 {
            let before = t.clone();
            let key = (next() % 40) as u32;
            let start = (next() % 16) as usize;
            let p = run(&mut t, key, start);
            // Every slot that held live state for another key still holds it.
            for (i, (b, a)) in before.iter().zip(&t).enumerate() {
                if let Some((k, true)) = b {
                    assert_eq!(a, &Some((*k, true)), "slot {i} evicted by {p:?}");
                }
            }
            // Sometimes state is spent (a bucket refills, a count is flushed).
            let i = (next() % 16) as usize;
            if let Some((k, _)) = t[i] {
                t[i] = Some((k, !next().is_multiple_of(3)));
            }
        }
    }

    #[test]
    fn a_window_probe_looks_at_its_window_only() {
        let looked = std::cell::Cell::new(0);
        let p = probe_window(
            100_000,
            99_990,
            16,
            |i| {
                looked.set(looked.get() + 1);
                assert!(!(6..99_990).contains(&i), "slot {i} is outside the window");
                false
            },
            |_| false,
        );
        assert_eq!((p, looked.get()), (Probe::Full, 16));
        // The key's slot within the window is found past an earlier vacant one.
        let t = [None, Some(3), None, Some(7)];
        assert_eq!(
            probe_window(4, 2, 3, |i| t[i] == Some(7), |i| t[i].is_none()),
            Probe::Found(3)
        );
        assert_eq!(
            probe_window(4, 2, 3, |i| t[i] == Some(9), |i| t[i].is_none()),
            Probe::Vacant(2)
        );
    }

    #[test]
    fn keyed_hash_depends_on_the_secret_and_separates_parts() {
        let a = keyed_hash([1, 2], &[b"ab", b"c"]);
        assert_ne!(a, keyed_hash([1, 3], &[b"ab", b"c"]));
        assert_ne!(a, keyed_hash([1, 2], &[b"a", b"bc"]));
        assert_eq!(a, keyed_hash([1, 2], &[b"ab", b"c"]));
        assert_ne!(keyed_hash([0, 0], &[]), 0);
    }
}
