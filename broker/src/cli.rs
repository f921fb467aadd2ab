//! The `broker` command line: parsed here, carried out by the library.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use clap::{Parser, Subcommand};
use tokio_util::sync::CancellationToken;

use crate::clock::SystemClock;
use crate::config::{Config, LogFormat};
use crate::server::{StartOptions, start};

/// The referral broker: mTLS gRPC store-and-forward of signed, end-to-end-encrypted referrals.
#[derive(Debug, Parser)]
#[command(name = "broker", version)]
pub struct Cli {
    /// Machine-readable output: JSON from check-config, status, backup,
    /// restore and admin-token, and an error as one JSON object on standard
    /// error (serve's logs follow `[log] format`). Before or after the subcommand.
    #[arg(long, global = true)]
    pub json: bool,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve with a configuration file (environment overrides: BROKER__SECTION__KEY).
    Serve {
        /// The broker's configuration file (TOML; see packaging/broker.toml).
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Serve a development federation on loopback (made on first use).
    Dev {
        /// Folder of the development federation.
        #[arg(long, default_value = "dev-federation")]
        dir: PathBuf,
        /// Address to serve gRPC on.
        #[arg(long, default_value = "127.0.0.1:7443")]
        listen: SocketAddr,
        /// Data directory.
        #[arg(long, default_value = "broker-data")]
        data: PathBuf,
        /// The admin endpoint (metrics, health, status, backup).
        #[arg(long, default_value = crate::config::DEFAULT_ADMIN_LISTEN)]
        admin: SocketAddr,
    },
    /// Run the end-to-end demo in one process: federation, broker, two agencies, an auditor.
    #[cfg(feature = "demo")]
    Demo,
    /// Validate a configuration and the files it names, then exit.
    CheckConfig {
        /// The broker's configuration file (TOML; see packaging/broker.toml).
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Queue depths, oldest unacknowledged, log size and tree head, from the
    /// running broker's admin endpoint or, when it is stopped, its data directory.
    Status {
        /// The broker's configuration file (TOML; see packaging/broker.toml).
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Write a consistent, verified copy of the store to a new folder
    /// (through the admin endpoint while the broker serves, directly when it is stopped).
    Backup {
        /// The broker's configuration file (TOML; see packaging/broker.toml).
        #[arg(long, short)]
        config: PathBuf,
        /// New folder for the copy: it must not exist; it is created 0700, its files 0600.
        #[arg(long)]
        to: PathBuf,
    },
    /// Make a new random admin endpoint token in a new 0600 file (for `[admin] token_file`).
    AdminToken {
        /// New file for the token (created 0600).
        #[arg(long)]
        out: PathBuf,
        /// Replace an existing token file (the running broker keeps the old token until restarted).
        #[arg(long)]
        force: bool,
    },
    /// Restore a verified backup into the (empty) data directory of a stopped broker.
    Restore {
        /// The broker's configuration file (TOML; see packaging/broker.toml).
        #[arg(long, short)]
        config: PathBuf,
        /// The backup folder `broker backup` wrote.
        #[arg(long)]
        from: PathBuf,
    },
    /// Print shell completions for broker (certs and agency-client print their own).
    Completions {
        /// The shell: bash, elvish, fish, powershell or zsh.
        shell: certs::tool_docs::Shell,
    },
    /// Write the man pages of broker (broker.1 and one per subcommand) into a folder.
    Manpages {
        /// Folder for the pages (created if missing).
        #[arg(long)]
        out: PathBuf,
    },
}

/// A request to the running broker's admin endpoint with the configured
/// token; None when the endpoint is off or does not answer (the broker is
/// stopped).
async fn admin_request(
    config: &Config,
    method: &str,
    path: &str,
    body: Option<&str>,
) -> anyhow::Result<Option<(u16, String)>> {
    let Some(admin) = &config.admin.endpoint else { return Ok(None) };
    let token = crate::admin::AdminToken::read(&admin.token_file)?;
    Ok(crate::admin::request(admin.listen, Some(token.as_str()), method, path, body).await.ok())
}

fn load_config(path: &std::path::Path) -> anyhow::Result<Config> {
    let env: Vec<(String, String)> = std::env::vars().collect();
    Ok(Config::load(path, &env)?)
}

fn absolute(p: PathBuf) -> PathBuf {
    if p.is_absolute() { p } else { std::env::current_dir().map(|c| c.join(&p)).unwrap_or(p) }
}

/// The log filter: `BROKER_LOG` if set, else `RUST_LOG` (the ecosystem's
/// convention), else the configured level. An empty variable counts as unset.
pub fn log_filter(broker_log: Option<String>, rust_log: Option<String>, level: &str) -> String {
    let set = |v: Option<String>| v.filter(|s| !s.trim().is_empty());
    set(broker_log).or(set(rust_log)).unwrap_or_else(|| level.to_owned())
}

/// Installs the log subscriber. Logs carry ids and reasons, never payloads.
pub fn init_logging(format: LogFormat, level: &str) {
    let wanted = log_filter(std::env::var("BROKER_LOG").ok(), std::env::var("RUST_LOG").ok(), level);
    let filter = tracing_subscriber::EnvFilter::try_new(&wanted).unwrap_or_else(|e| {
        eprintln!("broker: ignoring the log filter {wanted:?} ({e}); using {level:?}");
        tracing_subscriber::EnvFilter::new(level)
    });
    // Colour only for a person at a terminal: a journal, a file or a pipe
    // gets plain text (NO_COLOR is honoured too).
    let colour = std::io::IsTerminal::is_terminal(&std::io::stderr()) && std::env::var_os("NO_COLOR").is_none();
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_ansi(colour);
    let _ = match format {
        LogFormat::Json => builder.json().try_init(),
        LogFormat::Text => builder.try_init(),
    };
}

/// SIGTERM and SIGINT, caught from the moment `listen` returns.
///
/// Listen before anything can be reached from outside (a health probe, a
/// client): a signal that arrives before the handler is installed would take
/// the default action and kill the process without an orderly shutdown.
#[derive(Debug)]
pub struct Termination {
    term: tokio::signal::unix::Signal,
    interrupt: tokio::signal::unix::Signal,
}

impl Termination {
    /// Installs the handlers. Needs a running tokio runtime.
    pub fn listen() -> std::io::Result<Self> {
        use tokio::signal::unix::{SignalKind, signal};
        Ok(Self { term: signal(SignalKind::terminate())?, interrupt: signal(SignalKind::interrupt())? })
    }

    /// Resolves on the first SIGTERM or SIGINT received since `listen`.
    pub async fn recv(mut self) {
        tokio::select! {
            _ = self.term.recv() => {}
            _ = self.interrupt.recv() => {}
        }
    }
}

/// Serves until SIGTERM/SIGINT, then shuts down in order.
pub async fn serve(config: Config) -> anyhow::Result<()> {
    let termination =
        Termination::listen().map_err(|e| anyhow::anyhow!("cannot install the SIGTERM/SIGINT handlers: {e}"))?;
    let listener = tokio::net::TcpListener::bind(config.listen.address)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {}: {e}", config.listen.address))?;
    let shutdown = CancellationToken::new();
    let running =
        start(listener, config, StartOptions { clock: Arc::new(SystemClock), sighup: true }, shutdown.clone()).await?;
    termination.recv().await;
    tracing::info!("shutting down: finishing in-flight requests");
    shutdown.cancel();
    running.wait().await?;
    tracing::info!("stopped");
    Ok(())
}

/// Carries out a parsed command line.
pub async fn run(cli: Cli) -> anyhow::Result<()> {
    let json = cli.json;
    match cli.command {
        Command::Serve { config } => {
            let config = load_config(&config)?;
            init_logging(config.log.format, &config.log.level);
            serve(config).await
        }
        Command::Dev { dir, listen, data, admin } => {
            init_logging(LogFormat::Text, "info");
            let config = crate::dev::prepare(&dir, listen, &data, admin)?;
            println!("development broker on {listen}; profiles in {}", dir.join("profiles").display());
            println!("try: agency-client --profile {}/profiles/huddinge-socialtjanst-oncall listen", dir.display());
            serve(config).await
        }
        #[cfg(feature = "demo")]
        Command::Demo => crate::demo::run().await,
        Command::CheckConfig { config } => {
            let config = load_config(&config)?;
            let found = crate::server::check_files(&config).map_err(|problems| {
                anyhow::anyhow!("{} problem(s):\n  - {}", problems.len(), problems.join("\n  - "))
            })?;
            if json {
                println!(
                    "{}",
                    serde_json::json!({
                        "ok": true, "listen": config.listen.address.to_string(),
                        "directory_version": found.directory_version, "agencies": found.agencies,
                        "data_dir": config.storage.data_dir, "engine": config.storage.engine.name(),
                        "database": found.database.as_ref().map(|db| serde_json::json!({
                            "target": db.target, "schema_version": db.schema_version,
                        })),
                    })
                );
            } else {
                match &found.database {
                    None => println!(
                        "configuration ok: listening on {}, directory version {} with {} agencies, data in {} ({})",
                        config.listen.address,
                        found.directory_version,
                        found.agencies,
                        config.storage.data_dir.display(),
                        config.storage.engine.name()
                    ),
                    Some(db) => println!(
                        "configuration ok: listening on {}, directory version {} with {} agencies, data in {} ({}), \
                         checkpoint in {}",
                        config.listen.address,
                        found.directory_version,
                        found.agencies,
                        db.target,
                        db.describe_schema(),
                        config.storage.data_dir.display()
                    ),
                }
            }
            Ok(())
        }
        Command::AdminToken { out, force } => {
            crate::admin::AdminToken::generate(&out, force)?;
            if json {
                println!("{}", serde_json::json!({"token_file": out}));
            } else {
                println!("admin token written to {} (mode 0600); name it in [admin] token_file", out.display());
            }
            Ok(())
        }
        Command::Status { config } => {
            let config = load_config(&config)?;
            let live = match admin_request(&config, "GET", "/status", None).await? {
                Some((200, body)) => Some(body),
                Some((code, body)) => anyhow::bail!("the admin endpoint refused ({code}): {}", body.trim()),
                None => None,
            };
            let status: crate::status::Status = match live {
                Some(body) => serde_json::from_str(&body)?,
                None => match &config.storage.engine {
                    crate::config::Engine::Local(_) => {
                        let (_, store) = crate::store::LocalEngine::open_existing(&config.storage.data_dir)
                            .map_err(|e| {
                                anyhow::anyhow!(
                                    "the broker's admin endpoint does not answer and its data directory cannot be read: {e}"
                                )
                            })?;
                        crate::status::gather(&*store, certs::now())?
                    }
                    crate::config::Engine::Postgres(settings) => {
                        let store = crate::store::postgres::PgStore::connect(settings).map_err(|e| {
                            anyhow::anyhow!(
                                "the broker's admin endpoint does not answer and its database cannot be read: {e}"
                            )
                        })?;
                        crate::status::gather(&store, certs::now())?
                    }
                },
            };
            if json {
                println!("{}", serde_json::to_string(&status)?);
            } else {
                print!("{}", crate::status::render(&status));
            }
            Ok(())
        }
        Command::Backup { config, to } => {
            let config = load_config(&config)?;
            let to = absolute(to);
            let live =
                admin_request(&config, "POST", "/backup", Some(&serde_json::json!({"to": to}).to_string())).await?;
            let report: crate::backup::BackupReport = match live {
                Some((200, body)) => serde_json::from_str(&body)?,
                Some((code, body)) => anyhow::bail!("the broker refused the backup ({code}): {}", body.trim()),
                None if matches!(config.storage.engine, crate::config::Engine::Postgres(_)) => {
                    anyhow::bail!("{}", crate::store::postgres::NO_BROKER_BACKUP)
                }
                None => crate::backup::offline(&config.storage.data_dir, &to)?,
            };
            if json {
                println!(
                    "{}",
                    serde_json::json!({
                        "backup": to, "records": report.records,
                        "audit_log_entries": report.audit_log_entries, "root": report.root.to_string(),
                    })
                );
            } else {
                println!(
                    "backup written to {} and verified: {} records, audit log of {} entries with root {}",
                    to.display(),
                    report.records,
                    report.audit_log_entries,
                    report.root
                );
            }
            Ok(())
        }
        Command::Restore { config, from } => {
            let config = load_config(&config)?;
            if let Some(addr) = config.admin.endpoint.as_ref().map(|a| a.listen)
                && crate::admin::request(addr, None, "GET", "/health", None).await.is_ok()
            {
                anyhow::bail!("the broker is running (its admin endpoint answers on {addr}); stop it before restoring");
            }
            let crate::config::Engine::Local(engine) = config.storage.engine else {
                anyhow::bail!("{}", crate::store::postgres::NO_BROKER_BACKUP);
            };
            let r = crate::backup::restore(&from, &config.storage.data_dir, engine, config.storage.fjall_tuning())?;
            if json {
                println!(
                    "{}",
                    serde_json::json!({
                        "restored": r.records, "data_dir": config.storage.data_dir,
                        "audit_log_entries": r.audit_log_entries, "root": r.root.to_string(),
                    })
                );
                return Ok(());
            }
            println!(
                "restored {} records into {}; audit log of {} entries with root {} verified",
                r.records,
                config.storage.data_dir.display(),
                r.audit_log_entries,
                r.root
            );
            Ok(())
        }
        Command::Completions { shell } => {
            certs::tool_docs::completions(shell, <Cli as clap::CommandFactory>::command(), &mut std::io::stdout());
            Ok(())
        }
        Command::Manpages { out } => {
            for page in certs::tool_docs::write_man_page(<Cli as clap::CommandFactory>::command(), &out)? {
                println!("{}", page.display());
            }
            Ok(())
        }
    }
}

/// Parses the command line (`args` includes the program name) and runs it:
/// what the binary does. A usage error under `--json` is one JSON object
/// ([`certs::tool_docs::parse_args`]).
pub fn main_from(args: impl IntoIterator<Item = std::ffi::OsString>) -> std::process::ExitCode {
    match certs::tool_docs::parse_args(args) {
        Ok(cli) => main_with(cli),
        Err(code) => code,
    }
}

/// Runs the CLI to completion and turns the outcome into an exit code:
/// installs the one TLS crypto provider (ring, never aws-lc-rs), runs on a
/// fresh runtime, and prints an error with its causes (escaped: they can
/// quote files and answers from elsewhere) with exit code 1.
pub fn main_with(cli: Cli) -> std::process::ExitCode {
    let json = cli.json;
    let _ = rustls::crypto::ring::default_provider().install_default();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) if json => {
            eprintln!("{}", serde_json::json!({"exit_code": 1, "message": format!("{e:#}")}));
            std::process::ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("error: {}", referral_proto::text::escape_block(&format!("{e:#}"), "  "));
            std::process::ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::log_filter;

    #[test]
    fn broker_log_wins_over_rust_log_which_wins_over_the_configured_level() {
        let some = |s: &str| Some(s.to_owned());
        assert_eq!(log_filter(some("debug"), some("trace"), "info"), "debug");
        assert_eq!(log_filter(None, some("broker=trace"), "info"), "broker=trace");
        assert_eq!(log_filter(some(""), some("warn"), "info"), "warn");
        assert_eq!(log_filter(None, None, "info"), "info");
        assert_eq!(log_filter(some(" "), some(""), "error"), "error");
    }
}
