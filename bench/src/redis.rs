//! Redis as the broker's peer: what an integrator would use instead, a
//! durable queue. Debian's `redis-server` runs as a child process on
//! loopback with TLS 1.3 only, client certificates required from the run's
//! own development federation (its CA; the server certificate is minted
//! from it for this run), `appendonly yes` and `appendfsync always` (an
//! fsync before every answer, as the broker fsyncs before every receipt),
//! and its data in the run's work folder. The generator drives it with the
//! same connections, in-flight count and envelopes as the broker: an
//! `LPUSH` of each sealed envelope's bytes onto the recipient agency's
//! list, pipelined up to the in-flight count on each connection.
//!
//! RESP is spoken here over tokio-rustls rather than through a Redis client
//! crate: the maintained ones bring their own TLS stacks and features
//! (aws-lc-rs, native roots) that must not enter this tree, and an `LPUSH`
//! and its `:n` reply are a few lines.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use certs::federation::Federation;
use prost::Message as _;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _, BufReader};
use tokio::net::TcpStream;
use tokio::sync::{Semaphore, mpsc};
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

use crate::load::{Job, Plan, Shared, SubmitOutcome, WorkerResult, micros};
use crate::process::Spawned;
use crate::procfs::{self, Memory};
use crate::setup::{Setup, free_port};
use crate::workload::Source;

/// Where Debian installs it, when it is not on `PATH`.
const DEBIAN_PATHS: [&str; 2] = ["/usr/bin/redis-server", "/usr/sbin/redis-server"];
/// Longest wait for the server to answer its first PING.
const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// Pause between readiness probes.
const PROBE_INTERVAL: Duration = Duration::from_millis(5);
/// Longest wait for an orderly exit after SIGTERM (a final AOF fsync).
const STOP_TIMEOUT: Duration = Duration::from_secs(30);
/// The TLS name the server certificate is minted for and the client checks.
const SERVER_NAME: &str = "localhost";
/// The longest reply line accepted (an error message).
const MAX_REPLY_LINE: usize = 4096;

/// The `redis-server` executable: on `PATH`, else where Debian puts it.
pub fn find_redis_server() -> Option<PathBuf> {
    let on_path = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).map(|d| d.join("redis-server")).collect::<Vec<_>>())
        .unwrap_or_default();
    on_path.into_iter().chain(DEBIAN_PATHS.iter().map(PathBuf::from)).find(|p| p.is_file())
}

/// The list an envelope for `recipient` is pushed onto.
pub fn queue_key(recipient: &str) -> String {
    format!("referrals:{recipient}")
}

/// The command `LPUSH key value` in RESP.
pub fn lpush_command(key: &[u8], value: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(value.len() + key.len() + 40);
    out.extend_from_slice(b"*3\r\n$5\r\nLPUSH\r\n");
    bulk(&mut out, key);
    bulk(&mut out, value);
    out
}

fn bulk(out: &mut Vec<u8>, bytes: &[u8]) {
    out.extend_from_slice(format!("${}\r\n", bytes.len()).as_bytes());
    out.extend_from_slice(bytes);
    out.extend_from_slice(b"\r\n");
}

/// One reply line of the kinds these commands get.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    /// `:n`
    Integer(i64),
    /// `+text`
    Simple(String),
    /// `-ERR text`: the error's first word is kept as its kind.
    Error(String),
}

/// Parses one reply line (without its CRLF).
pub fn parse_reply(line: &[u8]) -> anyhow::Result<Reply> {
    let text = std::str::from_utf8(line).context("a reply that is not UTF-8")?;
    let (tag, rest) = text.split_at_checked(1).context("an empty reply")?;
    match tag {
        ":" => Ok(Reply::Integer(rest.parse().with_context(|| format!("a bad integer reply {rest:?}"))?)),
        "+" => Ok(Reply::Simple(rest.to_owned())),
        "-" => Ok(Reply::Error(rest.split_whitespace().next().unwrap_or("ERR").to_owned())),
        _ => anyhow::bail!("an unexpected reply type {tag:?}"),
    }
}

/// A TLS connection to the server, read in lines.
pub struct Connection {
    stream: BufReader<TlsStream<TcpStream>>,
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connection").finish_non_exhaustive()
    }
}

impl Connection {
    async fn open(addr: SocketAddr, tls: &TlsConnector) -> anyhow::Result<Self> {
        let tcp = TcpStream::connect(addr).await?;
        tcp.set_nodelay(true)?;
        let name = ServerName::try_from(SERVER_NAME).context("the server name")?;
        let stream = tls.connect(name, tcp).await?;
        Ok(Self { stream: BufReader::new(stream) })
    }

    /// Sends one command and reads its one-line reply.
    pub async fn call(&mut self, command: &[u8]) -> anyhow::Result<Reply> {
        self.stream.get_mut().write_all(command).await?;
        self.stream.get_mut().flush().await?;
        read_reply(&mut self.stream).await
    }
}

async fn read_reply<R: tokio::io::AsyncBufRead + Unpin>(r: &mut R) -> anyhow::Result<Reply> {
    let mut line = Vec::with_capacity(32);
    let n = (&mut *r).take(MAX_REPLY_LINE as u64).read_until(b'\n', &mut line).await?;
    anyhow::ensure!(n > 0, "the server closed the connection");
    let body = line.strip_suffix(b"\r\n").context("a reply line without CRLF")?;
    parse_reply(body)
}

/// A command with its arguments in RESP.
pub fn command(args: &[&[u8]]) -> Vec<u8> {
    let mut out = format!("*{}\r\n", args.len()).into_bytes();
    for a in args {
        bulk(&mut out, a);
    }
    out
}

/// A running `redis-server`.
pub struct RedisServer {
    process: Spawned,
    pub pid: u32,
    pub addr: SocketAddr,
    pub ready_after: Duration,
    tls: TlsConnector,
}

impl std::fmt::Debug for RedisServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisServer").field("pid", &self.pid).field("addr", &self.addr).finish_non_exhaustive()
    }
}

impl RedisServer {
    /// Mints its certificate from the run's federation, starts `exe` in
    /// `setup`'s work folder and waits until it answers a PING over mutual
    /// TLS as `client_profile`.
    pub async fn start(exe: &Path, setup: &Setup, client_profile: &Path, log_path: &Path) -> anyhow::Result<Self> {
        let dir = setup.file("redis");
        let tls_dir = dir.join("tls");
        std::fs::create_dir_all(dir.join("data")).with_context(|| format!("cannot create {}", dir.display()))?;
        std::fs::create_dir_all(&tls_dir).with_context(|| format!("cannot create {}", tls_dir.display()))?;
        let mut fed = Federation::open(&setup.dev.federation_dir()).context("cannot open the run's federation")?;
        let now = certs::now();
        let issued = fed
            .issue_server(
                vec![SERVER_NAME.to_owned()],
                vec!["127.0.0.1".parse().expect("constant")],
                now.plus_millis(-60_000),
                now.plus_millis(86_400_000),
            )
            .context("cannot issue the redis server certificate")?;
        let (cert, key, ca) = (tls_dir.join("server.crt"), tls_dir.join("server.key"), tls_dir.join("ca.crt"));
        std::fs::write(&cert, &issued.cert_pem)?;
        certs::secret_file::write(&key, issued.key_pem.as_bytes(), false)?;
        std::fs::write(&ca, fed.ca().cert_pem())?;
        let tls = client_tls(client_profile)?;
        let addr = free_port().context("cannot find a free loopback port")?;
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log_path)
            .with_context(|| format!("cannot open the log file {}", log_path.display()))?;
        let spawned = Instant::now();
        let child = Command::new(exe)
            .arg("--bind")
            .arg("127.0.0.1")
            .args(["--port", "0"])
            .arg("--tls-port")
            .arg(addr.port().to_string())
            .arg("--tls-cert-file")
            .arg(&cert)
            .arg("--tls-key-file")
            .arg(&key)
            .arg("--tls-ca-cert-file")
            .arg(&ca)
            .args(["--tls-auth-clients", "yes", "--tls-protocols", "TLSv1.3"])
            .args(["--appendonly", "yes", "--appendfsync", "always", "--save", ""])
            .arg("--dir")
            .arg(dir.join("data"))
            .args(["--daemonize", "no", "--logfile", ""])
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("cannot start {}", exe.display()))?;
        let process = Spawned::new(child, "redis-server", log_path.to_owned());
        let mut me = Self { pid: process.pid, process, addr, ready_after: Duration::ZERO, tls };
        me.ready_after = me.wait_ready(spawned).await?;
        Ok(me)
    }

    async fn wait_ready(&mut self, spawned: Instant) -> anyhow::Result<Duration> {
        loop {
            if let Some(status) = self.process.exited()? {
                anyhow::bail!("redis-server exited with {status} before answering; {}", self.process.log_tail());
            }
            if let Ok(mut c) = self.connect().await
                && let Ok(Reply::Simple(s)) = c.call(&command(&[b"PING"])).await
                && s == "PONG"
            {
                return Ok(spawned.elapsed());
            }
            if spawned.elapsed() > READY_TIMEOUT {
                anyhow::bail!(
                    "redis-server did not answer within {} s; {}",
                    READY_TIMEOUT.as_secs(),
                    self.process.log_tail()
                );
            }
            tokio::time::sleep(PROBE_INTERVAL).await;
        }
    }

    /// Why the server is no longer running, if it is not.
    pub fn exited(&mut self) -> Option<String> {
        match self.process.exited() {
            Ok(Some(status)) => Some(format!("redis-server exited with {status}; {}", self.process.log_tail())),
            _ => None,
        }
    }

    /// A new mutual-TLS connection.
    pub async fn connect(&self) -> anyhow::Result<Connection> {
        Connection::open(self.addr, &self.tls).await.context("cannot connect to redis-server")
    }

    /// `n` connections.
    pub async fn connect_many(&self, n: usize) -> anyhow::Result<Vec<Connection>> {
        let mut out = Vec::with_capacity(n);
        for _ in 0..n {
            out.push(self.connect().await?);
        }
        Ok(out)
    }

    /// The length of `key`'s list.
    pub async fn list_length(&self, key: &str) -> anyhow::Result<u64> {
        match self.connect().await?.call(&command(&[b"LLEN", key.as_bytes()])).await? {
            Reply::Integer(n) => Ok(u64::try_from(n)?),
            other => anyhow::bail!("LLEN answered {other:?}"),
        }
    }

    pub fn cpu_seconds(&self) -> anyhow::Result<f64> {
        self.process.cpu_seconds()
    }

    pub fn memory(&self) -> anyhow::Result<Memory> {
        self.process.memory()
    }

    pub fn written(&self) -> anyhow::Result<procfs::Written> {
        self.process.written()
    }

    /// SIGTERM (Redis fsyncs its AOF and exits), SIGKILL after a timeout.
    pub async fn stop(self) -> anyhow::Result<ExitStatus> {
        self.process.stop(STOP_TIMEOUT).await
    }
}

/// TLS 1.3 only, the federation CA as the only root, and the profile's
/// certificate as the client's identity.
fn client_tls(profile_dir: &Path) -> anyhow::Result<TlsConnector> {
    let profile = certs::profile::Profile::load(profile_dir, certs::now())
        .with_context(|| format!("cannot load the profile {}", profile_dir.display()))?;
    let mut roots = rustls::RootCertStore::empty();
    for ca in CertificateDer::pem_slice_iter(profile.ca_pem.as_bytes()) {
        roots.add(ca.context("the profile's CA certificate")?)?;
    }
    let chain = CertificateDer::pem_slice_iter(profile.cert_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .context("the profile's certificate")?;
    let key = PrivateKeyDer::from_pem_slice(profile.key_pem.as_bytes()).context("the profile's key")?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)?;
    Ok(TlsConnector::from(Arc::new(config)))
}

/// LPUSHes from `source` onto `key` over `connections`, up to the plan's
/// in-flight count pipelined on each, until its limit or duration.
pub async fn submit(
    connections: Vec<Connection>,
    source: Source,
    plan: &Plan,
    key: &str,
) -> anyhow::Result<SubmitOutcome> {
    let shared = Arc::new(Shared::new(source, plan, None));
    let key: Arc<[u8]> = key.as_bytes().into();
    let tasks: Vec<_> = connections
        .into_iter()
        .map(|c| tokio::spawn(connection(c, shared.clone(), plan.in_flight_per_connection, key.clone())))
        .collect();
    let mut results = Vec::with_capacity(tasks.len());
    for t in tasks {
        results.push(t.await.context("a redis connection task failed")?);
    }
    SubmitOutcome::merge(results, plan, shared.start)
}

/// What the writer hands the reader for each command sent.
struct Sent {
    at: Instant,
    scheduled: Option<Instant>,
}

/// One connection: a writer that pipelines commands while fewer than
/// `in_flight` are unanswered, and a reader that takes the replies in order.
async fn connection(c: Connection, shared: Arc<Shared>, in_flight: usize, key: Arc<[u8]>) -> WorkerResult {
    let (read, mut write) = tokio::io::split(c.stream.into_inner());
    let credit = Arc::new(Semaphore::new(in_flight));
    let (tx, mut rx) = mpsc::unbounded_channel::<Sent>();
    let reader_credit = credit.clone();
    let shared_errors = shared.clone();
    let reader = tokio::spawn(async move {
        let mut r = WorkerResult::new(shared_errors.period.is_some());
        let mut read = BufReader::new(read);
        while let Some(sent) = rx.recv().await {
            let reply = read_reply(&mut read).await;
            let done = Instant::now();
            match reply {
                Ok(Reply::Integer(_)) => {
                    r.accepted += 1;
                    r.latency.saturating_record(micros(done - sent.at));
                    if let (Some(h), Some(due)) = (r.from_schedule.as_mut(), sent.scheduled) {
                        h.saturating_record(micros(done.saturating_duration_since(due)));
                    }
                }
                Ok(Reply::Error(kind)) => *r.errors.entry(format!("redis {kind}")).or_default() += 1,
                Ok(Reply::Simple(s)) => *r.errors.entry(format!("redis unexpected +{s}")).or_default() += 1,
                Err(e) => {
                    *r.errors.entry(format!("redis connection: {e:#}")).or_default() += 1;
                    // The writer must not wait for credit that will never come back.
                    reader_credit.close();
                    break;
                }
            }
            reader_credit.add_permits(1);
        }
        r
    });
    let mut seal_errors: BTreeMap<String, u64> = BTreeMap::new();
    loop {
        let Ok(permit) = credit.acquire().await else { break };
        let Some(Job { index, scheduled }) = shared.next_job().await else { break };
        let envelope = match shared.source.get(index) {
            Ok(e) => e,
            Err(e) => {
                *seal_errors.entry(format!("seal: {e:#}")).or_default() += 1;
                continue;
            }
        };
        let cmd = lpush_command(&key, &envelope.encode_to_vec());
        let at = Instant::now();
        if write.write_all(&cmd).await.is_err() || write.flush().await.is_err() {
            *seal_errors.entry("redis connection: write failed".into()).or_default() += 1;
            break;
        }
        permit.forget();
        if tx.send(Sent { at, scheduled }).is_err() {
            break;
        }
    }
    drop(tx);
    let mut r = reader.await.unwrap_or_else(|_| {
        let mut r = WorkerResult::new(false);
        r.errors.insert("redis reader panicked".into(), 1);
        r
    });
    for (k, v) in seal_errors {
        *r.errors.entry(k).or_default() += v;
    }
    let _ = write.shutdown().await;
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lpush_is_encoded_as_resp_bulk_strings() {
        assert_eq!(lpush_command(b"q", b"ab\r\n"), b"*3\r\n$5\r\nLPUSH\r\n$1\r\nq\r\n$4\r\nab\r\n\r\n".to_vec());
        assert_eq!(command(&[b"PING"]), b"*1\r\n$4\r\nPING\r\n".to_vec());
    }

    #[test]
    fn replies_are_parsed() {
        assert_eq!(parse_reply(b":42").unwrap(), Reply::Integer(42));
        assert_eq!(parse_reply(b"+PONG").unwrap(), Reply::Simple("PONG".into()));
        assert_eq!(parse_reply(b"-OOM command not allowed").unwrap(), Reply::Error("OOM".into()));
        assert!(parse_reply(b"$3").is_err());
        assert!(parse_reply(b"").is_err());
        assert!(parse_reply(b":x").is_err());
    }
}
