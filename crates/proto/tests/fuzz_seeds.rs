//! The fuzz targets' seed inputs (`fuzz/seeds/`) are built here from the
//! real encoders, and checked against the committed files so they follow
//! format changes: `VETO_WRITE_FUZZ_SEEDS=1 cargo test -p veto-proto --test
//! fuzz_seeds` rewrites them.

use std::path::PathBuf;

use prost::Message;
use veto_core::command::NewToken;
use veto_core::{token, Actor, Claims, Command, EdgeChange, Jti, Kid};
use veto_proto as pb;
use veto_proto::feed::change_to_pb;

const KID: Kid = Kid([1u8; 16]);

fn key() -> ed25519_dalek::SigningKey {
    // the same fixed key as fuzz/src/lib.rs
    ed25519_dalek::SigningKey::from_bytes(&[7u8; 32])
}

fn claims(aud: Option<&str>) -> Claims {
    Claims {
        jti: Jti([2u8; 16]),
        sub: "alice".into(),
        scope: "read write".into(),
        iat: 1_700_000_000,
        nbf: 1_700_000_000,
        exp: 1_900_000_000,
        fam: Jti([2u8; 16]),
        aud: aud.map(str::to_string),
        rev: 3,
    }
}

fn seeds() -> Vec<(&'static str, &'static str, Vec<u8>)> {
    let mut out = Vec::new();
    let valid = token::encode(&claims(None), KID, &key());
    let mut tampered = valid.clone().into_bytes();
    if let Some(b) = tampered.last_mut() {
        *b = if *b == b'A' { b'B' } else { b'A' };
    }
    out.push(("token", "valid", valid.into_bytes()));
    out.push(("token", "tampered", tampered));
    out.push((
        "token",
        "audience",
        token::encode(&claims(Some("api")), KID, &key()).into_bytes(),
    ));

    let pk = key().verifying_key().to_bytes();
    let changes = [
        EdgeChange::KeyPublished {
            kid: Kid([3u8; 16]),
            public: pk,
        },
        EdgeChange::TokenRevoked {
            jti: Jti([2u8; 16]),
            exp: 1_900_000_000,
            effective_at: 0,
            grace_ms: 30_000,
        },
        EdgeChange::SubjectRevoked {
            sub: "bob".into(),
            before: 1_700_000_100,
            drop_after: 1_900_000_000,
            before_revision: 0,
        },
        EdgeChange::SubjectRevoked {
            sub: "carol".into(),
            before: i64::MIN,
            drop_after: 1_900_000_000,
            before_revision: 4,
        },
        EdgeChange::FamilyRevoked {
            family: Jti([4u8; 16]),
            drop_after: 1_900_000_000,
        },
        EdgeChange::KeyRefused {
            kid: Kid([3u8; 16]),
        },
        EdgeChange::Swept {
            cutoff: 1_700_000_000,
        },
    ];
    let batch = pb::ChangeBatch {
        from_revision: 1,
        to_revision: 1 + changes.len() as u64,
        changes: changes
            .iter()
            .enumerate()
            .map(|(i, c)| change_to_pb(i as u64 + 2, c))
            .collect(),
    };
    let msg = |m| pb::FeedMessage { msg: Some(m) }.encode_to_vec();
    out.push((
        "feed",
        "changes",
        msg(pb::feed_message::Msg::Changes(batch.clone())),
    ));
    let data = batch.encode_to_vec();
    out.push((
        "feed",
        "snapshot",
        msg(pb::feed_message::Msg::Snapshot(pb::SnapshotChunk {
            revision: 9,
            offset: 0,
            data: data.into(),
            last: true,
            sha256: Vec::new().into(),
        })),
    ));
    out.push((
        "feed",
        "sync",
        msg(pb::feed_message::Msg::SyncReply(pb::SyncReply {
            nonce: 1,
            revision: 1,
            leader_unix_ms: 1_700_000_000_123,
        })),
    ));

    let actor = || Actor("operator:ops".into());
    let t = NewToken {
        jti: Jti([2u8; 16]),
        sub: "alice".into(),
        scopes: vec!["read".into()],
        aud: None,
        iat: 1_700_000_000,
        nbf: 1_700_000_000,
        exp: 1_900_000_000,
        fam: Jti([2u8; 16]),
        kid: KID,
        rev: 3,
        owner: String::new(),
        description: String::new(),
        labels: Default::default(),
        refresh_key: String::new(),
    };
    let seq = vec![
        Command::PublishKey {
            kid: KID,
            public: pk,
            sealed: vec![1, 2, 3],
            at: 1_700_000_000,
            actor: actor(),
        },
        Command::ActivateKey {
            kid: KID,
            at: 1_700_000_000,
            actor: actor(),
        },
        Command::Issue {
            token: t.clone(),
            actor: actor(),
        },
        Command::Refresh {
            predecessor: Jti([2u8; 16]),
            successor: NewToken {
                jti: Jti([5u8; 16]),
                ..t.clone()
            },
            revoke_at: 1_700_000_060,
            at: 1_700_000_001,
            actor: actor(),
        },
        Command::RevokeToken {
            jti: Jti([5u8; 16]),
            reason: "leaked".into(),
            at: 1_700_000_002,
            actor: actor(),
            presented: None,
        },
        Command::RevokeToken {
            jti: Jti([9u8; 16]),
            reason: "presented".into(),
            at: 1_700_000_002,
            actor: actor(),
            presented: Some(veto_core::command::Presented {
                exp: 1_800_000_000,
                sub: "mallory".into(),
                kid: KID,
            }),
        },
        Command::RevokeSubject {
            sub: "alice".into(),
            before: i64::MIN,
            by_revision: true,
            drop_after: 1_900_000_000,
            reason: String::new(),
            at: 1_700_000_003,
            actor: actor(),
        },
        Command::RevokeFamily {
            family: Jti([2u8; 16]),
            drop_after: 1_900_000_000,
            reason: String::new(),
            at: 1_700_000_004,
            actor: actor(),
        },
        Command::Traced {
            trace: [("traceparent".to_string(), "00-x-y-01".to_string())].into(),
            command: Box::new(Command::RetireKey {
                kid: KID,
                force: true,
                at: 1_700_000_005,
                actor: actor(),
            }),
        },
        Command::RevokeKey {
            kid: KID,
            reason: "compromised".into(),
            at: 1_700_000_006,
            actor: actor(),
        },
        Command::Sweep {
            cutoff: 1_900_000_001,
        },
    ];
    let json = |v: &dyn erased::Json| v.json();
    out.push(("command", "sequence", json(&seq)));
    out.push(("command", "one", json(&seq[4])));
    out
}

mod erased {
    pub trait Json {
        fn json(&self) -> Vec<u8>;
    }
    impl<T: serde::Serialize> Json for T {
        fn json(&self) -> Vec<u8> {
            serde_json::to_vec_pretty(self).unwrap_or_default()
        }
    }
}

#[test]
fn fuzz_seeds_match_the_encoders() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/seeds");
    let write = std::env::var("VETO_WRITE_FUZZ_SEEDS").as_deref() == Ok("1");
    let mut stale = Vec::new();
    for (target, name, bytes) in seeds() {
        assert!(!bytes.is_empty(), "{target}/{name} is empty");
        let p = dir.join(target).join(name);
        if write {
            std::fs::create_dir_all(dir.join(target)).unwrap_or_default();
            std::fs::write(&p, &bytes).unwrap_or_default();
        } else if std::fs::read(&p).ok().as_deref() != Some(bytes.as_slice()) {
            stale.push(p.display().to_string());
        }
    }
    assert!(
        stale.is_empty(),
        "seed files differ from the encoders (rewrite with VETO_WRITE_FUZZ_SEEDS=1): {stale:?}"
    );
}
