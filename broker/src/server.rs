//! Wiring: opens the store, starts the committer and background tasks,
//! builds the gRPC server over the mTLS listener, and shuts everything down
//! in order (stop accepting, finish in-flight requests, commit what is
//! queued, flush).

use std::net::SocketAddr;
use std::sync::Arc;

use referral_proto::keys::{KeyPurpose, SigningKey, parse_signing_key_file};
use referral_proto::pb::auditor_server::AuditorServer;
use referral_proto::pb::referral_broker_server::ReferralBrokerServer;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::audit::{ReceiptSigner, TreeHeadSigner};
use crate::clock::Clock;
use crate::commit::{self, CommitterDeps, Timing};
use crate::config::{Config, Engine, StorageConfig};
use crate::directory::{DirectoryState, read_federation_key};
use crate::error::BrokerError;
use crate::hub::Hub;
use crate::limits::Limiter;
use crate::service::auditor::AuditorService;
use crate::service::overlap::OverlapService;
use crate::service::referral::ReferralService;
use crate::state::BrokerState;
use crate::store::sled_store::SledStore;
use crate::store::{LocalEngine, Store};
use crate::tasks;
use crate::tls::{AcceptOptions, AcceptStats, Judge, TlsState, accept_loop};

/// Largest gRPC message tonic decodes: above the envelope limit, so that
/// an oversize envelope gets the broker's own clear error, yet bounded.
pub const MAX_DECODING_BYTES: usize = 256 * 1024;

/// Streams the server may reset for a client's errors before it sends
/// GOAWAY (hyper's default; tonic would lift it).
pub const MAX_LOCAL_ERROR_RESETS: usize = 1024;
/// Streams the client reset before the server accepted them, kept at once
/// (h2's default).
pub const MAX_PENDING_ACCEPT_RESETS: usize = 20;

/// Why the broker cannot start. The causes are part of the message, not
/// error sources, so that a printed chain does not say each twice.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("storage: {0}")]
    Store(crate::store::StoreError),
    #[error("TLS: {0}")]
    Tls(crate::tls::TlsError),
    #[error("directory: {0}")]
    Directory(crate::directory::DirectoryLoadError),
    #[error("{path}: {message}")]
    LogKey { path: String, message: String },
    #[error("the log key in {path} is not the broker log key the directory publishes")]
    LogKeyMismatch { path: String },
    #[error(
        "the directory file holds version {found}, older than version {served} this broker has served; refusing a rollback"
    )]
    DirectoryRollback { found: u64, served: u64 },
    #[error("gRPC server: {0}")]
    Serve(String),
    #[error(transparent)]
    AdminToken(#[from] crate::admin::TokenError),
}

impl From<crate::store::StoreError> for StartError {
    fn from(e: crate::store::StoreError) -> Self {
        Self::Store(e)
    }
}

impl From<crate::tls::TlsError> for StartError {
    fn from(e: crate::tls::TlsError) -> Self {
        Self::Tls(e)
    }
}

impl From<crate::directory::DirectoryLoadError> for StartError {
    fn from(e: crate::directory::DirectoryLoadError) -> Self {
        Self::Directory(e)
    }
}

/// Reads the broker's log key (a 0600 key file for the broker-log purpose).
fn read_log_key(path: &std::path::Path) -> Result<SigningKey, StartError> {
    let problem = |message: String| StartError::LogKey { path: path.display().to_string(), message };
    let text = certs::secret_file::read(path).map_err(|e| problem(e.to_string()))?;
    parse_signing_key_file(&text, KeyPurpose::BrokerLog).map_err(|e| problem(e.to_string()))
}

/// The log key must be the one the directory publishes, or auditors could
/// not check a single tree head.
fn check_log_key(path: &std::path::Path, key: &SigningKey, directory: &DirectoryState) -> Result<(), StartError> {
    if key.verifying_key() != directory.current().directory.broker_log_key {
        return Err(StartError::LogKeyMismatch { path: path.display().to_string() });
    }
    Ok(())
}

/// What [`check_files`] found in files that are all in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FilesChecked {
    /// The version of the signed directory.
    pub directory_version: u64,
    /// How many agencies it lists.
    pub agencies: usize,
    /// With PostgreSQL: the database reached and what it holds.
    pub database: Option<crate::store::postgres::Probe>,
}

/// What `broker check-config` checks: every problem in the files the
/// configuration names that would stop `serve`, all reported at once. (The
/// data directory is left to `serve`, which takes its lock.) On success,
/// what was found.
pub fn check_files(config: &Config) -> Result<FilesChecked, Vec<String>> {
    let mut problems = Vec::new();
    if let Err(e) = crate::tls::load(&config.tls) {
        problems.push(StartError::from(e).to_string());
    }
    let directory = read_federation_key(&config.federation.federation_key)
        .and_then(|key| DirectoryState::open(&config.federation.directory, key, certs::now()))
        .map_err(|e| problems.push(StartError::from(e).to_string()))
        .ok();
    let log_key = read_log_key(&config.federation.log_key).map_err(|e| problems.push(e.to_string())).ok();
    if let Some(admin) = &config.admin.endpoint
        && let Err(e) = crate::admin::AdminToken::read(&admin.token_file)
    {
        problems.push(e.to_string());
    }
    if let (Some(directory), Some(key)) = (&directory, &log_key)
        && let Err(e) = check_log_key(&config.federation.log_key, key, directory)
    {
        problems.push(e.to_string());
    }
    let database = match &config.storage.engine {
        Engine::Local(_) => None,
        Engine::Postgres(settings) => match crate::store::postgres::probe(settings) {
            Ok(found) => Some(found),
            Err(e) => {
                problems.push(format!("storage.postgres_url: {e}"));
                None
            }
        },
    };
    match directory {
        Some(d) if problems.is_empty() => {
            let current = d.current();
            Ok(FilesChecked {
                directory_version: current.directory.version,
                agencies: current.directory.agencies.len(),
                database,
            })
        }
        _ => Err(problems),
    }
}

/// A running broker.
#[derive(Debug)]
pub struct Running {
    pub addr: SocketAddr,
    /// Where the admin endpoint listens, if it is on.
    pub admin_addr: Option<SocketAddr>,
    pub state: Arc<BrokerState>,
    server: tokio::task::JoinHandle<Result<(), String>>,
    committer: commit::CommitterThread,
}

/// Options that differ between the binary and tests.
#[derive(Debug, Clone)]
pub struct StartOptions {
    pub clock: Arc<dyn Clock>,
    /// Reload on SIGHUP (the binary); tests call [`tasks::reload`] instead.
    pub sighup: bool,
}

/// Wraps the opened store (tests put a fault or a delay between the
/// broker and sled with it).
pub type StoreWrapper = Box<dyn FnOnce(SledStore) -> Arc<dyn Store> + Send>;

/// Opens the configured engine. The checkpoint folder (`data_dir`) is
/// created for every engine; a wrapper applies to sled only.
pub fn open_store(storage: &StorageConfig, wrap: Option<StoreWrapper>) -> Result<Arc<dyn Store>, StartError> {
    match &storage.engine {
        Engine::Local(engine) => match wrap {
            None => Ok(engine.open_with(&storage.data_dir, storage.fjall_tuning())?),
            Some(wrap) if *engine == LocalEngine::Sled => {
                engine.check(&storage.data_dir)?;
                Ok(wrap(SledStore::open(&storage.data_dir)?))
            }
            Some(_) => Err(StartError::Serve("a store wrapper needs the sled engine".into())),
        },
        Engine::Postgres(settings) => {
            if wrap.is_some() {
                return Err(StartError::Serve("a store wrapper needs the sled engine".into()));
            }
            crate::store::postgres::prepare_checkpoint_dir(&storage.data_dir)?;
            Ok(Arc::new(crate::store::postgres::PgStore::open(settings)?))
        }
    }
}

/// Starts a broker on `listener`; it runs until `shutdown` is cancelled.
pub async fn start(
    listener: TcpListener,
    config: Config,
    opts: StartOptions,
    shutdown: CancellationToken,
) -> Result<Running, StartError> {
    start_wrapped(listener, config, opts, None, shutdown).await
}

/// [`start`], with the store wrapped by `wrap`.
pub async fn start_wrapped(
    listener: TcpListener,
    config: Config,
    opts: StartOptions,
    wrap: Option<StoreWrapper>,
    shutdown: CancellationToken,
) -> Result<Running, StartError> {
    let addr = listener.local_addr().map_err(|e| StartError::Serve(e.to_string()))?;
    let config_engine = config.storage.engine.name();
    let federation_key = read_federation_key(&config.federation.federation_key)?;
    let directory = Arc::new(DirectoryState::open(&config.federation.directory, federation_key, opts.clock.now())?);
    let log_key = Arc::new(read_log_key(&config.federation.log_key)?);
    check_log_key(&config.federation.log_key, &log_key, &directory)?;
    let tls = Arc::new(TlsState::open(&config.tls)?);
    let admin_token =
        config.admin.endpoint.as_ref().map(|a| crate::admin::AdminToken::read(&a.token_file)).transpose()?;
    let store = open_store(&config.storage, wrap)?;
    let directory_version = directory.current().directory.version;
    let served = crate::hub::read_u64(&*store, crate::store::keys::meta::DIRECTORY_VERSION)?;
    if directory_version < served {
        return Err(StartError::DirectoryRollback { found: directory_version, served });
    }
    let frontier = commit::restore_frontier(&*store)?;
    // A missing or unusable checkpoint is only warned about; the writer below rebuilds it.
    crate::checkpoint::verify(&*store, &config.storage.data_dir, frontier.size()).map_err(|message| {
        StartError::Store(crate::store::StoreError::Refused {
            path: config.storage.data_dir.display().to_string(),
            message,
        })
    })?;
    let hub = Arc::new(Hub::new(store.clone(), (frontier.size(), frontier.root())));
    // Other broker nodes on the same store: their commits wake this hub.
    store.watch_changes(crate::cluster::sink(&hub), std::time::Duration::from_secs(1));
    let rejections = Arc::new(crate::refusals::RejectionCounter::default());
    let (committer, committer_thread) = commit::start(CommitterDeps {
        store: store.clone(),
        hub: hub.clone(),
        clock: opts.clock.clone(),
        log_key: log_key.clone(),
        directory: directory.clone(),
        checkpoint: Some(crate::checkpoint::Writer::open(
            &config.storage.data_dir,
            crate::checkpoint::Checkpoint { tree_size: frontier.size(), root: frontier.root() },
        )?),
        timing: Timing {
            ack_deadlines: config.delivery.ack_deadlines,
            unacked_retention_ms: config.delivery.unacked_retention_ms,
            acked_retention_ms: config.delivery.acked_retention_ms,
        },
        deadline_tick: config.delivery.deadline_tick,
        rejections: rejections.clone(),
    })?;
    let trust_domain = directory.current().directory.trust_domain.clone();
    let accept_stats = Arc::new(AcceptStats::default());
    let state = Arc::new(BrokerState {
        limiter: Limiter::new(config.limits),
        store,
        committer,
        hub,
        directory,
        tls: tls.clone(),
        clock: opts.clock,
        tree_heads: TreeHeadSigner::new(log_key.clone()),
        receipts: ReceiptSigner::new(log_key.clone()),
        log_key,
        latest_tree_head: Default::default(),
        trust_domain: trust_domain.clone(),
        accept_stats: accept_stats.clone(),
        health: Default::default(),
        rejections,
        connections: Default::default(),
        shutdown: shutdown.clone(),
        tasks: tokio_util::task::TaskTracker::new(),
        config,
    });

    state.committer.meta(crate::store::keys::meta::DIRECTORY_VERSION, directory_version.to_be_bytes().to_vec()).await;
    state.tasks.spawn(tasks::tree_heads(state.clone()));
    state.tasks.spawn(tasks::reloader(state.clone(), opts.sighup));
    state.tasks.spawn(crate::refusals::summariser(state.clone()));

    let incoming = accept_loop(
        listener,
        tls,
        AcceptOptions {
            handshake_timeout: state.config.listen.handshake_timeout,
            max_connections: state.config.listen.max_connections,
            max_connections_per_principal: state.config.limits.max_connections_per_principal,
            trust_domain,
            registry: state.connections.clone(),
            judge: {
                // Weak: the accept loop must not keep the state alive after shutdown.
                let weak = Arc::downgrade(&state);
                // The certificate only: a principal whose agency is not (yet)
                // listed may still connect to call GetDirectory.
                Judge(Arc::new(move |identity| match weak.upgrade() {
                    Some(state) => state.judge_certificate(identity),
                    None => Err(BrokerError::ShuttingDown),
                }))
            },
        },
        accept_stats,
        shutdown.clone(),
    );
    let referral =
        ReferralBrokerServer::new(ReferralService::new(state.clone())).max_decoding_message_size(MAX_DECODING_BYTES);
    let auditor = AuditorServer::new(AuditorService::new(state.clone())).max_decoding_message_size(MAX_DECODING_BYTES);
    let overlap = referral_proto::pb::overlap_server::OverlapServer::new(OverlapService::new(state.clone()))
        .max_decoding_message_size(MAX_DECODING_BYTES);
    let (health_reporter, health_service) = tonic_health::server::health_reporter();
    for service in crate::health::SERVICES {
        health_reporter.set_service_status(service, tonic_health::ServingStatus::NotServing).await;
    }
    state.tasks.spawn(crate::health::run(state.clone(), health_reporter, state.config.admin.health_interval));
    let reflection_v1 = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(referral_proto::pb::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()
        .map_err(|e| StartError::Serve(e.to_string()))?;
    let reflection_v1alpha = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(referral_proto::pb::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1alpha()
        .map_err(|e| StartError::Serve(e.to_string()))?;
    let admin_addr = match (&state.config.admin.endpoint, admin_token) {
        (Some(admin), Some(token)) => {
            let addr = admin.listen;
            let l = TcpListener::bind(addr)
                .await
                .map_err(|e| StartError::Serve(format!("cannot listen on {addr} for the admin endpoint: {e}")))?;
            let bound = l.local_addr().map_err(|e| StartError::Serve(e.to_string()))?;
            state.tasks.spawn(crate::admin::serve(l, state.clone(), token));
            Some(bound)
        }
        _ => None,
    };
    let hb = state.config.delivery.heartbeat_interval;
    let limits = state.config.limits;
    let router = tonic::transport::Server::builder()
        .http2_keepalive_interval(Some(hb))
        .http2_keepalive_timeout(Some(hb))
        // Advertised in SETTINGS, so clients queue rather than open more.
        .max_concurrent_streams(Some(limits.max_concurrent_streams_per_connection))
        .http2_max_header_list_size(Some(limits.max_header_list_bytes))
        // tonic lifts h2's cap on streams reset because of the client's
        // errors (None means no cap); keep hyper's default, which sends
        // GOAWAY to a client that makes the server reset streams without
        // end (the "MadeYouReset" attack, CVE-2025-8671).
        .http2_max_local_error_reset_streams(Some(MAX_LOCAL_ERROR_RESETS))
        .http2_max_pending_accept_reset_streams(Some(MAX_PENDING_ACCEPT_RESETS))
        .layer(crate::service::gate::GateLayer::new(state.clone()))
        .add_service(referral)
        .add_service(auditor)
        .add_service(overlap)
        .add_service(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha);
    let stop = shutdown.clone();
    let server = tokio::spawn(async move {
        router
            .serve_with_incoming_shutdown(tokio_stream::wrappers::ReceiverStream::new(incoming), stop.cancelled_owned())
            .await
            .map_err(|e| e.to_string())
    });
    crate::metrics::handle();
    tracing::info!(%addr, admin = ?admin_addr, engine = config_engine, "broker serving");
    Ok(Running { addr, admin_addr, state, server, committer: committer_thread })
}

/// How long shutdown waits for streams and background tasks to end.
const TASKS_GRACE: std::time::Duration = std::time::Duration::from_secs(10);

impl Running {
    /// Waits for the server to stop (after `shutdown` is cancelled), then
    /// lets the committer finish every queued job and flush.
    pub async fn wait(self) -> Result<(), StartError> {
        let served = self.server.await.map_err(|e| StartError::Serve(e.to_string()))?;
        // No request is taken any more: the last refusal counts are complete.
        crate::refusals::close_interval(&self.state).await;
        self.state.committer.barrier().await;
        // Background tasks and streams hold the state; they all end on the
        // shutdown signal and are tracked. Wait for them, then stop the
        // committer, so that the store is closed (and its lock released)
        // when this returns.
        let tasks = self.state.tasks.clone();
        tasks.close();
        if tokio::time::timeout(TASKS_GRACE, tasks.wait()).await.is_err() {
            tracing::warn!(left = tasks.len(), "some tasks did not end within {TASKS_GRACE:?} of the shutdown");
        }
        let weak = Arc::downgrade(&self.state);
        drop(self.state);
        let t = self.committer;
        let _ = tokio::task::spawn_blocking(move || t.stop_and_join()).await;
        if weak.strong_count() != 0 {
            tracing::warn!("something still holds the broker state after shutdown");
        }
        served.map_err(StartError::Serve)
    }
}
