//! Signing private keys are never stored in the clear (docs/design.md, "Storage" and "Security"):
//! after issuing with two keys and building a snapshot, every node is
//! stopped and every RocksDB record (read back through RocksDB, so
//! compressed blocks are searched decompressed) and every file of every
//! data directory is searched for each private key in every encoding veto
//! or its libraries could have written it in.

use std::path::Path;
use std::time::Duration;

use base64::Engine;
use veto_core::Kek;
use veto_proto as pb;
use veto_testkit::{Cluster, ClusterOptions};
use veto_tests::issue;

/// The encodings a 32-byte secret could be stored in.
fn forms(secret: &[u8]) -> Vec<Vec<u8>> {
    use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD};
    let mut v = vec![
        secret.to_vec(),
        hex::encode(secret).into_bytes(),
        hex::encode_upper(secret).into_bytes(),
        // serde_json's form of a byte array or Vec<u8>.
        serde_json::to_vec(&secret.to_vec()).unwrap_or_default(),
    ];
    for e in [STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD] {
        v.push(e.encode(secret).into_bytes());
    }
    v
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && hay.windows(needle.len()).any(|w| w == needle)
}

fn files_under(dir: &Path, out: &mut Vec<std::path::PathBuf>) -> std::io::Result<()> {
    for e in std::fs::read_dir(dir)? {
        let p = e?.path();
        if p.is_dir() {
            files_under(&p, out)?;
        } else {
            out.push(p);
        }
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_signing_private_key_is_stored_in_the_clear() -> anyhow::Result<()> {
    let mut cluster = Cluster::start(ClusterOptions {
        // A snapshot (the whole state, keys included) is built and stored.
        extra_config: "[raft]\nsnapshot_logs_since_last = 20\n".into(),
        ..ClusterOptions::default()
    })
    .await?;
    let leader = cluster.wait_leader(Duration::from_secs(20)).await?;
    let l = cluster.node(leader)?;
    for i in 0..15 {
        issue(l, &format!("user:{i}"), 600).await?;
    }
    // A second key, published and activated, signs more tokens.
    let mut admin = l.admin()?;
    let published = admin
        .rotate_signing_key(pb::RotateSigningKeyRequest {
            stage: pb::KeyStage::Publish as i32,
            ..Default::default()
        })
        .await?
        .into_inner();
    let kid = published.kid;
    admin
        .rotate_signing_key(pb::RotateSigningKeyRequest {
            stage: pb::KeyStage::Activate as i32,
            kid,
            force: true,
            ..Default::default()
        })
        .await?;
    let mut last = 0;
    for i in 0..15 {
        last = issue(l, &format!("user:b{i}"), 600).await?.revision;
    }
    cluster.wait_applied(last, Duration::from_secs(10)).await?;
    let kek = Kek::parse(cluster.kek())?;
    let ids: Vec<u64> = cluster.nodes.iter().map(|n| n.id).collect();
    for id in &ids {
        cluster.stop(*id).await?;
    }

    for n in &cluster.nodes {
        let db = n.data_dir.join("db");
        // The private keys, opened with the KEK the way the leader does.
        let (state, _) = veto_store::offline::read_state(&db, n.id)?;
        let keys: Vec<_> = state
            .keys()
            .filter(|k| !k.sealed.is_empty())
            .map(|k| Ok((kek.open(k.kid, &k.sealed)?, k.public, k.sealed.clone())))
            .collect::<anyhow::Result<_>>()?;
        anyhow::ensure!(keys.len() >= 2, "node {}: {} sealed keys", n.id, keys.len());

        let records = veto_store::offline::raw_records(&db)?;
        let mut files = Vec::new();
        files_under(&n.data_dir, &mut files)?;
        let blobs: Vec<(String, Vec<u8>)> = files
            .iter()
            .map(|p| Ok((p.display().to_string(), std::fs::read(p)?)))
            .collect::<std::io::Result<_>>()?;
        anyhow::ensure!(
            records.len() > 30,
            "node {}: only {} records",
            n.id,
            records.len()
        );
        for (secret, public, sealed) in &keys {
            for form in forms(secret) {
                for (cf, k, v) in &records {
                    assert!(
                        !contains(v, &form) && !contains(k, &form),
                        "node {}: a private key is in the clear in column family {cf}",
                        n.id
                    );
                }
                for (path, bytes) in &blobs {
                    assert!(
                        !contains(bytes, &form),
                        "a private key is in the clear in {path}"
                    );
                }
            }
            // The search sees where keys live: the public half and the
            // sealed private half are found in the same records.
            let public_json = serde_json::to_vec(&public.to_vec())?;
            let sealed_json = serde_json::to_vec(sealed)?;
            assert!(
                records.iter().any(|(_, _, v)| contains(v, &public_json)),
                "node {}: the public key was not found either; the search is blind",
                n.id
            );
            assert!(
                records.iter().any(|(_, _, v)| contains(v, &sealed_json)),
                "node {}: the sealed key was not found; the search is blind",
                n.id
            );
        }
    }
    Ok(())
}
