//! A real PostgreSQL server for tests: Debian's binaries, a fresh cluster
//! in a temporary folder, TLS only (a certificate from a CA made here),
//! password authentication, listening on a loopback port. Run as the
//! `postgres` user when the tests run as root (initdb refuses root).
//! Stopped (fast shutdown, then SIGKILL) when dropped.
//!
//! `.ci/run` installs Debian's `postgresql` when it is missing; a test that
//! needs one fails with a message saying so rather than pass vacuously.

use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use broker::store::postgres::PgSettings;
use certs::pki::{Ca, LeafSpec};

/// The role the broker connects as.
pub const USER: &str = "broker";
/// The database the broker uses.
pub const DATABASE: &str = "referral";

/// The newest installed PostgreSQL's bin folder.
pub fn bin_dir() -> PathBuf {
    let mut found: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .map(|d| d.flatten().map(|e| e.path().join("bin")).filter(|p| p.join("postgres").exists()).collect())
        .unwrap_or_default();
    found.sort();
    found.pop().expect("PostgreSQL is not installed (/usr/lib/postgresql/*/bin); .ci/run installs Debian's postgresql")
}

/// uid and gid of the `postgres` user when running as root.
fn run_as() -> Option<(u32, u32)> {
    if effective_uid() != 0 {
        return None;
    }
    let out = Command::new("id").args(["-u", "postgres"]).output().expect("id");
    let uid: u32 = String::from_utf8_lossy(&out.stdout).trim().parse().expect("a postgres user exists");
    let out = Command::new("id").args(["-g", "postgres"]).output().expect("id");
    let gid: u32 = String::from_utf8_lossy(&out.stdout).trim().parse().expect("postgres group");
    Some((uid, gid))
}

/// This process's uid (the owner of /proc/self), without unsafe code.
fn effective_uid() -> u32 {
    std::fs::metadata("/proc/self").map(|m| std::os::unix::fs::MetadataExt::uid(&m)).unwrap_or(0)
}

fn command(program: &Path) -> Command {
    match run_as() {
        Some((uid, gid)) => {
            let mut c = Command::new("setpriv");
            c.args([format!("--reuid={uid}"), format!("--regid={gid}"), "--clear-groups".into()]).arg(program);
            // libpq reads ~/.postgresql; root's home is not the postgres user's to read.
            c.env("HOME", "/tmp");
            c
        }
        None => Command::new(program),
    }
}

/// The state and parent of process `pid` from /proc ("pid (comm) state ppid ...").
fn proc_stat(pid: &str) -> Option<(String, u32)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (_, rest) = stat.rsplit_once(')')?;
    let mut fields = rest.split_whitespace();
    Some((fields.next()?.to_owned(), fields.next()?.parse().ok()?))
}

/// The processes whose parent is `pid`.
fn children_of(pid: u32) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else { return Vec::new() };
    entries
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            let child: u32 = name.parse().ok()?;
            (proc_stat(&name)?.1 == pid).then_some(child)
        })
        .collect()
}

/// Whether process `pid` still runs (exists and is not a zombie).
fn running(pid: u32) -> bool {
    proc_stat(&pid.to_string()).is_some_and(|(state, _)| state != "Z")
}

fn chown(path: &Path) {
    if let Some((uid, gid)) = run_as() {
        std::os::unix::fs::chown(path, Some(uid), Some(gid)).expect("chown to postgres");
    }
}

/// A running PostgreSQL server.
#[derive(Debug)]
pub struct PgServer {
    pub dir: PathBuf,
    pub addr: SocketAddr,
    /// The CA that signed the server's certificate (PEM file).
    pub ca_file: PathBuf,
    /// The broker role's password (file, mode 0600).
    pub password_file: PathBuf,
    child: Option<Child>,
}

impl PgServer {
    /// Initialises a cluster in `dir` (created; its parent must be
    /// searchable by the `postgres` user, as a fresh folder in /tmp is)
    /// and starts it on a free loopback port.
    pub fn start(dir: &Path) -> Self {
        let bin = bin_dir();
        std::fs::create_dir_all(dir).expect("pg dir");
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        chown(dir);
        let data = dir.join("data");
        let now = certs::now();
        let addr = crate::free_port();
        // Named after the port, so two test servers' CAs are told apart by name too.
        let ca = Ca::generate(
            &format!("test database {}", addr.port()),
            now.plus_millis(-3_600_000),
            now.plus_millis(86_400_000),
        )
        .expect("CA");
        let leaf = ca
            .issue(&LeafSpec::server(
                vec!["localhost".into()],
                vec![[127, 0, 0, 1].into()],
                now.plus_millis(-3_600_000),
                now.plus_millis(86_400_000),
            ))
            .expect("server certificate");
        let ca_file = dir.join("ca.pem");
        std::fs::write(&ca_file, ca.cert_pem()).expect("ca");
        let password = hex::encode(certs::pki::random_serial());
        let password_file = dir.join("password");
        std::fs::write(&password_file, &password).expect("password");
        std::fs::set_permissions(&password_file, std::fs::Permissions::from_mode(0o600)).expect("chmod");
        // initdb reads the superuser's password from a file it can read.
        let pwfile = dir.join("initdb-password");
        std::fs::write(&pwfile, &password).expect("pwfile");
        chown(&pwfile);
        let out = command(&bin.join("initdb"))
            .arg("-D")
            .arg(&data)
            .args(["-U", USER, "--auth-local=trust", "--auth-host=scram-sha-256", "-E", "UTF8", "--no-instructions"])
            .arg(format!("--pwfile={}", pwfile.display()))
            .stdout(Stdio::null())
            .output()
            .expect("initdb runs");
        assert!(out.status.success(), "initdb failed: {}", String::from_utf8_lossy(&out.stderr));
        std::fs::remove_file(&pwfile).ok();
        for (name, text) in [("server.crt", leaf.cert_pem.as_str()), ("server.key", leaf.key_pem.as_str())] {
            let p = data.join(name);
            std::fs::write(&p, text).expect("tls file");
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).expect("chmod");
            chown(&p);
        }
        // TLS only: every TCP connection without it is rejected.
        std::fs::write(
            data.join("pg_hba.conf"),
            "local all all trust\nlocal replication all trust\nhostssl all all 127.0.0.1/32 scram-sha-256\n\
             hostssl replication all 127.0.0.1/32 scram-sha-256\nhostnossl all all 0.0.0.0/0 reject\n",
        )
        .expect("pg_hba");
        chown(&data.join("pg_hba.conf"));
        let conf = format!(
            "listen_addresses = '127.0.0.1'\nport = {}\nunix_socket_directories = '{}'\nssl = on\n\
             ssl_cert_file = 'server.crt'\nssl_key_file = 'server.key'\nfsync = on\nsynchronous_commit = on\n\
             max_connections = 100\nshared_buffers = 32MB\nlog_min_messages = warning\n",
            addr.port(),
            data.display()
        );
        let mut f = std::fs::OpenOptions::new().append(true).open(data.join("postgresql.conf")).expect("conf");
        std::io::Write::write_all(&mut f, conf.as_bytes()).expect("conf");
        let log = std::fs::File::create(dir.join("postgres.log")).expect("log");
        chown(&dir.join("postgres.log"));
        let child = command(&bin.join("postgres"))
            .arg("-D")
            .arg(&data)
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("postgres starts");
        let mut server = Self { dir: dir.to_owned(), addr, ca_file, password_file, child: Some(child) };
        server.wait_ready();
        let out = command(&bin.join("createdb"))
            .arg("-h")
            .arg(&data)
            .args(["-p", &addr.port().to_string(), "-U", USER, DATABASE])
            .output()
            .expect("createdb runs");
        assert!(out.status.success(), "createdb failed: {}", String::from_utf8_lossy(&out.stderr));
        server
    }

    fn wait_ready(&mut self) {
        let bin = bin_dir();
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let ok = command(&bin.join("pg_isready"))
                .arg("-h")
                .arg(self.dir.join("data"))
                .args(["-p", &self.addr.port().to_string(), "-q"])
                .status()
                .map(|s| s.success())
                .unwrap_or(false);
            if ok {
                return;
            }
            if let Some(Ok(Some(status))) = self.child.as_mut().map(|c| c.try_wait()) {
                panic!("postgres exited with {status}: {}", self.log());
            }
            assert!(Instant::now() < deadline, "postgres did not start in 60 s: {}", self.log());
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// A streaming standby of this server in `dir` (a base backup over
    /// TLS, verified against the CA), named `name` for
    /// `synchronous_standby_names`, started on its own port.
    pub fn start_standby(&self, dir: &Path, name: &str) -> PgServer {
        let bin = bin_dir();
        std::fs::create_dir_all(dir).expect("standby dir");
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        chown(dir);
        let data = dir.join("data");
        let password = std::fs::read_to_string(&self.password_file).expect("password");
        let out = command(&bin.join("pg_basebackup"))
            .arg("-d")
            .arg(format!(
                "host=127.0.0.1 port={} user={USER} sslmode=verify-ca sslrootcert={}",
                self.addr.port(),
                self.ca_file.display()
            ))
            .arg("-D")
            .arg(&data)
            .args(["-R", "-X", "stream", "--checkpoint=fast"])
            .env("PGPASSWORD", password.trim())
            .output()
            .expect("pg_basebackup runs");
        assert!(out.status.success(), "pg_basebackup failed: {}", String::from_utf8_lossy(&out.stderr));
        let addr = crate::free_port();
        let conf = format!(
            "port = {}\nunix_socket_directories = '{}'\ncluster_name = '{name}'\n",
            addr.port(),
            data.display()
        );
        let mut f = std::fs::OpenOptions::new().append(true).open(data.join("postgresql.auto.conf")).expect("conf");
        std::io::Write::write_all(&mut f, conf.as_bytes()).expect("conf");
        std::fs::File::create(dir.join("postgres.log")).expect("log");
        chown(&dir.join("postgres.log"));
        let mut standby = PgServer {
            dir: dir.to_owned(),
            addr,
            ca_file: self.ca_file.clone(),
            password_file: self.password_file.clone(),
            child: None,
        };
        standby.restart();
        standby
    }

    /// Makes commits wait for `ANY 1` of `standbys` (so that one standby
    /// down never turns replication asynchronous), and waits until both
    /// stream.
    pub fn require_synchronous(&self, standbys: &[&str]) {
        self.psql(&format!("ALTER SYSTEM SET synchronous_standby_names = 'ANY 1 ({})'", standbys.join(", ")));
        self.psql("SELECT pg_reload_conf()");
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let n: usize = self
                .psql("SELECT count(*) FROM pg_stat_replication WHERE state = 'streaming' AND sync_state = 'quorum'")
                .parse()
                .expect("a count");
            if n == standbys.len() {
                return;
            }
            assert!(Instant::now() < deadline, "standbys did not become synchronous: {}", self.log());
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// How far this standby has received the primary's WAL (bytes from 0/0).
    pub fn received_lsn(&self) -> u64 {
        self.psql("SELECT COALESCE(pg_last_wal_receive_lsn(), pg_last_wal_replay_lsn()) - '0/0'::pg_lsn")
            .parse::<f64>()
            .expect("an lsn") as u64
    }

    /// Promotes this standby to primary; waits until it is.
    pub fn promote(&self) {
        assert_eq!(self.psql("SELECT pg_promote(true, 60)"), "t", "promotion: {}", self.log());
    }

    /// Points this standby at `primary` (after a failover) and reloads.
    pub fn follow(&self, primary: &PgServer) {
        let password = std::fs::read_to_string(&self.password_file).expect("password");
        let conf = format!(
            "primary_conninfo = 'host=127.0.0.1 port={} user={USER} password={} sslmode=verify-ca sslrootcert={} \
             application_name={}'\n",
            primary.addr.port(),
            password.trim(),
            self.ca_file.display(),
            self.psql("SHOW cluster_name")
        );
        let data = self.dir.join("data");
        let mut f = std::fs::OpenOptions::new().append(true).open(data.join("postgresql.auto.conf")).expect("conf");
        std::io::Write::write_all(&mut f, conf.as_bytes()).expect("conf");
        self.psql("SELECT pg_reload_conf()");
    }

    /// The server's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("postgres.log")).unwrap_or_default()
    }

    /// The broker's settings for this server.
    pub fn settings(&self) -> PgSettings {
        PgSettings {
            url: format!("postgresql://{USER}@localhost:{}/{DATABASE}", self.addr.port()),
            ca_file: self.ca_file.clone(),
            password_file: Some(self.password_file.clone()),
            pool_size: 8,
        }
    }

    /// Runs SQL as the broker role through psql on the local socket.
    pub fn psql(&self, sql: &str) -> String {
        let out = command(&bin_dir().join("psql"))
            .arg("-h")
            .arg(self.dir.join("data"))
            .args([
                "-p",
                &self.addr.port().to_string(),
                "-U",
                USER,
                "-d",
                DATABASE,
                "-At",
                "-v",
                "ON_ERROR_STOP=1",
                "-c",
                sql,
            ])
            .output()
            .expect("psql runs");
        assert!(out.status.success(), "psql failed: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }

    /// Stops the server: fast shutdown (SIGINT), SIGKILL after 20 s.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // SIGINT is PostgreSQL's "fast" shutdown; setpriv execs, so the pid is postgres'.
            let _ = Command::new("kill").args(["-INT", &child.id().to_string()]).status();
            let deadline = Instant::now() + Duration::from_secs(20);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Kills the server at once, as a power cut would: the postmaster and
    /// every backend together. (Backends are their own process groups, so
    /// each is named; one left running would still hold the shared memory,
    /// and the restarted server would refuse to start.)
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let mut pids = children_of(child.id());
            pids.push(child.id());
            let mut kill = Command::new("kill");
            kill.arg("-KILL").args(pids.iter().map(u32::to_string));
            let _ = kill.status();
            let _ = child.wait();
            let deadline = Instant::now() + Duration::from_secs(10);
            while pids.iter().any(|p| running(*p)) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }

    /// Starts the stopped server again on the same port.
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "restart a stopped server");
        let log = std::fs::OpenOptions::new().append(true).open(self.dir.join("postgres.log")).expect("log");
        let child = command(&bin_dir().join("postgres"))
            .arg("-D")
            .arg(self.dir.join("data"))
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("postgres starts");
        self.child = Some(child);
        self.wait_ready();
    }
}

impl Drop for PgServer {
    fn drop(&mut self) {
        self.stop();
    }
}
