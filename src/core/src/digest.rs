//! Digests and comparisons. Keys are stored only as SHA-256; every comparison of secret-derived
//! bytes goes through `subtle` so its time does not depend on where the bytes differ.

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

pub const DIGEST_LEN: usize = 32;
const HMAC_BLOCK: usize = 64;

/// The OID at which Postgres' normal (non-catalog) objects start.
pub const FIRST_NORMAL_OBJECT_ID: u32 = 16384;

/// The invalidation tag that stands for a key: 32 bits of its digest, as a relation OID kept clear
/// of the catalogs' OID range (Postgres treats invalidations of those specially).
pub fn invalidation_tag(digest: &[u8; DIGEST_LEN]) -> u32 {
    let raw = u32::from_le_bytes([digest[0], digest[1], digest[2], digest[3]]);
    FIRST_NORMAL_OBJECT_ID + raw % (u32::MAX - FIRST_NORMAL_OBJECT_ID)
}

pub fn sha256(data: &[u8]) -> [u8; DIGEST_LEN] {
    Sha256::digest(data).into()
}

/// Constant-time equality; different lengths are unequal (the length is not secret).
pub fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && bool::from(a.ct_eq(b))
}

/// HMAC-SHA256 (RFC 2104), written out because it is twenty lines over `sha2`.
pub fn hmac_sha256(key: &[u8], message: &[u8]) -> [u8; DIGEST_LEN] {
    let mut block = [0u8; HMAC_BLOCK];
    if key.len() > HMAC_BLOCK {
        block[..DIGEST_LEN].copy_from_slice(&sha256(key));
    } else {
        block[..key.len()].copy_from_slice(key);
    }
    let mut inner = Sha256::new();
    inner.update(block.map(|b| b ^ 0x36));
    inner.update(message);
    let inner: [u8; DIGEST_LEN] = inner.finalize().into();
    let mut outer = Sha256::new();
    outer.update(block.map(|b| b ^ 0x5c));
    outer.update(inner);
    block.fill(0);
    outer.finalize().into()
}

/// The Cool Farm Tool callback hash: hex SHA-256 of the application key followed by the URL.
pub fn callback_signature_sha256(app_key: &str, url: &str) -> String {
    let mut h = Sha256::new();
    h.update(app_key.as_bytes());
    h.update(url.as_bytes());
    hex::encode(h.finalize())
}

/// The recommended signature: hex HMAC-SHA256 of the URL under the application key. Unlike plain
/// SHA-256 of key ‖ message it does not allow length extension.
pub fn callback_signature_hmac(app_key: &str, url: &str) -> String {
    hex::encode(hmac_sha256(app_key.as_bytes(), url.as_bytes()))
}

/// How a callback URL is signed with an application key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SignatureMethod {
    /// The seed's: hex SHA-256 of key ‖ URL.
    Sha256,
    /// The recommended: hex HMAC-SHA256 of the URL under the key.
    Hmac,
}

impl SignatureMethod {
    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "sha256" => Some(Self::Sha256),
            "hmac" => Some(Self::Hmac),
            _ => None,
        }
    }

    pub fn sign(self, app_key: &str, url: &str) -> String {
        match self {
            Self::Sha256 => callback_signature_sha256(app_key, url),
            Self::Hmac => callback_signature_hmac(app_key, url),
        }
    }
}

/// Constant-time check of a hex signature against the expected one; malformed hex is unequal.
pub fn signature_matches(expected_hex: &str, presented_hex: &str) -> bool {
    let lowered = presented_hex.to_ascii_lowercase();
    ct_eq(expected_hex.as_bytes(), lowered.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sha256_of_abc() {
        assert_eq!(
            hex::encode(sha256(b"abc")),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn hmac_matches_rfc4231_case_2() {
        assert_eq!(
            hex::encode(hmac_sha256(b"Jefe", b"what do ya want for nothing?")),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn hmac_hashes_long_keys_first() {
        // RFC 4231 case 6: a 131-byte key.
        let key = [0xaau8; 131];
        assert_eq!(
            hex::encode(hmac_sha256(
                &key,
                b"Test Using Larger Than Block-Size Key - Hash Key First"
            )),
            "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54"
        );
    }

    #[test]
    fn callback_signature_is_sha256_of_key_then_url() {
        let sig = callback_signature_sha256("appkey", "https://example.org/cb");
        assert_eq!(sig, hex::encode(sha256(b"appkeyhttps://example.org/cb")));
        assert!(signature_matches(&sig, &sig.to_uppercase()));
        assert!(!signature_matches(&sig, &sig[..63]));
        assert!(!signature_matches(&sig, "zz"));
    }

    #[test]
    fn ct_eq_compares_contents_and_length() {
        assert!(ct_eq(b"abc", b"abc"));
        assert!(!ct_eq(b"abc", b"abd"));
        assert!(!ct_eq(b"abc", b"ab"));
    }
}
