//! The world a measurement runs in: a fresh development federation (CA,
//! certificates, agency keys, signed directory, profiles) in a temporary
//! folder, a broker configuration whose limits are high enough never to
//! refuse the generator, and the facts about the machine a report quotes.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use broker::config::Config;
use certs::dev::{DevFederation, DevOptions, POLICE, SOCIAL};

/// The sending principal: the police case system.
pub fn sender_profile() -> String {
    format!("{POLICE}-system")
}

/// The recipient agency's principals that subscribe, used in turn.
pub fn subscriber_profiles() -> [String; 2] {
    [format!("{SOCIAL}-oncall"), format!("{SOCIAL}-system")]
}

/// Where the run's files live: removed at the end unless kept.
#[derive(Debug)]
pub enum WorkDir {
    Temporary(tempfile::TempDir),
    Kept(PathBuf),
}

impl WorkDir {
    pub fn path(&self) -> &Path {
        match self {
            WorkDir::Temporary(t) => t.path(),
            WorkDir::Kept(p) => p,
        }
    }
}

/// A development federation with a broker configuration file.
#[derive(Debug)]
pub struct Setup {
    pub work: WorkDir,
    pub dev: DevFederation,
    pub addr: SocketAddr,
    /// The broker's admin endpoint (metrics, health, status).
    pub admin: SocketAddr,
    /// Its bearer token (the content of `admin.token` beside the configuration).
    pub admin_token: String,
    pub config_path: PathBuf,
    pub config: Config,
}

impl Setup {
    /// Makes the federation in `dir` (which must be missing or empty), or in
    /// a new temporary folder that is removed on drop unless `keep`.
    pub fn create(dir: Option<&Path>, keep: bool, log_level: &str) -> anyhow::Result<Self> {
        let work = match dir {
            Some(d) => {
                let empty = match std::fs::read_dir(d) {
                    Ok(mut entries) => entries.next().is_none(),
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => true,
                    Err(e) => anyhow::bail!("--dir {}: {e}", d.display()),
                };
                anyhow::ensure!(empty, "--dir {} is not empty; give a new or empty folder", d.display());
                std::fs::create_dir_all(d).with_context(|| format!("cannot create --dir {}", d.display()))?;
                WorkDir::Kept(d.to_owned())
            }
            None => {
                let t = tempfile::Builder::new()
                    .prefix("loadgen-")
                    .tempdir()
                    .context("cannot make a temporary folder (is $TMPDIR writable?)")?;
                if keep { WorkDir::Kept(t.keep()) } else { WorkDir::Temporary(t) }
            }
        };
        let addr = free_port().context("cannot find a free loopback port")?;
        let admin = free_port().context("cannot find a free loopback port")?;
        let dev = certs::dev::create(
            &work.path().join("federation"),
            &DevOptions { broker_addr: addr.to_string(), force: false },
            certs::now(),
        )
        .context("cannot make the development federation")?;
        let data_dir = work.path().join("data");
        let config_path = dev.dir.join("broker.toml");
        let token_path = dev.dir.join("admin.token");
        broker::admin::AdminToken::generate(&token_path, false).context("cannot write the admin token")?;
        let admin_token =
            broker::admin::AdminToken::read(&token_path).context("cannot read the admin token")?.as_str().to_owned();
        std::fs::write(&config_path, config_text(addr, admin, &data_dir, log_level))
            .with_context(|| format!("cannot write {}", config_path.display()))?;
        let config =
            Config::load(&config_path, &[]).with_context(|| format!("the generated {}", config_path.display()))?;
        Ok(Self { work, dev, addr, admin, admin_token, config_path, config })
    }

    /// Sets `storage.engine` in the broker's configuration (an embedded
    /// engine: the data folder stays where it is).
    pub fn set_storage_engine(&mut self, engine: &str) -> anyhow::Result<()> {
        let before = std::fs::read_to_string(&self.config_path)?;
        let text = before.replacen("\n[storage]\n", &format!("\n[storage]\nengine = \"{engine}\"\n"), 1);
        anyhow::ensure!(text != before, "{} has no [storage] section", self.config_path.display());
        std::fs::write(&self.config_path, text)?;
        self.config = Config::load(&self.config_path, &[])
            .with_context(|| format!("the generated {}", self.config_path.display()))?;
        Ok(())
    }

    pub fn profile(&self, name: &str) -> PathBuf {
        self.dev.profile(name)
    }

    /// A file in the work folder (logs).
    pub fn file(&self, name: &str) -> PathBuf {
        self.work.path().join(name)
    }
}

/// A free loopback port (bound and released at once).
pub fn free_port() -> std::io::Result<SocketAddr> {
    std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()
}

/// The broker configuration of a run: the development configuration
/// (`broker::config::dev_config_text`; paths relative to the development
/// federation folder, where the file is written) with limits that never
/// refuse the generator, the admin endpoint on a port of its own (so that
/// runs never collide on the default one) with the token file
/// `admin.token` beside it, and the log level given. Both
/// servers under test read it.
pub fn config_text(listen: SocketAddr, admin: SocketAddr, data_dir: &Path, log_level: &str) -> String {
    format!(
        r#"# Written by 'loadgen': the development configuration with benchmark limits.
{}
[limits]
submit_rate_per_second = 1000000
submit_burst = 1000000
max_in_flight_per_principal = 100000
max_streams_per_principal = 100000
max_connections_per_principal = 100000

[log]
level = "{log_level}"

[admin]
listen = "{admin}"
token_file = "admin.token"
"#,
        broker::config::dev_config_text(listen, data_dir)
    )
}

/// What a report says about the machine.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Machine {
    pub cpus: usize,
    pub cpu_model: String,
    pub kernel: String,
    /// `df` of the work folder: device, filesystem type, mount point.
    pub work_filesystem: String,
    /// 1-minute load average when the run started.
    pub load_average_at_start: f64,
    /// How fast one core was when the run started.
    pub core_speed: CoreSpeed,
}

/// What one Ed25519 signature and one strict verification (600 bytes, the
/// project's own code, a remembered key as the broker's) took on one
/// thread when the run started: the median of 25 rounds of 20 each, about
/// 50 ms in all. Machines of this kind change speed by up to 2x from one
/// hour to the next, and these two operations are most of a referral's
/// CPU, so this says which kind of hour a report comes from.
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct CoreSpeed {
    pub sign_us: f64,
    pub verify_us: f64,
}

impl CoreSpeed {
    pub fn measure() -> Self {
        use std::hint::black_box;
        let key = referral_proto::keys::SigningKey::from_seed([9; 32]);
        let public = key.verifying_key();
        let message = [7u8; 600];
        let signature = key.sign(&message);
        const ROUNDS: usize = 25;
        const PER_ROUND: u32 = 20;
        let median_us = |op: &dyn Fn()| {
            let mut rounds: Vec<f64> = (0..ROUNDS)
                .map(|_| {
                    let t = std::time::Instant::now();
                    for _ in 0..PER_ROUND {
                        op();
                    }
                    t.elapsed().as_secs_f64() * 1e6 / f64::from(PER_ROUND)
                })
                .collect();
            rounds.sort_by(f64::total_cmp);
            rounds[ROUNDS / 2]
        };
        let sign_us = median_us(&|| {
            black_box(key.sign(black_box(&message)));
        });
        let verify_us = median_us(&|| {
            public.verify(black_box(&message), black_box(&signature)).expect("a fresh signature verifies");
        });
        Self { sign_us, verify_us }
    }
}

impl Machine {
    pub fn describe(work: &Path) -> Self {
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        let cpu_model = std::fs::read_to_string("/proc/cpuinfo")
            .ok()
            .and_then(|t| {
                t.lines().find_map(|l| {
                    l.strip_prefix("model name").and_then(|r| r.split_once(':')).map(|(_, v)| v.trim().to_owned())
                })
            })
            .unwrap_or_else(|| "unknown".into());
        let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .map(|s| format!("Linux {}", s.trim()))
            .unwrap_or_else(|_| "unknown".into());
        let work_filesystem = std::process::Command::new("df")
            .arg("--output=source,fstype,target")
            .arg(work)
            .output()
            .ok()
            .and_then(|o| String::from_utf8(o.stdout).ok())
            .and_then(|s| s.lines().nth(1).map(|l| l.split_whitespace().collect::<Vec<_>>().join(" ")))
            .unwrap_or_else(|| "unknown".into());
        Self {
            cpus,
            cpu_model,
            kernel,
            work_filesystem,
            load_average_at_start: load_average(),
            core_speed: CoreSpeed::measure(),
        }
    }
}

/// The 1-minute load average, or 0 if unreadable.
pub fn load_average() -> f64 {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next().and_then(|v| v.parse().ok()))
        .unwrap_or(0.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_configuration_text_is_valid_and_lifts_the_limits() {
        let text = config_text(
            "127.0.0.1:7443".parse().unwrap(),
            "127.0.0.1:7444".parse().unwrap(),
            Path::new("/tmp/x/data"),
            "warn",
        );
        let c = Config::parse(&text, Path::new("/tmp/x"), &[]).expect("valid configuration");
        assert_eq!(c.limits.submit_rate_per_second, 1_000_000);
        assert_eq!(c.limits.max_streams_per_principal, 100_000);
        assert_eq!(c.tls.key, Path::new("/tmp/x/broker/server.key"));
        assert_eq!(c.log.level, "warn");
    }
}
