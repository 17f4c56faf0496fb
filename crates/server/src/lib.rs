//! `veto-server`: a control-plane node.
//!
//! It runs openraft over gRPC ([`raft`]) on a RocksDB store (`veto-store`),
//! serves `TokenService` and `AdminService` on the same gRPC port, forwards
//! writes that reach a follower to the leader ([`routing`]), and serves
//! `/healthz`, `/readyz` and the JWKS over HTTP ([`http`]). The binary in
//! `main.rs` only wires configuration and signals to [`Server`].

pub mod admin_service;
pub mod auth;
pub mod config;
pub mod convert;
pub mod error;
pub mod feed;
pub mod feed_codec;
pub mod http;
pub mod node;
pub mod raft;
pub mod routing;
pub mod token_service;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tracing::info;
use veto_proto::admin_service_server::AdminServiceServer;
use veto_proto::raft_service_server::RaftServiceServer;
use veto_proto::token_service_server::TokenServiceServer;

pub use config::Options;
pub use node::Node;

/// A started node: its bound addresses and a handle to stop it.
pub struct Server {
    /// The feed hub (edge registry).
    pub hub: feed::Hub,
    /// The gRPC address actually bound.
    pub grpc_addr: SocketAddr,
    /// The HTTP address actually bound.
    pub http_addr: SocketAddr,
    /// The node.
    pub node: Node,
    shutdown: watch::Sender<bool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Server {
    async fn hand_off_leadership(&self) {
        let m = self.node.metrics();
        if m.state != openraft::ServerState::Leader {
            return;
        }
        let me = self.node.id();
        let best = m.replication.as_ref().and_then(|r| {
            m.membership_config
                .membership()
                .voter_ids()
                .filter(|v| *v != me)
                .max_by_key(|v| r.get(v).and_then(|l| l.as_ref().map(|l| l.index)))
        });
        let Some(to) = best else {
            return;
        };
        if self
            .node
            .raft()
            .trigger()
            .transfer_leader(to)
            .await
            .is_err()
        {
            return;
        }
        let moved = self
            .node
            .raft()
            .wait(Some(Duration::from_secs(3)))
            .metrics(
                |m| m.current_leader.is_some_and(|l| l != me),
                "leadership handed off",
            )
            .await;
        match moved {
            Ok(m) => info!(
                to = m.current_leader,
                "handed leadership off before stopping"
            ),
            Err(e) => tracing::warn!(error = %e, "leadership hand-off timed out; stopping anyway"),
        }
    }

    /// Opens the data directory, starts Raft and binds both listeners.
    pub async fn start(opts: Options) -> anyhow::Result<Server> {
        let transport = opts.transport()?;
        if !transport.is_tls() {
            tracing::warn!(
                "--insecure: gRPC and HTTP are plaintext and every caller may do everything; \
                 for local demos and tests only"
            );
        } else if transport.own_identity().map(|i| i.role) != Some(veto_auth::Role::Server) {
            tracing::warn!(
                identity = ?transport.own_identity(),
                "this node's certificate does not carry the server role; peers will refuse its Raft calls"
            );
        }
        let kek = opts.load_kek()?;
        let previous_keks = opts.load_previous_keks()?;
        std::fs::create_dir_all(&opts.data_dir)
            .with_context(|| format!("cannot create data directory {}", opts.data_dir.display()))?;
        let (log, sm) = veto_store::open(&opts.data_dir, opts.node_id)?;
        let state = sm.handle();
        let r = &opts.raft;
        let config = openraft::Config {
            cluster_name: "veto".into(),
            heartbeat_interval: r.heartbeat_interval_ms,
            election_timeout_min: r.election_timeout_min_ms,
            election_timeout_max: r.election_timeout_max_ms,
            install_snapshot_timeout: 60_000,
            snapshot_policy: openraft::SnapshotPolicy::LogsSinceLast(r.snapshot_logs_since_last),
            max_in_snapshot_log_to_keep: r.max_in_snapshot_log_to_keep,
            purge_batch_size: r.purge_batch_size,
            max_payload_entries: 512,
            ..Default::default()
        }
        .validate()
        .context("raft configuration")?;
        let cluster = log.cluster_id().context("reading the cluster id")?;
        let factory = raft::network::Factory {
            max_message_bytes: opts.max_message_bytes.max(64 << 20),
            cluster: cluster.clone(),
            transport: transport.clone(),
            pipeline: opts.raft.pipeline,
        };
        let raft = veto_store::Raft::new(opts.node_id, Arc::new(config), factory, log.clone(), sm)
            .await
            .context("starting raft")?;

        let grpc_listener = TcpListener::bind(opts.listen_addr)
            .await
            .with_context(|| format!("cannot listen on {}", opts.listen_addr))?;
        let http_listener = TcpListener::bind(opts.http_addr)
            .await
            .with_context(|| format!("cannot listen on {}", opts.http_addr))?;
        let grpc_addr = grpc_listener.local_addr()?;
        let http_addr = http_listener.local_addr()?;
        let advertised = opts.advertised(grpc_addr);
        let max_msg = opts.max_message_bytes;
        info!(
            kek = kek.fingerprint(),
            previous = previous_keks.len(),
            "key-encryption key loaded"
        );
        let node = Node::new(
            raft.clone(),
            state,
            log,
            (kek, previous_keks),
            cluster.clone(),
            transport.clone(),
            opts,
        );

        let (shutdown, rx) = watch::channel(false);
        let mut tasks = Vec::new();

        let raft_svc =
            RaftServiceServer::new(raft::service::Service::new(raft.clone(), 1 << 30, cluster))
                .max_decoding_message_size(64 << 20)
                .max_encoding_message_size(64 << 20);
        let hub = feed::Hub::new(node.clone());
        let token_svc =
            TokenServiceServer::new(token_service::Service::new(node.clone(), hub.clone()))
                .max_decoding_message_size(max_msg);
        let feed_svc = feed_codec::FeedServer::new(feed::Service::new(hub.clone()), 64 * 1024);
        let admin_svc = AdminServiceServer::new(admin_service::Service::new(
            node.clone(),
            advertised.clone(),
            hub.clone(),
        ))
        .max_decoding_message_size(max_msg);
        // grpc.health.v1 follows /readyz; reflection lists these services.
        let services = vec![
            veto_proto::token_service_server::SERVICE_NAME,
            veto_proto::admin_service_server::SERVICE_NAME,
            veto_proto::feed_service_server::SERVICE_NAME,
            veto_proto::raft_service_server::SERVICE_NAME,
        ];
        let (health, health_svc) = veto_proto::standard::health();
        let reflection_v1 = veto_proto::standard::reflection_v1(&services)?;
        let reflection_v1alpha = veto_proto::standard::reflection_v1alpha(&services)?;
        let ready_node = node.clone();
        tasks.push(tokio::spawn(veto_proto::standard::report_health(
            health,
            services,
            move || http::readiness(&ready_node).is_ok(),
            rx.clone(),
        )));
        let mut grpc_rx = rx.clone();
        let mut builder = tonic::transport::Server::builder();
        if let Some(tls) = transport.server_tls() {
            builder = builder.tls_config(tls).context("gRPC TLS configuration")?;
        }
        let limit = (node.options().write_rate_per_second > 0).then(|| veto_auth::WriteLimit {
            per_second: node.options().write_rate_per_second,
            burst: node.options().write_burst,
            is_write: auth::is_write,
        });
        let grpc = builder
            .tcp_nodelay(true)
            .http2_keepalive_interval(Some(Duration::from_secs(10)))
            .layer(veto_auth::AuthLayer::new(
                auth::policy,
                transport.is_tls(),
                limit,
            ))
            .add_service(raft_svc)
            .add_service(token_svc)
            .add_service(admin_svc)
            .add_service(feed_svc)
            .add_service(health_svc)
            .add_service(reflection_v1)
            .add_service(reflection_v1alpha)
            .serve_with_incoming_shutdown(
                tonic::transport::server::TcpIncoming::from(grpc_listener).with_nodelay(Some(true)),
                async move {
                    let _ = grpc_rx.wait_for(|s| *s).await;
                },
            );
        tasks.push(tokio::spawn(async move {
            if let Err(e) = grpc.await {
                tracing::error!(error = %e, "gRPC server failed");
            }
        }));

        let mut http_rx = rx.clone();
        let metrics = veto_telemetry::install()?;
        veto_telemetry::register_server();
        let app = http::router(node.clone(), hub.clone(), metrics);
        let http_transport = transport.clone();
        tasks.push(tokio::spawn(async move {
            let r = veto_auth::http::serve(http_listener, app, &http_transport, async move {
                let _ = http_rx.wait_for(|s| *s).await;
            })
            .await;
            if let Err(e) = r {
                tracing::error!(error = %e, "HTTP server failed");
            }
        }));

        tasks.push(tokio::spawn(hub.clone().run_read_index(rx.clone())));
        tasks.push(tokio::spawn(node.clone().leader_duties(rx)));
        info!(node_id = node.id(), %grpc_addr, %http_addr, %advertised, "veto-server started");
        Ok(Server {
            hub,
            grpc_addr,
            http_addr,
            node,
            shutdown,
            tasks,
        })
    }

    /// Stops serving, shuts Raft down and waits for the tasks. Edge feeds
    /// are closed first (edges fail over at once instead of after B), and a
    /// leader hands leadership to the most caught-up voter (up to 3 s), so a
    /// rolling restart costs no election timeout.
    pub async fn stop(self) {
        // Edges first: they fail over while this node still serves Raft.
        self.hub.close_streams();
        self.hand_off_leadership().await;
        let _ = self.shutdown.send(true);
        if let Err(e) = self.node.raft().shutdown().await {
            tracing::warn!(error = %e, "raft shutdown");
        }
        for t in self.tasks {
            let _ = tokio::time::timeout(Duration::from_secs(5), t).await;
        }
    }
}
