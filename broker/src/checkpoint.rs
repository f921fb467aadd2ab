//! A guard against a store that silently lost data. sled treats a damaged
//! stretch of its log like a write torn by a crash and drops everything
//! after it, so a damaged database can open "fine" but older. After every
//! commit the committer records the audit log's size and root in a small
//! file beside the database (written after the commit is durable, so it is
//! never ahead of the store); at start-up the store must hold at least that
//! log, with that root.

use std::fs::File;
use std::os::unix::fs::FileExt as _;
use std::path::{Path, PathBuf};

use referral_proto::Digest;

use crate::audit::StoreNodes;
use crate::store::{Store, StoreError};

pub const FILE_NAME: &str = "broker-checkpoint";
const MAGIC: &str = "referral-broker checkpoint v1";
/// Fixed record length: each write replaces the whole record in one page.
const RECORD: usize = 128;

/// The audit log as of the last commit this broker made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Checkpoint {
    pub tree_size: u64,
    pub root: Digest,
}

pub fn path(data_dir: &Path) -> PathBuf {
    data_dir.join(FILE_NAME)
}

/// Reads the checkpoint, if the data directory has one.
pub fn read(data_dir: &Path) -> Result<Option<Checkpoint>, StoreError> {
    let p = path(data_dir);
    let text = match std::fs::read_to_string(&p) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(StoreError::Io(format!("{}: {e}", p.display()))),
    };
    let bad = || StoreError::Corrupt(format!("{} is not a checkpoint", p.display()));
    let mut lines = text.trim_end_matches(['\0', '\n', ' ']).lines();
    if lines.next() != Some(MAGIC) {
        return Err(bad());
    }
    let tree_size = lines.next().and_then(|l| l.trim().parse().ok()).ok_or_else(bad)?;
    let root =
        lines.next().and_then(|l| hex::decode(l.trim()).ok()).and_then(|b| Digest::from_slice(&b)).ok_or_else(bad)?;
    Ok(Some(Checkpoint { tree_size, root }))
}

/// Checks that the store holds the checkpointed log.
pub fn verify(store: &dyn Store, data_dir: &Path, size_now: u64) -> Result<(), String> {
    let Some(cp) = read(data_dir).map_err(|e| e.to_string())? else { return Ok(()) };
    if size_now < cp.tree_size {
        return Err(format!(
            "the store holds {size_now} audit log entries, but {} were committed before: the database lost data (it is damaged); restore it from a backup",
            cp.tree_size
        ));
    }
    let root = referral_proto::merkle::root(&StoreNodes(store), cp.tree_size).map_err(|e| e.to_string())?;
    if root != cp.root {
        return Err(format!(
            "the store's first {} audit log entries are not the ones committed before: the database is damaged; restore it from a backup",
            cp.tree_size
        ));
    }
    Ok(())
}

/// Writes checkpoints; owned by the committer.
#[derive(Debug)]
pub struct Writer {
    file: File,
}

impl Writer {
    pub fn open(data_dir: &Path) -> Result<Self, StoreError> {
        let p = path(data_dir);
        let file = std::fs::OpenOptions::new()
            .create(true)
            .write(true)
            .truncate(false)
            .open(&p)
            .map_err(|e| StoreError::Io(format!("{}: {e}", p.display())))?;
        Ok(Self { file })
    }

    /// Records the log's size and root. Not synced: it may lag the store
    /// after a power loss, which is safe; it is never ahead of it.
    pub fn write(&self, cp: Checkpoint) {
        let mut rec = format!("{MAGIC}\n{}\n{}\n", cp.tree_size, cp.root.to_hex()).into_bytes();
        rec.resize(RECORD, b' ');
        if let Err(e) = self.file.write_all_at(&rec, 0) {
            tracing::warn!(error = %e, "writing the checkpoint failed");
        }
    }
}
