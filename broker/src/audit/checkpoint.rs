//! A guard against a store that silently lost data. sled treats a damaged
//! stretch of its log like a write torn by a crash and drops everything
//! after it, so a damaged database can open "fine" but older. The
//! committer records the audit log's size and root in a small file beside
//! the database (only after the commit it describes is durable, so it is
//! never ahead of the store); at start-up the store must hold at least that
//! log, with that root.
//!
//! The file is only a cache of what the store itself says: when it is
//! missing, empty or unreadable (a power loss, an operator's mistake) it is
//! rebuilt from the log with a warning, never a reason to refuse to start.
//! Only a valid checkpoint that the store contradicts is refused.
//!
//! Cost: each write goes through [`certs::durable_file`] (two `fsync`s), so
//! the committer writes at most once per [`INTERVAL`] and once more when it
//! stops, not after every batch. The checkpoint may therefore lag the store
//! by up to that interval after a crash; a loss of commits younger than
//! that goes unnoticed by this guard (RELIABILITY.md).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use referral_proto::Digest;

use crate::audit::StoreNodes;
use crate::store::{Store, StoreError};

pub const FILE_NAME: &str = "broker-checkpoint";
const MAGIC: &str = "referral-broker checkpoint v1";
/// How often, at most, the committer rewrites the checkpoint.
pub const INTERVAL: Duration = Duration::from_secs(1);

/// The audit log as of a commit this broker made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Checkpoint {
    pub tree_size: u64,
    pub root: Digest,
}

impl Checkpoint {
    fn encode(&self) -> String {
        format!("{MAGIC}\n{}\n{}\n", self.tree_size, self.root.to_hex())
    }
}

/// What the data directory holds in place of a checkpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Found {
    Missing,
    /// A file that is not a checkpoint, and why.
    Unusable(String),
    Valid(Checkpoint),
}

pub fn path(data_dir: &Path) -> PathBuf {
    data_dir.join(FILE_NAME)
}

/// Reads the checkpoint, if the data directory has a usable one.
pub fn read(data_dir: &Path) -> Found {
    let bytes = match std::fs::read(path(data_dir)) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Found::Missing,
        Err(e) => return Found::Unusable(format!("cannot be read: {e}")),
    };
    if bytes.is_empty() {
        return Found::Unusable("is empty".into());
    }
    let Ok(text) = std::str::from_utf8(&bytes) else { return Found::Unusable("is not text".into()) };
    // Earlier versions padded the record with spaces to a fixed length.
    let mut lines = text.trim_end_matches(['\0', '\n', ' ']).lines();
    if lines.next() != Some(MAGIC) {
        return Found::Unusable("does not start with the checkpoint header".into());
    }
    let Some(tree_size) = lines.next().and_then(|l| l.trim().parse().ok()) else {
        return Found::Unusable("has no valid log size".into());
    };
    let Some(root) = lines.next().and_then(|l| hex::decode(l.trim()).ok()).and_then(|b| Digest::from_slice(&b)) else {
        return Found::Unusable("has no valid log root".into());
    };
    Found::Valid(Checkpoint { tree_size, root })
}

/// Checks that the store holds the checkpointed log. A missing or unusable
/// checkpoint is not an error: it is logged with a warning and `Ok(Some(why))`
/// is returned; the caller's [`Writer`] then rebuilds it from the log.
pub fn verify(store: &dyn Store, data_dir: &Path, size_now: u64) -> Result<Option<String>, String> {
    let file = path(data_dir);
    let cp = match read(data_dir) {
        Found::Valid(cp) => cp,
        // A new data directory has none yet; nothing to say.
        Found::Missing if size_now == 0 => return Ok(None),
        Found::Missing => {
            tracing::warn!(file = %file.display(), "the checkpoint is missing; rebuilding it from the audit log");
            return Ok(Some("missing".into()));
        }
        Found::Unusable(why) => {
            tracing::warn!(file = %file.display(), problem = %why, "the checkpoint is unusable (a cache, e.g. cut short by a power loss); rebuilding it from the audit log");
            return Ok(Some(why));
        }
    };
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
    Ok(None)
}

/// Writes checkpoints; owned by the committer.
#[derive(Debug)]
pub struct Writer {
    data_dir: PathBuf,
    /// The newest checkpoint not yet written.
    pending: Option<Checkpoint>,
    last_write: Instant,
}

impl Writer {
    /// Starts from the log as the store holds it now, writing it at once:
    /// this is what rebuilds a missing or unusable checkpoint.
    pub fn open(data_dir: &Path, now: Checkpoint) -> Result<Self, StoreError> {
        remove_stale_temporaries(data_dir);
        let mut w = Self { data_dir: data_dir.to_owned(), pending: None, last_write: Instant::now() };
        w.write_now(now).map_err(|e| StoreError::Io(format!("{}: {e}", path(data_dir).display())))?;
        Ok(w)
    }

    /// Records the log after a durable commit; written if [`INTERVAL`] has
    /// passed since the last write, otherwise kept for later.
    pub fn record(&mut self, cp: Checkpoint) {
        self.pending = Some(cp);
        if self.last_write.elapsed() >= INTERVAL {
            self.flush();
        }
    }

    /// Writes the pending checkpoint, if any (at shutdown).
    pub fn flush(&mut self) {
        if let Some(cp) = self.pending.take()
            && let Err(e) = self.write_now(cp)
        {
            // Safe to go on: the older checkpoint on disk is behind the store, never ahead.
            tracing::warn!(file = %path(&self.data_dir).display(), error = %e, "writing the checkpoint failed");
        }
    }

    fn write_now(&mut self, cp: Checkpoint) -> std::io::Result<()> {
        self.last_write = Instant::now();
        certs::durable_file::write(path(&self.data_dir), cp.encode())
    }
}

/// Temporary files of a write that a crash cut short.
fn remove_stale_temporaries(data_dir: &Path) {
    let prefix = format!(".{FILE_NAME}.");
    let Ok(entries) = std::fs::read_dir(data_dir) else { return };
    for e in entries.flatten() {
        let name = e.file_name();
        let name = name.to_string_lossy();
        if name.starts_with(&prefix) && name.ends_with(".tmp") {
            let _ = std::fs::remove_file(e.path());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::sled_store::SledStore;
    use crate::store::tables::Writes;

    /// A store whose audit log has `n` entries, as the committer writes them.
    fn store_with_log(dir: &Path, n: u64) -> (SledStore, Checkpoint) {
        let store = SledStore::open(dir).unwrap();
        let mut log = crate::audit::AuditLog::default();
        let mut writes = Writes::default();
        for i in 0..n {
            log.append_bytes(&mut writes, format!("entry {i}").into_bytes());
        }
        log.record_size(&mut writes);
        store.commit(&writes.into_batch()).unwrap();
        (store, log.checkpoint())
    }

    /// What start-up does: verify, then open the writer (which rebuilds).
    fn start(store: &SledStore, dir: &Path, now: Checkpoint) -> Result<Option<String>, String> {
        let rebuilt = verify(store, dir, now.tree_size)?;
        Writer::open(dir, now).unwrap();
        assert_eq!(read(dir), Found::Valid(now), "the checkpoint is (re)written from the log");
        Ok(rebuilt)
    }

    #[test]
    fn a_missing_empty_garbage_or_truncated_checkpoint_is_rebuilt_not_refused() {
        let dir = tempfile::tempdir().unwrap();
        let (store, now) = store_with_log(dir.path(), 5);
        let file = path(dir.path());
        let whole = now.encode();
        let cases: [(&str, Option<&[u8]>, &str); 5] = [
            ("missing", None, "missing"),
            ("empty", Some(b""), "is empty"),
            ("garbage", Some(b"\x8f\x00\x13 not a checkpoint at all"), "is not text"),
            ("another file", Some(b"[store]\nformat = 1\n"), "does not start with the checkpoint header"),
            ("truncated", Some(&whole.as_bytes()[..whole.len() - 20]), "has no valid log root"),
        ];
        for (what, content, why) in cases {
            match content {
                None => std::fs::remove_file(&file).unwrap_or_default(),
                Some(c) => std::fs::write(&file, c).unwrap(),
            }
            let rebuilt = start(&store, dir.path(), now).unwrap_or_else(|e| panic!("{what}: refused: {e}"));
            assert_eq!(rebuilt.as_deref(), Some(why), "{what}");
        }
        // Cut after the size: the root line is missing.
        std::fs::write(&file, format!("{MAGIC}\n5\n")).unwrap();
        assert_eq!(start(&store, dir.path(), now).unwrap().as_deref(), Some("has no valid log root"));
        // A valid one is simply checked.
        assert_eq!(start(&store, dir.path(), now), Ok(None));
    }

    #[test]
    fn a_new_store_needs_no_checkpoint_and_gets_one() {
        let dir = tempfile::tempdir().unwrap();
        let (store, now) = store_with_log(dir.path(), 0);
        assert_eq!(start(&store, dir.path(), now), Ok(None));
    }

    #[test]
    fn a_valid_checkpoint_ahead_of_the_store_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let (store, now) = store_with_log(dir.path(), 5);
        std::fs::write(path(dir.path()), Checkpoint { tree_size: 9, root: now.root }.encode()).unwrap();
        let err = verify(&store, dir.path(), now.tree_size).unwrap_err();
        assert!(err.contains("holds 5 audit log entries, but 9 were committed before"), "{err}");
        // Same size, another history.
        let other = Checkpoint { tree_size: 3, root: Digest([7; 32]) };
        std::fs::write(path(dir.path()), other.encode()).unwrap();
        let err = verify(&store, dir.path(), now.tree_size).unwrap_err();
        assert!(err.contains("first 3 audit log entries are not the ones committed before"), "{err}");
        // Behind the store is fine: the checkpoint lags by design.
        let (_, three) = store_with_log(tempfile::tempdir().unwrap().path(), 3);
        std::fs::write(path(dir.path()), three.encode()).unwrap();
        assert_eq!(verify(&store, dir.path(), now.tree_size), Ok(None));
    }

    #[test]
    fn writes_at_most_once_per_interval_and_on_flush() {
        let dir = tempfile::tempdir().unwrap();
        let (_, zero) = store_with_log(dir.path(), 0);
        let mut w = Writer::open(dir.path(), zero).unwrap();
        let one = Checkpoint { tree_size: 1, root: Digest([1; 32]) };
        w.record(one);
        assert_eq!(read(dir.path()), Found::Valid(zero), "held back within the interval");
        w.flush();
        assert_eq!(read(dir.path()), Found::Valid(one));
        w.last_write -= INTERVAL;
        let two = Checkpoint { tree_size: 2, root: Digest([2; 32]) };
        w.record(two);
        assert_eq!(read(dir.path()), Found::Valid(two), "written once the interval has passed");
        std::fs::write(dir.path().join(format!(".{FILE_NAME}.77.0.tmp")), "cut short").unwrap();
        drop(Writer::open(dir.path(), two).unwrap());
        let names: Vec<_> = std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert!(!names.iter().any(|n| n.to_string_lossy().ends_with(".tmp")), "{names:?}");
    }
}
