//! How a database's region of the shared key cache grows without moving anyone else's memory:
//! linear hashing over fixed-size chunks. A region starts with one chunk; each growth adds one
//! chunk and splits exactly one existing chunk (the one the split pointer names): the keys of
//! that chunk whose address changes move to the new chunk, and no other chunk is touched. A tag's chunk depends only on
//! its low bits and the shape, so every backend finds it with two atomic reads.

/// A region's shape: `2^level + split` chunks.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Shape {
    pub level: u32,
    pub split: u32,
}

/// Tags' bits above these choose the window inside a chunk (see `shared_keys`): no region ever
/// has this many chunks.
pub const MAX_CHUNKS: usize = 1 << 16;

impl Shape {
    /// A region's first shape: one chunk.
    pub const ONE: Shape = Shape { level: 0, split: 0 };

    pub fn chunks(self) -> usize {
        (1usize << self.level) + self.split as usize
    }

    /// The chunk (0-based, below `chunks()`) holding keys with this tag.
    pub fn chunk_of(self, tag: u32) -> usize {
        let low = tag as usize & ((1usize << self.level) - 1);
        if low < self.split as usize {
            tag as usize & ((1usize << (self.level + 1)) - 1)
        } else {
            low
        }
    }

    /// One growth: (the chunk whose entries must go, the chunk added, the shape after). None at
    /// [`MAX_CHUNKS`].
    pub fn grow(self) -> Option<(usize, usize, Shape)> {
        if self.chunks() >= MAX_CHUNKS {
            return None;
        }
        let split = self.split as usize;
        let added = (1usize << self.level) + split;
        let next = if split + 1 == 1usize << self.level {
            Shape {
                level: self.level + 1,
                split: 0,
            }
        } else {
            Shape {
                level: self.level,
                split: self.split + 1,
            }
        };
        Some((split, added, next))
    }

    /// The shape as one word for an atomic; never 0, which stands for "no shape yet".
    pub fn pack(self) -> u64 {
        ((u64::from(self.level) << 32) | u64::from(self.split)) + 1
    }

    /// The shape packed in `v`; None for 0.
    pub fn unpack(v: u64) -> Option<Shape> {
        let v = v.checked_sub(1)?;
        Some(Shape {
            level: ((v >> 32) as u32).min(16),
            split: v as u32,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_chunk_holds_everything() {
        for tag in [0u32, 1, 7, u32::MAX] {
            assert_eq!(Shape::ONE.chunk_of(tag), 0);
        }
    }

    #[test]
    fn a_growth_moves_only_the_split_chunks_tags_and_only_to_the_new_chunk() {
        let mut shape = Shape::ONE;
        let tags: Vec<u32> = (0..5000u32)
            .map(|i| i.wrapping_mul(2_654_435_761))
            .collect();
        for _ in 0..300 {
            let (split, added, next) = shape.grow().expect("room");
            assert_eq!(next.chunks(), shape.chunks() + 1);
            assert_eq!(added, shape.chunks());
            for &t in &tags {
                let (before, after) = (shape.chunk_of(t), next.chunk_of(t));
                assert!(after < next.chunks());
                if before != after {
                    assert_eq!((before, after), (split, added));
                }
            }
            shape = next;
        }
    }

    #[test]
    fn chunks_fill_evenly_at_powers_of_two() {
        let shape = Shape { level: 3, split: 0 };
        let mut counts = [0usize; 8];
        for t in 0..8000u32 {
            counts[shape.chunk_of(t)] += 1;
        }
        assert!(counts.iter().all(|&c| c == 1000));
    }

    #[test]
    fn shapes_pack_and_unpack() {
        let s = Shape {
            level: 9,
            split: 300,
        };
        assert_eq!(Shape::unpack(s.pack()), Some(s));
        assert_ne!(Shape::ONE.pack(), 0);
        assert_eq!(Shape::unpack(0), None);
        let full = Shape {
            level: 16,
            split: 0,
        };
        assert!(full.grow().is_none());
    }
}
