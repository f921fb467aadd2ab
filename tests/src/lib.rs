//! The test harness: a fresh development federation (real CA, real
//! certificates, real agency keys) in a temporary folder, and a real broker
//! on `127.0.0.1:0` with a temporary embedded store, in-process so that a test
//! can move its clock, reload its credentials or restart it.
//!
//! Scenarios live in `tests/it/`, one module per concern.
//! [`powerloss_fs`] is the filesystem the power-loss test runs the broker on;
//! [`postgres`] starts a real PostgreSQL for the replicated engine's tests.

pub mod postgres;
pub mod powerloss_fs;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use agency_client::Client;
use broker::clock::{Clock, ManualClock, SystemClock};
use broker::config::Config;
use broker::server::{Running, StartOptions, start_wrapped};
use broker::state::BrokerState;
use certs::dev::{DevFederation, DevOptions};
use referral_proto::pb::referral_broker_client::ReferralBrokerClient;
use tokio_util::sync::CancellationToken;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

pub use certs::dev::{POLICE, SOCIAL};

pub const POLICE_SYSTEM: &str = "polisen-huddinge-system";
pub const POLICE_ONCALL: &str = "polisen-huddinge-oncall";
pub const SOCIAL_SYSTEM: &str = "huddinge-socialtjanst-system";
pub const SOCIAL_ONCALL: &str = "huddinge-socialtjanst-oncall";
pub const AUDITOR: &str = "auditor";

/// How to start the broker.
pub struct Options {
    /// Use a clock the test moves by hand.
    pub manual_clock: bool,
    /// Changes to the development configuration.
    pub tweak: Box<dyn Fn(&mut Config) + Send + Sync>,
    /// Wraps the broker's store (first start only).
    pub wrap_store: Option<broker::server::StoreWrapper>,
}

impl Default for Options {
    fn default() -> Self {
        Self { manual_clock: false, tweak: Box::new(|_| {}), wrap_store: None }
    }
}

impl std::fmt::Debug for Options {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Options").field("manual_clock", &self.manual_clock).finish_non_exhaustive()
    }
}

/// A development federation and a broker serving it.
pub struct Harness {
    pub tmp: tempfile::TempDir,
    pub dev: DevFederation,
    pub addr: SocketAddr,
    pub config: Config,
    pub manual_clock: Option<Arc<ManualClock>>,
    clock: Arc<dyn Clock>,
    running: Option<(Running, CancellationToken)>,
}

impl std::fmt::Debug for Harness {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Harness").field("addr", &self.addr).field("dir", &self.tmp.path()).finish_non_exhaustive()
    }
}

/// Installs ring as the process-wide TLS provider (idempotent).
pub fn init_crypto() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

impl Harness {
    pub async fn start() -> Self {
        Self::start_with(Options::default()).await
    }

    pub async fn start_with(opts: Options) -> Self {
        init_crypto();
        let tmp = tempfile::tempdir().expect("temporary folder");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("local address");
        let dev = certs::dev::create(
            &tmp.path().join("federation"),
            &DevOptions { broker_addr: addr.to_string(), force: false },
            certs::now(),
        )
        .expect("development federation");
        let mut config = Config::for_dev_federation(&dev.dir, addr, &tmp.path().join("data"));
        // Fast ticks so deadline tests need no real waiting.
        config.delivery.deadline_tick = Duration::from_millis(20);
        config.tls.reload_interval = Duration::from_secs(3600);
        let token_file = tmp.path().join("admin.token");
        broker::admin::AdminToken::generate(&token_file, false).expect("admin token");
        config.admin.endpoint = Some(broker::config::AdminEndpoint { listen: ([127, 0, 0, 1], 0).into(), token_file });
        config.admin.health_interval = Duration::from_millis(50);
        if opts.wrap_store.is_some() {
            // A store wrapper wraps sled (broker::server::StoreWrapper).
            config.storage.engine = broker::config::Engine::Local(broker::store::LocalEngine::Sled);
        }
        (opts.tweak)(&mut config);
        let manual_clock = opts.manual_clock.then(|| Arc::new(ManualClock::new(certs::now())));
        let clock: Arc<dyn Clock> = match &manual_clock {
            Some(c) => c.clone(),
            None => Arc::new(SystemClock),
        };
        let mut h = Self { tmp, dev, addr, config, manual_clock, clock, running: None };
        h.launch(listener, opts.wrap_store).await;
        h
    }

    async fn launch(&mut self, listener: tokio::net::TcpListener, wrap_store: Option<broker::server::StoreWrapper>) {
        let shutdown = CancellationToken::new();
        let running = start_wrapped(
            listener,
            self.config.clone(),
            StartOptions { clock: self.clock.clone(), sighup: false },
            wrap_store,
            shutdown.clone(),
        )
        .await
        .expect("broker starts");
        self.running = Some((running, shutdown));
    }

    /// Where the running broker's admin endpoint listens.
    pub fn admin_addr(&self) -> SocketAddr {
        self.running.as_ref().expect("broker running").0.admin_addr.expect("admin endpoint on")
    }

    /// Where the admin endpoint listens; None when it is off.
    pub fn admin_endpoint(&self) -> Option<SocketAddr> {
        self.running.as_ref().expect("broker running").0.admin_addr
    }

    /// The admin token of the harness's configuration.
    pub fn admin_token(&self) -> String {
        let path = &self.config.admin.endpoint.as_ref().expect("admin endpoint configured").token_file;
        broker::admin::AdminToken::read(path).expect("admin token").as_str().to_owned()
    }

    /// A request to the admin endpoint with the admin token: (HTTP code, body).
    pub async fn admin(&self, method: &str, path: &str, body: Option<&str>) -> (u16, String) {
        broker::admin::request(self.admin_addr(), Some(&self.admin_token()), method, path, body)
            .await
            .expect("the admin endpoint answers")
    }

    /// The running broker's shared state.
    pub fn state(&self) -> &Arc<BrokerState> {
        &self.running.as_ref().expect("broker running").0.state
    }

    pub fn profile(&self, name: &str) -> PathBuf {
        self.dev.profile(name)
    }

    /// A connected client for a profile of the development federation.
    pub async fn client(&self, name: &str) -> Client {
        Client::connect_dir(&self.profile(name)).await.unwrap_or_else(|e| panic!("client {name}: {e}"))
    }

    /// Stops the broker gracefully (in-flight work finishes, queue flushed).
    pub async fn stop(&mut self) {
        if let Some((running, shutdown)) = self.running.take() {
            shutdown.cancel();
            running.wait().await.expect("clean shutdown");
        }
    }

    /// Stops and starts again on the same address and data directory.
    pub async fn restart(&mut self) {
        self.stop().await;
        let listener = bind_again(self.addr).await;
        self.launch(listener, None).await;
    }

    /// Reloads TLS files and the directory, as SIGHUP does.
    pub fn reload(&self) {
        broker::tasks::reload(self.state()).expect("reload");
    }

    pub fn federation(&self) -> certs::federation::Federation {
        certs::federation::Federation::open(&self.dev.federation_dir()).expect("federation")
    }

    /// Moves the broker's clock on (manual clock only).
    pub fn advance(&self, by: Duration) {
        self.manual_clock.as_ref().expect("started with a manual clock").advance(by.as_millis() as i64);
    }

    pub fn dir(&self) -> &Path {
        self.tmp.path()
    }
}

/// Binds `addr` again after a stop (the old socket may linger briefly).
pub async fn bind_again(addr: SocketAddr) -> tokio::net::TcpListener {
    for _ in 0..100 {
        if let Ok(l) = tokio::net::TcpListener::bind(addr).await {
            return l;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("cannot bind {addr} again");
}

/// The broker's stable reason code in a refusal's status details (the
/// `google.rpc.ErrorInfo` of PROTOCOL.md's errors section).
pub fn reason(status: &tonic::Status) -> Option<String> {
    agency_client::error::reason(status)
}

/// Asserts that `r` was refused with `code` and the stable reason `reason`.
pub fn assert_refused<T: std::fmt::Debug>(
    r: Result<T, tonic::Status>,
    code: tonic::Code,
    reason_code: &str,
) -> tonic::Status {
    let s = r.expect_err("must be refused");
    assert_eq!(s.code(), code, "status {s:?}");
    assert_eq!(reason(&s).as_deref(), Some(reason_code), "status {s:?}");
    s
}

/// A raw gRPC channel with arbitrary client credentials (or none), for
/// tests that must present certificates the client library would refuse.
pub async fn raw_channel(
    addr: SocketAddr,
    ca_pem: &str,
    identity: Option<(&str, &str)>,
) -> Result<Channel, tonic::transport::Error> {
    let mut tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(ca_pem)).domain_name("localhost");
    if let Some((cert, key)) = identity {
        tls = tls.identity(Identity::from_pem(cert, key));
    }
    Endpoint::from_shared(format!("https://{addr}"))
        .expect("endpoint")
        .tls_config(tls)?
        .connect_timeout(Duration::from_secs(5))
        .connect()
        .await
}

/// A raw broker client over [`raw_channel`].
pub async fn raw_client(
    addr: SocketAddr,
    ca_pem: &str,
    identity: Option<(&str, &str)>,
) -> Result<ReferralBrokerClient<Channel>, tonic::transport::Error> {
    Ok(ReferralBrokerClient::new(raw_channel(addr, ca_pem, identity).await?))
}

impl Drop for Harness {
    fn drop(&mut self) {
        if let Some((_, shutdown)) = &self.running {
            shutdown.cancel();
        }
    }
}

/// A broker running as a child process of the test (the real command line
/// over the real configuration file), for tests that need its log output,
/// its exit, or a kill.
#[derive(Debug)]
pub struct ChildBroker {
    pub child: tokio::process::Child,
    pub addr: SocketAddr,
    pub dev: DevFederation,
    pub config_path: PathBuf,
    pub log_path: PathBuf,
    pub data_dir: PathBuf,
    /// Where its admin endpoint listens (token in `dev.dir/admin.token`).
    pub admin: SocketAddr,
    /// Run (re)spawned processes under this umask (through `sh`).
    pub umask: Option<u32>,
    exe: PathBuf,
}

/// A free loopback port (bound and released; a small race is acceptable in tests).
pub fn free_port() -> SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("address")
}

impl ChildBroker {
    /// Makes a development federation in `dir` and starts `exe broker serve`
    /// on it, with `extra` appended to the configuration file.
    pub async fn start(exe: &Path, dir: &Path, extra: &str) -> Self {
        Self::start_with_data_dir(exe, dir, &dir.join("data"), extra).await
    }

    /// As [`ChildBroker::start`], with the broker's data in `data_dir`.
    pub async fn start_with_data_dir(exe: &Path, dir: &Path, data_dir: &Path, extra: &str) -> Self {
        Self::start_on(exe, dir, data_dir, "", extra).await
    }

    /// As [`ChildBroker::start_with_data_dir`], with `storage` added to the
    /// `[storage]` section (another engine's settings).
    pub async fn start_on(exe: &Path, dir: &Path, data_dir: &Path, storage: &str, extra: &str) -> Self {
        init_crypto();
        let addr = free_port();
        let dev = certs::dev::create(
            &dir.join("federation"),
            &DevOptions { broker_addr: addr.to_string(), force: false },
            certs::now(),
        )
        .expect("development federation");
        let data_dir = data_dir.to_owned();
        let config_path = dev.dir.join("broker.toml");
        let admin = free_port();
        broker::admin::AdminToken::generate(&dev.dir.join("admin.token"), false).expect("admin token");
        let text = format!(
            "{}\n[admin]\nlisten = \"{admin}\"\ntoken_file = \"admin.token\"\n{extra}\n",
            broker::config::dev_config_text(addr, &data_dir).replacen(
                "[storage]\n",
                &format!("[storage]\n{storage}"),
                1
            )
        );
        std::fs::write(&config_path, text).expect("write config");
        let mut me = Self {
            child: spawn_placeholder(),
            addr,
            dev,
            config_path,
            log_path: dir.join("broker.log"),
            data_dir,
            admin,
            umask: None,
            exe: exe.to_owned(),
        };
        me.spawn().await;
        me
    }

    /// A second broker node of the same federation and configuration, on
    /// its own port, admin port, data folder (`dir`) and log, started.
    pub async fn another_node(&self, dir: &Path) -> Self {
        let addr = free_port();
        let admin = free_port();
        std::fs::create_dir_all(dir).expect("node dir");
        let text = std::fs::read_to_string(&self.config_path).expect("config");
        let text = text
            .replace(&format!("address = \"{}\"", self.addr), &format!("address = \"{addr}\""))
            .replace(&format!("listen = \"{}\"", self.admin), &format!("listen = \"{admin}\""))
            .replace(
                &format!("data_dir = \"{}\"", self.data_dir.display()),
                &format!("data_dir = \"{}\"", dir.join("data").display()),
            );
        let config_path = self.dev.dir.join(format!("broker-{}.toml", addr.port()));
        std::fs::write(&config_path, text).expect("write config");
        let mut me = Self {
            child: spawn_placeholder(),
            addr,
            dev: self.dev.clone(),
            config_path,
            log_path: dir.join("broker.log"),
            data_dir: dir.join("data"),
            admin,
            umask: None,
            exe: self.exe.clone(),
        };
        me.spawn().await;
        me
    }

    /// The profile of `principal`, pointed at this node (whatever address
    /// the profile folder names).
    pub fn profile(&self, principal: &str) -> certs::profile::Profile {
        let mut profile =
            certs::profile::Profile::load(&self.dev.profile(principal), certs::now()).expect("profile loads");
        profile.broker = format!("https://{}", self.addr);
        profile
    }

    /// A client of `principal` connected to this node.
    pub async fn client(&self, principal: &str) -> Result<Client, agency_client::error::ClientError> {
        Client::connect(self.profile(principal)).await
    }

    /// (Re)starts the process on the same configuration; its log is appended.
    pub async fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new().create(true).append(true).open(&self.log_path).expect("log file");
        let mut command = match self.umask {
            None => tokio::process::Command::new(&self.exe),
            Some(umask) => {
                let mut c = tokio::process::Command::new("sh");
                c.arg("-c").arg(format!("umask {umask:03o}; exec \"$0\" \"$@\"")).arg(&self.exe);
                c
            }
        };
        self.child = command
            .args(["broker", "serve", "--config"])
            .arg(&self.config_path)
            .env_remove("BROKER_LOG")
            .stdout(std::process::Stdio::null())
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .expect("spawn the broker");
        self.wait_ready().await;
    }

    /// Waits until the broker answers an RPC.
    pub async fn wait_ready(&mut self) {
        for _ in 0..400 {
            if let Some(status) = self.child.try_wait().expect("child status") {
                panic!(
                    "the broker exited with {status}; log:\n{}",
                    std::fs::read_to_string(&self.log_path).unwrap_or_default()
                );
            }
            if let Ok(c) = self.client(POLICE_SYSTEM).await
                && c.refresh_directory().await.is_ok()
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!("the broker did not become ready");
    }

    /// SIGTERM, then waits for a clean exit.
    pub async fn terminate(&mut self) -> std::process::ExitStatus {
        signal(&self.child, "TERM");
        tokio::time::timeout(Duration::from_secs(30), self.child.wait())
            .await
            .expect("exits after SIGTERM")
            .expect("wait")
    }

    /// SIGKILL: the process dies wherever it is.
    pub async fn kill(&mut self) {
        signal(&self.child, "KILL");
        let _ = self.child.wait().await;
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }
}

fn signal(child: &tokio::process::Child, sig: &str) {
    if let Some(pid) = child.id() {
        let _ = std::process::Command::new("kill").arg(format!("-{sig}")).arg(pid.to_string()).status();
    }
}

fn spawn_placeholder() -> tokio::process::Child {
    tokio::process::Command::new("true").spawn().expect("spawn true")
}

/// Runs `exe TOOL ARGS…` to completion; returns (exit code, stdout, stderr).
pub async fn run_tool(exe: &Path, tool: &str, args: &[&str]) -> (i32, String, String) {
    let out = tokio::process::Command::new(exe)
        .arg(tool)
        .args(args)
        .env_remove("AGENCY_CLIENT_PROFILE")
        .output()
        .await
        .expect("run the tool");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}
