//! Backup and restore. A backup is a complete copy of the store made
//! between two commits (so it is consistent while the broker serves), then
//! verified: its audit log is replayed, its Merkle root recomputed from the
//! entries and compared with the root the broker had at the moment of the
//! copy and with the copy's own stored tree.
//!
//! A backup holds ciphertext and the whole audit log, so it goes into a
//! folder the broker makes itself: the target must not exist (a folder
//! someone prepared, with their modes or a link, is refused), it is created
//! 0700 and every file in it is set to 0600, whatever the umask.

use std::path::Path;

use referral_proto::Digest;
use referral_proto::merkle::MemoryTree;
use serde::{Deserialize, Serialize};

use crate::audit::read_entries;
use crate::commit::restore_frontier;
use crate::store::{LocalEngine, Store, StoreError};

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct BackupReport {
    pub records: u64,
    pub audit_log_entries: u64,
    pub root: String,
}

#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("{0}")]
    Broker(#[from] crate::error::BrokerError),
    #[error("the copy does not verify: {0}")]
    Verify(String),
    #[error(
        "{0}: already exists; a backup goes into a new folder that the broker creates itself (0700), so choose a path that does not exist"
    )]
    TargetExists(String),
    #[error("{path}: {message}")]
    Target { path: String, message: String },
}

/// Creates the backup folder `to`, which must not exist, with mode 0700
/// (missing parents too). Atomic: the final `mkdir` fails if anything
/// appeared there meanwhile, a symbolic link included.
pub fn create_target(to: &Path) -> Result<(), BackupError> {
    use std::os::unix::fs::{DirBuilderExt as _, PermissionsExt as _};
    let err = |message: String| BackupError::Target { path: to.display().to_string(), message };
    if std::fs::symlink_metadata(to).is_ok() {
        return Err(BackupError::TargetExists(to.display().to_string()));
    }
    let parent = to.parent().filter(|p| !p.as_os_str().is_empty());
    if let Some(parent) = parent {
        // Missing parents the project's one durable way (each synced in its own parent).
        certs::durable_file::create_dir_all_mode(parent, 0o700)
            .map_err(|e| err(format!("cannot create the parent folder: {e}")))?;
    }
    match std::fs::DirBuilder::new().mode(0o700).create(to) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            return Err(BackupError::TargetExists(to.display().to_string()));
        }
        Err(e) => return Err(err(format!("cannot create the backup folder: {e}"))),
    }
    // The mode given to mkdir is masked by the umask; set it outright.
    std::fs::set_permissions(to, std::fs::Permissions::from_mode(0o700))
        .map_err(|e| err(format!("cannot set mode 0700: {e}")))?;
    match parent {
        Some(parent) => certs::durable_file::sync_dir(parent),
        None => Ok(()),
    }
    .map_err(|e| err(format!("cannot sync the parent folder: {e}")))
}

/// Sets every folder under `dir` (and `dir`) to 0700 and every file to
/// 0600: the store engine creates its files with the process umask.
pub fn restrict(dir: &Path) -> Result<(), BackupError> {
    use std::os::unix::fs::PermissionsExt as _;
    let err = |path: &Path, e: std::io::Error| BackupError::Target {
        path: path.display().to_string(),
        message: e.to_string(),
    };
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).map_err(|e| err(dir, e))?;
    for entry in std::fs::read_dir(dir).map_err(|e| err(dir, e))? {
        let entry = entry.map_err(|e| err(dir, e))?;
        let path = entry.path();
        let kind = entry.file_type().map_err(|e| err(&path, e))?;
        if kind.is_dir() {
            restrict(&path)?;
        } else if kind.is_file() {
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).map_err(|e| err(&path, e))?;
        }
    }
    Ok(())
}

/// Replays a store's audit log: the root recomputed from its entries must
/// equal the root of its stored Merkle nodes. Returns (size, root).
pub fn verify_store(store: &dyn Store) -> Result<(u64, Digest), BackupError> {
    let frontier = restore_frontier(store)?;
    let size = frontier.size();
    let mut tree = MemoryTree::default();
    let mut next = 0u64;
    while next < size {
        let page = read_entries(store, next, size, 10_000)?;
        if page.is_empty() {
            return Err(BackupError::Verify(format!("audit entry {next} is missing")));
        }
        for (index, bytes) in page {
            if index != next {
                return Err(BackupError::Verify(format!("audit entry {next} is missing")));
            }
            tree.append_entry(&bytes);
            next += 1;
        }
    }
    if tree.root() != frontier.root() {
        return Err(BackupError::Verify("the audit entries do not hash to the stored Merkle tree".into()));
    }
    Ok((size, frontier.root()))
}

fn report(records: u64, size: u64, root: Digest) -> BackupReport {
    BackupReport { records, audit_log_entries: size, root: root.to_hex() }
}

/// A backup of a running broker, through its committer.
pub async fn online(state: &crate::state::BrokerState, to: &Path) -> Result<BackupReport, BackupError> {
    create_target(to)?;
    let copy = state.committer.backup(to.to_owned()).await?;
    // The copy is a store of the broker's own engine.
    let (_, target) = LocalEngine::open_existing(to)?;
    let (size, root) = verify_store(&*target)?;
    drop(target);
    restrict(to)?;
    if (size, root) != (copy.tree_size, copy.root) {
        return Err(BackupError::Verify(format!(
            "the copy's log ({size} entries, root {root}) is not the broker's at the time ({} entries, root {})",
            copy.tree_size, copy.root
        )));
    }
    Ok(report(copy.records, size, root))
}

/// A backup of a stopped broker's data directory, in its own engine.
pub fn offline(data_dir: &Path, to: &Path) -> Result<BackupReport, BackupError> {
    let (engine, source) = LocalEngine::open_existing(data_dir)?;
    let expected = verify_store(&*source)?;
    create_target(to)?;
    let records = source.backup_to(to)?;
    let copy = verify_store(&*engine.open(to)?)?;
    if copy != expected {
        return Err(BackupError::Verify("the copy's log differs from the source's".into()));
    }
    restrict(to)?;
    Ok(report(records, copy.0, copy.1))
}

/// Restores a verified backup into an empty (or missing) data directory,
/// as a store of `engine` (the configured one): restoring a backup of one
/// embedded engine with the other configured is how a store moves from
/// sled to fjall or back. A new fjall store gets `tuning` (the configured one).
pub fn restore(
    from: &Path,
    data_dir: &Path,
    engine: LocalEngine,
    tuning: crate::store::fjall_store::Tuning,
) -> Result<BackupReport, BackupError> {
    let (_, source) = LocalEngine::open_existing(from)?;
    let expected = verify_store(&*source)?;
    if std::fs::read_dir(data_dir).map(|mut d| d.next().is_some()).unwrap_or(false) {
        return Err(BackupError::Target {
            path: data_dir.display().to_string(),
            message: "holds data; a restore goes into an empty or missing data directory (move this one aside)".into(),
        });
    }
    let records = copy_store(&*source, &*engine.open_with(data_dir, tuning)?)?;
    let restored = verify_store(&*engine.open(data_dir)?)?;
    if restored != expected {
        return Err(BackupError::Verify("the restored log differs from the backup's".into()));
    }
    restrict(data_dir)?;
    Ok(report(records, restored.0, restored.1))
}

/// Rows copied per commit by [`copy_store`].
const COPY_PAGE: usize = 10_000;

/// Copies every row of every table from `source` into `target` (a new,
/// empty store of any engine), a page per durable commit; returns the
/// number of rows. The store format marker is the target's own.
pub fn copy_store(source: &dyn Store, target: &dyn Store) -> Result<u64, StoreError> {
    use crate::store::{Batch, Table};
    let mut copied = 0u64;
    for table in Table::ALL {
        let mut start = Vec::new();
        loop {
            let page = source.range(table, &start, &[0xff; 256], COPY_PAGE)?;
            let Some((last, _)) = page.last() else { break };
            start = last.clone();
            start.push(0);
            let full = page.len() == COPY_PAGE;
            let mut batch = Batch::default();
            for (k, v) in page {
                if table == Table::Meta && k == crate::store::keys::meta::FORMAT {
                    continue;
                }
                batch.put(table, k, v);
                copied += 1;
            }
            target.commit(&batch)?;
            if !full {
                break;
            }
        }
    }
    Ok(copied)
}
