//! The system under test as a child process of the generator: this same
//! executable re-run with a hidden subcommand (`serve-broker` or
//! `serve-ceiling`), so that its CPU time and memory can be read from
//! `/proc` and its start-up timed from spawn to the first answered RPC.

use std::path::Path;
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use agency_client::Client;
use anyhow::Context as _;
use referral_proto::pb;

use crate::process::Spawned;
use crate::procfs::{self, Memory};

/// Which server to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// The real broker (`broker serve`).
    Broker,
    /// TLS and gRPC only: every submit answered with one precomputed receipt.
    Ceiling,
    /// Debian's `redis-server` as a durable queue (see `crate::redis`).
    Redis,
    /// The real broker driven through `SubmitStream` (`--stream`), on a fresh store.
    BrokerStream,
    /// The real broker on PostgreSQL (`--postgres`), on a fresh database.
    BrokerPostgres,
    /// Two broker nodes serving at once on one fresh PostgreSQL database
    /// (`--postgres --nodes 2`): half the connections to each.
    BrokerPostgres2,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Broker => "broker",
            Kind::Ceiling => "ceiling",
            Kind::Redis => "redis",
            Kind::BrokerStream => "broker_stream",
            Kind::BrokerPostgres => "broker_postgres",
            Kind::BrokerPostgres2 => "broker_postgres_2_nodes",
        }
    }

    /// Whether it is the real broker (unary or streaming).
    pub fn is_broker(self) -> bool {
        matches!(self, Kind::Broker | Kind::BrokerStream | Kind::BrokerPostgres | Kind::BrokerPostgres2)
    }

    /// The hidden subcommand that serves it (Redis is its own program).
    fn subcommand(self) -> Option<&'static str> {
        match self {
            Kind::Broker | Kind::BrokerStream | Kind::BrokerPostgres | Kind::BrokerPostgres2 => Some("serve-broker"),
            Kind::Ceiling => Some("serve-ceiling"),
            Kind::Redis => None,
        }
    }
}

/// Longest wait for a server to answer its first RPC (a broker opening a
/// large store takes a while).
const READY_TIMEOUT: Duration = Duration::from_secs(300);
/// Pause between readiness probes; bounds the start-up time's resolution.
const PROBE_INTERVAL: Duration = Duration::from_millis(5);
/// Longest wait for a clean exit after SIGTERM.
const STOP_TIMEOUT: Duration = Duration::from_secs(120);

/// A running server process.
#[derive(Debug)]
pub struct ServerProcess {
    process: Spawned,
    pub kind: Kind,
    pub pid: u32,
    /// From spawn to the first RPC it answered.
    pub ready_after: Duration,
}

impl ServerProcess {
    /// Spawns `kind` on the configuration file and waits until it answers an
    /// RPC from `probe_profile` (the broker: `GetDirectory` succeeds; the
    /// ceiling: any gRPC status comes back). Its stderr goes to `log_path`.
    pub async fn start(kind: Kind, config: &Path, log_path: &Path, probe_profile: &Path) -> anyhow::Result<Self> {
        let subcommand = kind.subcommand().context("redis-server is started by crate::redis, not re-run from here")?;
        let exe = std::env::current_exe().context("cannot locate the loadgen executable to re-run it")?;
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log_path)
            .with_context(|| format!("cannot open the log file {}", log_path.display()))?;
        let spawned = Instant::now();
        let child = Command::new(exe)
            .arg(subcommand)
            .arg("--config")
            .arg(config)
            .env_remove("BROKER_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .with_context(|| format!("cannot start the {} process", kind.as_str()))?;
        let process = Spawned::new(child, kind.as_str(), log_path.to_owned());
        let mut me = Self { pid: process.pid, process, kind, ready_after: Duration::ZERO };
        me.ready_after = me.wait_ready(spawned, probe_profile).await?;
        Ok(me)
    }

    async fn wait_ready(&mut self, spawned: Instant, profile: &Path) -> anyhow::Result<Duration> {
        loop {
            if let Some(status) = self.process.exited()? {
                anyhow::bail!(
                    "the {} exited with {status} before answering; {}",
                    self.kind.as_str(),
                    self.process.log_tail()
                );
            }
            if probe(self.kind, profile).await {
                return Ok(spawned.elapsed());
            }
            if spawned.elapsed() > READY_TIMEOUT {
                anyhow::bail!(
                    "the {} did not answer within {} s; {}",
                    self.kind.as_str(),
                    READY_TIMEOUT.as_secs(),
                    self.process.log_tail()
                );
            }
            tokio::time::sleep(PROBE_INTERVAL).await;
        }
    }

    /// CPU seconds the process has used so far.
    pub fn cpu_seconds(&self) -> anyhow::Result<f64> {
        self.process.cpu_seconds()
    }

    /// Its current and peak resident memory.
    pub fn memory(&self) -> anyhow::Result<Memory> {
        self.process.memory()
    }

    /// Bytes it has written so far.
    pub fn written(&self) -> anyhow::Result<procfs::Written> {
        self.process.written()
    }

    /// SIGTERM, then waits for the orderly shutdown (SIGKILL after a timeout).
    pub async fn stop(self) -> anyhow::Result<ExitStatus> {
        self.process.stop(STOP_TIMEOUT).await
    }
}

/// One readiness probe: connect and call `GetDirectory`.
async fn probe(kind: Kind, profile: &Path) -> bool {
    let Ok(client) = Client::connect_dir(profile).await else {
        return false;
    };
    let answer = client.broker().get_directory(pb::GetDirectoryRequest {}).await;
    match (kind, answer) {
        (Kind::Broker | Kind::BrokerStream | Kind::BrokerPostgres | Kind::BrokerPostgres2, Ok(_)) => true,
        (Kind::Ceiling, Err(status)) => status.code() == tonic::Code::Unimplemented,
        _ => false,
    }
}
