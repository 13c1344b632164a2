//! CRC32 rendered in base62, the GitHub-token style checksum.
//!
//! A checksum suffix lets anything holding a string (a secret scanner, the `api_key` input function)
//! tell a well-formed key from a typo or random text without a database lookup. It is not a MAC:
//! anyone can compute it, it only catches accidents.

use crate::format::BASE62;

/// Width of the base62 rendering: 62^6 > 2^32, so every CRC32 fits.
pub const CRC32_BASE62_LEN: usize = 6;

const fn crc32_table() -> [u32; 256] {
    let mut table = [0u32; 256];
    let mut i = 0;
    while i < 256 {
        let mut c = i as u32;
        let mut k = 0;
        while k < 8 {
            c = if c & 1 != 0 {
                0xEDB8_8320 ^ (c >> 1)
            } else {
                c >> 1
            };
            k += 1;
        }
        table[i] = c;
        i += 1;
    }
    table
}

static CRC32_TABLE: [u32; 256] = crc32_table();

/// CRC-32/ISO-HDLC (the zlib and PNG CRC).
pub fn crc32(data: &[u8]) -> u32 {
    let mut c = 0xFFFF_FFFFu32;
    for &b in data {
        c = CRC32_TABLE[((c ^ b as u32) & 0xFF) as usize] ^ (c >> 8);
    }
    c ^ 0xFFFF_FFFF
}

/// The checksum as six base62 characters, most significant first, zero-padded.
pub fn crc32_base62(data: &[u8]) -> [u8; CRC32_BASE62_LEN] {
    let mut n = crc32(data) as u64;
    let mut out = [BASE62[0]; CRC32_BASE62_LEN];
    for slot in out.iter_mut().rev() {
        *slot = BASE62[(n % 62) as usize];
        n /= 62;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc32_matches_the_published_check_value() {
        // The standard check input for CRC catalogues.
        assert_eq!(crc32(b"123456789"), 0xCBF4_3926);
        assert_eq!(crc32(b""), 0);
    }

    #[test]
    fn base62_rendering_is_fixed_width_and_changes_with_input() {
        let a = crc32_base62(b"pak_abc");
        let b = crc32_base62(b"pak_abd");
        assert_eq!(a.len(), 6);
        assert_ne!(a, b);
        assert!(a.iter().all(|c| c.is_ascii_alphanumeric()));
        // 0 renders as all zeros, the padding character.
        assert_eq!(&crc32_base62(b""), b"000000");
    }
}
