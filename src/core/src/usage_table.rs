//! One partition of the shared-memory usage table: per-key counts between two flushes.
//!
//! The extension holds an LWLock while it calls these functions. The rule that keeps counts: a slot
//! is reused only when everything it holds has been flushed; otherwise an event for a new key is
//! dropped and counted as dropped. So every recorded event is, at any moment, either still pending
//! in its slot, already flushed, or counted as dropped — never silently lost.

use crate::slots::{probe_window, Probe};

/// Counters per slot, in this order everywhere (SQL columns included).
pub const KINDS: usize = 5;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Event {
    Use = 0,
    Expired = 1,
    Revoked = 2,
    RateLimited = 3,
    Denied = 4,
}

/// `db == 0` marks a free slot.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(C)]
pub struct Slot {
    pub db: u32,
    pub key_id: i64,
    pub last_used: i64,
    pub flushed_last_used: i64,
    pub counts: [u64; KINDS],
}

impl Slot {
    pub const FREE: Slot = Slot {
        db: 0,
        key_id: 0,
        last_used: 0,
        flushed_last_used: 0,
        counts: [0; KINDS],
    };

    pub fn pending(&self) -> bool {
        self.last_used > self.flushed_last_used || self.counts.iter().any(|&c| c > 0)
    }
}

/// Slots a key may occupy, from its start: recording costs this many slots at most, however
/// large the table (a full scan of a table of pending slots cost more than the verify it
/// counted, at a million keys).
pub const WINDOW: usize = 16;

/// Where a key's probe starts: key ids are sequential, so spread them.
pub fn start_of(key_id: i64, len: usize) -> usize {
    ((key_id as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 32) as usize % len
}

/// Count `event` for `key_id` at `now`. False when the event was dropped (every slot pending).
pub fn record(part: &mut [Slot], db: u32, key_id: i64, event: Event, now: i64) -> bool {
    let idx = match probe_window(
        part.len(),
        start_of(key_id, part.len()),
        WINDOW,
        |i| part[i].db == db && part[i].key_id == key_id,
        |i| part[i].db == 0 || !part[i].pending(),
    ) {
        Probe::Found(i) => i,
        Probe::Vacant(i) => {
            part[i] = Slot {
                db,
                key_id,
                ..Slot::FREE
            };
            i
        }
        Probe::Full => return false,
    };
    let s = &mut part[idx];
    s.counts[event as usize] += 1;
    if event == Event::Use {
        s.last_used = s.last_used.max(now);
    }
    true
}

/// What the slots of `db` hold: (key id, last used, counts); pending ones only unless `all`.
pub fn collect(part: &[Slot], db: u32, all: bool) -> Vec<(i64, i64, [u64; KINDS])> {
    part.iter()
        .filter(|s| s.db == db && (all || s.pending()))
        .map(|s| (s.key_id, s.last_used, s.counts))
        .collect()
}

/// Subtract what a committed flush wrote (events recorded since `collect` stay pending).
pub fn settle(part: &mut [Slot], db: u32, flushed: &[(i64, i64, [u64; KINDS])]) {
    for &(key_id, last_used, counts) in flushed {
        if let Probe::Found(i) = probe_window(
            part.len(),
            start_of(key_id, part.len()),
            WINDOW,
            |i| part[i].db == db && part[i].key_id == key_id,
            |_| false,
        ) {
            let s = &mut part[i];
            for (c, f) in s.counts.iter_mut().zip(counts) {
                *c = c.saturating_sub(f);
            }
            s.flushed_last_used = s.flushed_last_used.max(last_used);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_survive_until_flushed_and_slots_are_reused_after() {
        let mut part = [Slot::FREE; 2];
        assert!(record(&mut part, 1, 10, Event::Use, 5));
        assert!(record(&mut part, 1, 11, Event::Denied, 6));
        assert!(
            !record(&mut part, 1, 12, Event::Use, 7),
            "both slots pending"
        );
        let pending = collect(&part, 1, false);
        settle(&mut part, 1, &pending);
        assert!(
            record(&mut part, 1, 12, Event::Use, 8),
            "a flushed slot is reused"
        );
    }

    #[test]
    fn never_loses_a_count_that_is_not_flushed() {
        // A table smaller than a window, and one where keys live in windows of a larger table.
        conservation(8, 12);
        conservation(4 * WINDOW, 10 * WINDOW as u64);
    }

    fn conservation(slots: usize, keys: u64) {
        // Random records, flushes (collect … settle, with records in between, as the worker
        // races with backends) and drops: recorded == flushed + pending + dropped, per kind.
        let mut next = crate::test_rng::xorshift(42);
        let mut part = vec![Slot::FREE; slots];
        let (mut recorded, mut flushed, mut dropped) =
            ([0u64; KINDS], [0u64; KINDS], [0u64; KINDS]);
        let mut in_flight: Option<Vec<(i64, i64, [u64; KINDS])>> = None;
        for step in 0..100_000i64 {
            match next() % 10 {
                0 => in_flight = Some(collect(&part, 1, false)),
                1 => {
                    if let Some(batch) = in_flight.take() {
                        for (_, _, c) in &batch {
                            for k in 0..KINDS {
                                flushed[k] += c[k];
                            }
                        }
                        settle(&mut part, 1, &batch);
                    }
                }
                _ => {
                    let kind = (next() % KINDS as u64) as usize;
                    let event = [
                        Event::Use,
                        Event::Expired,
                        Event::Revoked,
                        Event::RateLimited,
                        Event::Denied,
                    ][kind];
                    recorded[kind] += 1;
                    if !record(&mut part, 1, (next() % keys) as i64, event, step) {
                        dropped[kind] += 1;
                    }
                }
            }
        }
        let pending = collect(&part, 1, true);
        for k in 0..KINDS {
            let still: u64 = pending.iter().map(|p| p.2[k]).sum();
            // A batch collected but never settled was never written: it is still pending.
            assert_eq!(recorded[k], flushed[k] + still + dropped[k], "kind {k}");
        }
    }
}
