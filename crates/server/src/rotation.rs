//! Signing keys that rotate themselves, and the audit trail's retention.
//!
//! Every node runs [`run`]; only the leader acts. Each step reads the
//! replicated state and proposes at most one key command, so a new leader
//! picks up wherever the previous one stopped (a key published but not
//! activated is activated, not published again):
//!
//! 1. **publish** a new key `publish_lead_seconds` before the active key is
//!    `period_seconds` old: it appears in every JWKS document and reaches
//!    every edge before it signs anything;
//! 2. **activate** it once the active key is due, the lead time has passed
//!    since its publish, and every live edge has applied the publish; or,
//!    when an edge still lacks it `activation_timeout_seconds` later,
//!    activate anyway and count it in `veto_key_rotation_forced_total`
//!    (the alert);
//! 3. **retire** a replaced key once the last token it signed has expired.
//!
//! Each stage is an ordinary replicated key command with the actor
//! `veto-server:rotation`, so it is audited like an operator's.

use std::time::{Duration, Instant};

use tracing::{info, warn};
use veto_core::command::{Actor, Command, Response};
use veto_core::state::KeyState;
use veto_core::Kid;

use crate::node::{unix_now, Node};

/// The actor of every stage the schedule performs.
pub const ACTOR: &str = "veto-server:rotation";

/// How long one activation check waits for edges to report.
const EDGE_CHECK: Duration = Duration::from_secs(2);

/// What the schedule wants done now.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Step {
    Publish,
    Activate {
        kid: Kid,
        published_revision: u64,
        forced_at: i64,
    },
    Retire(Kid),
}

/// The next step at `now`, if any (pure: a function of the state).
fn next_step(s: &veto_core::State, now: i64) -> Option<Step> {
    let p = s.rotation_policy()?;
    let active = s.active_key()?;
    // Retire first: it never conflicts with the others.
    if let Some(k) = s
        .keys()
        .find(|k| k.state == KeyState::Retiring && k.max_token_exp < now)
    {
        return Some(Step::Retire(k.kid));
    }
    let pending = s
        .keys()
        .filter(|k| k.state == KeyState::Published)
        .max_by_key(|k| k.published_revision);
    let lead = p.publish_lead_seconds as i64;
    match pending {
        None if now >= p.next_publish(active.activated_at) => Some(Step::Publish),
        None => None,
        Some(k)
            if now >= p.next_activation(active.activated_at)
                && now >= k.published_at.saturating_add(lead) =>
        {
            Some(Step::Activate {
                kid: k.kid,
                published_revision: k.published_revision,
                forced_at: k
                    .published_at
                    .saturating_add(lead)
                    .saturating_add(p.activation_timeout_seconds as i64),
            })
        }
        Some(_) => None,
    }
}

/// Runs the schedule (on the leader) and the audit retention (on every
/// node) until `shutdown` fires.
pub async fn run(
    node: Node,
    hub: crate::feed::Hub,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) {
    let prune_every = Duration::from_millis(node.options().audit.prune_interval_ms);
    let mut last_prune = Instant::now();
    let mut last_usage: Option<Instant> = None;
    loop {
        tokio::select! {
            _ = shutdown.changed() => return,
            _ = tokio::time::sleep(Duration::from_millis(250)) => {}
        }
        let now = unix_now();
        export_gauges(&node, now);
        // The token figures walk every record: every few seconds is enough.
        if last_usage.is_none_or(|t| t.elapsed() >= USAGE_GAUGES_EVERY) {
            last_usage = Some(Instant::now());
            export_usage_gauges(&node, now);
        }
        if last_prune.elapsed() >= prune_every {
            last_prune = Instant::now();
            prune(&node, now).await;
        }
        if !node.raft().is_leader() {
            continue;
        }
        let Some(step) = node.state().read(|s| next_step(s, now)) else {
            continue;
        };
        if let Err(e) = perform(&node, &hub, step.clone(), now).await {
            warn!(error = %e, ?step, "key rotation step failed; retrying");
        }
    }
}

async fn perform(
    node: &Node,
    hub: &crate::feed::Hub,
    step: Step,
    now: i64,
) -> crate::error::Result<()> {
    let actor = Actor(ACTOR.into());
    let (stage, cmd) = match step {
        Step::Publish => ("publish", node.new_key_command(actor).1),
        Step::Retire(kid) => (
            "retire",
            Command::RetireKey {
                kid,
                force: false,
                at: now,
                actor,
            },
        ),
        Step::Activate {
            kid,
            published_revision,
            forced_at,
        } => {
            let start = Instant::now();
            let w = hub
                .wait_edges(published_revision, start, start + EDGE_CHECK)
                .await;
            if !w.behind.is_empty() {
                if unix_now() < forced_at {
                    return Ok(());
                }
                warn!(%kid, behind = ?w.behind, "activating the new signing key although edges lack it (activation timeout)");
                veto_telemetry::metrics::counter!(veto_telemetry::KEY_ROTATION_FORCED_TOTAL)
                    .increment(1);
            }
            (
                "activate",
                Command::ActivateKey {
                    kid,
                    at: unix_now(),
                    actor,
                },
            )
        }
    };
    let text = cmd.to_string();
    match node.propose(cmd).await? {
        Response::KeyChanged { revision } => {
            veto_telemetry::metrics::counter!(veto_telemetry::KEY_ROTATION_STAGES_TOTAL, "stage" => stage)
                .increment(1);
            info!(stage, revision, command = %text, "key rotation");
            Ok(())
        }
        Response::Rejected { rejection, .. } => Err(rejection.into()),
        other => Err(crate::error::Error::Fatal(format!(
            "unexpected response {other:?}"
        ))),
    }
}

/// Key age and next rotation as gauges (every node, from its state).
fn export_gauges(node: &Node, now: i64) {
    use veto_telemetry::metrics::gauge;
    let (age, next) = node.state().read(|s| {
        let active = s.active_key();
        let age = active.map(|k| now.saturating_sub(k.activated_at).max(0));
        let next = match (s.rotation_policy(), active) {
            (Some(p), Some(k)) => Some(p.next_activation(k.activated_at)),
            _ => None,
        };
        (age, next)
    });
    gauge!(veto_telemetry::SIGNING_KEY_AGE_SECONDS).set(age.unwrap_or(0) as f64);
    gauge!(veto_telemetry::SIGNING_KEY_NEXT_ROTATION_TIMESTAMP).set(next.unwrap_or(0) as f64);
}

/// Token records read per lock while computing usage figures.
pub const USAGE_PAGE: usize = 10_000;

/// How often the token usage gauges are recomputed.
const USAGE_GAUGES_EVERY: Duration = Duration::from_secs(5);

/// Active, never-used and least-privilege tokens and revoked-token use
/// attempts as gauges (every node, from its replicated state).
fn export_usage_gauges(node: &Node, now: i64) {
    use veto_telemetry::metrics::gauge;
    // In pages, so applies (and so revocations) never wait long for it.
    let mut t = veto_core::usage::UsageTotals::default();
    let mut after = None;
    while let Some(next) = node
        .state()
        .read(|s| s.usage_totals_page(now, after, USAGE_PAGE, &mut t))
    {
        after = Some(next);
    }
    node.set_usage_totals(t);
    gauge!(veto_telemetry::TOKENS_ACTIVE).set(t.active as f64);
    gauge!(veto_telemetry::TOKENS_NEVER_USED).set(t.never_used as f64);
    gauge!(veto_telemetry::TOKENS_LEAST_PRIVILEGE_RATIO).set(t.least_privilege_ratio());
    gauge!(veto_telemetry::REVOKED_TOKEN_USE_ATTEMPTS).set(t.revoked_attempts as f64);
    // Not created at 0 at start: the series first appears with the state's
    // total, so a restart shows no drop to 0 and back (a false increase).
    let total = node.state().read(|s| s.revoked_attempts_total());
    veto_telemetry::metrics::counter!(veto_telemetry::REVOKED_TOKEN_USE_ATTEMPTS_TOTAL)
        .absolute(total);
}

/// Applies this node's audit retention.
async fn prune(node: &Node, now: i64) {
    let store = node.state().audit().clone();
    let retention = node.options().audit.retention();
    match tokio::task::spawn_blocking(move || {
        let r = store.prune(now, retention);
        (r, store.totals())
    })
    .await
    {
        Ok((Ok(r), totals)) => {
            use veto_telemetry::metrics::{counter, gauge};
            if r.events > 0 {
                info!(
                    events = r.events,
                    bytes = r.bytes,
                    "audit retention dropped the oldest events"
                );
                counter!(veto_telemetry::AUDIT_PRUNED_TOTAL).increment(r.events);
            }
            gauge!(veto_telemetry::AUDIT_RETAINED_BYTES).set(totals.bytes as f64);
            gauge!(veto_telemetry::AUDIT_RETAINED_EVENTS).set(totals.events as f64);
        }
        Ok((Err(e), _)) => warn!(error = %e, "audit retention failed"),
        Err(e) => warn!(error = %e, "audit retention task failed"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use veto_core::policy::RotationPolicy;

    fn state_with_policy() -> (veto_core::State, Kid) {
        let mut s = veto_core::State::default();
        let kid = Kid([1; 16]);
        let actor = Actor("t".into());
        s.apply(
            1,
            &Command::PublishKey {
                kid,
                public: [0; 32],
                sealed: vec![1],
                at: 1000,
                actor: actor.clone(),
            },
        );
        s.apply(
            2,
            &Command::ActivateKey {
                kid,
                at: 1000,
                actor: actor.clone(),
            },
        );
        s.apply(
            3,
            &Command::SetRotationPolicy {
                policy: Some(RotationPolicy {
                    period_seconds: 100,
                    publish_lead_seconds: 30,
                    activation_timeout_seconds: 20,
                }),
                at: 1000,
                actor,
            },
        );
        (s, kid)
    }

    #[test]
    fn the_schedule_publishes_ahead_activates_when_due_and_retires_after_the_last_exp() {
        let (mut s, first) = state_with_policy();
        assert_eq!(next_step(&s, 1069), None);
        assert_eq!(next_step(&s, 1070), Some(Step::Publish));
        let second = Kid([2; 16]);
        let actor = Actor("t".into());
        s.apply(
            4,
            &Command::PublishKey {
                kid: second,
                public: [0; 32],
                sealed: vec![1],
                at: 1075,
                actor: actor.clone(),
            },
        );
        // due at 1100, but the lead since the (late) publish ends at 1105
        assert_eq!(next_step(&s, 1100), None);
        assert_eq!(
            next_step(&s, 1105),
            Some(Step::Activate {
                kid: second,
                published_revision: 4,
                forced_at: 1125
            })
        );
        s.apply(
            5,
            &Command::ActivateKey {
                kid: second,
                at: 1105,
                actor,
            },
        );
        // the old key signed nothing: it retires at once
        assert_eq!(next_step(&s, 1106), Some(Step::Retire(first)));
        // without a policy nothing happens
        s.apply(
            6,
            &Command::SetRotationPolicy {
                policy: None,
                at: 1106,
                actor: Actor("t".into()),
            },
        );
        assert_eq!(next_step(&s, 5000), None);
    }
}
