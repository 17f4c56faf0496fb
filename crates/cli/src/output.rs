//! How each answer is printed: human text by default, one JSON object with
//! `--json`. Every command's output lives here, so the two forms stay side
//! by side.

use serde_json::json;
use veto_proto as pb;

pub(crate) fn role(r: i32) -> &'static str {
    match pb::Role::try_from(r) {
        Ok(pb::Role::Leader) => "leader",
        Ok(pb::Role::Follower) => "follower",
        Ok(pb::Role::Candidate) => "candidate",
        Ok(pb::Role::Learner) => "learner",
        Ok(pb::Role::Shutdown) => "shutdown",
        _ => "unknown",
    }
}

pub(crate) fn token_status(s: i32) -> &'static str {
    match pb::TokenStatus::try_from(s) {
        Ok(pb::TokenStatus::Active) => "active",
        Ok(pb::TokenStatus::Revoked) => "revoked",
        Ok(pb::TokenStatus::RevokePending) => "revoke-pending",
        Ok(pb::TokenStatus::Expired) => "expired",
        _ => "unknown",
    }
}

pub(crate) fn key_state(s: i32) -> &'static str {
    match pb::KeyState::try_from(s) {
        Ok(pb::KeyState::Published) => "published",
        Ok(pb::KeyState::Active) => "active",
        Ok(pb::KeyState::Retiring) => "retiring",
        Ok(pb::KeyState::Retired) => "retired",
        Ok(pb::KeyState::Revoked) => "revoked",
        _ => "unknown",
    }
}

pub(crate) fn record_json(r: &pb::TokenRecord) -> serde_json::Value {
    json!({
        "jti": r.jti, "sub": r.sub, "scopes": r.scopes, "aud": r.aud, "iat": r.iat, "nbf": r.nbf,
        "exp": r.exp, "family": r.family, "kid": r.kid, "issued_revision": r.issued_revision,
        "successor": r.successor, "owner": r.owner, "description": r.description,
        "labels": r.labels, "issued_by": r.issued_by,
    })
}

pub(crate) fn info_json(t: &pb::TokenInfo) -> serde_json::Value {
    json!({
        "record": t.record.as_ref().map(record_json),
        "status": token_status(t.status),
        "revocation": t.revocation.as_ref().map(|r| json!({
            "kind": r.kind, "revision": r.revision, "effective_at_unix": r.effective_at_unix, "reason": r.reason,
        })),
        "revision": t.revision,
        "usage": t.usage.as_ref().map(|u| json!({
            "valid": u.valid, "revoked": u.revoked, "refused": u.refused,
            "first_used_unix": u.first_used_unix, "last_used_unix": u.last_used_unix,
            "edges": u.edges, "scopes_required": u.scopes_required, "scopes_unused": u.scopes_unused,
        })),
    })
}

pub(crate) fn membership_json(m: &Option<pb::MembershipInfo>) -> serde_json::Value {
    let m = m.clone().unwrap_or_default();
    let list = |v: &[pb::Member]| {
        v.iter()
            .map(|m| json!({"node_id": m.node_id, "addr": m.addr}))
            .collect::<Vec<_>>()
    };
    json!({ "voters": list(&m.voters), "learners": list(&m.learners) })
}

pub(crate) fn print_membership(json_out: bool, r: &pb::MembershipResponse) {
    if json_out {
        println!(
            "{}",
            json!({"revision": r.revision, "membership": membership_json(&r.membership)})
        );
        return;
    }
    println!("membership at revision {}", r.revision);
    print_members(&r.membership.clone().unwrap_or_default());
}

pub(crate) fn revoke_json(r: &pb::RevokeResponse) -> serde_json::Value {
    json!({"revision": r.revision, "already_revoked": r.already_revoked, "commit_ms": r.commit_ms,
           "propagation_ms": r.propagation_ms, "edges_confirmed": r.edges_confirmed,
           "edges_behind": r.edges_behind, "edges_unknown": r.edges_unknown})
}

pub(crate) fn print_revoke(json_out: bool, r: &pb::RevokeResponse, waited: bool) {
    if json_out {
        println!("{}", revoke_json(r));
        return;
    }
    if r.already_revoked {
        println!("already revoked at revision {}", r.revision);
    } else {
        println!(
            "revoked at revision {} (committed in {:.2} ms)",
            r.revision, r.commit_ms
        );
    }
    if waited {
        println!("{}", propagation_line(r));
    }
}

/// What a wait for the edges measured, in one line.
pub fn propagation_line(r: &pb::RevokeResponse) -> String {
    match r.propagation_ms {
        Some(p) => format!(
            "applied by all {} edges {p:.2} ms after commit",
            r.edges_confirmed
        ),
        None => {
            let mut parts = vec![format!(
                "NOT confirmed everywhere: {} edges applied it",
                r.edges_confirmed
            )];
            if !r.edges_behind.is_empty() {
                parts.push(format!("behind: {}", r.edges_behind.join(", ")));
            }
            if !r.edges_unknown.is_empty() {
                parts.push(format!(
                    "unknown (member did not answer): {}",
                    r.edges_unknown.join(", ")
                ));
            }
            if r.edges_confirmed == 0 && r.edges_behind.is_empty() && r.edges_unknown.is_empty() {
                parts.push("no edge is connected".into());
            }
            parts.join("; ")
        }
    }
}

pub(crate) fn print_info(t: &pb::TokenInfo) {
    let rec = t.record.clone().unwrap_or_default();
    println!("jti        {}", rec.jti);
    println!("status     {}", token_status(t.status));
    println!("sub        {}", rec.sub);
    println!("scopes     {}", rec.scopes.join(" "));
    if let Some(a) = &rec.aud {
        println!("aud        {a}");
    }
    println!("iat/exp    {} / {}", rec.iat, rec.exp);
    println!("family     {}", rec.family);
    println!("kid        {}", rec.kid);
    println!(
        "issued at  revision {} by {}",
        rec.issued_revision, rec.issued_by
    );
    println!("owner      {}", rec.owner);
    if !rec.description.is_empty() {
        println!("about      {}", rec.description);
    }
    if !rec.labels.is_empty() {
        let mut labels: Vec<String> = rec.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
        labels.sort();
        println!("labels     {}", labels.join(","));
    }
    if let Some(s) = &rec.successor {
        println!("successor  {s}");
    }
    if let Some(r) = &t.revocation {
        println!(
            "revoked    by {} at revision {}, from {} ({})",
            r.kind, r.revision, r.effective_at_unix, r.reason
        );
    }
    match &t.usage {
        Some(u) => {
            println!(
                "used       {} valid, {} refused as revoked, {} refused otherwise; first {} last {}",
                u.valid, u.revoked, u.refused, u.first_used_unix, u.last_used_unix
            );
            println!("edges      {}", u.edges.join(" "));
            if !u.scopes_unused.is_empty() {
                println!("unused     {} (never required)", u.scopes_unused.join(" "));
            }
        }
        None => println!("used       never (no edge has reported a verify)"),
    }
}

pub(crate) fn print_usage(j: bool, r: &pb::UsageResponse, by_subject: bool) {
    let key = if by_subject { "subject" } else { "owner" };
    if j {
        let groups: Vec<_> = r
            .groups
            .iter()
            .map(|g| {
                json!({key: g.key, "tokens": g.tokens, "active": g.active,
                "never_used": g.never_used, "verifies": g.verifies,
                "last_used_unix": g.last_used_unix, "revoked_attempts": g.revoked_attempts})
            })
            .collect();
        let over: Vec<_> = r
            .over_privileged
            .iter()
            .map(|o| {
                json!({"jti": o.jti, "sub": o.sub, "owner": o.owner,
                "granted": o.granted, "unused": o.unused, "verifies": o.verifies})
            })
            .collect();
        println!(
            "{}",
            json!({"groups": groups, "over_privileged": over,
                   "least_privilege_ratio": r.least_privilege_ratio,
                   "active": r.active, "never_used": r.never_used, "revision": r.revision})
        );
        return;
    }
    println!(
        "{:<24}  {:>7}  {:>7}  {:>10}  {:>10}  {:>12}  {:>8}",
        key, "tokens", "active", "never used", "verifies", "last used", "revoked"
    );
    for g in &r.groups {
        println!(
            "{:<24}  {:>7}  {:>7}  {:>10}  {:>10}  {:>12}  {:>8}",
            g.key,
            g.tokens,
            g.active,
            g.never_used,
            g.verifies,
            g.last_used_unix,
            g.revoked_attempts
        );
    }
    println!(
        "active {}, never used {}, least privilege {:.1} %",
        r.active,
        r.never_used,
        r.least_privilege_ratio * 100.0
    );
    for o in &r.over_privileged {
        println!(
            "over-privileged {} ({} / {}): unused {}",
            o.jti,
            o.sub,
            o.owner,
            o.unused.join(" ")
        );
    }
}

pub(crate) fn print_keys(j: bool, r: &pb::ListKeysResponse) {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    let age = |k: &pb::KeyInfo| match k.activated_unix {
        0 => None,
        t => Some(now.saturating_sub(t).max(0)),
    };
    let rotation = r.rotation.as_ref().map(|s| {
        let p = s.policy.unwrap_or_default();
        json!({"period_seconds": p.period_seconds, "publish_lead_seconds": p.publish_lead_seconds,
               "activation_timeout_seconds": p.activation_timeout_seconds,
               "active_key_age_seconds": s.active_key_age_seconds,
               "next_publish_unix": s.next_publish_unix,
               "next_activation_unix": s.next_activation_unix, "pending_kid": s.pending_kid})
    });
    if j {
        let ks: Vec<_> = r
            .keys
            .iter()
            .map(|k| json!({"kid": k.kid, "state": key_state(k.state), "public_key": k.public_key,
                            "published_revision": k.published_revision, "max_token_exp": k.max_token_exp,
                            "published_unix": k.published_unix, "activated_unix": k.activated_unix,
                            "age_seconds": age(k)}))
            .collect();
        println!(
            "{}",
            json!({"keys": ks, "revision": r.revision, "rotation": rotation})
        );
        return;
    }
    println!(
        "{:<32}  {:<10}  {:>9}  {:>12}  {:>10}",
        "kid", "state", "published", "max exp", "age"
    );
    for k in &r.keys {
        println!(
            "{:<32}  {:<10}  {:>9}  {:>12}  {:>10}",
            k.kid,
            key_state(k.state),
            k.published_revision,
            k.max_token_exp,
            age(k).map_or_else(|| "-".to_owned(), |a| format!("{a}s"))
        );
    }
    match &r.rotation {
        Some(s) => {
            let p = s.policy.unwrap_or_default();
            println!(
                "rotation: every {}s (published {}s ahead); active key {}s old; next publish at {}, next activation at {}{}",
                p.period_seconds,
                p.publish_lead_seconds,
                s.active_key_age_seconds,
                s.next_publish_unix,
                s.next_activation_unix,
                if s.pending_kid.is_empty() {
                    String::new()
                } else {
                    format!("; pending {}", s.pending_kid)
                }
            );
        }
        None => println!("rotation: by hand (no policy: `veto policy set-rotation`)"),
    }
}

pub(crate) fn print_issuer_policies(j: bool, r: &pb::ListIssuerPoliciesResponse) {
    if j {
        let v: Vec<_> = r
            .policies
            .iter()
            .map(|n| {
                let p = n.policy.clone().unwrap_or_default();
                json!({"name": n.name, "subjects": p.subjects, "subject_prefixes": p.subject_prefixes,
                       "scopes": p.scopes, "max_ttl_seconds": p.max_ttl_seconds,
                       "required_labels": p.required_labels})
            })
            .collect();
        println!("{}", json!({"policies": v, "revision": r.revision}));
        return;
    }
    for n in &r.policies {
        let p = n.policy.clone().unwrap_or_default();
        println!(
            "{}: subjects {:?} prefixes {:?} scopes {:?} max ttl {}s required labels {:?}",
            n.name, p.subjects, p.subject_prefixes, p.scopes, p.max_ttl_seconds, p.required_labels
        );
    }
}

pub(crate) fn print_audit_verified(
    j: bool,
    node_id: u64,
    addr: &str,
    v: &crate::commands::Verified,
) {
    if j {
        println!(
            "{}",
            json!({"node_id": node_id, "addr": addr, "ok": true, "checked": v.checked,
                   "not_held": v.not_held, "pruned_through_seq": v.pruned_seq,
                   "head_seq": v.head_seq, "head_hash": v.head_hash})
        );
        return;
    }
    println!(
        "node {node_id} ({addr}): ok, {} entries chained to head {} ({}){}{}",
        v.checked,
        v.head_seq,
        v.head_hash,
        if v.pruned_seq > 0 {
            format!(", retention dropped entries 1..={}", v.pruned_seq)
        } else {
            String::new()
        },
        if v.not_held > 0 {
            format!(", {} entries held by peers (snapshot install)", v.not_held)
        } else {
            String::new()
        }
    );
}

pub(crate) fn print_audit_broken(j: bool, node_id: u64, addr: &str, why: &str) {
    if j {
        println!(
            "{}",
            json!({"node_id": node_id, "addr": addr, "ok": false, "error": why})
        );
        return;
    }
    println!("node {node_id} ({addr}): BROKEN: {why}");
}

pub(crate) fn print_status(j: bool, s: &pb::StatusResponse) {
    if j {
        println!(
            "{}",
            json!({
                "node_id": s.node_id, "role": role(s.role), "term": s.term, "leader_id": s.leader_id,
                "leader_addr": s.leader_addr, "commit_index": s.commit_index,
                "applied_index": s.applied_index, "last_log_index": s.last_log_index,
                "snapshot_index": s.snapshot_index, "purged_index": s.purged_index,
                "membership": membership_json(&s.membership), "tokens": s.tokens,
                "revocations": s.revocations, "active_kid": s.active_kid,
            })
        );
        return;
    }
    println!("node {} ({}), term {}", s.node_id, role(s.role), s.term);
    println!("leader      {} {}", s.leader_id, s.leader_addr);
    println!("commit      {}", s.commit_index);
    println!("applied     {}", s.applied_index);
    println!(
        "last log    {}  (snapshot {}, purged {})",
        s.last_log_index, s.snapshot_index, s.purged_index
    );
    println!("tokens      {}  revocations {}", s.tokens, s.revocations);
    let kid = if s.active_kid.is_empty() {
        "-"
    } else {
        &s.active_kid
    };
    println!("active key  {kid}");
    print_members(&s.membership.clone().unwrap_or_default());
}

fn print_members(m: &pb::MembershipInfo) {
    for v in &m.voters {
        println!("  voter   {:>4}  {}", v.node_id, v.addr);
    }
    for l in &m.learners {
        println!("  learner {:>4}  {}", l.node_id, l.addr);
    }
}

pub(crate) fn print_issued(j: bool, r: &pb::IssueResponse) {
    let rec = r.record.clone().unwrap_or_default();
    if j {
        println!(
            "{}",
            json!({"token": r.token, "record": record_json(&rec), "revision": r.revision})
        );
    } else {
        println!("{}", r.token);
        eprintln!(
            "jti {}  sub {}  exp {}  kid {}  revision {}",
            rec.jti, rec.sub, rec.exp, rec.kid, r.revision
        );
    }
}

pub(crate) fn print_refreshed(j: bool, r: &pb::RefreshResponse) {
    let s = r.successor.clone().unwrap_or_default();
    let rec = s.record.clone().unwrap_or_default();
    if j {
        println!(
            "{}",
            json!({"token": s.token, "record": record_json(&rec), "revision": s.revision,
                   "predecessor_revoked_at_unix": r.predecessor_revoked_at_unix})
        );
    } else {
        println!("{}", s.token);
        eprintln!(
            "jti {}  family {}  revision {}  predecessor refused from {}",
            rec.jti, rec.family, s.revision, r.predecessor_revoked_at_unix
        );
    }
}

pub(crate) fn print_token_list(j: bool, r: &pb::ListTokensResponse) {
    if j {
        println!(
            "{}",
            json!({"tokens": r.tokens.iter().map(info_json).collect::<Vec<_>>(),
                   "next_page_token": r.next_page_token, "revision": r.revision})
        );
        return;
    }
    println!(
        "{:<32}  {:<14}  {:<20}  {:<20}  {:>10}",
        "jti", "status", "sub", "owner", "exp"
    );
    for t in &r.tokens {
        let rec = t.record.clone().unwrap_or_default();
        println!(
            "{:<32}  {:<14}  {:<20}  {:<20}  {:>10}",
            rec.jti,
            token_status(t.status),
            rec.sub,
            rec.owner,
            rec.exp
        );
    }
    if !r.next_page_token.is_empty() {
        println!("more: --page-token {}", r.next_page_token);
    }
}

pub(crate) fn print_rewrapped(j: bool, r: &pb::RewrapKeysResponse) {
    if j {
        println!(
            "{}",
            json!({"rewrapped": r.rewrapped, "kek_fingerprint": r.kek_fingerprint, "revision": r.revision})
        );
    } else if r.rewrapped.is_empty() {
        println!("every key is already sealed with KEK {}", r.kek_fingerprint);
    } else {
        println!(
            "re-sealed {} key(s) with KEK {} (revision {}): {}",
            r.rewrapped.len(),
            r.kek_fingerprint,
            r.revision,
            r.rewrapped.join(", ")
        );
    }
}

pub(crate) fn print_rotated(j: bool, r: &pb::RotateSigningKeyResponse, waited: bool) {
    if j && waited {
        if let Some(e) = &r.edges {
            println!("{}", revoke_json(e));
        }
    } else if !j {
        println!("key {} at revision {}", r.kid, r.revision);
        if let (true, Some(e)) = (waited, &r.edges) {
            println!("{}", propagation_line(e));
        }
    }
    print_keys(
        j,
        &pb::ListKeysResponse {
            keys: r.keys.clone(),
            revision: r.revision,
            rotation: None,
        },
    );
}

pub(crate) fn print_audit_event(j: bool, e: &pb::AuditEvent) {
    if j {
        println!(
            "{}",
            json!({"revision": e.revision, "at_unix": e.at_unix, "actor": e.actor,
                "action": e.action, "subject": e.subject, "target": e.target,
                "reason": e.reason, "seq": e.seq, "prev_hash": e.prev_hash, "hash": e.hash})
        );
        return;
    }
    let reason = if e.reason.is_empty() {
        String::new()
    } else {
        format!("  ({})", e.reason)
    };
    println!(
        "{:>8}  {:>10}  {:<24} {:<15} {:<20} {}{reason}",
        e.revision, e.at_unix, e.actor, e.action, e.subject, e.target
    );
}

pub(crate) fn print_edges(j: bool, all: &[pb::EdgeInfo]) {
    if j {
        let v: Vec<_> = all
            .iter()
            .map(|e| json!({"edge_id": e.edge_id, "node_id": e.node_id, "connected": e.connected,
                             "applied_revision": e.applied_revision, "lag_revisions": e.lag_revisions,
                             "lag_ms": e.lag_ms, "fresh_age_ms": e.fresh_age_ms, "ack_age_ms": e.ack_age_ms}))
            .collect();
        println!("{}", json!({ "edges": v }));
        return;
    }
    println!(
        "{:<16} {:>5} {:>9} {:>10} {:>8} {:>9} {:>10}",
        "edge", "node", "connected", "applied", "lag rev", "lag ms", "fresh age"
    );
    for e in all {
        let fresh = if e.fresh_age_ms < 0.0 {
            "-".to_string()
        } else {
            format!("{:.0} ms", e.fresh_age_ms)
        };
        println!(
            "{:<16} {:>5} {:>9} {:>10} {:>8} {:>9.1} {:>10}",
            e.edge_id, e.node_id, e.connected, e.applied_revision, e.lag_revisions, e.lag_ms, fresh
        );
    }
}
