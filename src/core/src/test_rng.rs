//! A tiny deterministic generator for the randomized tests: no dependency, and the same cases
//! on every run, so a failure reproduces.

/// An xorshift64 stream starting from `seed` (which must not be 0).
pub fn xorshift(mut seed: u64) -> impl FnMut() -> u64 {
    move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    }
}
