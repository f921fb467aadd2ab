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

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use referral_proto::directory::{Agency, AgencyKind};
    use referral_proto::ids::{AgencyId, TrustDomain};
    use referral_proto::keys::{AgencyPublicKey, SigningKey, bundle_key_id};

    use super::*;

    /// A signed directory file whose one agency signs with `signing`.
    fn write_directory(path: &Path, federation: &SigningKey, signing: VerifyingKey) -> AgencyPublicKey {
        let id = AgencyId::new("polisen-huddinge").unwrap();
        let encryption = [9u8; 32];
        let key = AgencyPublicKey {
            key_id: bundle_key_id(&signing, &encryption),
            signing,
            encryption,
            not_before: Timestamp(0),
            not_after: Timestamp(i64::MAX),
        };
        let agency = Agency {
            id: id.clone(),
            display_name: "Polisen".into(),
            kind: AgencyKind::Police,
            keys: vec![key.clone()],
            escalation: None,
        };
        let directory = Directory {
            trust_domain: TrustDomain::new("igor.example.se").unwrap(),
            version: 1,
            issued_at: Timestamp(5),
            valid_until: Timestamp(1_000),
            agencies: BTreeMap::from([(id, agency)]),
            broker_log_key: SigningKey::from_seed([2; 32]).verifying_key(),
        };
        std::fs::write(path, directory.sign(federation).encode()).unwrap();
        key
    }

    #[test]
    fn a_directory_holding_a_small_order_signing_key_is_refused_at_load_and_on_reload() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("directory.bin");
        let federation = SigningKey::from_seed([1; 32]);
        // The identity point: ring accepts R = identity, S = 0 against it for
        // a large share of all messages, without any private key.
        let mut identity = [0u8; 32];
        identity[0] = 1;
        let key = write_directory(&path, &federation, VerifyingKey(identity));
        let e = DirectoryState::open(&path, federation.verifying_key(), Timestamp(6)).unwrap_err();
        assert_eq!(
            e.to_string(),
            format!(
                "{}: directory is invalid: agency polisen-huddinge key {}: signing key is a small-order point \
                 (signatures against it prove nothing)",
                path.display(),
                key.key_id
            )
        );

        // A good directory loads; a reload to one with a weak key keeps it.
        write_directory(&path, &federation, SigningKey::from_seed([3; 32]).verifying_key());
        let state = DirectoryState::open(&path, federation.verifying_key(), Timestamp(6)).unwrap();
        let key = write_directory(&path, &federation, VerifyingKey(identity));
        let e = state.reload(Timestamp(7)).unwrap_err();
        assert!(
            e.to_string().ends_with(&format!(
                "key {}: signing key is a small-order point (signatures against it prove nothing)",
                key.key_id
            )),
            "{e}"
        );
        assert_ne!(state.current().directory.agencies.values().next().unwrap().keys[0].signing, VerifyingKey(identity));
    }
}
