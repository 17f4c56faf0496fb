//! The scanner form of a token: `<prefix>_<jws>_<checksum>`, which secret
//! scanners (GitHub's secret-scanning partner program, gitleaks,
//! trufflehog) can match by pattern and confirm offline, like GitHub's own
//! `ghp_` tokens.
//!
//! - `prefix`: `[a-z][a-z0-9]{1,15}`, chosen per deployment (`token_prefix`
//!   in the server's configuration, e.g. `veto`);
//! - `jws`: the token exactly as in its plain form (JWS compact, EdDSA), so
//!   stripping the prefix and checksum gives a standard JWT;
//! - `checksum`: CRC-32 (IEEE 802.3, the zlib/PNG one) of the bytes of
//!   `<prefix>_<jws>`, written as 6 base62 digits (`0-9A-Za-z` in that
//!   order, most significant first, left-padded with `0`).
//!
//! The checksum is no security measure (the signature is): it lets a
//! scanner drop strings that merely look like tokens without asking anyone,
//! and lets every verifier refuse a mangled token as malformed before any
//! signature work. The prefix is not covered by the signature: a token
//! re-wrapped under another prefix (with a correct checksum) is the same
//! token.
//!
//! A plain JWS never looks prefixed: a veto JWS starts with `eyJ` (base64url
//! of `{"`), and `J` can be neither a prefix character nor `_`.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// Longest prefix, in characters.
pub const PREFIX_MAX_LEN: usize = 16;

/// Characters of the checksum.
pub const CHECKSUM_LEN: usize = 6;

const BASE62: &[u8; 62] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

/// A regular expression (Rust `regex`, RE2 and PCRE syntax alike) that
/// matches scanner-form veto tokens under any prefix. The payload and
/// header start with `eyJ`; the signature is 64 bytes, 86 base64url
/// characters. docs/operations.md quotes it (a unit test keeps them equal).
pub const SCANNER_REGEX: &str = r"\b[a-z][a-z0-9]{1,15}_eyJ[A-Za-z0-9_-]*\.eyJ[A-Za-z0-9_-]*\.[A-Za-z0-9_-]{86}_[0-9A-Za-z]{6}\b";

/// Why a string is not a well-formed scanner-form token, or a prefix is
/// unusable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// The prefix is not `[a-z][a-z0-9]{1,15}`.
    #[error(
        "token prefix must be a lower-case letter followed by 1 to 15 lower-case letters or digits"
    )]
    BadPrefix,
    /// Prefixed, but no `_<checksum>` follows the JWS.
    #[error("prefixed token has no checksum")]
    NoChecksum,
    /// The checksum is not 6 base62 characters or does not match.
    #[error("prefixed token's checksum does not match")]
    BadChecksum,
}

impl Error {
    /// The reason as a static string (for [`crate::token::Error::Malformed`]).
    pub fn reason(&self) -> &'static str {
        match self {
            Error::BadPrefix => "invalid token prefix",
            Error::NoChecksum => "prefixed token has no checksum",
            Error::BadChecksum => "prefixed token's checksum does not match",
        }
    }
}

/// A validated token prefix.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Prefix(String);

impl Prefix {
    /// Checks `p` against `[a-z][a-z0-9]{1,15}`.
    pub fn new(p: &str) -> Result<Self, Error> {
        if is_prefix(p) {
            Ok(Self(p.to_owned()))
        } else {
            Err(Error::BadPrefix)
        }
    }

    /// The prefix itself.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// `jws` in the scanner form under this prefix.
    pub fn wrap(&self, jws: &str) -> String {
        let mut out = String::with_capacity(self.0.len() + jws.len() + 2 + CHECKSUM_LEN);
        out.push_str(&self.0);
        out.push('_');
        out.push_str(jws);
        let sum = checksum(out.as_bytes());
        out.push('_');
        // BASE62 is ASCII.
        out.extend(sum.iter().map(|&b| char::from(b)));
        out
    }

    /// [`SCANNER_REGEX`] for this prefix only (the prefix is plain
    /// lower-case letters and digits: nothing to escape).
    pub fn regex(&self) -> String {
        format!(
            r"\b{}_eyJ[A-Za-z0-9_-]*\.eyJ[A-Za-z0-9_-]*\.[A-Za-z0-9_-]{{86}}_[0-9A-Za-z]{{6}}\b",
            self.0
        )
    }
}

impl fmt::Display for Prefix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl FromStr for Prefix {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self, Error> {
        Self::new(s)
    }
}

impl TryFrom<String> for Prefix {
    type Error = Error;
    fn try_from(s: String) -> Result<Self, Error> {
        Self::new(&s)
    }
}

impl From<Prefix> for String {
    fn from(p: Prefix) -> String {
        p.0
    }
}

/// `jws` as a server hands it out: in the scanner form under `prefix`, or
/// unchanged without one.
pub fn issue_form(prefix: Option<&Prefix>, jws: String) -> String {
    match prefix {
        Some(p) => p.wrap(&jws),
        None => jws,
    }
}

/// Whether `p` is `[a-z][a-z0-9]{1,15}`.
pub fn is_prefix(p: &str) -> bool {
    let b = p.as_bytes();
    (2..=PREFIX_MAX_LEN).contains(&b.len())
        && b[0].is_ascii_lowercase()
        && b[1..]
            .iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
}

/// CRC-32 of `data` as 6 base62 digits (2^32 < 62^6).
pub fn checksum(data: &[u8]) -> [u8; CHECKSUM_LEN] {
    let mut n = crc32fast::hash(data);
    let mut out = [b'0'; CHECKSUM_LEN];
    for slot in out.iter_mut().rev() {
        *slot = BASE62[(n % 62) as usize];
        n /= 62;
    }
    out
}

/// The JWS inside `token`: `token` itself when it is not in the scanner
/// form, else the middle part once the checksum matched. Only a string
/// whose text before its first `_` is a valid prefix counts as prefixed.
pub fn strip(token: &str) -> Result<&str, Error> {
    let Some((head, _)) = token.split_once('_') else {
        return Ok(token);
    };
    if !is_prefix(head) {
        return Ok(token);
    }
    let Some((body, sum)) = token.rsplit_once('_') else {
        return Ok(token);
    };
    if body.len() <= head.len() + 1 {
        return Err(Error::NoChecksum);
    }
    if sum.len() != CHECKSUM_LEN || checksum(body.as_bytes()) != sum.as_bytes() {
        return Err(Error::BadChecksum);
    }
    Ok(&body[head.len() + 1..])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::token;
    use crate::{Claims, Jti, Kid};
    use ed25519_dalek::SigningKey;
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    fn prefix(s: &str) -> Prefix {
        Prefix::new(s).unwrap()
    }

    #[test]
    fn checksum_is_crc32_in_six_base62_digits() {
        // The CRC-32 check value: crc32("123456789") = 0xCBF43926.
        assert_eq!(&checksum(b"123456789"), b"3jZRME");
        assert_eq!(&checksum(b""), b"000000");
        assert_eq!(&checksum(b"veto_x"), b"4Z0GfZ");
        assert_eq!(prefix("veto").wrap("x"), "veto_x_4Z0GfZ");
    }

    #[test]
    fn prefixes() {
        for ok in ["ab", "veto", "v1", "a234567890123456"] {
            assert!(Prefix::new(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "a",
            "1a",
            "Veto",
            "ve_to",
            "ve-to",
            "a2345678901234567",
            "vé",
        ] {
            assert_eq!(Prefix::new(bad), Err(Error::BadPrefix), "{bad}");
        }
        let p: Prefix = toml_like("veto").unwrap();
        assert_eq!(p.as_str(), "veto");
        assert!(toml_like("Veto").is_err());
    }

    fn toml_like(s: &str) -> Result<Prefix, serde_json::Error> {
        serde_json::from_value(serde_json::Value::String(s.into()))
    }

    #[test]
    fn strip_plain_and_prefixed() {
        assert_eq!(strip("eyJa.eyJb.c_d"), Ok("eyJa.eyJb.c_d"));
        assert_eq!(strip(""), Ok(""));
        let w = prefix("veto").wrap("eyJa.eyJb.c_d");
        assert_eq!(strip(&w), Ok("eyJa.eyJb.c_d"));
        assert_eq!(strip("veto_"), Err(Error::NoChecksum));
        assert_eq!(strip("veto_abc"), Err(Error::NoChecksum));
        assert_eq!(strip("veto_eyJa.eyJb.c_"), Err(Error::BadChecksum));
        assert_eq!(strip("veto_eyJa.eyJb.c_0000000"), Err(Error::BadChecksum));
        // Multi-byte characters never panic (no slicing inside one).
        assert!(strip("veto_é_ü").is_err());
        assert!(strip("veto_ééééé_éééééé").is_err());
    }

    fn claims(rng: &mut StdRng) -> Claims {
        let jti = Jti(rng.gen());
        let iat = rng.gen_range(1_000_000..2_000_000_000);
        let sub_len = rng.gen_range(1..40);
        let sub: String = (0..sub_len)
            .map(|_| char::from(rng.gen_range(b'!'..=b'~')))
            .collect();
        Claims {
            jti,
            sub,
            scope: "read write".into(),
            iat,
            nbf: iat,
            exp: iat + rng.gen_range(1..86_400),
            fam: jti,
            aud: rng.gen_bool(0.5).then(|| "api".to_string()),
            rev: rng.gen(),
        }
    }

    fn random_prefix(rng: &mut StdRng) -> Prefix {
        const HEAD: &[u8] = b"abcdefghijklmnopqrstuvwxyz";
        const TAIL: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
        let n = rng.gen_range(1..PREFIX_MAX_LEN);
        let mut s = String::new();
        s.push(char::from(HEAD[rng.gen_range(0..HEAD.len())]));
        for _ in 0..n {
            s.push(char::from(TAIL[rng.gen_range(0..TAIL.len())]));
        }
        prefix(&s)
    }

    /// Property-style, over 2,000 random tokens, prefixes and keys: the
    /// scanner regex finds exactly the token in surrounding text (and never
    /// a plain JWS), the token parses to the same claims and verifies, and
    /// every single-character corruption is refused as malformed by the
    /// codec (the checksum catches each one inside the JWS; CRC-32 detects
    /// every burst of up to 32 bits) before any signature check.
    #[test]
    fn scanner_regex_matches_and_checksum_rejects_corruption() {
        let any = regex::Regex::new(SCANNER_REGEX).unwrap();
        let alphabet: Vec<u8> =
            b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_.".to_vec();
        let mut rng = StdRng::seed_from_u64(0x5ca9);
        for round in 0..2_000 {
            let key = SigningKey::from_bytes(&rng.gen());
            let kid = Kid(rng.gen());
            let c = claims(&mut rng);
            let p = random_prefix(&mut rng);
            let jws = token::encode(&c, kid, &key);
            let t = p.wrap(&jws);
            // Found, whole, in text; the per-prefix regex too.
            let text = format!("config:\n  api_token: \"{t}\" # prod\n");
            let m = any.find(&text).map(|m| m.as_str());
            assert_eq!(m, Some(t.as_str()));
            if round < 200 {
                // (compiling a regex per round dominates the run time)
                let own = regex::Regex::new(&p.regex()).unwrap();
                assert_eq!(own.find(&text).map(|m| m.as_str()), Some(t.as_str()));
            }
            assert!(!any.is_match(&jws), "plain JWS matched: {jws}");
            // Parses to the same token, both forms.
            let parsed = token::parse(&t, 4096).unwrap();
            assert_eq!((parsed.kid, &parsed.claims), (kid, &c));
            parsed.verify_signature(&key.verifying_key()).unwrap();
            assert_eq!(
                parsed.signing_input,
                token::parse(&jws, 4096).unwrap().signing_input
            );
            // One character replaced by another anywhere: malformed.
            let mut bad = t.clone().into_bytes();
            let i = rng.gen_range(0..bad.len());
            let was = bad[i];
            while bad[i] == was {
                bad[i] = alphabet[rng.gen_range(0..alphabet.len())];
            }
            let bad = String::from_utf8(bad).unwrap();
            assert!(
                matches!(token::parse(&bad, 4096), Err(token::Error::Malformed(_))),
                "corruption at {i} of {t} not refused as malformed"
            );
            // Inside the JWS or the checksum, it is the checksum that says so.
            let jws_start = p.as_str().len() + 1;
            if (i >= jws_start && i < t.len() - CHECKSUM_LEN - 1) || i >= t.len() - CHECKSUM_LEN {
                assert_eq!(strip(&bad), Err(Error::BadChecksum), "at {i} of {t}");
            }
            // Two neighbours swapped (a 16-bit burst): also caught.
            let j = rng.gen_range(jws_start..t.len() - 1);
            let mut sw = t.clone().into_bytes();
            if sw[j] != sw[j + 1] {
                sw.swap(j, j + 1);
                let sw = String::from_utf8(sw).unwrap();
                assert!(token::parse(&sw, 4096).is_err(), "swap at {j} of {t}");
            }
        }
    }

    /// docs/operations.md quotes the regex exactly.
    #[test]
    fn the_documented_regex_is_this_one() {
        let doc = include_str!("../../../docs/operations.md");
        assert!(
            doc.contains(SCANNER_REGEX),
            "docs/operations.md must quote scan::SCANNER_REGEX"
        );
    }
}
