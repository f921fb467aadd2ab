//! `broker dev`: a development broker in one command: makes a development
//! federation if the folder has none, writes `broker.toml` beside it, and
//! serves on loopback with data in a local folder.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use certs::dev::{DevFederation, DevOptions};

use crate::config::{Config, dev_config_text};

#[derive(Debug, thiserror::Error)]
pub enum DevError {
    #[error(transparent)]
    Certs(#[from] certs::dev::DevError),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    #[error("{0}")]
    Token(String),
}

/// Ensures a development federation in `dir` for a broker on `listen`, and
/// returns its configuration (also written to `dir/broker.toml`).
pub fn prepare(dir: &Path, listen: SocketAddr, data_dir: &Path, admin: SocketAddr) -> Result<Config, DevError> {
    let dev = DevFederation::at(dir);
    if !dev.exists() {
        certs::dev::create(dir, &DevOptions { broker_addr: listen.to_string(), force: false }, certs::now())?;
        tracing::info!(dir = %dir.display(), "development federation created");
    } else {
        // CRLs expire; a development federation left for a month would lock everyone out.
        let mut fed = certs::federation::Federation::open(&dev.federation_dir()).map_err(certs::dev::DevError::from)?;
        fed.write_crl(certs::now()).map_err(certs::dev::DevError::from)?;
    }
    let data_dir = if data_dir.is_absolute() {
        data_dir.to_owned()
    } else {
        std::env::current_dir().map(|c| c.join(data_dir)).unwrap_or_else(|_| data_dir.to_owned())
    };
    // The development broker turns its admin endpoint on explicitly, with a
    // token of its own made once beside the configuration.
    let token = dir.join("admin.token");
    if !token.exists() {
        crate::admin::AdminToken::generate(&token, false).map_err(|e| DevError::Token(e.to_string()))?;
    }
    let text = format!(
        "{}\n[admin]\nlisten = \"{admin}\"\ntoken_file = \"admin.token\"\n",
        dev_config_text(listen, &data_dir)
    );
    let path = dir.join("broker.toml");
    certs::durable_file::write(&path, &text).map_err(|source| DevError::Io { path: path.clone(), source })?;
    Ok(Config::load(&path, &[])?)
}
