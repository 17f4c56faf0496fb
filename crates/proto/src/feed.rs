//! Conversions between the feed's wire messages and `veto-core`'s
//! [`EdgeChange`], in one place for both ends of the stream.

use veto_core::{EdgeChange, Jti, Kid};

use crate::v1 as pb;
use crate::v1::change::Kind;

/// A change on the wire that does not decode into a known change.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("undecodable change at revision {revision}: {why}")]
pub struct BadChange {
    /// Revision of the change.
    pub revision: u64,
    /// What is wrong.
    pub why: &'static str,
}

/// Encodes one change at `revision`.
pub fn change_to_pb(revision: u64, c: &EdgeChange) -> pb::Change {
    let kind = match c {
        EdgeChange::KeyPublished { kid, public } => Kind::KeyPublished(pb::KeyPublished {
            kid: kid.to_string(),
            public_key: bytes::Bytes::copy_from_slice(public),
        }),
        EdgeChange::KeyRefused { kid } => Kind::KeyState(pb::KeyStateChanged {
            kid: kid.to_string(),
            state: pb::KeyStateForEdge::Refused as i32,
        }),
        EdgeChange::TokenRevoked {
            jti,
            exp,
            effective_at,
            grace_ms,
        } => Kind::TokenRevoked(pb::TokenRevoked {
            jti: jti.to_string(),
            exp: *exp,
            effective_at: *effective_at,
            grace_ms: *grace_ms,
        }),
        EdgeChange::SubjectRevoked {
            sub,
            before,
            drop_after,
            before_revision,
        } => Kind::SubjectRevoked(pb::SubjectRevoked {
            sub: sub.clone(),
            // What an edge that knows only `before` must do to refuse at
            // least every token this cutoff covers.
            before: if *before_revision > 0 {
                i64::MAX
            } else {
                *before
            },
            drop_after: *drop_after,
            before_revision: *before_revision,
            iat_cutoff: Some(*before),
        }),
        EdgeChange::FamilyRevoked { family, drop_after } => {
            Kind::FamilyRevoked(pb::FamilyRevoked {
                family: family.to_string(),
                drop_after: *drop_after,
            })
        }
        EdgeChange::Swept { cutoff } => Kind::Swept(pb::Swept { cutoff: *cutoff }),
    };
    pb::Change {
        revision,
        kind: Some(kind),
        trace_context: Default::default(),
    }
}

/// Decodes one change. Unknown kinds and malformed ids are errors: the edge
/// resyncs instead of applying blindly.
pub fn change_from_pb(c: &pb::Change) -> Result<(u64, EdgeChange), BadChange> {
    let bad = |why| BadChange {
        revision: c.revision,
        why,
    };
    let ch = match c
        .kind
        .as_ref()
        .ok_or(bad("unknown or missing change kind"))?
    {
        Kind::KeyPublished(k) => EdgeChange::KeyPublished {
            kid: k.kid.parse::<Kid>().map_err(|_| bad("bad kid"))?,
            public: k
                .public_key
                .as_ref()
                .try_into()
                .map_err(|_| bad("public key is not 32 bytes"))?,
        },
        Kind::KeyState(k) => match pb::KeyStateForEdge::try_from(k.state) {
            Ok(pb::KeyStateForEdge::Refused) => EdgeChange::KeyRefused {
                kid: k.kid.parse::<Kid>().map_err(|_| bad("bad kid"))?,
            },
            _ => return Err(bad("unsupported key state")),
        },
        Kind::TokenRevoked(t) => EdgeChange::TokenRevoked {
            jti: t.jti.parse::<Jti>().map_err(|_| bad("bad jti"))?,
            exp: t.exp,
            effective_at: t.effective_at,
            grace_ms: t.grace_ms,
        },
        Kind::SubjectRevoked(s) => EdgeChange::SubjectRevoked {
            sub: s.sub.clone(),
            before: s.iat_cutoff.unwrap_or(s.before),
            drop_after: s.drop_after,
            before_revision: s.before_revision,
        },
        Kind::FamilyRevoked(f) => EdgeChange::FamilyRevoked {
            family: f.family.parse::<Jti>().map_err(|_| bad("bad family"))?,
            drop_after: f.drop_after,
        },
        Kind::Swept(s) => EdgeChange::Swept { cutoff: s.cutoff },
    };
    Ok((c.revision, ch))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_reject_unknown() {
        let all = [
            EdgeChange::KeyPublished {
                kid: Kid([1; 16]),
                public: [2; 32],
            },
            EdgeChange::KeyRefused { kid: Kid([1; 16]) },
            EdgeChange::TokenRevoked {
                jti: Jti([3; 16]),
                exp: 5,
                effective_at: 4,
                grace_ms: 30_000,
            },
            EdgeChange::SubjectRevoked {
                sub: "s".into(),
                before: 1,
                drop_after: 2,
                before_revision: 0,
            },
            EdgeChange::SubjectRevoked {
                sub: "s".into(),
                before: i64::MIN,
                drop_after: 2,
                before_revision: 17,
            },
            EdgeChange::FamilyRevoked {
                family: Jti([4; 16]),
                drop_after: 9,
            },
            EdgeChange::Swept { cutoff: 7 },
        ];
        for (i, c) in all.iter().enumerate() {
            let p = change_to_pb(i as u64 + 1, c);
            assert_eq!(change_from_pb(&p).unwrap(), (i as u64 + 1, c.clone()));
        }
        let unknown = pb::Change {
            revision: 3,
            kind: None,
            trace_context: Default::default(),
        };
        assert!(change_from_pb(&unknown).is_err());
    }

    #[test]
    fn subject_cutoffs_stay_safe_for_older_edges() {
        // An edge that reads only `before` refuses at least what a
        // revision cutoff covers.
        let c = EdgeChange::SubjectRevoked {
            sub: "s".into(),
            before: i64::MIN,
            drop_after: 2,
            before_revision: 17,
        };
        let Some(Kind::SubjectRevoked(p)) = change_to_pb(1, &c).kind else {
            panic!("not a subject revoke");
        };
        assert_eq!(p.before, i64::MAX);
        // A message from a server that predates iat_cutoff is a time cutoff.
        let legacy = pb::Change {
            revision: 4,
            kind: Some(Kind::SubjectRevoked(pb::SubjectRevoked {
                sub: "s".into(),
                before: 1_000,
                drop_after: 2_000,
                before_revision: 0,
                iat_cutoff: None,
            })),
            trace_context: Default::default(),
        };
        assert_eq!(
            change_from_pb(&legacy).unwrap().1,
            EdgeChange::SubjectRevoked {
                sub: "s".into(),
                before: 1_000,
                drop_after: 2_000,
                before_revision: 0,
            }
        );
    }
}
