//! The layout and rules of the shared key cache: fixed-size slots in a byte arena, split into
//! partitions that the extension locks one at a time. Nothing here knows about shared memory or
//! locks: a partition is a `&[u8]` (read under a shared lock) or `&mut [u8]` (under an
//! exclusive one), so every rule is tested on a plain buffer.
//!
//! A slot holds one key: its invalidation tag, its digest and an opaque payload of at most
//! [`PAYLOAD`] bytes. A key lives in a window of [`WINDOW`] consecutive slots chosen by its tag,
//! so evicting by tag (what an invalidation carries) looks at one window, and a lookup at most
//! [`WINDOW`] slots. A full window evicts its oldest entry.
//!
//! Each partition counts its invalidations (its *generation*): an insert that read the key under
//! an older generation is refused, so a row read before a revoke cannot enter after the revoke's
//! eviction.

/// Bytes of one slot.
pub const SLOT: usize = 256;
/// Slots a key may live in, starting at the one its tag picks.
pub const WINDOW: usize = 8;
/// The partition header: generation, insertion clock, then the slots.
const HEADER: usize = 16;
/// Slot layout: used flag, payload length, tag, insertion stamp, digest, payload.
const USED: usize = 0;
const LEN: usize = 2;
const TAG: usize = 4;
const STAMP: usize = 8;
const DIGEST: usize = 16;
const DIGEST_LEN: usize = 32;
const BODY: usize = DIGEST + DIGEST_LEN;
/// The largest payload a slot holds; a larger one is not cached.
pub const PAYLOAD: usize = SLOT - BODY;

/// Bytes of a partition of `slots` slots.
pub fn partition_bytes(slots: usize) -> usize {
    HEADER + slots * SLOT
}

/// Slots of a partition of `bytes` bytes (0 if it cannot hold a window).
pub fn slots_in(bytes: usize) -> usize {
    let slots = bytes.saturating_sub(HEADER) / SLOT;
    if slots < WINDOW {
        0
    } else {
        slots
    }
}

/// The partition (of `partitions`) a tag belongs to. Tags are 32 bits of a SHA-256 digest, so
/// their bits are uniform; the low bits choose the partition, the rest the window.
pub fn partition_of(tag: u32, partitions: usize) -> usize {
    tag as usize % partitions.max(1)
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

fn set_u64(b: &mut [u8], at: usize, v: u64) {
    b[at..at + 8].copy_from_slice(&v.to_le_bytes());
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}

/// A partition under a shared lock.
pub struct Partition<'a>(&'a [u8]);

/// A partition under an exclusive lock.
pub struct PartitionMut<'a>(&'a mut [u8]);

fn slot_count(b: &[u8]) -> usize {
    slots_in(b.len())
}

fn window(b: &[u8], tag: u32, partitions: usize) -> impl Iterator<Item = usize> {
    let n = slot_count(b);
    // Bits above the partition's; n == 0 yields nothing.
    let start = if n == 0 {
        0
    } else {
        (tag as usize / partitions.max(1)) % n
    };
    (0..if n == 0 { 0 } else { WINDOW }).map(move |i| HEADER + ((start + i) % n) * SLOT)
}

fn matches(b: &[u8], at: usize, tag: u32, digest: &[u8; DIGEST_LEN]) -> bool {
    b[at + USED] == 1 && u32_at(b, at + TAG) == tag && b[at + DIGEST..at + BODY] == digest[..]
}

impl<'a> Partition<'a> {
    pub fn new(bytes: &'a [u8]) -> Self {
        Partition(bytes)
    }

    pub fn generation(&self) -> u64 {
        u64_at(self.0, 0)
    }

    /// The payload stored for this digest, if any: a slot whose tag and whole digest equal the
    /// presented ones. (Comparing in variable time leaks how much of a stored digest matches the
    /// SHA-256 of a guess, which is of no use without a preimage.)
    pub fn find(&self, tag: u32, digest: &[u8; DIGEST_LEN], partitions: usize) -> Option<&'a [u8]> {
        let b = self.0;
        window(b, tag, partitions)
            .find(|&at| matches(b, at, tag, digest))
            .map(|at| {
                let len = u16::from_le_bytes([b[at + LEN], b[at + LEN + 1]]) as usize;
                &b[at + BODY..at + BODY + len.min(PAYLOAD)]
            })
    }
}

impl<'a> PartitionMut<'a> {
    pub fn new(bytes: &'a mut [u8]) -> Self {
        PartitionMut(bytes)
    }

    pub fn generation(&self) -> u64 {
        u64_at(self.0, 0)
    }

    fn bump(&mut self) {
        let g = self.generation().wrapping_add(1);
        set_u64(self.0, 0, g);
    }

    /// Store `payload` for the key, unless the partition's generation moved since `since` (an
    /// invalidation was applied after the caller read the row) or the payload does not fit.
    /// Replaces an entry of the same digest, else takes a free slot of the window, else evicts
    /// the window's oldest entry.
    pub fn insert(
        &mut self,
        tag: u32,
        digest: &[u8; DIGEST_LEN],
        payload: &[u8],
        since: u64,
        partitions: usize,
    ) -> bool {
        if self.generation() != since || payload.len() > PAYLOAD {
            return false;
        }
        let b = &mut *self.0;
        let slots: Vec<usize> = window(b, tag, partitions).collect();
        let Some(&first) = slots.first() else {
            return false;
        };
        let at = slots
            .iter()
            .copied()
            .find(|&at| matches(b, at, tag, digest))
            .or_else(|| slots.iter().copied().find(|&at| b[at + USED] == 0))
            .unwrap_or_else(|| {
                slots
                    .iter()
                    .copied()
                    .min_by_key(|&at| u64_at(b, at + STAMP))
                    .unwrap_or(first)
            });
        let clock = u64_at(b, 8).wrapping_add(1);
        set_u64(b, 8, clock);
        b[at + USED] = 1;
        b[at + LEN..at + LEN + 2].copy_from_slice(&(payload.len() as u16).to_le_bytes());
        b[at + TAG..at + TAG + 4].copy_from_slice(&tag.to_le_bytes());
        set_u64(b, at + STAMP, clock);
        b[at + DIGEST..at + BODY].copy_from_slice(digest);
        b[at + BODY..at + BODY + payload.len()].copy_from_slice(payload);
        true
    }

    /// Would storing this key push another entry out (its window is full of other keys)?
    pub fn would_evict(&self, tag: u32, digest: &[u8; DIGEST_LEN], partitions: usize) -> bool {
        let b = &*self.0;
        let mut window = window(b, tag, partitions).peekable();
        window.peek().is_some()
            && window.all(|at| b[at + USED] == 1 && !matches(b, at, tag, digest))
    }

    /// Drop every entry with this tag (an invalidation), and move the generation.
    pub fn evict_tag(&mut self, tag: u32, partitions: usize) -> usize {
        self.bump();
        let b = &mut *self.0;
        let doomed: Vec<usize> = window(b, tag, partitions)
            .filter(|&at| b[at + USED] == 1 && u32_at(b, at + TAG) == tag)
            .collect();
        for &at in &doomed {
            b[at + USED] = 0;
        }
        doomed.len()
    }

    /// Move every entry whose tag `moves` selects into `to` (a partition of the same layout,
    /// empty: a chunk just added by a growth), and move this partition's generation so that no
    /// insert read under the old layout lands here. Answers how many moved.
    pub fn split_into(
        &mut self,
        to: &mut PartitionMut,
        moves: impl Fn(u32) -> bool,
        partitions: usize,
    ) -> usize {
        self.bump();
        let since = to.generation();
        let mut moved = 0;
        for i in 0..slot_count(self.0) {
            let at = HEADER + i * SLOT;
            let b = &mut *self.0;
            if b[at + USED] != 1 {
                continue;
            }
            let tag = u32_at(b, at + TAG);
            if !moves(tag) {
                continue;
            }
            let len = (u16::from_le_bytes([b[at + LEN], b[at + LEN + 1]]) as usize).min(PAYLOAD);
            let digest: [u8; DIGEST_LEN] = b[at + DIGEST..at + BODY].try_into().expect("32 bytes");
            let payload = b[at + BODY..at + BODY + len].to_vec();
            b[at + USED] = 0;
            if to.insert(tag, &digest, &payload, since, partitions) {
                moved += 1;
            }
        }
        moved
    }

    /// Drop everything, and move the generation.
    pub fn clear(&mut self) {
        self.bump();
        let n = slot_count(self.0);
        for i in 0..n {
            self.0[HEADER + i * SLOT + USED] = 0;
        }
    }
}

impl Partition<'_> {
    /// Does the tag's window hold an entry with this tag?
    pub fn holds_tag(&self, tag: u32, partitions: usize) -> bool {
        let b = self.0;
        window(b, tag, partitions).any(|at| b[at + USED] == 1 && u32_at(b, at + TAG) == tag)
    }

    /// Entries held.
    pub fn len(&self) -> usize {
        (0..slot_count(self.0))
            .filter(|i| self.0[HEADER + i * SLOT + USED] == 1)
            .count()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_rng::xorshift;

    fn digest(n: u64) -> [u8; 32] {
        crate::digest::sha256(&n.to_le_bytes())
    }

    fn tag(d: &[u8; 32]) -> u32 {
        u32::from_le_bytes([d[0], d[1], d[2], d[3]])
    }

    #[test]
    fn finds_what_it_stored_and_nothing_else() {
        let mut buf = vec![0u8; partition_bytes(64)];
        let mut p = PartitionMut::new(&mut buf);
        for n in 0..20u64 {
            let d = digest(n);
            assert!(p.insert(tag(&d), &d, &n.to_le_bytes(), 0, 1));
        }
        let r = Partition::new(&buf);
        let mut found = 0;
        for n in 0..20u64 {
            let d = digest(n);
            if let Some(v) = r.find(tag(&d), &d, 1) {
                assert_eq!(v, n.to_le_bytes());
                found += 1;
            }
        }
        assert!(found >= 15, "most of 20 keys in 64 slots stay");
        for n in 20..40u64 {
            let d = digest(n);
            assert!(r.find(tag(&d), &d, 1).is_none());
        }
    }

    #[test]
    fn an_insert_after_an_invalidation_it_did_not_see_is_refused() {
        let mut buf = vec![0u8; partition_bytes(64)];
        let d = digest(1);
        let since = PartitionMut::new(&mut buf).generation();
        PartitionMut::new(&mut buf).evict_tag(tag(&digest(2)), 1);
        assert!(!PartitionMut::new(&mut buf).insert(tag(&d), &d, b"row", since, 1));
        assert!(Partition::new(&buf).find(tag(&d), &d, 1).is_none());
        let now = Partition::new(&buf).generation();
        assert!(PartitionMut::new(&mut buf).insert(tag(&d), &d, b"row", now, 1));
    }

    #[test]
    fn eviction_by_tag_drops_that_key_only() {
        let mut buf = vec![0u8; partition_bytes(256)];
        let keys: Vec<[u8; 32]> = (0..50).map(digest).collect();
        let mut p = PartitionMut::new(&mut buf);
        for d in &keys {
            let g = p.generation();
            p.insert(tag(d), d, d, g, 1);
        }
        let before: Vec<bool> = keys
            .iter()
            .map(|d| Partition::new(&buf).find(tag(d), d, 1).is_some())
            .collect();
        assert!(Partition::new(&buf).holds_tag(tag(&keys[7]), 1) == before[7]);
        PartitionMut::new(&mut buf).evict_tag(tag(&keys[7]), 1);
        assert!(!Partition::new(&buf).holds_tag(tag(&keys[7]), 1));
        for (i, d) in keys.iter().enumerate() {
            let now = Partition::new(&buf).find(tag(d), d, 1).is_some();
            assert_eq!(now, before[i] && i != 7, "key {i}");
        }
    }

    #[test]
    fn oversized_payloads_and_tiny_partitions_are_not_cached() {
        let mut buf = vec![0u8; partition_bytes(64)];
        let d = digest(3);
        assert!(!PartitionMut::new(&mut buf).insert(tag(&d), &d, &[0; PAYLOAD + 1], 0, 1));
        assert!(PartitionMut::new(&mut buf).insert(tag(&d), &d, &[7; PAYLOAD], 0, 1));
        assert_eq!(
            Partition::new(&buf).find(tag(&d), &d, 1),
            Some(&[7u8; PAYLOAD][..])
        );
        let mut tiny = vec![0u8; partition_bytes(WINDOW - 1)];
        assert_eq!(slots_in(tiny.len()), 0);
        assert!(!PartitionMut::new(&mut tiny).insert(tag(&d), &d, b"x", 0, 1));
    }

    #[test]
    fn a_full_window_says_it_would_evict() {
        let mut buf = vec![0u8; partition_bytes(WINDOW)];
        let mut p = PartitionMut::new(&mut buf);
        let keys: Vec<[u8; DIGEST_LEN]> = (0..=WINDOW as u8).map(|i| [i; DIGEST_LEN]).collect();
        for d in &keys[..WINDOW] {
            assert!(!p.would_evict(tag(d), d, 1));
            assert!(p.insert(tag(d), d, b"row", p.generation(), 1));
        }
        assert!(
            !p.would_evict(tag(&keys[0]), &keys[0], 1),
            "a stored key replaces itself"
        );
        assert!(p.would_evict(tag(&keys[WINDOW]), &keys[WINDOW], 1));
    }

    #[test]
    fn a_split_moves_the_selected_entries_and_keeps_the_rest() {
        let mut old = vec![0u8; partition_bytes(256)];
        let mut new = vec![0u8; partition_bytes(256)];
        let keys: Vec<[u8; DIGEST_LEN]> = (0..100u64).map(digest).collect();
        {
            let mut p = PartitionMut::new(&mut old);
            for d in &keys {
                assert!(p.insert(tag(d), d, &d[..4], p.generation(), 1));
            }
        }
        let before = PartitionMut::new(&mut old).generation();
        let moved = PartitionMut::new(&mut old).split_into(
            &mut PartitionMut::new(&mut new),
            |t| t % 2 == 1,
            1,
        );
        assert!(moved > 0 && moved < 100);
        assert_ne!(
            Partition::new(&old).generation(),
            before,
            "old tickets must not insert"
        );
        for d in &keys {
            let (here, there) = (
                Partition::new(&old).find(tag(d), d, 1),
                Partition::new(&new).find(tag(d), d, 1),
            );
            if tag(d) % 2 == 1 {
                assert_eq!((here, there), (None, Some(&d[..4])));
            } else {
                assert_eq!((here, there), (Some(&d[..4]), None));
            }
        }
    }

    #[test]
    fn tiny_partitions_find_nothing() {
        let tiny = vec![0u8; partition_bytes(WINDOW - 1)];
        let d = digest(3);
        assert!(Partition::new(&tiny).find(tag(&d), &d, 1).is_none());
    }

    /// Against a model: whatever the sequence of inserts, tag evictions and clears, a lookup
    /// returns either nothing or the payload last stored for that digest since its last eviction
    /// — never another key's payload, never an evicted one.
    #[test]
    fn property_never_returns_an_evicted_or_foreign_entry() {
        let mut next = xorshift(0x5eed_cafe);
        let mut below = |n: u64| next() % n;
        for round in 0..40 {
            let parts = 1 + below(4) as usize;
            let slots = WINDOW + below(40) as usize;
            let mut bufs: Vec<Vec<u8>> = (0..parts)
                .map(|_| vec![0u8; partition_bytes(slots)])
                .collect();
            let mut model: std::collections::HashMap<u64, Vec<u8>> = Default::default();
            for step in 0..400u64 {
                let n = below(60);
                let d = digest(n);
                let t = tag(&d);
                let p = partition_of(t, parts);
                match below(10) {
                    0 => {
                        PartitionMut::new(&mut bufs[p]).evict_tag(t, parts);
                        model.remove(&n);
                    }
                    1 if step % 97 == 0 => {
                        for b in bufs.iter_mut() {
                            PartitionMut::new(b).clear();
                        }
                        model.clear();
                    }
                    _ => {
                        let payload = (step + round).to_le_bytes().to_vec();
                        let mut part = PartitionMut::new(&mut bufs[p]);
                        let g = part.generation();
                        if part.insert(t, &d, &payload, g, parts) {
                            model.insert(n, payload);
                        }
                    }
                }
                for m in 0..60u64 {
                    let d = digest(m);
                    let t = tag(&d);
                    let got = Partition::new(&bufs[partition_of(t, parts)]).find(t, &d, parts);
                    if let Some(v) = got {
                        assert_eq!(
                            Some(&v.to_vec()),
                            model.get(&m),
                            "round {round} step {step}"
                        );
                    }
                }
            }
        }
    }
}
