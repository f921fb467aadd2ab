//! The federation directory as the broker holds it: verified against the
//! pinned federation key at start-up and on every reload, never rolled back,
//! served verbatim to clients.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use arc_swap::ArcSwap;
use referral_proto::directory::{Directory, SignedDirectory};
use referral_proto::keys::VerifyingKey;
use referral_proto::time::Timestamp;

#[derive(Debug, thiserror::Error)]
pub enum DirectoryLoadError {
    #[error("{path}: {message}")]
    Read { path: PathBuf, message: String },
    #[error("{path}: {source}")]
    Invalid {
        path: PathBuf,
        #[source]
        source: referral_proto::directory::DirectoryError,
    },
}

/// A verified directory and the bytes it was verified from.
#[derive(Debug)]
pub struct Loaded {
    pub directory: Directory,
    pub signed: SignedDirectory,
}

/// The broker's current directory, swappable on reload.
#[derive(Debug)]
pub struct DirectoryState {
    path: PathBuf,
    federation_key: VerifyingKey,
    current: ArcSwap<Loaded>,
}

/// Reads a `federation.pub` file.
pub fn read_federation_key(path: &Path) -> Result<VerifyingKey, DirectoryLoadError> {
    certs::federation::read_federation_key(path)
        .map_err(|e| DirectoryLoadError::Read { path: path.to_owned(), message: e.to_string() })
}

fn load(path: &Path, key: &VerifyingKey, seen: Option<u64>, now: Timestamp) -> Result<Loaded, DirectoryLoadError> {
    let bytes =
        std::fs::read(path).map_err(|e| DirectoryLoadError::Read { path: path.to_owned(), message: e.to_string() })?;
    let invalid = |source| DirectoryLoadError::Invalid { path: path.to_owned(), source };
    let signed = SignedDirectory::decode(&bytes).map_err(invalid)?;
    let directory = signed.verify(key, seen, now).map_err(invalid)?;
    Ok(Loaded { directory, signed })
}

impl DirectoryState {
    /// Loads and verifies the directory file; a stale one (past its
    /// `valid_until` at `now`) is refused like an invalid one.
    pub fn open(path: &Path, federation_key: VerifyingKey, now: Timestamp) -> Result<Self, DirectoryLoadError> {
        let loaded = load(path, &federation_key, None, now)?;
        Ok(Self { path: path.to_owned(), federation_key, current: ArcSwap::from_pointee(loaded) })
    }

    pub fn current(&self) -> Arc<Loaded> {
        self.current.load_full()
    }

    /// Re-reads the file; keeps the current directory if the new one is
    /// invalid, older or stale. Returns the version now in use.
    pub fn reload(&self, now: Timestamp) -> Result<u64, DirectoryLoadError> {
        let seen = self.current.load().directory.version;
        let loaded = load(&self.path, &self.federation_key, Some(seen), now)?;
        let v = loaded.directory.version;
        if v != seen {
            tracing::info!(version = v, "directory reloaded");
        }
        self.current.store(Arc::new(loaded));
        Ok(v)
    }
}
