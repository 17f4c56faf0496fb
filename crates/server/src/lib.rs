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
pub mod leak;
pub mod node;
pub mod oauth;
pub mod raft;
pub mod rotation;
pub mod routing;
pub mod token_service;
pub mod usage;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

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
    pub async fn start(opts: Options) -> Result<Server, StartError> {
        let transport = opts.transport()?;
        warn_about(&transport);
        let kek = opts.load_kek()?;
        let previous_keks = opts.load_previous_keks()?;
        info!(
            kek = kek.fingerprint(),
            previous = previous_keks.len(),
            "key-encryption key loaded"
        );
        let leak_keys = leak::GithubKeys::load(&opts.leak_reports)?;
        let opened = open_raft(&opts, &transport).await?;
        let (grpc_addr, grpc_listener) = veto_runtime::bind(opts.listen_addr).await?;
        let (http_addr, http_listener) = veto_runtime::bind(opts.http_addr).await?;
        let advertised = opts.advertised(grpc_addr);
        let node = Node::new(
            opened.raft.clone(),
            opened.state,
            opened.log,
            (kek, previous_keks),
            opened.cluster.clone(),
            transport.clone(),
            opts,
        );
        let (shutdown, rx) = watch::channel(false);
        let hub = feed::Hub::new(node.clone());
        let mut tasks = serve_grpc(
            Services::new(&node, &hub, opened.cluster, &advertised),
            &transport,
            grpc_listener,
            rx.clone(),
        )?;
        tasks.push(serve_http(
            &node,
            &hub,
            leak_keys,
            &transport,
            http_listener,
            rx.clone(),
        )?);
        tasks.push(tokio::spawn(hub.clone().run_read_index(rx.clone())));
        tasks.push(tokio::spawn(usage::run(
            node.clone(),
            hub.pending_usage(),
            std::time::Duration::from_millis(node.options().usage_flush_interval_ms),
            rx.clone(),
        )));
        tasks.push(tokio::spawn(rotation::run(
            node.clone(),
            hub.clone(),
            rx.clone(),
        )));
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

/// Why a node could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// A configuration value or file (TLS material, KEK) is unusable.
    #[error(transparent)]
    Config(#[from] config::ConfigError),
    /// The data directory cannot be created or read.
    #[error("data directory {path}: {source}")]
    DataDir {
        /// The directory.
        path: std::path::PathBuf,
        /// Cause.
        source: std::io::Error,
    },
    /// The store cannot be opened.
    #[error("storage: {0}")]
    Store(#[from] veto_store::Error),
    /// Raft refused its configuration or failed to start.
    #[error("raft: {0}")]
    Raft(String),
    /// A listener cannot be bound.
    #[error(transparent)]
    Bind(#[from] veto_runtime::BindError),
    /// The gRPC port could not start (TLS refused, reflection).
    #[error(transparent)]
    Grpc(#[from] veto_runtime::grpc::ServeError),
    /// The metrics recorder cannot be installed.
    #[error("metrics: {0}")]
    Telemetry(#[from] veto_telemetry::Error),
}

fn warn_about(transport: &veto_auth::Transport) {
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
}

/// Raft started on the node's store.
struct Opened {
    raft: veto_store::Raft,
    log: veto_store::LogStore,
    state: veto_store::StateHandle,
    cluster: veto_store::ClusterId,
}

/// Opens the data directory and starts Raft on it.
async fn open_raft(opts: &Options, transport: &veto_auth::Transport) -> Result<Opened, StartError> {
    let data_dir = |source| StartError::DataDir {
        path: opts.data_dir.clone(),
        source,
    };
    std::fs::create_dir_all(&opts.data_dir).map_err(data_dir)?;
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
    .map_err(|e| StartError::Raft(format!("configuration: {e}")))?;
    let cluster = log.cluster_id().map_err(data_dir)?;
    let factory = raft::network::Factory {
        max_message_bytes: opts.max_message_bytes.max(64 << 20),
        cluster: cluster.clone(),
        transport: transport.clone(),
        pipeline: opts.raft.pipeline,
    };
    let raft = veto_store::Raft::new(opts.node_id, Arc::new(config), factory, log.clone(), sm)
        .await
        .map_err(|e| StartError::Raft(format!("starting: {e}")))?;
    Ok(Opened {
        raft,
        log,
        state,
        cluster,
    })
}

/// Every gRPC service of a node, ready to serve.
struct Services {
    node: Node,
    raft: RaftServiceServer<raft::service::Service>,
    token: TokenServiceServer<token_service::Service>,
    admin: AdminServiceServer<admin_service::Service>,
    feed: feed_codec::FeedServer,
}

impl Services {
    fn new(node: &Node, hub: &feed::Hub, cluster: veto_store::ClusterId, advertised: &str) -> Self {
        let max_msg = node.options().max_message_bytes;
        Self {
            node: node.clone(),
            raft: RaftServiceServer::new(raft::service::Service::new(
                node.raft().clone(),
                1 << 30,
                cluster,
            ))
            .max_decoding_message_size(64 << 20)
            .max_encoding_message_size(64 << 20),
            token: TokenServiceServer::new(token_service::Service::new(node.clone(), hub.clone()))
                .max_decoding_message_size(max_msg),
            admin: AdminServiceServer::new(admin_service::Service::new(
                node.clone(),
                advertised.to_owned(),
                hub.clone(),
            ))
            .max_decoding_message_size(max_msg),
            feed: feed_codec::FeedServer::new(feed::Service::new(hub.clone()), 64 * 1024),
        }
    }
}

/// Serves the gRPC port until `shutdown`: veto's services behind the
/// authorisation layer, grpc.health.v1 following `/readyz`, and reflection.
fn serve_grpc(
    s: Services,
    transport: &veto_auth::Transport,
    listener: TcpListener,
    shutdown: watch::Receiver<bool>,
) -> Result<Vec<tokio::task::JoinHandle<()>>, StartError> {
    let o = s.node.options();
    let limit = (o.write_rate_per_second > 0).then_some(veto_auth::WriteLimit {
        per_second: o.write_rate_per_second,
        burst: o.write_burst,
        is_write: auth::is_write,
    });
    let ready_node = s.node.clone();
    let port = veto_runtime::grpc::Port {
        name: "control plane",
        transport: transport.clone(),
        policy: auth::policy,
        limit,
        services: vec![
            veto_proto::token_service_server::SERVICE_NAME,
            veto_proto::admin_service_server::SERVICE_NAME,
            veto_proto::feed_service_server::SERVICE_NAME,
            veto_proto::raft_service_server::SERVICE_NAME,
        ],
        health_only: Vec::new(),
        routes: tonic::service::Routes::new(s.raft)
            .add_service(s.token)
            .add_service(s.admin)
            .add_service(s.feed),
        ready: move || http::readiness(&ready_node).is_ok(),
    };
    Ok(veto_runtime::grpc::serve(port, listener, shutdown)?)
}

/// Serves the HTTP(S) port until `shutdown`.
fn serve_http(
    node: &Node,
    hub: &feed::Hub,
    leak_keys: leak::GithubKeys,
    transport: &veto_auth::Transport,
    listener: TcpListener,
    mut shutdown: watch::Receiver<bool>,
) -> Result<tokio::task::JoinHandle<()>, StartError> {
    let metrics = veto_telemetry::install()?;
    veto_telemetry::register_server();
    let app = http::router(node.clone(), hub.clone(), metrics).merge(leak::router(
        node.clone(),
        hub.clone(),
        leak_keys,
    ));
    let transport = transport.clone();
    Ok(tokio::spawn(async move {
        // The leak endpoint is open: GitHub presents no client certificate.
        let r =
            veto_auth::http::serve_open(listener, app, &transport, leak::OPEN_PATHS, async move {
                let _ = shutdown.wait_for(|s| *s).await;
            })
            .await;
        if let Err(e) = r {
            tracing::error!(error = %e, "HTTP server failed");
        }
    }))
}
