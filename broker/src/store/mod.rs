//! Durable state behind a trait: a handful of ordered key-value tables and
//! one atomic, durable `commit` of a batch of writes.
//!
//! The delivery and audit code see only this trait and the typed access in
//! [`tables`] (built on the key layout in [`keys`] and the versioned
//! records in [`records`]). Only [`sled_store`]
//! names sled and only [`postgres`] names PostgreSQL: the replicated
//! engine implements the same [`Store`] without touching anything above it.
//!
//! Architecture invariant: every write goes through [`Store::commit`], called
//! by exactly one task (the committer), so the store never needs read-write
//! transactions or retries.

pub mod fjall_store;
pub mod keys;
mod local;
pub mod memory;
pub mod postgres;
pub mod records;
pub mod sled_store;
pub mod tables;

use std::path::Path;
use std::sync::Arc;

/// The tables. Their key layouts are in [`keys`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Table {
    /// Store format marker, counters, the latest signed tree head.
    Meta,
    /// message id -> `MessageRecord`.
    Messages,
    /// message id -> encoded envelope; deleted when purged.
    Envelopes,
    /// recipient, sequence -> message id; only unsettled messages.
    Queue,
    /// due time, kind, message id -> nothing.
    Deadlines,
    /// message id, receipt number -> encoded signed receipt.
    Receipts,
    /// sender, cursor -> message id, receipt number.
    ReceiptFeed,
    /// index -> encoded audit entry.
    Audit,
    /// level, index -> Merkle node hash.
    MerkleNodes,
    /// message id, principal -> nothing: who has been sent the message.
    Deliveries,
    /// The blind overlap check: sessions, sealed chunks until the session
    /// finishes, sessions per agency, sessions per pair and day.
    Overlaps,
}

impl Table {
    pub const ALL: [Table; 11] = [
        Table::Meta,
        Table::Messages,
        Table::Envelopes,
        Table::Queue,
        Table::Deadlines,
        Table::Receipts,
        Table::ReceiptFeed,
        Table::Audit,
        Table::MerkleNodes,
        Table::Deliveries,
        Table::Overlaps,
    ];

    /// The table's code in stored keys (sled's key prefix, PostgreSQL's
    /// `tbl` column). Stored data depends on it: never renumber.
    pub fn code(self) -> u8 {
        match self {
            Table::Meta => 0,
            Table::Messages => 1,
            Table::Envelopes => 2,
            Table::Queue => 3,
            Table::Deadlines => 4,
            Table::Receipts => 5,
            Table::ReceiptFeed => 6,
            Table::Audit => 7,
            Table::MerkleNodes => 8,
            Table::Deliveries => 9,
            Table::Overlaps => 10,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Table::Meta => "meta",
            Table::Messages => "messages",
            Table::Envelopes => "envelopes",
            Table::Queue => "queue",
            Table::Deadlines => "deadlines",
            Table::Receipts => "receipts",
            Table::ReceiptFeed => "receipt_feed",
            Table::Audit => "audit",
            Table::MerkleNodes => "merkle_nodes",
            Table::Deliveries => "deliveries",
            Table::Overlaps => "overlaps",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    Put(Table, Vec<u8>, Vec<u8>),
    Delete(Table, Vec<u8>),
}

/// Writes applied together, atomically, by [`Store::commit`].
#[derive(Debug, Default, Clone)]
pub struct Batch {
    pub ops: Vec<Op>,
    /// What other broker nodes on the same store must be told once the
    /// batch is durable (see [`crate::cluster::Changes`]); empty for none.
    /// Engines that serve one node ignore it.
    pub changes: Vec<u8>,
}

impl Batch {
    pub fn put(&mut self, table: Table, key: Vec<u8>, value: Vec<u8>) {
        self.ops.push(Op::Put(table, key, value));
    }

    pub fn delete(&mut self, table: Table, key: Vec<u8>) {
        self.ops.push(Op::Delete(table, key));
    }

    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }

    pub fn len(&self) -> usize {
        self.ops.len()
    }
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    #[error("the disk is full")]
    NoSpace,
    #[error("storage I/O failed: {0}")]
    Io(String),
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
    #[error("{path}: {message}")]
    Refused { path: String, message: String },
}

/// Key-value pairs returned by a range read.
pub type Entries = Vec<(Vec<u8>, Vec<u8>)>;

pub trait Store: Send + Sync + std::fmt::Debug + 'static {
    /// Applies every write in `batch` atomically, and returns only once they
    /// survive a crash or power loss.
    fn commit(&self, batch: &Batch) -> Result<(), StoreError>;

    fn get(&self, table: Table, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError>;

    /// Up to `limit` entries with `start <= key < end`, in key order.
    fn range(&self, table: Table, start: &[u8], end: &[u8], limit: usize) -> Result<Entries, StoreError>;

    /// Up to `limit` entries whose key starts with `prefix`, in key order.
    fn prefix(&self, table: Table, prefix: &[u8], limit: usize) -> Result<Entries, StoreError> {
        let mut end = prefix.to_vec();
        // The smallest key greater than every key with this prefix.
        while let Some(last) = end.pop() {
            if last < 0xff {
                end.push(last + 1);
                return self.range(table, prefix, &end, limit);
            }
        }
        self.range(table, prefix, &[0xff; 64], limit)
    }

    /// Bytes used on disk.
    fn size_on_disk(&self) -> Result<u64, StoreError>;

    /// Brings the store back to a usable state after a failed commit (the
    /// engine may have kept the failed batch in memory, or stopped taking
    /// writes). Afterwards the store holds exactly what is on disk, with the
    /// failed batch wholly there or wholly absent; callers reload any state
    /// they derived from it.
    fn recover(&self) -> Result<(), StoreError> {
        Ok(())
    }

    /// Writes a consistent copy of every table to `dir` (a new store there).
    fn backup_to(&self, dir: &Path) -> Result<u64, StoreError>;

    /// Starts a committer batch on an engine that several broker nodes
    /// write at once: takes the store's writer lock (other nodes' batches
    /// wait), after which this thread's reads see every committed batch of
    /// every node, and the next [`Store::commit`] from this thread writes
    /// under the same lock and releases it ([`Store::end_batch`] releases
    /// it when nothing is written). Returns the store's write generation,
    /// which each commit made under the lock advances by exactly one: when
    /// it differs from the generation the caller last wrote or loaded,
    /// another node wrote, and the caller reloads what it derived from the
    /// store. `None` (the default): this node is the only writer.
    fn begin_batch(&self) -> Result<Option<u64>, StoreError> {
        Ok(None)
    }

    /// Ends a batch begun by [`Store::begin_batch`] that was not committed
    /// (nothing to write, or the batch failed): releases the writer lock.
    /// Does nothing when no batch is open.
    fn end_batch(&self) {}

    /// Starts delivering the [`Batch::changes`] other nodes commit to
    /// `sink`, in commit order, promptly (woken by the engine) and at least
    /// every `poll` (wake-ups are lost while disconnected); `None` tells
    /// the sink that changes may have been missed and it must re-read what
    /// it shows. The sink answers false when it wants no more (its broker
    /// stopped). Does nothing on a single-node engine.
    fn watch_changes(&self, _sink: ChangeSink, _poll: std::time::Duration) {}
}

/// Receives other nodes' changes (see [`Store::watch_changes`]).
pub type ChangeSink = Box<dyn Fn(Option<&[u8]>) -> bool + Send + Sync>;

/// The embedded engines, which keep the store in the data directory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LocalEngine {
    /// sled 0.34 ([`sled_store`]).
    Sled,
    /// fjall 3 ([`fjall_store`]).
    Fjall,
}

impl LocalEngine {
    /// The name `storage.engine` gives it.
    pub fn name(self) -> &'static str {
        match self {
            LocalEngine::Sled => "sled",
            LocalEngine::Fjall => "fjall",
        }
    }

    /// The engine whose store `dir` holds, if it holds one.
    pub fn of(dir: &Path) -> Option<LocalEngine> {
        if sled_store::SledStore::is_store(dir) {
            Some(LocalEngine::Sled)
        } else if fjall_store::FjallStore::is_store(dir) {
            Some(LocalEngine::Fjall)
        } else {
            None
        }
    }

    /// The engine a broker with `storage.engine` unset runs on: the one
    /// whose store `dir` holds, so an existing store is never refused;
    /// fjall for a new store (fewer syncs per commit: BENCHMARKS.md,
    /// "Issue 14, fifth round").
    pub fn default_for(dir: &Path) -> LocalEngine {
        LocalEngine::of(dir).unwrap_or(LocalEngine::Fjall)
    }

    /// Refuses, by name, a `dir` that holds the other engine's store: a
    /// store is never converted or reset in place.
    pub fn check(self, dir: &Path) -> Result<(), StoreError> {
        match LocalEngine::of(dir) {
            Some(found) if found != self => Err(StoreError::Refused {
                path: dir.display().to_string(),
                message: format!(
                    "holds a store of the {} engine, but storage.engine is \"{}\"; set storage.engine = \"{}\" \
                     (`broker backup` and `broker restore` copy a store, in its own engine)",
                    found.name(),
                    self.name(),
                    found.name()
                ),
            }),
            _ => Ok(()),
        }
    }

    /// Opens (or creates) this engine's store in `dir` (see [`Self::check`]).
    pub fn open(self, dir: &Path) -> Result<Arc<dyn Store>, StoreError> {
        self.open_with(dir, fjall_store::Tuning::default())
    }

    /// [`Self::open`], creating a new fjall store with `tuning` (sled has none).
    pub fn open_with(self, dir: &Path, tuning: fjall_store::Tuning) -> Result<Arc<dyn Store>, StoreError> {
        self.check(dir)?;
        Ok(match self {
            LocalEngine::Sled => Arc::new(sled_store::SledStore::open(dir)?),
            LocalEngine::Fjall => Arc::new(fjall_store::FjallStore::open_with(dir, tuning)?),
        })
    }

    /// Opens the store `dir` holds, of whichever embedded engine; refuses
    /// a missing or empty directory instead of creating one (for tools
    /// that read a store).
    pub fn open_existing(dir: &Path) -> Result<(LocalEngine, Arc<dyn Store>), StoreError> {
        let has_files = std::fs::read_dir(dir).map(|mut d| d.next().is_some()).unwrap_or(false);
        if !has_files {
            return Err(StoreError::Refused {
                path: dir.display().to_string(),
                message: "holds no broker data".into(),
            });
        }
        match LocalEngine::of(dir) {
            Some(engine) => Ok((engine, engine.open(dir)?)),
            None => Err(StoreError::Refused {
                path: dir.display().to_string(),
                message: "is not a broker data directory (neither a sled 'db' file nor a fjall 'version' file)".into(),
            }),
        }
    }
}

/// What every embedded engine must do with its data directory, run by each
/// engine's tests with its own `open`.
#[cfg(test)]
pub(crate) mod engine_contract {
    use std::path::Path;

    use super::{Batch, Store, StoreError, Table};

    type Open<S> = fn(&Path) -> Result<S, StoreError>;

    /// A data directory the store creates is for the broker's user only.
    pub(crate) fn a_directory_it_makes_is_for_its_user_only<S: Store>(open: Open<S>) {
        use std::os::unix::fs::PermissionsExt as _;
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("new").join("data");
        drop(open(&dir).unwrap());
        assert_eq!(std::fs::metadata(&dir).unwrap().permissions().mode() & 0o777, 0o700);
    }

    /// Commits, deletes, reads by key and range, keeps tables apart, and
    /// finds it all again after a reopen.
    pub(crate) fn commit_get_range_and_reopen<S: Store>(open: Open<S>) {
        let dir = tempfile::tempdir().unwrap();
        {
            let s = open(dir.path()).unwrap();
            let mut b = Batch::default();
            for i in 0u64..10 {
                b.put(Table::Audit, i.to_be_bytes().to_vec(), vec![i as u8]);
            }
            b.put(Table::Queue, b"x".to_vec(), b"other table".to_vec());
            b.put(Table::Queue, b"y".to_vec(), b"deleted below".to_vec());
            s.commit(&b).unwrap();
            let mut b = Batch::default();
            b.delete(Table::Queue, b"y".to_vec());
            s.commit(&b).unwrap();
            let r = s.range(Table::Audit, &3u64.to_be_bytes(), &6u64.to_be_bytes(), 100).unwrap();
            assert_eq!(r.iter().map(|(_, v)| v[0]).collect::<Vec<_>>(), [3, 4, 5]);
            assert_eq!(s.range(Table::Audit, &3u64.to_be_bytes(), &9u64.to_be_bytes(), 2).unwrap().len(), 2);
            assert_eq!(s.prefix(Table::Queue, b"", 10).unwrap(), vec![(b"x".to_vec(), b"other table".to_vec())]);
            assert_eq!(s.get(Table::Messages, &9u64.to_be_bytes()).unwrap(), None, "tables are apart");
        }
        let s = open(dir.path()).unwrap();
        assert_eq!(s.get(Table::Audit, &9u64.to_be_bytes()).unwrap(), Some(vec![9]));
        assert_eq!(s.get(Table::Queue, b"y").unwrap(), None);
    }

    /// A second broker on the same data directory is refused.
    pub(crate) fn a_data_directory_in_use_is_refused<S: Store>(open: Open<S>) {
        let dir = tempfile::tempdir().unwrap();
        let _first = open(dir.path()).unwrap();
        let err = open(dir.path()).unwrap_err().to_string();
        assert!(err.contains("in use by another broker process"), "{err}");
    }
}
