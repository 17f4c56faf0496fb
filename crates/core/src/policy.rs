//! Policies kept in the replicated state: what an `issuer` certificate may
//! issue, and how often signing keys rotate themselves.
//!
//! Operators set them with replicated commands, so every node enforces the
//! same policy at the same revision, and backups carry them.

use serde::{Deserialize, Serialize};

use crate::labels::Labels;

/// The bounds of one issuer (a certificate of role `issuer` whose common
/// name is the policy's name). A request outside them is refused with the
/// field named; nothing is written.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct IssuerPolicy {
    /// Subjects the issuer may name exactly.
    #[serde(default)]
    pub subjects: Vec<String>,
    /// Subject prefixes the issuer may name (`svc:payments-` covers
    /// `svc:payments-api`).
    #[serde(default)]
    pub subject_prefixes: Vec<String>,
    /// Scopes the issuer may grant; a token may carry any subset.
    #[serde(default)]
    pub scopes: Vec<String>,
    /// Longest lifetime it may give a token, seconds.
    pub max_ttl_seconds: u64,
    /// Label keys every token it issues must carry (`team`, `version`).
    #[serde(default)]
    pub required_labels: Vec<String>,
}

/// Why a request falls outside an issuer policy.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {problem}")]
pub struct Violation {
    /// The request field at fault (`sub`, `scopes`, `ttl_seconds`, `labels`).
    pub field: &'static str,
    /// What the policy allows instead.
    pub problem: String,
}

impl Violation {
    fn new(field: &'static str, problem: impl Into<String>) -> Self {
        Self {
            field,
            problem: problem.into(),
        }
    }
}

/// A policy that cannot be stored.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {problem}")]
pub struct BadPolicy {
    /// The policy field at fault.
    pub field: &'static str,
    /// What is wrong with it.
    pub problem: String,
}

impl IssuerPolicy {
    /// Whether the issuer may name `sub`.
    pub fn allows_subject(&self, sub: &str) -> bool {
        self.subjects.iter().any(|s| s == sub)
            || self.subject_prefixes.iter().any(|p| sub.starts_with(p))
    }

    /// Checks an issue (or refresh by jti, or revoke) request against the
    /// policy: subject, scopes, lifetime and required labels, in that order.
    pub fn check(
        &self,
        sub: &str,
        scopes: &[String],
        ttl_seconds: u64,
        labels: &Labels,
    ) -> Result<(), Violation> {
        if !self.allows_subject(sub) {
            return Err(Violation::new(
                "sub",
                format!(
                    "subject {sub:?} is outside the issuer policy (subjects {:?}, prefixes {:?})",
                    self.subjects, self.subject_prefixes
                ),
            ));
        }
        if let Some(s) = scopes.iter().find(|s| !self.scopes.contains(s)) {
            return Err(Violation::new(
                "scopes",
                format!(
                    "scope {s:?} is outside the issuer policy (allowed {:?})",
                    self.scopes
                ),
            ));
        }
        if ttl_seconds > self.max_ttl_seconds {
            return Err(Violation::new(
                "ttl_seconds",
                format!(
                    "{ttl_seconds} s is longer than the issuer policy allows ({} s)",
                    self.max_ttl_seconds
                ),
            ));
        }
        if let Some(k) = self
            .required_labels
            .iter()
            .find(|k| !labels.contains_key(k.as_str()))
        {
            return Err(Violation::new(
                "labels",
                format!("the issuer policy requires label {k:?}"),
            ));
        }
        Ok(())
    }

    /// Checks the policy itself before it is stored.
    pub fn validate(&self) -> Result<(), BadPolicy> {
        let bad = |field, problem: &str| {
            Err(BadPolicy {
                field,
                problem: problem.to_owned(),
            })
        };
        if self.subjects.is_empty() && self.subject_prefixes.is_empty() {
            return bad(
                "subjects",
                "a policy names at least one subject or subject prefix",
            );
        }
        if self.subject_prefixes.iter().any(|p| p.is_empty()) {
            return bad(
                "subject_prefixes",
                "an empty prefix would allow every subject",
            );
        }
        if self.scopes.is_empty() {
            return bad("scopes", "a policy names at least one scope");
        }
        if self.max_ttl_seconds == 0 {
            return bad("max_ttl_seconds", "must be positive");
        }
        let all = self
            .subjects
            .iter()
            .chain(&self.subject_prefixes)
            .chain(&self.scopes)
            .chain(&self.required_labels);
        if all.clone().count() > 256 {
            return bad("subjects", "at most 256 entries in all");
        }
        if all
            .clone()
            .any(|s| s.len() > 256 || s.chars().any(char::is_control))
        {
            return bad(
                "subjects",
                "entries are at most 256 bytes without control characters",
            );
        }
        Ok(())
    }

    /// A one-line summary for the audit trail.
    pub fn summary(&self) -> String {
        format!(
            "subjects {:?} prefixes {:?} scopes {:?} max_ttl {}s required_labels {:?}",
            self.subjects,
            self.subject_prefixes,
            self.scopes,
            self.max_ttl_seconds,
            self.required_labels
        )
    }
}

/// How the leader rotates signing keys on its own: publish a new key
/// `publish_lead_seconds` before the active key is `period_seconds` old,
/// activate it once every live edge has it (or after
/// `activation_timeout_seconds`, which is alerted on), retire the old key
/// after the last token it signed has expired.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct RotationPolicy {
    /// Age of the active key at which the next one is activated, seconds.
    pub period_seconds: u64,
    /// How long before activation the next key is published (and so in
    /// every JWKS document), seconds. At least the longest JWKS cache of
    /// any verifier.
    pub publish_lead_seconds: u64,
    /// Activate anyway when an edge still lacks the key this long after
    /// the lead time, seconds.
    pub activation_timeout_seconds: u64,
}

impl RotationPolicy {
    /// Checks the policy before it is stored.
    pub fn validate(&self) -> Result<(), BadPolicy> {
        let bad = |field, problem: &str| {
            Err(BadPolicy {
                field,
                problem: problem.to_owned(),
            })
        };
        if self.period_seconds == 0 {
            return bad("period_seconds", "must be positive");
        }
        if self.publish_lead_seconds >= self.period_seconds {
            return bad(
                "publish_lead_seconds",
                "must be shorter than the rotation period",
            );
        }
        if self.period_seconds > 10 * 365 * 86_400 {
            return bad("period_seconds", "at most ten years");
        }
        if self.activation_timeout_seconds > 86_400 {
            return bad("activation_timeout_seconds", "at most one day");
        }
        Ok(())
    }

    /// When the key activated at `activated_at` is due to be replaced.
    pub fn next_activation(&self, activated_at: i64) -> i64 {
        activated_at.saturating_add(self.period_seconds as i64)
    }

    /// When its successor is due to be published.
    pub fn next_publish(&self, activated_at: i64) -> i64 {
        self.next_activation(activated_at)
            .saturating_sub(self.publish_lead_seconds as i64)
    }

    /// A one-line summary for the audit trail.
    pub fn summary(&self) -> String {
        format!(
            "every {}s, published {}s ahead, activation timeout {}s",
            self.period_seconds, self.publish_lead_seconds, self.activation_timeout_seconds
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> IssuerPolicy {
        IssuerPolicy {
            subjects: vec!["svc:billing".into()],
            subject_prefixes: vec!["svc:ci-".into()],
            scopes: vec!["read".into(), "deploy".into()],
            max_ttl_seconds: 3600,
            required_labels: vec!["team".into()],
        }
    }

    fn labels(pairs: &[(&str, &str)]) -> Labels {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn a_request_inside_the_policy_passes_and_each_bound_names_its_field() {
        let p = policy();
        let team = labels(&[("team", "pay")]);
        let read = vec!["read".to_owned()];
        assert_eq!(p.check("svc:billing", &read, 3600, &team), Ok(()));
        assert_eq!(p.check("svc:ci-main", &[], 10, &team), Ok(()));
        let field = |r: Result<(), Violation>| r.err().map(|v| v.field);
        assert_eq!(field(p.check("svc:other", &read, 10, &team)), Some("sub"));
        assert_eq!(field(p.check("svc:ci", &read, 10, &team)), Some("sub"));
        assert_eq!(
            field(p.check("svc:billing", &["admin".into()], 10, &team)),
            Some("scopes")
        );
        assert_eq!(
            field(p.check("svc:billing", &read, 3601, &team)),
            Some("ttl_seconds")
        );
        assert_eq!(
            field(p.check("svc:billing", &read, 10, &labels(&[("x", "y")]))),
            Some("labels")
        );
    }

    #[test]
    fn policies_that_allow_everything_or_nothing_are_refused() {
        let mut p = policy();
        assert_eq!(p.validate(), Ok(()));
        p.subject_prefixes.push(String::new());
        assert_eq!(
            p.validate().err().map(|e| e.field),
            Some("subject_prefixes")
        );
        let mut p = policy();
        p.subjects.clear();
        p.subject_prefixes.clear();
        assert_eq!(p.validate().err().map(|e| e.field), Some("subjects"));
        let mut p = policy();
        p.max_ttl_seconds = 0;
        assert_eq!(p.validate().err().map(|e| e.field), Some("max_ttl_seconds"));
        let r = RotationPolicy {
            period_seconds: 10,
            publish_lead_seconds: 10,
            activation_timeout_seconds: 5,
        };
        assert_eq!(
            r.validate().err().map(|e| e.field),
            Some("publish_lead_seconds")
        );
        let r = RotationPolicy {
            publish_lead_seconds: 4,
            ..r
        };
        assert_eq!(r.validate(), Ok(()));
        assert_eq!(r.next_publish(100), 106);
        assert_eq!(r.next_activation(100), 110);
    }
}
