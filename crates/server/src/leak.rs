//! Leak reports (`POST /v1/leaks/github`): GitHub's secret-scanning partner
//! program reports veto tokens it found in public code, and the cluster
//! revokes them and answers, per token, whether it was one of ours.
//!
//! The request is GitHub's: a JSON array of `{"token", "type", "url",
//! "source"}`, signed with ECDSA P-256 / SHA-256 over the raw body; the
//! base64 DER signature is in `Github-Public-Key-Signature` and the key
//! that made it named by `Github-Public-Key-Identifier`. The public keys
//! are configured (`leak_reports.github_keys`: key id -> PEM file), never
//! fetched. A missing or bad signature, or a key id not configured, is
//! answered 401 before the body is parsed, and nothing changes.
//!
//! Each reported token is revoked by presenting it, as `TokenService.Revoke`
//! with `token` does (run in process, forwarded to the leader, its
//! signature checked under the cluster's keys there), with the actor
//! `leak-report:<key id>` and a reason naming the report's type, source and
//! URL. The answer is GitHub's feedback shape — `token_hash` (SHA-256 hex
//! of the token as reported; the token itself is never echoed or logged),
//! `token_type`, `label` (`true_positive` for a token the cluster signed,
//! else `false_positive`) — plus `jti`, `action` (`revoked`,
//! `already_revoked`, `not_a_veto_token`), `revision` and
//! `time_to_dead_ms`: report receipt to the last live edge acknowledging
//! the revocation (the `--wait-edges` confirmation), also recorded in
//! `veto_leak_time_to_dead_seconds`.
//!
//! The path needs no client certificate (GitHub cannot present one): it is
//! in [`OPEN_PATHS`], which `Server` hands to the HTTPS listener. Its
//! authority is the signature alone.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use futures::StreamExt;
use p256::ecdsa::signature::Verifier;
use p256::ecdsa::{Signature, VerifyingKey};
use p256::pkcs8::DecodePublicKey;
use serde::Deserialize;
use serde_json::json;
use sha2::{Digest, Sha256};
use tokio::sync::Semaphore;
use tonic::metadata::MetadataValue;
use tonic::Code;
use veto_core::token;
use veto_proto as pb;
use veto_proto::token_service_server::TokenService;
use veto_telemetry as t;
use veto_telemetry::metrics::{counter, histogram};

use crate::config::{ConfigError, LeakOptions};
use crate::feed::Hub;
use crate::node::Node;

/// The endpoint GitHub posts reports to.
pub const GITHUB_PATH: &str = "/v1/leaks/github";

/// The paths a server's HTTPS listener serves without a client
/// certificate: `veto_auth::http::OPEN_PATHS` and the leak endpoint.
pub const OPEN_PATHS: &[&str] = &["/healthz", "/readyz", "/.well-known/jwks.json", GITHUB_PATH];

/// The header naming GitHub's signing key.
pub const KEY_ID_HEADER: &str = "github-public-key-identifier";
/// The header holding the base64 DER ECDSA signature of the body.
pub const SIGNATURE_HEADER: &str = "github-public-key-signature";

/// Reports processed at once; more get 503 with `Retry-After` (GitHub
/// retries). Each holds its tokens' revokes and the edge wait.
const MAX_CONCURRENT_REPORTS: usize = 4;

/// Revokes in flight per report.
const REVOKES_IN_FLIGHT: usize = 8;

/// The verifying keys of `leak_reports.github_keys`, by key id.
#[derive(Clone, Default)]
pub struct GithubKeys(Arc<BTreeMap<String, VerifyingKey>>);

/// Why a report's signature was not accepted (all answered 401).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    /// No `Github-Public-Key-Identifier` header.
    #[error("missing Github-Public-Key-Identifier header")]
    MissingKeyId,
    /// The key id is not configured.
    #[error("unknown public key identifier")]
    UnknownKey,
    /// No `Github-Public-Key-Signature` header.
    #[error("missing Github-Public-Key-Signature header")]
    MissingSignature,
    /// Not base64 of a DER (or 64-byte fixed) ECDSA signature.
    #[error("signature is not base64 of an ECDSA P-256 signature")]
    Undecodable,
    /// Does not verify over the body under the named key.
    #[error("signature does not verify")]
    Mismatch,
}

impl SignatureError {
    /// The `outcome` label of `veto_leak_reports_total`.
    pub fn outcome(&self) -> &'static str {
        match self {
            SignatureError::MissingKeyId | SignatureError::UnknownKey => "unknown_key",
            _ => "bad_signature",
        }
    }
}

impl GithubKeys {
    /// Reads every configured PEM file (an unreadable or invalid one
    /// stops the server from starting, naming it).
    pub fn load(o: &LeakOptions) -> Result<Self, ConfigError> {
        let mut keys = BTreeMap::new();
        for (id, path) in &o.github_keys {
            let pem = veto_runtime::config::read_text(path)?;
            let key = Self::parse_pem(&pem).map_err(|e| {
                ConfigError::Invalid(format!(
                    "leak_reports.github_keys.{id} ({}): {e}",
                    path.display()
                ))
            })?;
            keys.insert(id.clone(), key);
        }
        Ok(Self(Arc::new(keys)))
    }

    /// An SPKI PEM (`-----BEGIN PUBLIC KEY-----`) P-256 key, as GitHub
    /// publishes them.
    pub fn parse_pem(pem: &str) -> Result<VerifyingKey, String> {
        VerifyingKey::from_public_key_pem(pem.trim())
            .map_err(|e| format!("not a PEM P-256 public key: {e}"))
    }

    /// Keys given directly (tests).
    pub fn from_keys(keys: impl IntoIterator<Item = (String, VerifyingKey)>) -> Self {
        Self(Arc::new(keys.into_iter().collect()))
    }

    /// Checks the signature headers against `body`; the key id on success.
    pub fn check<'h>(
        &self,
        key_id: Option<&'h str>,
        signature: Option<&str>,
        body: &[u8],
    ) -> Result<&'h str, SignatureError> {
        let id = key_id
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .ok_or(SignatureError::MissingKeyId)?;
        let key = self.0.get(id).ok_or(SignatureError::UnknownKey)?;
        let sig = signature
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .ok_or(SignatureError::MissingSignature)?;
        let raw = STANDARD
            .decode(sig)
            .map_err(|_| SignatureError::Undecodable)?;
        let sig = Signature::from_der(&raw)
            .or_else(|_| Signature::from_slice(&raw))
            .map_err(|_| SignatureError::Undecodable)?;
        // Either s of a valid pair verifies: take the low one.
        let sig = sig.normalize_s().unwrap_or(sig);
        key.verify(body, &sig)
            .map_err(|_| SignatureError::Mismatch)?;
        Ok(id)
    }
}

/// One reported match, as GitHub sends it (unknown fields ignored).
#[derive(Debug, Deserialize)]
struct Reported {
    token: String,
    #[serde(rename = "type", default)]
    kind: String,
    #[serde(default)]
    url: String,
    #[serde(default)]
    source: String,
}

/// What became of one distinct reported token.
#[derive(Debug, Clone)]
enum Fate {
    /// Not a token this cluster signed (format, checksum, key or signature).
    NotOurs,
    /// Revoked now at `revision` (a token's jti).
    Revoked { jti: String, revision: u64 },
    /// Revoked before, at `revision`.
    Already { jti: String, revision: u64 },
    /// Could not be decided now (no leader, timeout): retry the report.
    Transient(String),
    /// The cluster refused for another reason.
    Failed(String),
}

#[derive(Clone)]
struct Leak {
    node: Node,
    hub: Hub,
    keys: GithubKeys,
    busy: Arc<Semaphore>,
}

/// The leak-report routes, with their own state.
pub fn router(node: Node, hub: Hub, keys: GithubKeys) -> Router {
    Router::new()
        .route(GITHUB_PATH, post(github))
        .with_state(Leak {
            node,
            hub,
            keys,
            busy: Arc::new(Semaphore::new(MAX_CONCURRENT_REPORTS)),
        })
}

fn report(outcome: &'static str) {
    counter!(t::LEAK_REPORTS_TOTAL, "outcome" => outcome).increment(1);
}

fn refuse(status: StatusCode, outcome: &'static str, why: &str) -> Response {
    report(outcome);
    let mut r = (
        status,
        [(header::CACHE_CONTROL, "no-store")],
        Json(json!({ "error": why })),
    )
        .into_response();
    if status == StatusCode::SERVICE_UNAVAILABLE {
        r.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(1u64));
    }
    r
}

/// SHA-256 of the token as reported, lower-case hex (GitHub's `token_hash`).
pub fn token_hash(token: &str) -> String {
    hex_lower(&Sha256::digest(token.as_bytes()))
}

fn hex_lower(b: &[u8]) -> String {
    use std::fmt::Write as _;
    let mut s = String::with_capacity(b.len() * 2);
    for x in b {
        let _ = write!(s, "{x:02x}");
    }
    s
}

/// The audit reason of a report's revoke: its type, source and URL,
/// control characters replaced, cut to `max` bytes on a character boundary.
fn reason(r: &Reported, max: usize) -> String {
    let text = format!(
        "leak report from GitHub secret scanning: type={} source={} url={}",
        r.kind, r.source, r.url
    );
    let mut out = String::with_capacity(text.len().min(max));
    for c in text.chars().map(|c| if c.is_control() { '?' } else { c }) {
        if out.len() + c.len_utf8() > max {
            break;
        }
        out.push(c);
    }
    out
}

async fn github(State(l): State<Leak>, headers: HeaderMap, body: Body) -> Response {
    let received = Instant::now();
    let o = &l.node.options().leak_reports;
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > o.max_body_bytes as u64) {
        return refuse(StatusCode::PAYLOAD_TOO_LARGE, "too_large", "body too large");
    }
    let Ok(bytes) = axum::body::to_bytes(body, o.max_body_bytes).await else {
        return refuse(
            StatusCode::PAYLOAD_TOO_LARGE,
            "too_large",
            "body too large or unreadable",
        );
    };
    let text = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let key_id = match l
        .keys
        .check(text(KEY_ID_HEADER), text(SIGNATURE_HEADER), &bytes)
    {
        Ok(id) => id.to_owned(),
        Err(e) => {
            tracing::debug!(error = %e, "leak report refused");
            return refuse(StatusCode::UNAUTHORIZED, e.outcome(), &e.to_string());
        }
    };
    let reported: Vec<Reported> = match serde_json::from_slice(&bytes) {
        Ok(v) => v,
        Err(_) => {
            return refuse(
                StatusCode::BAD_REQUEST,
                "malformed",
                "the body must be a JSON array of {\"token\", \"type\", \"url\", \"source\"}",
            )
        }
    };
    if reported.len() > o.max_tokens {
        return refuse(
            StatusCode::PAYLOAD_TOO_LARGE,
            "too_large",
            &format!("at most {} tokens per report", o.max_tokens),
        );
    }
    let Ok(_permit) = l.busy.clone().try_acquire_owned() else {
        return refuse(
            StatusCode::SERVICE_UNAVAILABLE,
            "busy",
            "too many reports in progress",
        );
    };
    let actor = format!("leak-report:{key_id}");
    // Each distinct token once, the first report entry's reason for it.
    let mut first: HashMap<&str, usize> = HashMap::new();
    for (i, r) in reported.iter().enumerate() {
        first.entry(r.token.as_str()).or_insert(i);
    }
    let mut distinct: Vec<usize> = first.values().copied().collect();
    distinct.sort_unstable();
    let max_reason = l.node.limits().max_reason_bytes;
    let work: Vec<_> = distinct
        .iter()
        .map(|&i| {
            let r = &reported[i];
            fate(
                l.clone(),
                r.token.clone(),
                reason(r, max_reason),
                actor.clone(),
            )
        })
        .collect();
    let fates: Vec<Fate> = futures::stream::iter(work)
        .buffered(REVOKES_IN_FLIGHT)
        .collect()
        .await;
    let fate_of: HashMap<&str, &Fate> = distinct
        .iter()
        .map(|&i| reported[i].token.as_str())
        .zip(fates.iter())
        .collect();
    for f in &fates {
        let outcome = match f {
            Fate::NotOurs => "not_a_veto_token",
            Fate::Revoked { .. } => "revoked",
            Fate::Already { .. } => "already_revoked",
            Fate::Transient(_) | Fate::Failed(_) => "error",
        };
        counter!(t::LEAK_TOKENS_TOTAL, "outcome" => outcome).increment(1);
    }
    if let Some(why) = fates.iter().find_map(|f| match f {
        Fate::Transient(w) => Some(w),
        _ => None,
    }) {
        return refuse(StatusCode::SERVICE_UNAVAILABLE, "unavailable", why);
    }
    if let Some(why) = fates.iter().find_map(|f| match f {
        Fate::Failed(w) => Some(w),
        _ => None,
    }) {
        return refuse(StatusCode::INTERNAL_SERVER_ERROR, "error", why);
    }
    // Every live edge refusing every token revoked now: the edges' acks
    // of the last such revision, from receipt.
    let newly: Vec<u64> = fates
        .iter()
        .filter_map(|f| match f {
            Fate::Revoked { revision, .. } => Some(*revision),
            _ => None,
        })
        .collect();
    let dead_ms = match newly.iter().max() {
        Some(&last) => {
            let deadline = received + Duration::from_millis(o.wait_edges_ms);
            let w = l.hub.wait_edges(last, received, deadline).await;
            match w.propagation_ms {
                Some(ms) => {
                    for _ in &newly {
                        histogram!(t::LEAK_TIME_TO_DEAD_SECONDS).record(ms / 1e3);
                    }
                    Some(ms)
                }
                None => {
                    counter!(t::LEAK_UNCONFIRMED_TOTAL).increment(newly.len() as u64);
                    tracing::warn!(
                        behind = ?w.behind,
                        unknown = ?w.unknown,
                        "leaked tokens revoked but not confirmed at every edge"
                    );
                    None
                }
            }
        }
        None => None,
    };
    let answer: Vec<serde_json::Value> = reported
        .iter()
        .map(|r| {
            let base = json!({
                "token_hash": token_hash(&r.token),
                "token_type": r.kind,
            });
            let (label, jti, action, revision, ms) = match fate_of.get(r.token.as_str()) {
                Some(Fate::Revoked { jti, revision }) => (
                    "true_positive",
                    Some(jti),
                    "revoked",
                    Some(*revision),
                    dead_ms,
                ),
                Some(Fate::Already { jti, revision }) => (
                    "true_positive",
                    Some(jti),
                    "already_revoked",
                    Some(*revision),
                    None,
                ),
                _ => ("false_positive", None, "not_a_veto_token", None, None),
            };
            let mut v = base;
            v["label"] = json!(label);
            v["jti"] = json!(jti);
            v["action"] = json!(action);
            v["revision"] = json!(revision);
            v["time_to_dead_ms"] = json!(ms);
            v
        })
        .collect();
    let jtis: Vec<&str> = fates
        .iter()
        .filter_map(|f| match f {
            Fate::Revoked { jti, .. } => Some(jti.as_str()),
            _ => None,
        })
        .collect();
    tracing::info!(
        key_id = %key_id,
        reported = reported.len(),
        revoked = ?jtis,
        time_to_dead_ms = ?dead_ms,
        "leak report"
    );
    report("accepted");
    (
        StatusCode::OK,
        [(header::CACHE_CONTROL, "no-store")],
        Json(answer),
    )
        .into_response()
}

/// Checks and revokes one reported token.
async fn fate(l: Leak, token_str: String, reason: String, actor: String) -> Fate {
    // Format and checksum here, at no cost to the leader; the signature
    // under the cluster's keys is checked by the revoke itself.
    let jti = match token::parse(&token_str, l.node.limits().max_token_bytes) {
        Ok(p) => p.claims.jti.to_string(),
        Err(_) => return Fate::NotOurs,
    };
    let mut call = tonic::Request::new(pb::RevokeRequest {
        token: token_str,
        reason,
        ..Default::default()
    });
    // No identity in process: the actor header is believed, and carried
    // to the leader when forwarded (crate::routing::actor).
    match MetadataValue::try_from(actor.as_str()) {
        Ok(v) => {
            call.metadata_mut().insert(crate::routing::ACTOR, v);
        }
        Err(_) => return Fate::Failed("leak-report actor is not a header value".into()),
    }
    let svc = crate::token_service::Service::new(l.node.clone(), l.hub.clone());
    match TokenService::revoke(&svc, call).await {
        Ok(r) => {
            let r = r.into_inner();
            if r.already_revoked {
                Fate::Already {
                    jti,
                    revision: r.revision,
                }
            } else {
                Fate::Revoked {
                    jti,
                    revision: r.revision,
                }
            }
        }
        Err(s) => match s.code() {
            Code::InvalidArgument | Code::Unauthenticated | Code::NotFound => Fate::NotOurs,
            Code::Unavailable
            | Code::DeadlineExceeded
            | Code::Aborted
            | Code::ResourceExhausted
            | Code::Cancelled => Fate::Transient(s.message().to_owned()),
            _ => Fate::Failed(s.message().to_owned()),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use p256::ecdsa::signature::Signer;
    use p256::ecdsa::SigningKey;

    fn key(b: u8) -> SigningKey {
        SigningKey::from_slice(&[b; 32]).unwrap()
    }

    fn sign(k: &SigningKey, body: &[u8]) -> String {
        let sig: Signature = k.sign(body);
        STANDARD.encode(sig.to_der().as_bytes())
    }

    #[test]
    fn signature_checks() {
        let keys = GithubKeys::from_keys([("k1".to_string(), *key(7).verifying_key())]);
        let body = br#"[{"token":"x","type":"veto","url":"u","source":"content"}]"#;
        let good = sign(&key(7), body);
        assert_eq!(keys.check(Some("k1"), Some(&good), body), Ok("k1"));
        // fixed-size r||s is accepted too
        let sig: Signature = key(7).sign(body);
        let fixed = STANDARD.encode(sig.to_bytes());
        assert_eq!(keys.check(Some(" k1 "), Some(&fixed), body), Ok("k1"));
        assert_eq!(
            keys.check(Some("k2"), Some(&good), body),
            Err(SignatureError::UnknownKey)
        );
        assert_eq!(
            keys.check(None, Some(&good), body),
            Err(SignatureError::MissingKeyId)
        );
        assert_eq!(
            keys.check(Some("k1"), None, body),
            Err(SignatureError::MissingSignature)
        );
        assert_eq!(
            keys.check(Some("k1"), Some("%%%"), body),
            Err(SignatureError::Undecodable)
        );
        assert_eq!(
            keys.check(Some("k1"), Some("AAAA"), body),
            Err(SignatureError::Undecodable)
        );
        // another key's signature, or another body
        assert_eq!(
            keys.check(Some("k1"), Some(&sign(&key(8), body)), body),
            Err(SignatureError::Mismatch)
        );
        assert_eq!(
            keys.check(Some("k1"), Some(&good), b"[]"),
            Err(SignatureError::Mismatch)
        );
    }

    #[test]
    fn pem_keys_load() {
        use p256::pkcs8::{EncodePublicKey, LineEnding};
        let pem = key(3)
            .verifying_key()
            .to_public_key_pem(LineEnding::LF)
            .unwrap();
        assert_eq!(
            GithubKeys::parse_pem(&pem).unwrap(),
            *key(3).verifying_key()
        );
        assert!(GithubKeys::parse_pem(
            "-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----"
        )
        .is_err());
    }

    #[test]
    fn reasons_are_bounded_and_clean() {
        let r = Reported {
            token: String::new(),
            kind: "veto_token".into(),
            url: "https://github.com/o/r/blob/x/a\nb".into(),
            source: "commit".into(),
        };
        let full = reason(&r, 512);
        assert!(full.contains("source=commit"), "{full}");
        assert!(full.ends_with("a?b"), "{full}");
        assert!(reason(&r, 10).len() <= 10);
        let wide = Reported {
            url: "é".repeat(400),
            ..r
        };
        let cut = reason(&wide, 101);
        assert!(cut.len() <= 101 && cut.is_char_boundary(cut.len()));
    }

    #[test]
    fn open_paths_include_the_shared_ones() {
        for p in veto_auth::http::OPEN_PATHS {
            assert!(OPEN_PATHS.contains(p), "{p}");
        }
        assert!(OPEN_PATHS.contains(&GITHUB_PATH));
        assert_eq!(
            token_hash("abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}
