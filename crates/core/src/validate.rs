//! Input validation shared by every entry point. Each error names the field.

use std::collections::BTreeSet;

use crate::Limits;

/// An invalid request field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {problem}")]
pub struct Invalid {
    /// The request field, as named in the API.
    pub field: &'static str,
    /// What is wrong with it.
    pub problem: String,
}

impl Invalid {
    /// A new error for `field`.
    pub fn new(field: &'static str, problem: impl Into<String>) -> Self {
        Self {
            field,
            problem: problem.into(),
        }
    }
}

/// Subject: 1..=max bytes, printable, no whitespace or control characters.
pub fn subject(field: &'static str, sub: &str, limits: &Limits) -> Result<(), Invalid> {
    if sub.is_empty() {
        return Err(Invalid::new(field, "must not be empty"));
    }
    if sub.len() > limits.max_subject_bytes {
        return Err(Invalid::new(
            field,
            format!(
                "is {} bytes, limit is {}",
                sub.len(),
                limits.max_subject_bytes
            ),
        ));
    }
    if sub.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(Invalid::new(
            field,
            "must not contain whitespace or control characters",
        ));
    }
    Ok(())
}

/// Scopes: each `[A-Za-z0-9:._/-]{1,max}`, no duplicates, at most `max_scopes`.
pub fn scopes(field: &'static str, scopes: &[String], limits: &Limits) -> Result<(), Invalid> {
    if scopes.len() > limits.max_scopes {
        return Err(Invalid::new(
            field,
            format!(
                "has {} scopes, limit is {}",
                scopes.len(),
                limits.max_scopes
            ),
        ));
    }
    let mut seen = BTreeSet::new();
    for s in scopes {
        if s.is_empty() || s.len() > limits.max_scope_bytes {
            return Err(Invalid::new(
                field,
                format!("each scope must be 1..={} bytes", limits.max_scope_bytes),
            ));
        }
        if !s
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b":._/-".contains(&b))
        {
            return Err(Invalid::new(
                field,
                "scopes may contain only letters, digits and : . _ / -",
            ));
        }
        if !seen.insert(s.as_str()) {
            return Err(Invalid::new(field, format!("duplicate scope {s:?}")));
        }
    }
    Ok(())
}

/// Audience: 1..=max printable bytes without whitespace.
pub fn audience(field: &'static str, aud: &str, limits: &Limits) -> Result<(), Invalid> {
    if aud.is_empty() || aud.len() > limits.max_audience_bytes {
        return Err(Invalid::new(
            field,
            format!("must be 1..={} bytes", limits.max_audience_bytes),
        ));
    }
    if aud.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(Invalid::new(
            field,
            "must not contain whitespace or control characters",
        ));
    }
    Ok(())
}

/// A free-text reason: bounded, no control characters except none at all.
pub fn reason(field: &'static str, reason: &str, limits: &Limits) -> Result<(), Invalid> {
    if reason.len() > limits.max_reason_bytes {
        return Err(Invalid::new(
            field,
            format!(
                "is {} bytes, limit is {}",
                reason.len(),
                limits.max_reason_bytes
            ),
        ));
    }
    if reason.chars().any(|c| c.is_control()) {
        return Err(Invalid::new(field, "must not contain control characters"));
    }
    Ok(())
}

/// Owner: empty (the caller becomes the owner) or a subject-like name.
pub fn owner(field: &'static str, owner: &str, limits: &Limits) -> Result<(), Invalid> {
    if owner.is_empty() {
        return Ok(());
    }
    subject(field, owner, limits)
}

/// Description: at most as long as a reason, no control characters.
pub fn description(field: &'static str, text: &str, limits: &Limits) -> Result<(), Invalid> {
    reason(field, text, limits)
}

/// Labels: keys and values of the allowed form, not too many.
pub fn labels(field: &'static str, labels: &crate::labels::Labels) -> Result<(), Invalid> {
    crate::labels::validate(labels).map_err(|e| Invalid::new(field, e.to_string()))
}

/// A label selector, parsed.
pub fn selector(field: &'static str, s: &str) -> Result<crate::labels::Selector, Invalid> {
    crate::labels::Selector::parse(s).map_err(|e| Invalid::new(field, e.to_string()))
}

/// TTL: 0 means the default; otherwise 1..=max.
pub fn ttl(field: &'static str, ttl_seconds: u64, limits: &Limits) -> Result<u64, Invalid> {
    match ttl_seconds {
        0 => Ok(limits.default_ttl_seconds),
        t if t > limits.max_ttl_seconds => Err(Invalid::new(
            field,
            format!(
                "{t} exceeds the configured maximum TTL of {} s",
                limits.max_ttl_seconds
            ),
        )),
        t => Ok(t),
    }
}

/// A 128-bit id in 32 lowercase hex characters.
pub fn id<T: std::str::FromStr>(field: &'static str, s: &str) -> Result<T, Invalid> {
    s.parse()
        .map_err(|_| Invalid::new(field, "must be 32 lowercase hex characters"))
}

/// An edge id: 1..=[`crate::limits::MAX_EDGE_ID_BYTES`] bytes of
/// `[A-Za-z0-9._-]`.
pub fn edge_id(field: &'static str, id: &str) -> Result<(), Invalid> {
    let max = crate::limits::MAX_EDGE_ID_BYTES;
    let ok = !id.is_empty()
        && id.len() <= max
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(Invalid::new(
            field,
            format!("must be 1..={max} bytes of [A-Za-z0-9._-]"),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_each_bad_field() {
        let l = Limits::default();
        assert!(subject("sub", "", &l).is_err());
        assert!(subject("sub", &"x".repeat(257), &l).is_err());
        assert!(subject("sub", "a b", &l).is_err());
        assert!(subject("sub", "user:42", &l).is_ok());
        assert!(scopes("scopes", &["read write".into()], &l).is_err());
        assert!(scopes("scopes", &["a".into(), "a".into()], &l).is_err());
        assert!(scopes("scopes", &vec!["a".to_string(); 65], &l).is_err());
        assert!(scopes("scopes", &["api:read".into(), "x/y".into()], &l).is_ok());
        assert_eq!(ttl("ttl_seconds", 0, &l).unwrap(), 3600);
        assert!(ttl("ttl_seconds", l.max_ttl_seconds + 1, &l).is_err());
        let e = id::<crate::Jti>("jti", "nope").unwrap_err();
        assert_eq!(e.field, "jti");
    }

    #[test]
    fn edge_ids_are_short_and_plain() {
        assert!(super::edge_id("e", "edge-1.a_b").is_ok());
        assert!(super::edge_id("e", "").is_err());
        assert!(super::edge_id("e", "a b").is_err());
        assert!(super::edge_id("e", &"x".repeat(129)).is_err());
        assert!(super::edge_id("e", &"x".repeat(128)).is_ok());
    }
}
