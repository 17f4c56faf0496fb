//! JWS compact tokens signed with Ed25519 (`alg: EdDSA`, RFC 8037).
//!
//! The codec is written against `ed25519-dalek` directly rather than through a
//! general JOSE library: veto accepts exactly one algorithm and one header
//! shape, and the edge's hot path needs the pieces separately (the signing
//! input and signature for its signature cache, the claims for revocation
//! checks) with strict size limits applied before any decoding.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use ed25519_dalek::{Signature, Signer, SigningKey, Verifier, VerifyingKey};
use serde::{Deserialize, Serialize};

use crate::{Claims, Kid};

/// Why a token was refused by the codec or the claim checks.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// Larger than the configured limit.
    #[error("token is {0} bytes, over the limit")]
    Oversize(usize),
    /// Not three base64url parts of valid JSON with the expected fields.
    #[error("malformed token: {0}")]
    Malformed(&'static str),
    /// `alg` is not EdDSA, or `typ` is not JWT.
    #[error("unsupported header: {0}")]
    UnsupportedHeader(&'static str),
    /// `kid` names no key this verifier accepts.
    #[error("unknown signing key {0}")]
    UnknownKey(Kid),
    /// The signature does not verify under the named key.
    #[error("bad signature")]
    BadSignature,
    /// `now >= exp`.
    #[error("expired at {0}")]
    Expired(i64),
    /// `now + leeway < nbf` (or `iat`).
    #[error("not valid before {0}")]
    NotYetValid(i64),
    /// The verifier required an audience the token does not name.
    #[error("wrong audience")]
    WrongAudience,
    /// The token is for an audience and the verifier named none: a token
    /// with `aud` is accepted only by a verifier that names it.
    #[error("token is for a named audience; the verifier must name it")]
    AudienceRequired,
    /// A required scope is not granted.
    #[error("missing required scope")]
    InsufficientScope,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Header {
    alg: String,
    typ: String,
    kid: Kid,
}

/// A token split and decoded, signature not yet checked.
#[derive(Debug, Clone)]
pub struct Parsed<'a> {
    /// Key id from the header.
    pub kid: Kid,
    /// The decoded claims.
    pub claims: Claims,
    /// `header.payload`, the bytes the signature covers.
    pub signing_input: &'a [u8],
    /// The 64-byte signature.
    pub signature: [u8; 64],
}

impl Parsed<'_> {
    /// Checks the signature under `key`.
    pub fn verify_signature(&self, key: &VerifyingKey) -> Result<(), Error> {
        let sig = Signature::from_bytes(&self.signature);
        key.verify(self.signing_input, &sig)
            .map_err(|_| Error::BadSignature)
    }
}

/// Signs `claims` with `key` under `kid`.
pub fn encode(claims: &Claims, kid: Kid, key: &SigningKey) -> String {
    let header = Header {
        alg: "EdDSA".into(),
        typ: "JWT".into(),
        kid,
    };
    // Serialising these plain structs cannot fail.
    let h = serde_json::to_vec(&header).unwrap_or_default();
    let p = serde_json::to_vec(claims).unwrap_or_default();
    let mut out = String::with_capacity(512);
    URL_SAFE_NO_PAD.encode_string(h, &mut out);
    out.push('.');
    URL_SAFE_NO_PAD.encode_string(p, &mut out);
    let sig = key.sign(out.as_bytes());
    out.push('.');
    URL_SAFE_NO_PAD.encode_string(sig.to_bytes(), &mut out);
    out
}

/// Splits and decodes a token, plain or in the scanner form
/// ([`crate::scan`]), without checking its signature or times.
pub fn parse(token: &str, max_token_bytes: usize) -> Result<Parsed<'_>, Error> {
    if token.len() > max_token_bytes {
        return Err(Error::Oversize(token.len()));
    }
    // The scanner form `<prefix>_<jws>_<checksum>` (crate::scan): a bad
    // checksum is malformed, before any decoding or signature work.
    let token = crate::scan::strip(token).map_err(|e| Error::Malformed(e.reason()))?;
    let mut parts = token.splitn(3, '.');
    let (Some(h64), Some(p64), Some(s64)) = (parts.next(), parts.next(), parts.next()) else {
        return Err(Error::Malformed("expected three dot-separated parts"));
    };
    if s64.contains('.') {
        return Err(Error::Malformed("expected three dot-separated parts"));
    }
    let h = URL_SAFE_NO_PAD
        .decode(h64)
        .map_err(|_| Error::Malformed("header is not base64url"))?;
    let header: Header = serde_json::from_slice(&h)
        .map_err(|_| Error::Malformed("header is not a veto JWS header"))?;
    if header.alg != "EdDSA" {
        return Err(Error::UnsupportedHeader("alg must be EdDSA"));
    }
    if header.typ != "JWT" {
        return Err(Error::UnsupportedHeader("typ must be JWT"));
    }
    let p = URL_SAFE_NO_PAD
        .decode(p64)
        .map_err(|_| Error::Malformed("payload is not base64url"))?;
    let claims: Claims =
        serde_json::from_slice(&p).map_err(|_| Error::Malformed("payload is not veto claims"))?;
    let mut signature = [0u8; 64];
    match URL_SAFE_NO_PAD.decode_slice(s64, &mut signature) {
        Ok(64) => {}
        _ => return Err(Error::Malformed("signature is not 64 bytes of base64url")),
    }
    let signing_input = &token.as_bytes()[..h64.len() + 1 + p64.len()];
    Ok(Parsed {
        kid: header.kid,
        claims,
        signing_input,
        signature,
    })
}

/// What a verifier requires beyond a good signature.
#[derive(Debug, Clone, Default)]
pub struct Requirements<'a> {
    /// The token's `aud` must equal this, if set.
    pub audience: Option<&'a str>,
    /// Every one of these scopes must be granted.
    pub scopes: &'a [String],
}

/// How far a verifier's wall clock may differ from the issuer's before the
/// time claims refuse a token. Only `exp`, `nbf` and `iat` are compared
/// with a wall clock; revocations never are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Leeway {
    /// Seconds a token's `nbf` or `iat` may lie in the verifier's future
    /// (its clock behind the issuer's) and still be accepted.
    pub nbf_seconds: u64,
    /// Seconds past `exp` a token is still accepted (the verifier's clock
    /// ahead of the issuer's).
    pub exp_seconds: u64,
}

impl Default for Leeway {
    /// 60 s for `nbf`/`iat`, as JWT libraries default to, so a new token
    /// works at first use on an edge whose clock is behind; none past `exp`,
    /// so a token never outlives its stated lifetime on a true clock.
    fn default() -> Self {
        Self {
            nbf_seconds: 60,
            exp_seconds: 0,
        }
    }
}

impl Leeway {
    /// No tolerance at all.
    pub const NONE: Leeway = Leeway {
        nbf_seconds: 0,
        exp_seconds: 0,
    };
}

/// Checks the time window, audience and scopes of verified claims at `now`
/// (unix seconds on the verifier's clock), tolerating `leeway`.
///
/// The audience rule: a token that names an audience is accepted only by a
/// verifier that requires that same audience; a verifier that requires an
/// audience accepts only tokens naming it.
pub fn check_claims(
    claims: &Claims,
    now: i64,
    req: &Requirements<'_>,
    leeway: Leeway,
) -> Result<(), Error> {
    let exp_leeway = i64::try_from(leeway.exp_seconds).unwrap_or(i64::MAX);
    let nbf_leeway = i64::try_from(leeway.nbf_seconds).unwrap_or(i64::MAX);
    if now >= claims.exp.saturating_add(exp_leeway) {
        return Err(Error::Expired(claims.exp));
    }
    let earliest = claims.nbf.max(claims.iat);
    if now.saturating_add(nbf_leeway) < earliest {
        return Err(Error::NotYetValid(earliest));
    }
    match (req.audience, claims.aud.as_deref()) {
        (Some(want), have) if have != Some(want) => return Err(Error::WrongAudience),
        (None, Some(_)) => return Err(Error::AudienceRequired),
        _ => {}
    }
    if !claims.has_scopes(req.scopes.iter().map(String::as_str)) {
        return Err(Error::InsufficientScope);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Jti;

    fn key(seed: u8) -> SigningKey {
        SigningKey::from_bytes(&[seed; 32])
    }

    fn claims() -> Claims {
        let jti = Jti([7; 16]);
        Claims {
            jti,
            sub: "user:1".into(),
            scope: "read write".into(),
            iat: 1_000,
            nbf: 1_000,
            exp: 2_000,
            fam: jti,
            aud: Some("api".into()),
            rev: 5,
        }
    }

    fn verify(
        token: &str,
        k: &VerifyingKey,
        now: i64,
        req: &Requirements<'_>,
    ) -> Result<Claims, Error> {
        let p = parse(token, 4096)?;
        p.verify_signature(k)?;
        check_claims(&p.claims, now, req, Leeway::NONE)?;
        Ok(p.claims)
    }

    #[test]
    fn round_trip() {
        let k = key(1);
        let t = encode(&claims(), Kid([1; 16]), &k);
        let p = parse(&t, 4096).unwrap();
        assert_eq!(p.kid, Kid([1; 16]));
        let scopes = vec!["read".to_string()];
        let req = Requirements {
            audience: Some("api"),
            scopes: &scopes,
        };
        assert_eq!(
            verify(&t, &k.verifying_key(), 1_500, &req).unwrap(),
            claims()
        );
    }

    #[test]
    fn tampered_signature_and_payload_fail() {
        let k = key(1);
        let t = encode(&claims(), Kid([1; 16]), &k);
        let req = Requirements::default();
        // flip one signature character
        let mut bad = t.clone().into_bytes();
        let last = bad.len() - 2;
        bad[last] = if bad[last] == b'A' { b'B' } else { b'A' };
        let bad = String::from_utf8(bad).unwrap();
        assert_eq!(
            verify(&bad, &k.verifying_key(), 1_500, &req),
            Err(Error::BadSignature)
        );
        // swap in a payload with another subject, keep the signature
        let mut c = claims();
        c.sub = "admin".into();
        let other = encode(&c, Kid([1; 16]), &k);
        let forged = format!(
            "{}.{}.{}",
            t.split('.').next().unwrap(),
            other.split('.').nth(1).unwrap(),
            t.split('.').nth(2).unwrap()
        );
        assert_eq!(
            verify(&forged, &k.verifying_key(), 1_500, &req),
            Err(Error::BadSignature)
        );
    }

    #[test]
    fn leeway_covers_a_clock_behind_or_ahead() {
        let c = claims(); // nbf = iat = 1_000, exp = 2_000
        let req = Requirements {
            audience: Some("api"),
            scopes: &[],
        };
        let lw = Leeway {
            nbf_seconds: 60,
            exp_seconds: 5,
        };
        // A verifier 60 s behind accepts a brand-new token; 61 s behind does not.
        assert_eq!(check_claims(&c, 940, &req, lw), Ok(()));
        assert_eq!(
            check_claims(&c, 939, &req, lw),
            Err(Error::NotYetValid(1_000))
        );
        // iat is held to the same rule as nbf.
        let mut later_iat = c.clone();
        later_iat.nbf = 0;
        assert_eq!(
            check_claims(&later_iat, 939, &req, lw),
            Err(Error::NotYetValid(1_000))
        );
        // Past exp by less than the exp leeway: accepted; at it: refused.
        assert_eq!(check_claims(&c, 2_004, &req, lw), Ok(()));
        assert_eq!(
            check_claims(&c, 2_005, &req, lw),
            Err(Error::Expired(2_000))
        );
        // The default tolerates 60 s before nbf and nothing past exp.
        assert_eq!(check_claims(&c, 940, &req, Leeway::default()), Ok(()));
        assert_eq!(
            check_claims(&c, 2_000, &req, Leeway::default()),
            Err(Error::Expired(2_000))
        );
        // Huge leeways saturate instead of overflowing.
        let huge = Leeway {
            nbf_seconds: u64::MAX,
            exp_seconds: u64::MAX,
        };
        assert_eq!(check_claims(&c, 0, &req, huge), Ok(()));
        assert_eq!(check_claims(&c, i64::MAX - 1, &req, huge), Ok(()));
    }

    #[test]
    fn wrong_key_fails() {
        let t = encode(&claims(), Kid([1; 16]), &key(1));
        let r = verify(&t, &key(2).verifying_key(), 1_500, &Requirements::default());
        assert_eq!(r, Err(Error::BadSignature));
    }

    #[test]
    fn time_window() {
        let k = key(1);
        let t = encode(&claims(), Kid([1; 16]), &k);
        let req = Requirements {
            audience: Some("api"),
            scopes: &[],
        };
        assert_eq!(
            verify(&t, &k.verifying_key(), 2_000, &req),
            Err(Error::Expired(2_000))
        );
        assert_eq!(
            verify(&t, &k.verifying_key(), 999, &req),
            Err(Error::NotYetValid(1_000))
        );
        assert!(verify(&t, &k.verifying_key(), 1_999, &req).is_ok());
    }

    #[test]
    fn audience_and_scope() {
        let k = key(1);
        let t = encode(&claims(), Kid([1; 16]), &k);
        let none: Vec<String> = vec![];
        let wrong = Requirements {
            audience: Some("other"),
            scopes: &none,
        };
        assert_eq!(
            verify(&t, &k.verifying_key(), 1_500, &wrong),
            Err(Error::WrongAudience)
        );
        // A token for an audience is refused by a verifier naming none.
        let anyone = Requirements {
            audience: None,
            scopes: &none,
        };
        assert_eq!(
            verify(&t, &k.verifying_key(), 1_500, &anyone),
            Err(Error::AudienceRequired)
        );
        let admin = vec!["admin".to_string()];
        let req = Requirements {
            audience: Some("api"),
            scopes: &admin,
        };
        assert_eq!(
            verify(&t, &k.verifying_key(), 1_500, &req),
            Err(Error::InsufficientScope)
        );
        let mut c = claims();
        c.aud = None;
        let t2 = encode(&c, Kid([1; 16]), &k);
        let req = Requirements {
            audience: Some("api"),
            scopes: &none,
        };
        assert_eq!(
            verify(&t2, &k.verifying_key(), 1_500, &req),
            Err(Error::WrongAudience)
        );
        // No audience on either side: accepted.
        assert!(verify(&t2, &k.verifying_key(), 1_500, &anyone).is_ok());
    }

    #[test]
    fn oversize_and_garbage_never_panic() {
        let big = "a".repeat(5000);
        assert_eq!(parse(&big, 4096).unwrap_err(), Error::Oversize(5000));
        for g in [
            "",
            ".",
            "..",
            "...",
            "a.b.c",
            "a.b",
            "é.é.é",
            "eyJ9.eyJ9.AA",
            "eyJhbGciOiJIUzI1NiJ9.e30.AAAA",
        ] {
            assert!(parse(g, 4096).is_err(), "{g:?}");
        }
        // alg none
        let h = URL_SAFE_NO_PAD
            .encode(br#"{"alg":"none","typ":"JWT","kid":"00000000000000000000000000000000"}"#);
        let p = URL_SAFE_NO_PAD.encode(b"{}");
        assert!(matches!(
            parse(&format!("{h}.{p}.{}", "A".repeat(86)), 4096),
            Err(Error::UnsupportedHeader(_))
        ));
    }
}
