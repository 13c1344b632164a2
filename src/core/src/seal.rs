//! Sealing recoverable keys: XChaCha20-Poly1305 under a 256-bit server key held outside the
//! database tables. Only formats an administrator marks recoverable are sealed (the Cool Farm Tool
//! seed lets users look their key up again, and callback signatures need the app key).
//!
//! The associated data is the key's SHA-256 digest, so a sealed blob cannot be moved to another
//! row; opening checks the digest of the plaintext as well. The 24-byte nonce is random, which
//! XChaCha's nonce size makes safe.

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};

use crate::digest::{ct_eq, sha256};

const NONCE_LEN: usize = 24;

#[derive(Debug, PartialEq, Eq)]
pub enum SealError {
    /// The server key is not 64 hexadecimal characters.
    BadServerKey,
    Random,
    /// Wrong server key, or the blob does not belong to this row.
    Open,
}

/// Parse the server key: 64 hex characters.
pub fn server_key(hex_text: &str) -> Result<[u8; 32], SealError> {
    let mut key = [0u8; 32];
    hex::decode_to_slice(hex_text.trim(), &mut key).map_err(|_| SealError::BadServerKey)?;
    Ok(key)
}

pub fn seal(server_key: &[u8; 32], plaintext: &str) -> Result<Vec<u8>, SealError> {
    use rand::TryRng;
    let mut nonce = [0u8; NONCE_LEN];
    rand::rngs::SysRng
        .try_fill_bytes(&mut nonce)
        .map_err(|_| SealError::Random)?;
    let digest = sha256(plaintext.as_bytes());
    let cipher = XChaCha20Poly1305::new(server_key.into());
    let sealed = cipher
        .encrypt(
            XNonce::from_slice(&nonce),
            Payload {
                msg: plaintext.as_bytes(),
                aad: &digest,
            },
        )
        .map_err(|_| SealError::Open)?;
    let mut out = nonce.to_vec();
    out.extend_from_slice(&sealed);
    Ok(out)
}

/// Open a blob sealed for the row whose digest is `digest`.
pub fn open(server_key: &[u8; 32], blob: &[u8], digest: &[u8]) -> Result<String, SealError> {
    if blob.len() <= NONCE_LEN {
        return Err(SealError::Open);
    }
    let cipher = XChaCha20Poly1305::new(server_key.into());
    let plain = cipher
        .decrypt(
            XNonce::from_slice(&blob[..NONCE_LEN]),
            Payload {
                msg: &blob[NONCE_LEN..],
                aad: digest,
            },
        )
        .map_err(|_| SealError::Open)?;
    if !ct_eq(&sha256(&plain), digest) {
        return Err(SealError::Open);
    }
    String::from_utf8(plain).map_err(|_| SealError::Open)
}

#[cfg(test)]
mod tests {
    use super::*;

    const K: &str = "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";

    #[test]
    fn round_trip_and_binding_to_the_row() {
        let k = server_key(K).unwrap();
        let blob = seal(&k, "OWyHsuoAk74FLDGIGqrgWVBsffG32ndAhsyO1jeuU34").unwrap();
        let digest = sha256(b"OWyHsuoAk74FLDGIGqrgWVBsffG32ndAhsyO1jeuU34");
        assert_eq!(
            open(&k, &blob, &digest).unwrap(),
            "OWyHsuoAk74FLDGIGqrgWVBsffG32ndAhsyO1jeuU34"
        );
        // Another row's digest, another server key, or a flipped bit: refused.
        assert_eq!(open(&k, &blob, &sha256(b"other")), Err(SealError::Open));
        let other = server_key(&K.replace('0', "f")).unwrap();
        assert_eq!(open(&other, &blob, &digest), Err(SealError::Open));
        let mut bad = blob.clone();
        *bad.last_mut().unwrap() ^= 1;
        assert_eq!(open(&k, &bad, &digest), Err(SealError::Open));
    }

    #[test]
    fn the_blob_never_contains_the_plaintext_and_nonces_differ() {
        let k = server_key(K).unwrap();
        let a = seal(&k, "secret-secret-secret").unwrap();
        let b = seal(&k, "secret-secret-secret").unwrap();
        assert_ne!(a, b);
        assert!(!a.windows(6).any(|w| w == b"secret"));
    }

    #[test]
    fn server_key_must_be_64_hex() {
        assert_eq!(server_key("abc"), Err(SealError::BadServerKey));
        assert_eq!(server_key(&"z".repeat(64)), Err(SealError::BadServerKey));
    }
}
