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
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve with a configuration file (environment overrides: BROKER__SECTION__KEY).
    Serve {
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Serve a development federation on loopback (made on first use).
    Dev {
        /// Folder of the development federation.
        #[arg(long, default_value = "dev-federation")]
        dir: PathBuf,
        #[arg(long, default_value = "127.0.0.1:7443")]
        listen: SocketAddr,
        /// Data directory.
        #[arg(long, default_value = "broker-data")]
        data: PathBuf,
    },
    /// Run the end-to-end demo in one process: federation, broker, two agencies, an auditor.
    Demo,
    /// Validate a configuration and the files it names, then exit.
    CheckConfig {
        #[arg(long, short)]
        config: PathBuf,
    },
}

/// Installs the log subscriber. Logs carry ids and reasons, never payloads.
pub fn init_logging(format: LogFormat, level: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("BROKER_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Json => builder.json().try_init(),
        LogFormat::Text => builder.try_init(),
    };
}

/// Resolves on SIGTERM or SIGINT.
pub async fn termination() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
    let term = async {
        match term.as_mut() {
            Some(t) => {
                t.recv().await;
            }
            None => std::future::pending().await,
        }
    };
    tokio::select! {
        _ = term => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}

/// Serves until SIGTERM/SIGINT, then shuts down in order.
pub async fn serve(config: Config) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {}: {e}", config.listen))?;
    let shutdown = CancellationToken::new();
    let running = start(
        listener,
        config,
        StartOptions {
            clock: Arc::new(SystemClock),
            sighup: true,
        },
        shutdown.clone(),
    )
    .await?;
    termination().await;
    tracing::info!("shutting down: finishing in-flight requests");
    shutdown.cancel();
    running.wait().await?;
    tracing::info!("stopped");
    Ok(())
}

/// Carries out a parsed command line.
pub async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Serve { config } => {
            let env: Vec<(String, String)> = std::env::vars().collect();
            let config = Config::load(&config, &env)?;
            init_logging(config.log_format, &config.log_level);
            serve(config).await
        }
        Command::Dev { dir, listen, data } => {
            init_logging(LogFormat::Text, "info");
            let config = crate::dev::prepare(&dir, listen, &data)?;
            println!(
                "development broker on {listen}; profiles in {}",
                dir.join("profiles").display()
            );
            println!(
                "try: agency-client --profile {}/profiles/huddinge-socialtjanst-oncall listen",
                dir.display()
            );
            serve(config).await
        }
        Command::Demo => crate::demo::run().await,
        Command::CheckConfig { config } => {
            let env: Vec<(String, String)> = std::env::vars().collect();
            let config = Config::load(&config, &env)?;
            crate::tls::load(&config.tls)?;
            let key = crate::directory::read_federation_key(&config.federation_key)?;
            let dir = crate::directory::DirectoryState::open(&config.directory, key)?;
            println!(
                "configuration ok: listening on {}, directory version {} with {} agencies, data in {}",
                config.listen,
                dir.current().directory.version,
                dir.current().directory.agencies.len(),
                config.data_dir.display()
            );
            Ok(())
        }
    }
}

/// Runs the CLI to completion and turns the outcome into an exit code.
pub fn main_with(cli: Cli) -> std::process::ExitCode {
    // One crypto provider for the whole process: ring, never aws-lc-rs.
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
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
