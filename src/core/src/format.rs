//! Key formats: what a key looks like, how one is generated, and how a presented string is judged.
//!
//! A format is data (the extension keeps them in `apikey.formats`), so this module knows no format by
//! name except the presets in [`builtin`], which reproduce the three seed systems exactly.
//! Every error here describes the *shape* of what was wrong and never carries the input: the input
//! may be a real key pasted into the wrong place.

use std::fmt;

use crate::checksum::{crc32_base62, CRC32_BASE62_LEN};

pub const HEX: &[u8] = b"0123456789abcdef";
pub const BASE62: &[u8] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

/// NIST 800-63B and OWASP ASVS ask for at least 112-128 bits; we refuse formats below 128.
pub const MIN_ENTROPY_BITS: f64 = 128.0;
/// Longest key the input function will look at; anything longer is refused before any other work.
pub const MAX_KEY_LEN: usize = 512;
const MAX_PREFIX_LEN: usize = 32;
const MAX_BODY_LEN: usize = 256;
/// Characters of the body shown in masked displays (`cfk_a1b2…e1f2`).
pub const SHOWN_BODY_CHARS: usize = 4;
pub const SHOWN_LAST_CHARS: usize = 4;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Alphabet {
    /// Lowercase hexadecimal, as `cfk_` keys use.
    Hex,
    /// `[0-9A-Za-z]`, as `ct_live_` and the 43-character Cool Farm Tool keys use.
    Base62,
}

impl Alphabet {
    pub fn parse(name: &str) -> Option<Self> {
        match name {
            "hex" => Some(Self::Hex),
            "base62" => Some(Self::Base62),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::Hex => "hex",
            Self::Base62 => "base62",
        }
    }

    fn symbols(self) -> &'static [u8] {
        match self {
            Self::Hex => HEX,
            Self::Base62 => BASE62,
        }
    }

    pub fn contains(self, b: u8) -> bool {
        match self {
            Self::Hex => b.is_ascii_digit() || (b'a'..=b'f').contains(&b),
            Self::Base62 => b.is_ascii_alphanumeric(),
        }
    }

    pub fn bits_per_symbol(self) -> f64 {
        (self.symbols().len() as f64).log2()
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Checksum {
    None,
    /// Six base62 characters of CRC32 over prefix and body, appended (GitHub token style).
    Crc32Base62,
}

impl Checksum {
    pub fn parse(name: &str) -> Option<Self> {
        match name {
            "none" => Some(Self::None),
            "crc32" => Some(Self::Crc32Base62),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::None => "none",
            Self::Crc32Base62 => "crc32",
        }
    }

    fn len(self) -> usize {
        match self {
            Self::None => 0,
            Self::Crc32Base62 => CRC32_BASE62_LEN,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Format {
    pub name: String,
    pub prefix: String,
    pub alphabet: Alphabet,
    pub body_len: usize,
    pub checksum: Checksum,
}

/// Why a format definition was refused (admin input, so it may be echoed).
#[derive(Clone, Debug, PartialEq)]
pub enum DefinitionError {
    BadName,
    BadPrefix,
    BodyLength { max: usize },
    TooLittleEntropy { bits: f64 },
}

impl fmt::Display for DefinitionError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::BadName => write!(f, "format name must be 1-32 characters of [a-z0-9_]"),
            Self::BadPrefix => write!(
                f,
                "format prefix must be at most {MAX_PREFIX_LEN} characters of [A-Za-z0-9_] and, if not empty, end with \"_\""
            ),
            Self::BodyLength { max } => write!(f, "format body length must be between 1 and {max}"),
            Self::TooLittleEntropy { bits } => write!(
                f,
                "format gives {bits:.1} random bits; at least {MIN_ENTROPY_BITS} are required"
            ),
        }
    }
}

/// Why a presented string is not a well-formed key. Never holds any part of the input.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KeyError {
    Empty,
    TooLong,
    Whitespace,
    UnknownPrefix,
    Length {
        format: String,
        expected: usize,
        got: usize,
    },
    Alphabet {
        format: String,
        alphabet: Alphabet,
    },
    Checksum {
        format: String,
    },
}

impl fmt::Display for KeyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Empty => write!(f, "API key is empty"),
            Self::TooLong => write!(f, "API key is longer than {MAX_KEY_LEN} characters"),
            Self::Whitespace => write!(f, "API key contains whitespace"),
            Self::UnknownPrefix => write!(f, "API key prefix is not recognised"),
            Self::Length { format, expected, got } => write!(
                f,
                "API key has the wrong length for format \"{format}\": expected {expected} characters, got {got}"
            ),
            Self::Alphabet { format, alphabet } => write!(
                f,
                "API key contains a character outside the {} alphabet of format \"{format}\"",
                alphabet.name()
            ),
            Self::Checksum { format } => {
                write!(f, "API key checksum does not match (format \"{format}\")")
            }
        }
    }
}

impl Format {
    pub fn new(
        name: &str,
        prefix: &str,
        alphabet: Alphabet,
        body_len: usize,
        checksum: Checksum,
    ) -> Result<Self, DefinitionError> {
        let name_ok = !name.is_empty()
            && name.len() <= 32
            && name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
        if !name_ok {
            return Err(DefinitionError::BadName);
        }
        // The separator rule keeps prefixes unambiguous: no body alphabet contains "_".
        let prefix_ok = prefix.len() <= MAX_PREFIX_LEN
            && prefix
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_')
            && (prefix.is_empty() || prefix.ends_with('_'));
        if !prefix_ok {
            return Err(DefinitionError::BadPrefix);
        }
        if body_len == 0 || body_len > MAX_BODY_LEN {
            return Err(DefinitionError::BodyLength { max: MAX_BODY_LEN });
        }
        let format = Self {
            name: name.to_owned(),
            prefix: prefix.to_owned(),
            alphabet,
            body_len,
            checksum,
        };
        let bits = format.entropy_bits();
        if bits < MIN_ENTROPY_BITS {
            return Err(DefinitionError::TooLittleEntropy { bits });
        }
        Ok(format)
    }

    pub fn total_len(&self) -> usize {
        self.prefix.len() + self.body_len + self.checksum.len()
    }

    pub fn entropy_bits(&self) -> f64 {
        self.body_len as f64 * self.alphabet.bits_per_symbol()
    }

    /// A new key from `fill`, which must be a CSPRNG (the extension passes the OS generator).
    /// Symbols are drawn by rejection sampling so every symbol is equally likely.
    pub fn generate_with<E>(
        &self,
        mut fill: impl FnMut(&mut [u8]) -> Result<(), E>,
    ) -> Result<String, E> {
        let symbols = self.alphabet.symbols();
        let n = symbols.len();
        let limit = (256 / n) * n;
        let mut key = Vec::with_capacity(self.total_len());
        key.extend_from_slice(self.prefix.as_bytes());
        let mut pool = [0u8; 64];
        while key.len() < self.prefix.len() + self.body_len {
            fill(&mut pool)?;
            for &b in &pool {
                if (b as usize) < limit && key.len() < self.prefix.len() + self.body_len {
                    key.push(symbols[b as usize % n]);
                }
            }
        }
        pool.fill(0);
        if self.checksum == Checksum::Crc32Base62 {
            let sum = crc32_base62(&key);
            key.extend_from_slice(&sum);
        }
        Ok(String::from_utf8(key).expect("alphabets are ASCII"))
    }

    /// A new key from the operating system's CSPRNG.
    pub fn generate(&self) -> Result<String, rand::rngs::SysError> {
        use rand::TryRng;
        let mut rng = rand::rngs::SysRng;
        self.generate_with(|buf| rng.try_fill_bytes(buf))
    }

    /// Is `key` a well-formed key of this format? Prefix, length, alphabet, then checksum.
    pub fn check(&self, key: &str) -> Result<(), KeyError> {
        let bytes = key.as_bytes();
        if !key.starts_with(&self.prefix) {
            return Err(KeyError::UnknownPrefix);
        }
        if bytes.len() != self.total_len() {
            return Err(KeyError::Length {
                format: self.name.clone(),
                expected: self.total_len(),
                got: key.chars().count(),
            });
        }
        let body_end = self.prefix.len() + self.body_len;
        if !bytes[self.prefix.len()..body_end]
            .iter()
            .all(|&b| self.alphabet.contains(b))
        {
            return Err(KeyError::Alphabet {
                format: self.name.clone(),
                alphabet: self.alphabet,
            });
        }
        if self.checksum == Checksum::Crc32Base62 {
            let expected = crc32_base62(&bytes[..body_end]);
            // Not secret (anyone can compute it), so an ordinary comparison is fine.
            if bytes[body_end..] != expected {
                return Err(KeyError::Checksum {
                    format: self.name.clone(),
                });
            }
        }
        Ok(())
    }

    /// The part of a key shown in listings: prefix plus the first few body characters.
    pub fn display_prefix<'k>(&self, key: &'k str) -> &'k str {
        &key[..(self.prefix.len() + SHOWN_BODY_CHARS).min(key.len())]
    }
}

/// The last characters of a key, shown in listings so a user can tell keys apart.
pub fn last_chars(key: &str) -> &str {
    &key[key.len().saturating_sub(SHOWN_LAST_CHARS)..]
}

/// Which format does `key` claim to be, and is it well-formed in it?
///
/// The longest matching prefix wins; a key matching no prefix is judged against the prefix-less
/// formats of its length (the Cool Farm Tool keys have no prefix).
pub fn detect<'f>(formats: &'f [Format], key: &str) -> Result<&'f Format, KeyError> {
    if key.is_empty() {
        return Err(KeyError::Empty);
    }
    if key.len() > MAX_KEY_LEN {
        return Err(KeyError::TooLong);
    }
    if key.bytes().any(|b| b.is_ascii_whitespace()) {
        return Err(KeyError::Whitespace);
    }
    let prefixed = formats
        .iter()
        .filter(|f| !f.prefix.is_empty() && key.starts_with(&f.prefix))
        .max_by_key(|f| f.prefix.len());
    if let Some(format) = prefixed {
        return format.check(key).map(|()| format);
    }
    let mut bare = formats.iter().filter(|f| f.prefix.is_empty());
    let first_bare = bare.clone().next();
    match bare.find(|f| f.total_len() == key.len()) {
        Some(format) => format.check(key).map(|()| format),
        None if key.contains('_') => Err(KeyError::UnknownPrefix),
        None => match first_bare {
            Some(format) => format.check(key).map(|()| format),
            None => Err(KeyError::UnknownPrefix),
        },
    }
}

/// The presets, matching the seed systems exactly, plus one with a checksum.
pub fn builtin() -> Vec<(Format, &'static str)> {
    let f = |name, prefix, alphabet, len, checksum| {
        Format::new(name, prefix, alphabet, len, checksum).expect("presets are valid")
    };
    vec![
        (
            f("cfk", "cfk_", Alphabet::Hex, 64, Checksum::None),
            "Coldflow: cfk_ + 64 lowercase hex, 256 random bits, 68 characters",
        ),
        (
            f("ct_live", "ct_live_", Alphabet::Base62, 43, Checksum::None),
            "Live keys: ct_live_ + 43 base62 characters, 256 random bits",
        ),
        (
            f("ct_test", "ct_test_", Alphabet::Base62, 43, Checksum::None),
            "Test keys: ct_test_ + 43 base62 characters, 256 random bits",
        ),
        (
            f("cft", "", Alphabet::Base62, 43, Checksum::None),
            "Cool Farm Tool: 43 characters [A-Za-z0-9], no prefix, 256 random bits",
        ),
        (
            f("pak", "pak_", Alphabet::Base62, 43, Checksum::Crc32Base62),
            "pak_ + 43 base62 characters + 6-character CRC32 checksum; typos and stray text are refused without a lookup",
        ),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    fn presets() -> Vec<Format> {
        builtin().into_iter().map(|(f, _)| f).collect()
    }

    fn preset(name: &str) -> Format {
        presets().into_iter().find(|f| f.name == name).unwrap()
    }

    #[test]
    fn presets_match_the_seed_documents() {
        let cfk = preset("cfk").generate().unwrap();
        assert_eq!(cfk.len(), 68);
        assert!(cfk.starts_with("cfk_"));
        assert!(cfk[4..].bytes().all(|b| HEX.contains(&b)));
        assert_eq!(preset("cfk").entropy_bits(), 256.0);

        let live = preset("ct_live").generate().unwrap();
        assert!(live.starts_with("ct_live_"));
        assert!(preset("ct_live").entropy_bits() >= 256.0);

        let cft = preset("cft").generate().unwrap();
        assert_eq!(cft.len(), 43);
        assert!(cft.bytes().all(|b| b.is_ascii_alphanumeric()));
        assert!(preset("cft").entropy_bits() >= 256.0);

        let pak = preset("pak").generate().unwrap();
        assert_eq!(pak.len(), 4 + 43 + 6);
    }

    #[test]
    fn generated_keys_are_detected_as_their_own_format() {
        let formats = presets();
        for f in &formats {
            for _ in 0..200 {
                let key = f.generate().unwrap();
                assert_eq!(detect(&formats, &key).unwrap().name, f.name);
            }
        }
    }

    #[test]
    fn a_hundred_thousand_keys_have_no_duplicates() {
        let f = preset("cft");
        let keys: HashSet<String> = (0..100_000).map(|_| f.generate().unwrap()).collect();
        assert_eq!(keys.len(), 100_000);
    }

    #[test]
    fn symbols_are_uniform_enough() {
        // Rejection sampling must not favour the low symbols the way `b % 62` would.
        let f = preset("cft");
        let mut counts = [0usize; 62];
        for _ in 0..5_000 {
            for b in f.generate().unwrap().bytes() {
                counts[BASE62.iter().position(|&s| s == b).unwrap()] += 1;
            }
        }
        let expected = 5_000.0 * 43.0 / 62.0;
        for c in counts {
            assert!((c as f64 - expected).abs() < expected * 0.1, "{counts:?}");
        }
    }

    #[test]
    fn each_kind_of_malformation_is_named() {
        let formats = presets();
        let cfk = preset("cfk").generate().unwrap();
        assert_eq!(detect(&formats, ""), Err(KeyError::Empty));
        assert_eq!(detect(&formats, "xyz_abc"), Err(KeyError::UnknownPrefix));
        assert!(matches!(
            detect(&formats, &cfk[..67]),
            Err(KeyError::Length {
                expected: 68,
                got: 67,
                ..
            })
        ));
        let upper = format!("cfk_{}", cfk[4..].to_uppercase());
        assert!(matches!(
            detect(&formats, &upper),
            Err(KeyError::Alphabet {
                alphabet: Alphabet::Hex,
                ..
            })
        ));
        assert_eq!(
            detect(&formats, &format!("{cfk} ")),
            Err(KeyError::Whitespace)
        );
        assert_eq!(detect(&formats, &"a".repeat(600)), Err(KeyError::TooLong));
        // A bare 42-character string is judged against the prefix-less format's length.
        assert!(matches!(
            detect(&formats, &"a".repeat(42)),
            Err(KeyError::Length { expected: 43, .. })
        ));
    }

    #[test]
    fn one_changed_character_fails_the_checksum() {
        let formats = presets();
        let key = preset("pak").generate().unwrap();
        for i in 4..key.len() {
            let mut bytes = key.clone().into_bytes();
            bytes[i] = if bytes[i] == b'a' { b'b' } else { b'a' };
            let typo = String::from_utf8(bytes).unwrap();
            assert_eq!(
                detect(&formats, &typo),
                Err(KeyError::Checksum {
                    format: "pak".into()
                }),
                "position {i}"
            );
        }
    }

    #[test]
    fn errors_never_contain_the_input() {
        let formats = presets();
        let key = preset("cfk").generate().unwrap();
        let inputs = [
            key[..60].to_string(),
            format!("{key}0"),
            format!("zz{}", &key[4..]),
            // A character outside the alphabet (replacing one that may not occur would leave a
            // valid key about 1.6% of the time).
            format!("cfk_G{}", &key[5..]),
            format!("pak_{}", &key[4..53]),
        ];
        for input in inputs {
            let msg = detect(&formats, &input).unwrap_err().to_string();
            for window in input.as_bytes().windows(8) {
                let w = std::str::from_utf8(window).unwrap();
                assert!(!msg.contains(w), "{msg}");
            }
        }
    }

    #[test]
    fn weak_or_ambiguous_formats_are_refused() {
        assert!(matches!(
            Format::new("short", "s_", Alphabet::Hex, 16, Checksum::None),
            Err(DefinitionError::TooLittleEntropy { .. })
        ));
        assert_eq!(
            Format::new("x", "no-sep", Alphabet::Hex, 64, Checksum::None),
            Err(DefinitionError::BadPrefix)
        );
        assert_eq!(
            Format::new("Bad Name", "b_", Alphabet::Hex, 64, Checksum::None),
            Err(DefinitionError::BadName)
        );
        assert!(Format::new("min", "m_", Alphabet::Hex, 32, Checksum::None).is_ok());
    }

    #[test]
    fn the_longest_prefix_wins() {
        let mut formats = presets();
        formats.push(Format::new("ct", "ct_", Alphabet::Hex, 64, Checksum::None).unwrap());
        let live = preset("ct_live").generate().unwrap();
        assert_eq!(detect(&formats, &live).unwrap().name, "ct_live");
    }

    #[test]
    fn masked_parts() {
        let f = preset("cfk");
        let key = f.generate().unwrap();
        assert_eq!(f.display_prefix(&key), &key[..8]);
        assert_eq!(last_chars(&key), &key[64..]);
    }
}

/// Fill `buf` from the operating system's CSPRNG.
pub fn os_random(buf: &mut [u8]) -> Result<(), rand::rngs::SysError> {
    use rand::TryRng;
    rand::rngs::SysRng.try_fill_bytes(buf)
}

/// Is this `Authorization` header a bearer token that PostgREST must have verified as a JWT?
/// PostgREST takes the token after `Bearer` and whitespace (Latin-1 `isSpace`: space, \t \n \v
/// \f \r and 0xA0), treats an empty token as no JWT, and refuses a token it cannot verify before
/// any pre-request runs. So only a non-empty token of compact JWT shape (three non-empty base64url
/// parts) means "authenticated by PostgREST"; anything else is an anonymous request. Works on
/// bytes: header text is untrusted and need not be ASCII.
pub fn is_bearer_jwt(header: &[u8]) -> bool {
    bearer_jwt_parts(header).is_some()
}

/// The three dot-separated parts of a bearer JWT header (see `is_bearer_jwt`).
fn bearer_jwt_parts(header: &[u8]) -> Option<[&[u8]; 3]> {
    let is_space = |b: &u8| matches!(b, b' ' | b'\t' | b'\n' | 0x0b | 0x0c | b'\r' | 0xa0);
    let rest = header
        .get(..6)
        .filter(|p| p.eq_ignore_ascii_case(b"bearer"))
        .map(|_| &header[6..])?;
    if !rest.first().is_some_and(is_space) {
        return None;
    }
    let token: &[u8] = {
        let start = rest.iter().position(|b| !is_space(b)).unwrap_or(rest.len());
        let end = rest
            .iter()
            .rposition(|b| !is_space(b))
            .map_or(start, |e| e + 1);
        &rest[start..end.max(start)]
    };
    let parts: Vec<&[u8]> = token.split(|&b| b == b'.').collect();
    let ok = parts.len() == 3
        && parts.iter().all(|p| {
            !p.is_empty()
                && p.iter()
                    .all(|b| b.is_ascii_alphanumeric() || *b == b'-' || *b == b'_')
        });
    ok.then(|| [parts[0], parts[1], parts[2]])
}

/// The payload (the middle part, base64url-decoded) of a bearer JWT header, unverified: only
/// good for comparing with what PostgREST says it verified.
pub fn bearer_jwt_payload(header: &[u8]) -> Option<Vec<u8>> {
    use base64::Engine;
    let [_, payload, _] = bearer_jwt_parts(header)?;
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .ok()
}

#[cfg(test)]
mod bearer_tests {
    use super::{bearer_jwt_payload, is_bearer_jwt};

    #[test]
    fn a_payload_is_decoded_only_from_a_jwt_shaped_bearer() {
        assert_eq!(
            bearer_jwt_payload(b"Bearer eyJh.eyJyb2xlIjoieCJ9.c2ln").as_deref(),
            Some(&b"{\"role\":\"x\"}"[..])
        );
        assert_eq!(bearer_jwt_payload(b"Basic eyJh.eyJi.c2ln"), None);
        assert_eq!(bearer_jwt_payload(b"Bearer a.%%.c"), None);
    }

    #[test]
    fn only_a_jwt_shaped_token_counts() {
        assert!(is_bearer_jwt(b"Bearer eyJh.eyJi.c2ln"));
        assert!(is_bearer_jwt(b"bearer  eyJh.eyJi.c2ln "));
        for no in [
            &b"Bearer "[..],
            b"Bearer \x0b",
            b"Bearer \x0c\t ",
            b"Bearer",
            b"Bearer ct_live_abc",
            b"Bearer a..b",
            b"Bearer a.b.c.d",
            b"Bearer\xc2\xa0eyJh.eyJi.c2ln",
            b"Beare",
            b"Basic eyJh.eyJi.c2ln",
            "Beareré-xyz".as_bytes(),
        ] {
            assert!(!is_bearer_jwt(no), "{no:?}");
        }
    }
}
