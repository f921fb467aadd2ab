//! The system under test as a child process of the generator: this same
//! executable re-run with a hidden subcommand (`serve-broker` or
//! `serve-ceiling`), so that its CPU time and memory can be read from
//! `/proc` and its start-up timed from spawn to the first answered RPC.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use agency_client::Client;
use anyhow::Context as _;
use referral_proto::pb;

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
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Broker => "broker",
            Kind::Ceiling => "ceiling",
            Kind::Redis => "redis",
            Kind::BrokerStream => "broker_stream",
        }
    }

    /// Whether it is the real broker (unary or streaming).
    pub fn is_broker(self) -> bool {
        matches!(self, Kind::Broker | Kind::BrokerStream)
    }

    /// The hidden subcommand that serves it (Redis is its own program).
    fn subcommand(self) -> Option<&'static str> {
        match self {
            Kind::Broker | Kind::BrokerStream => Some("serve-broker"),
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
    child: Child,
    pub kind: Kind,
    pub pid: u32,
    pub log_path: PathBuf,
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
        let pid = child.id();
        let mut me = Self { child, kind, pid, log_path: log_path.to_owned(), ready_after: Duration::ZERO };
        me.ready_after = me.wait_ready(spawned, probe_profile).await?;
        Ok(me)
    }

    async fn wait_ready(&mut self, spawned: Instant, profile: &Path) -> anyhow::Result<Duration> {
        loop {
            if let Some(status) = self.child.try_wait().context("cannot check the server process")? {
                anyhow::bail!("the {} exited with {status} before answering; {}", self.kind.as_str(), self.log_tail());
            }
            if probe(self.kind, profile).await {
                return Ok(spawned.elapsed());
            }
            if spawned.elapsed() > READY_TIMEOUT {
                anyhow::bail!(
                    "the {} did not answer within {} s; {}",
                    self.kind.as_str(),
                    READY_TIMEOUT.as_secs(),
                    self.log_tail()
                );
            }
            tokio::time::sleep(PROBE_INTERVAL).await;
        }
    }

    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log_path).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        let tail = lines[lines.len().saturating_sub(20)..].join("\n");
        format!("its log ({}) ends:\n{tail}", self.log_path.display())
    }

    /// CPU seconds the process has used so far.
    pub fn cpu_seconds(&self) -> anyhow::Result<f64> {
        Ok(procfs::cpu_seconds(self.pid)?)
    }

    /// Its current and peak resident memory.
    pub fn memory(&self) -> anyhow::Result<Memory> {
        Ok(procfs::memory(self.pid)?)
    }

    /// Bytes it has written so far.
    pub fn written(&self) -> anyhow::Result<procfs::Written> {
        Ok(procfs::written(self.pid)?)
    }

    /// SIGTERM, then waits for the orderly shutdown (SIGKILL after a timeout).
    pub async fn stop(mut self) -> anyhow::Result<ExitStatus> {
        // `kill` the command: the workspace forbids unsafe code, so no libc::kill.
        let _ = Command::new("kill").arg("-TERM").arg(self.pid.to_string()).status();
        let started = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().context("cannot wait for the server process")? {
                return Ok(status);
            }
            if started.elapsed() > STOP_TIMEOUT {
                let _ = self.child.kill();
                let status = self.child.wait().context("cannot wait for the killed server process")?;
                anyhow::bail!(
                    "the {} did not stop within {} s of SIGTERM and was killed ({status})",
                    self.kind.as_str(),
                    STOP_TIMEOUT.as_secs()
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        // Never leave a server behind (an error path, or Ctrl-C).
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// One readiness probe: connect and call `GetDirectory`.
async fn probe(kind: Kind, profile: &Path) -> bool {
    let Ok(client) = Client::connect_dir(profile).await else {
        return false;
    };
    let answer = client.broker().get_directory(pb::GetDirectoryRequest {}).await;
    match (kind, answer) {
        (Kind::Broker | Kind::BrokerStream, Ok(_)) => true,
        (Kind::Ceiling, Err(status)) => status.code() == tonic::Code::Unimplemented,
        _ => false,
    }
}
