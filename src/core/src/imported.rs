//! Keys brought over from another system: the stored hashes pg_apikey adopts, and the public
//! lookup part that lets a bcrypt-hashed key be found without trying every imported hash.
//!
//! SHA-256 imports (hex or base64) are digests of the whole key text, which is exactly what
//! pg_apikey stores: they verify at full speed at once. A bcrypt hash cannot be looked up, so a
//! bcrypt import carries the beginning of the key as the other system showed or stored it (for a
//! Coldflow key, `cfk_` and the first body characters). Verify finds the one import whose lookup
//! part begins the presented key, checks bcrypt once, and then stores the key's SHA-256 instead.
//! Lookup parts never overlap (none is a prefix of another), so at most one candidate exists and
//! every attempt costs exactly one bcrypt.

use std::fmt;

use base64::Engine;

use crate::digest::DIGEST_LEN;
use crate::format::Format;

/// Fewest body characters (after the format's prefix) a lookup part must have: fewer would make
/// overlaps, and so refusals, the rule rather than the exception.
pub const MIN_LOOKUP_BODY: usize = 4;

/// bcrypt reads at most this many bytes of its input: a longer key would verify with any string
/// that shares its first 72 bytes, so such keys are not imported with bcrypt.
pub const BCRYPT_MAX_KEY: usize = 72;

/// The bcrypt costs an import may have. bcrypt allows up to 31, but the one bcrypt a presented
/// key can cause cannot be interrupted (statement_timeout and cancel wait for it): 14 keeps it
/// near a second on current hardware (each step doubles it), and is above what systems issue
/// for API keys (10 to 12).
pub const BCRYPT_COSTS: std::ops::RangeInclusive<u32> = 4..=14;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Algorithm {
    /// SHA-256 of the key text, 64 hexadecimal digits.
    Sha256Hex,
    /// SHA-256 of the key text, base64 (standard or URL-safe alphabet, padded or not).
    Sha256Base64,
    /// bcrypt (`$2a$`, `$2b$`, `$2y$`), cost 04 to 14.
    Bcrypt,
}

impl Algorithm {
    pub fn parse(name: &str) -> Option<Self> {
        match name {
            "sha256" => Some(Self::Sha256Hex),
            "sha256-base64" => Some(Self::Sha256Base64),
            "bcrypt" => Some(Self::Bcrypt),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::Sha256Hex => "sha256",
            Self::Sha256Base64 => "sha256-base64",
            Self::Bcrypt => "bcrypt",
        }
    }
}

/// What an import stores.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Stored {
    /// The SHA-256 digest of the key: stored as any other key's.
    Digest([u8; DIGEST_LEN]),
    /// A bcrypt hash, kept until the key is first presented.
    Bcrypt { hash: String, cost: u32 },
}

/// Why an import was refused. Messages name what is wrong, never the hash or the lookup part.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Refusal {
    UnknownAlgorithm,
    BadHash(&'static str),
    BadLookup(String),
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::UnknownAlgorithm => write!(
                f,
                "unknown hash algorithm: use \"sha256\", \"sha256-base64\" or \"bcrypt\""
            ),
            Self::BadHash(why) => write!(f, "bad hash: {why}"),
            Self::BadLookup(why) => write!(f, "malformed lookup part: {why}"),
        }
    }
}

/// Parse a stored hash of `algorithm`.
pub fn parse_hash(algorithm: Algorithm, text: &str) -> Result<Stored, Refusal> {
    match algorithm {
        Algorithm::Sha256Hex => {
            let mut d = [0u8; DIGEST_LEN];
            hex::decode_to_slice(text, &mut d)
                .map_err(|_| Refusal::BadHash("sha256 needs 64 hexadecimal digits"))?;
            Ok(Stored::Digest(d))
        }
        Algorithm::Sha256Base64 => {
            let decoded = [
                &base64::engine::general_purpose::STANDARD,
                &base64::engine::general_purpose::STANDARD_NO_PAD,
                &base64::engine::general_purpose::URL_SAFE,
                &base64::engine::general_purpose::URL_SAFE_NO_PAD,
            ]
            .iter()
            .find_map(|e| e.decode(text).ok());
            let d: [u8; DIGEST_LEN] =
                decoded
                    .and_then(|v| v.try_into().ok())
                    .ok_or(Refusal::BadHash(
                        "sha256-base64 needs the base64 of 32 bytes",
                    ))?;
            Ok(Stored::Digest(d))
        }
        Algorithm::Bcrypt => {
            let cost = bcrypt_cost(text).ok_or(Refusal::BadHash(
                "bcrypt needs $2a$, $2b$ or $2y$, a two-digit cost from 04 to 14 and 53 characters of salt and hash",
            ))?;
            Ok(Stored::Bcrypt {
                hash: text.to_owned(),
                cost,
            })
        }
    }
}

/// The cost of a well-formed bcrypt hash (`$2b$12$` + 22 salt + 31 hash characters of bcrypt's
/// base64 alphabet), or None.
pub fn bcrypt_cost(text: &str) -> Option<u32> {
    let b = text.as_bytes();
    if b.len() != 60 || b[0] != b'$' || b[1] != b'2' || b[3] != b'$' || b[6] != b'$' {
        return None;
    }
    if !matches!(b[2], b'a' | b'b' | b'y') {
        return None;
    }
    let cost = std::str::from_utf8(&b[4..6]).ok()?.parse::<u32>().ok()?;
    if !b[4..6].iter().all(u8::is_ascii_digit) || !BCRYPT_COSTS.contains(&cost) {
        return None;
    }
    b[7..]
        .iter()
        .all(|&c| c.is_ascii_alphanumeric() || c == b'.' || c == b'/')
        .then_some(cost)
}

/// Check a bcrypt import's lookup part against the format its keys have: it begins with the
/// format's prefix, has at least [`MIN_LOOKUP_BODY`] body characters of the format's alphabet,
/// and is shorter than a whole key (a lookup part that is the whole key would be the key).
pub fn check_lookup(format: &Format, lookup: &str) -> Result<(), Refusal> {
    let Some(body) = lookup.strip_prefix(format.prefix.as_str()) else {
        return Err(Refusal::BadLookup(format!(
            "it must begin with the prefix of format \"{}\"",
            format.name
        )));
    };
    if body.len() < MIN_LOOKUP_BODY {
        return Err(Refusal::BadLookup(format!(
            "it needs at least {MIN_LOOKUP_BODY} characters after the prefix"
        )));
    }
    if body.len() >= format.body_len {
        return Err(Refusal::BadLookup(
            "it must be shorter than the key's random part".into(),
        ));
    }
    if !body.bytes().all(|b| format.alphabet.contains(b)) {
        return Err(Refusal::BadLookup(format!(
            "its characters after the prefix must be of format \"{}\"'s alphabet ({})",
            format.name,
            format.alphabet.name()
        )));
    }
    Ok(())
}

/// The beginnings of `key` that could be an import's lookup part: one per length from `min` to
/// `max` bytes (lookup parts are ASCII, so byte lengths are character lengths).
pub fn lookup_candidates(key: &str, min: usize, max: usize) -> Vec<&str> {
    let max = max.min(key.len().saturating_sub(1));
    (min.max(1)..=max)
        .filter(|&n| key.is_char_boundary(n))
        .map(|n| &key[..n])
        .collect()
}

/// Does `key` match the bcrypt `hash`? One bcrypt at the hash's cost. A key longer than bcrypt
/// reads never matches (it would match every key sharing its first 72 bytes).
pub fn bcrypt_matches(key: &str, hash: &str) -> bool {
    bcrypt::non_truncating_verify(key, hash).unwrap_or(false)
}

/// Spend what a failed bcrypt check of `key` at `cost` would, for a key with no candidate, so
/// that timing does not tell whether a lookup part exists.
pub fn bcrypt_decoy(key: &str, cost: u32) {
    let cost = cost.clamp(*BCRYPT_COSTS.start(), *BCRYPT_COSTS.end());
    let _ = std::hint::black_box(bcrypt::hash_with_salt(key, cost, [0u8; 16]));
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::{Alphabet, Checksum};

    fn cfk() -> Format {
        Format::new("coldflow", "cfk_", Alphabet::Hex, 64, Checksum::None).unwrap()
    }

    #[test]
    fn sha256_hex_and_base64_give_the_same_digest() {
        let d = crate::digest::sha256(b"cfk_0123");
        let hex_text = hex::encode(d);
        let b64 = base64::engine::general_purpose::STANDARD.encode(d);
        let url = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(d);
        for (alg, text) in [
            (Algorithm::Sha256Hex, hex_text.as_str()),
            (Algorithm::Sha256Hex, &hex_text.to_uppercase()),
            (Algorithm::Sha256Base64, &b64),
            (Algorithm::Sha256Base64, &url),
        ] {
            assert_eq!(parse_hash(alg, text), Ok(Stored::Digest(d)), "{alg:?}");
        }
    }

    #[test]
    fn malformed_hashes_are_refused_without_echoing_them() {
        for (alg, text) in [
            (Algorithm::Sha256Hex, "abc"),
            (Algorithm::Sha256Hex, &"g".repeat(64)),
            (Algorithm::Sha256Base64, "AAAA"),
            (Algorithm::Sha256Base64, "not base64 at all!"),
            (Algorithm::Bcrypt, "$2b$12$short"),
            (Algorithm::Bcrypt, &format!("$2x$12${}", "a".repeat(53))),
            (Algorithm::Bcrypt, &format!("$2b$99${}", "a".repeat(53))),
            (Algorithm::Bcrypt, &format!("$2b$03${}", "a".repeat(53))),
            (Algorithm::Bcrypt, &format!("$2b$12${}!", "a".repeat(52))),
        ] {
            let e = parse_hash(alg, text).unwrap_err();
            assert!(matches!(e, Refusal::BadHash(_)));
            assert!(!e.to_string().contains(text));
        }
        assert_eq!(Algorithm::parse("md5"), None);
    }

    #[test]
    fn bcrypt_hashes_of_every_variant_and_cost_verify() {
        for (variant, cost) in [
            (bcrypt::Version::TwoB, 4),
            (bcrypt::Version::TwoA, 5),
            (bcrypt::Version::TwoY, 4),
        ] {
            let key = "cfk_00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";
            let hash = bcrypt::hash_with_result(key, cost)
                .unwrap()
                .format_for_version(variant);
            assert_eq!(
                parse_hash(Algorithm::Bcrypt, &hash),
                Ok(Stored::Bcrypt {
                    hash: hash.clone(),
                    cost
                })
            );
            assert!(bcrypt_matches(key, &hash));
            assert!(!bcrypt_matches(&key.replace("ff", "fe"), &hash));
            // The stored hash is no key.
            assert!(!bcrypt_matches(&hash, &hash));
        }
        // bcrypt reads 72 bytes: a longer string sharing them must not match.
        let long = "k".repeat(80);
        let hash = bcrypt::hash_with_result(&long, 4).unwrap().to_string();
        assert!(!bcrypt_matches(&long, &hash));
        assert!(!bcrypt_matches(&("k".repeat(72) + "zzzzzzzz"), &hash));
        {}
    }

    #[test]
    fn lookup_parts_must_fit_the_format() {
        let f = cfk();
        assert!(check_lookup(&f, "cfk_0a1b").is_ok());
        assert!(check_lookup(&f, &format!("cfk_{}", "a".repeat(63))).is_ok());
        for bad in [
            "cfk_0a1",
            "xyz_0a1b2c",
            "cfk_0a1G2c",
            &format!("cfk_{}", "a".repeat(64)),
        ] {
            assert!(
                matches!(check_lookup(&f, bad), Err(Refusal::BadLookup(_))),
                "{bad}"
            );
        }
    }

    #[test]
    fn candidates_are_the_key_beginnings_within_the_lengths() {
        let key = "cfk_0a1b2c3d";
        assert_eq!(
            lookup_candidates(key, 8, 10),
            vec!["cfk_0a1b", "cfk_0a1b2", "cfk_0a1b2c"]
        );
        // Never the whole key, and nothing for lengths past it.
        assert_eq!(lookup_candidates(key, 11, 40), vec!["cfk_0a1b2c3"]);
        assert!(lookup_candidates("", 1, 5).is_empty());
    }
}
