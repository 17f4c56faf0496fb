//! Token labels (`key=value`, e.g. a service's `version=1.4`) and the
//! equality-based selectors that pick tokens by them, in the form
//! Kubernetes uses: `k=v`, `k!=v`, `k` (has the key) and `!k` (lacks it),
//! joined by commas, every term required.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

/// A token's labels, ordered by key (deterministic in the state and its
/// snapshots).
pub type Labels = BTreeMap<String, String>;

/// Most labels on one token.
pub const MAX_LABELS: usize = 32;
/// Longest label key, bytes.
pub const MAX_LABEL_KEY_BYTES: usize = 63;
/// Longest label value, bytes.
pub const MAX_LABEL_VALUE_BYTES: usize = 63;
/// Most terms in one selector.
pub const MAX_SELECTOR_TERMS: usize = 16;

/// Why labels or a selector are refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// A key is empty, too long or has a character outside `[A-Za-z0-9._/-]`.
    #[error("label key {0:?}: 1..=63 bytes of [A-Za-z0-9._/-], starting with a letter or digit")]
    Key(String),
    /// A value is too long or has a character outside `[A-Za-z0-9._-]`.
    #[error("label value {0:?}: 0..=63 bytes of [A-Za-z0-9._-]")]
    Value(String),
    /// More than [`MAX_LABELS`] labels.
    #[error("at most {MAX_LABELS} labels")]
    TooMany,
    /// A selector term is not `k=v`, `k!=v`, `k` or `!k`.
    #[error("selector term {0:?}: use key=value, key!=value, key or !key")]
    Term(String),
    /// An empty selector, or more than [`MAX_SELECTOR_TERMS`] terms.
    #[error("a selector needs 1..={MAX_SELECTOR_TERMS} terms")]
    Terms,
}

fn key_ok(k: &str) -> bool {
    !k.is_empty()
        && k.len() <= MAX_LABEL_KEY_BYTES
        && k.as_bytes()[0].is_ascii_alphanumeric()
        && k.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._/-".contains(&b))
}

fn value_ok(v: &str) -> bool {
    v.len() <= MAX_LABEL_VALUE_BYTES
        && v.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
}

/// Checks every key and value and the count.
pub fn validate(labels: &Labels) -> Result<(), Error> {
    if labels.len() > MAX_LABELS {
        return Err(Error::TooMany);
    }
    for (k, v) in labels {
        if !key_ok(k) {
            return Err(Error::Key(k.clone()));
        }
        if !value_ok(v) {
            return Err(Error::Value(v.clone()));
        }
    }
    Ok(())
}

/// Parses `k=v` pairs (as the CLI's `--label` takes them).
pub fn parse_pair(s: &str) -> Result<(String, String), Error> {
    let (k, v) = s.split_once('=').ok_or_else(|| Error::Key(s.to_owned()))?;
    if !key_ok(k) {
        return Err(Error::Key(k.to_owned()));
    }
    if !value_ok(v) {
        return Err(Error::Value(v.to_owned()));
    }
    Ok((k.to_owned(), v.to_owned()))
}

/// One selector term.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Term {
    /// `k=v`.
    Equals(String, String),
    /// `k!=v` (true when the key is absent too).
    NotEquals(String, String),
    /// `k`.
    Exists(String),
    /// `!k`.
    Absent(String),
}

/// Terms that must all hold.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Selector(pub Vec<Term>);

impl Selector {
    /// Parses `version=1.4,team!=ops,canary,!legacy`.
    pub fn parse(s: &str) -> Result<Selector, Error> {
        let terms: Vec<&str> = s.split(',').map(str::trim).collect();
        if s.trim().is_empty() || terms.len() > MAX_SELECTOR_TERMS {
            return Err(Error::Terms);
        }
        let mut out = Vec::with_capacity(terms.len());
        for t in terms {
            let bad = || Error::Term(t.to_owned());
            let term = if let Some((k, v)) = t.split_once("!=") {
                Term::NotEquals(k.trim().to_owned(), v.trim().to_owned())
            } else if let Some((k, v)) = t.split_once('=') {
                Term::Equals(k.trim().to_owned(), v.trim().to_owned())
            } else if let Some(k) = t.strip_prefix('!') {
                Term::Absent(k.trim().to_owned())
            } else {
                Term::Exists(t.to_owned())
            };
            let (k, v) = match &term {
                Term::Equals(k, v) | Term::NotEquals(k, v) => (k, Some(v)),
                Term::Exists(k) | Term::Absent(k) => (k, None),
            };
            if !key_ok(k) || v.is_some_and(|v| !value_ok(v)) {
                return Err(bad());
            }
            out.push(term);
        }
        Ok(Selector(out))
    }

    /// Whether `labels` satisfy every term.
    pub fn matches(&self, labels: &Labels) -> bool {
        self.0.iter().all(|t| match t {
            Term::Equals(k, v) => labels.get(k) == Some(v),
            Term::NotEquals(k, v) => labels.get(k) != Some(v),
            Term::Exists(k) => labels.contains_key(k),
            Term::Absent(k) => !labels.contains_key(k),
        })
    }
}

impl fmt::Display for Selector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, t) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            match t {
                Term::Equals(k, v) => write!(f, "{k}={v}")?,
                Term::NotEquals(k, v) => write!(f, "{k}!={v}")?,
                Term::Exists(k) => write!(f, "{k}")?,
                Term::Absent(k) => write!(f, "!{k}")?,
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> Labels {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn selectors_match_every_term() {
        let l = labels(&[("version", "1.4"), ("team", "payments"), ("canary", "")]);
        let m = |s: &str| Selector::parse(s).map(|sel| sel.matches(&l));
        assert_eq!(m("version=1.4"), Ok(true));
        assert_eq!(m("version=1.5"), Ok(false));
        assert_eq!(m("version=1.4,team=payments"), Ok(true));
        assert_eq!(m("version=1.4,team=ops"), Ok(false));
        assert_eq!(m("team!=ops"), Ok(true));
        assert_eq!(m("region!=eu"), Ok(true), "absent key: not equal");
        assert_eq!(m("canary"), Ok(true));
        assert_eq!(m("!canary"), Ok(false));
        assert_eq!(m("!legacy, version = 1.4"), Ok(true));
    }

    #[test]
    fn bad_labels_and_selectors_are_named() {
        assert_eq!(Selector::parse(""), Err(Error::Terms));
        assert_eq!(Selector::parse("a=b,"), Err(Error::Term(String::new())));
        assert!(matches!(Selector::parse("=x"), Err(Error::Term(_))));
        assert!(matches!(Selector::parse("k=v v"), Err(Error::Term(_))));
        assert!(matches!(Selector::parse("!"), Err(Error::Term(_))));
        let many = vec!["a=b"; MAX_SELECTOR_TERMS + 1].join(",");
        assert_eq!(Selector::parse(&many), Err(Error::Terms));
        assert!(validate(&labels(&[("version", "1.4"), ("app.io/name", "x-y_z")])).is_ok());
        assert_eq!(
            validate(&labels(&[("-x", "1")])),
            Err(Error::Key("-x".into()))
        );
        assert_eq!(
            validate(&labels(&[("k", "a b")])),
            Err(Error::Value("a b".into()))
        );
        let too_many: Labels = (0..=MAX_LABELS)
            .map(|i| (format!("k{i}"), String::new()))
            .collect();
        assert_eq!(validate(&too_many), Err(Error::TooMany));
        assert_eq!(
            parse_pair("version=1.4"),
            Ok(("version".into(), "1.4".into()))
        );
        assert!(parse_pair("version").is_err());
    }

    #[test]
    fn a_selector_prints_as_it_parses() {
        let s = "version=1.4,team!=ops,canary,!legacy";
        let sel = Selector::parse(s).map(|x| x.to_string());
        assert_eq!(sel.as_deref(), Ok(s));
    }
}
