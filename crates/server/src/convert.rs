//! Conversions between `veto-core` domain types and `veto.v1` wire types,
//! in one place.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use veto_core::state::{
    KeyRecord, KeyState, RevocationInfo, RevocationKind, TokenRecord, TokenStatus,
};
use veto_proto as pb;

/// A token record on the wire.
pub fn record(r: &TokenRecord) -> pb::TokenRecord {
    let t = &r.token;
    pb::TokenRecord {
        jti: t.jti.to_string(),
        sub: t.sub.clone(),
        scopes: t.scopes.clone(),
        aud: t.aud.clone(),
        iat: t.iat,
        nbf: t.nbf,
        exp: t.exp,
        family: t.fam.to_string(),
        kid: t.kid.to_string(),
        issued_revision: r.issued_revision,
        successor: r.successor.map(|s| s.to_string()),
        owner: t.owner.clone(),
        description: t.description.clone(),
        labels: t
            .labels
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
        issued_by: r.actor.0.clone(),
    }
}

/// A token status from the wire (`None` for UNSPECIFIED).
pub fn status_from(s: pb::TokenStatus) -> Option<TokenStatus> {
    match s {
        pb::TokenStatus::Unspecified => None,
        pb::TokenStatus::Active => Some(TokenStatus::Active),
        pb::TokenStatus::Revoked => Some(TokenStatus::Revoked),
        pb::TokenStatus::RevokePending => Some(TokenStatus::RevokePending),
        pb::TokenStatus::Expired => Some(TokenStatus::Expired),
    }
}

/// A token status on the wire.
pub fn status(s: TokenStatus) -> pb::TokenStatus {
    match s {
        TokenStatus::Active => pb::TokenStatus::Active,
        TokenStatus::Revoked => pb::TokenStatus::Revoked,
        TokenStatus::RevokePending => pb::TokenStatus::RevokePending,
        TokenStatus::Expired => pb::TokenStatus::Expired,
    }
}

/// Revocation details on the wire.
pub fn revocation(r: &RevocationInfo) -> pb::RevocationInfo {
    pb::RevocationInfo {
        kind: match r.kind {
            RevocationKind::Token => "token",
            RevocationKind::Subject => "subject",
            RevocationKind::Family => "family",
            RevocationKind::Key => "key",
        }
        .into(),
        revision: r.revision,
        effective_at_unix: r.effective_at,
        reason: r.reason.clone(),
    }
}

/// A key's stage on the wire.
pub fn key_state(s: KeyState) -> pb::KeyState {
    match s {
        KeyState::Published => pb::KeyState::Published,
        KeyState::Active => pb::KeyState::Active,
        KeyState::Retiring => pb::KeyState::Retiring,
        KeyState::Retired => pb::KeyState::Retired,
        KeyState::Revoked => pb::KeyState::Revoked,
    }
}

/// A key (public half only) on the wire.
pub fn key(k: &KeyRecord) -> pb::KeyInfo {
    pb::KeyInfo {
        kid: k.kid.to_string(),
        state: key_state(k.state) as i32,
        public_key: URL_SAFE_NO_PAD.encode(k.public),
        published_revision: k.published_revision,
        max_token_exp: k.max_token_exp,
        published_unix: k.published_at,
        activated_unix: k.activated_at,
    }
}

/// An issuer policy on the wire.
pub fn issuer_policy(p: &veto_core::policy::IssuerPolicy) -> pb::IssuerPolicy {
    pb::IssuerPolicy {
        subjects: p.subjects.clone(),
        subject_prefixes: p.subject_prefixes.clone(),
        scopes: p.scopes.clone(),
        max_ttl_seconds: p.max_ttl_seconds,
        required_labels: p.required_labels.clone(),
    }
}

/// A rotation policy on the wire.
pub fn rotation_policy(p: &veto_core::policy::RotationPolicy) -> pb::RotationPolicy {
    pb::RotationPolicy {
        period_seconds: p.period_seconds,
        publish_lead_seconds: p.publish_lead_seconds,
        activation_timeout_seconds: p.activation_timeout_seconds,
    }
}

/// Where the self-running rotation stands at `now`.
pub fn rotation_status(s: &veto_core::State, now: i64) -> Option<pb::RotationStatus> {
    let p = s.rotation_policy()?;
    let active = s.active_key();
    let activated = active.map(|k| k.activated_at).unwrap_or(now);
    let pending = s
        .keys()
        .filter(|k| k.state == KeyState::Published)
        .max_by_key(|k| k.published_revision)
        .map(|k| k.kid.to_string())
        .unwrap_or_default();
    Some(pb::RotationStatus {
        policy: Some(rotation_policy(p)),
        active_key_age_seconds: now.saturating_sub(activated).max(0),
        next_publish_unix: p.next_publish(activated),
        next_activation_unix: p.next_activation(activated),
        pending_kid: pending,
    })
}

/// A JWK (RFC 8037 OKP) for a key that verifies tokens.
pub fn jwk(k: &KeyRecord) -> serde_json::Value {
    serde_json::json!({
        "kty": "OKP",
        "crv": "Ed25519",
        "alg": "EdDSA",
        "use": "sig",
        "kid": k.kid.to_string(),
        "x": URL_SAFE_NO_PAD.encode(k.public),
    })
}
