//! The embedded store for throughput: fjall 3, an LSM tree with a journal,
//! one keyspace per [`Table`], so that a whole commit is one atomic fjall
//! write batch.
//!
//! Durability: a commit appends the batch to fjall's journal and
//! `fdatasync`s it before returning (`PersistMode::SyncData`): one device
//! round trip per commit, and no other thread on the commit's path (sled
//! hands its log to an I/O thread pool and then needs a second sync). The
//! memtables are written to sorted files and the journal is rotated by
//! fjall's own background threads; a crash replays the journal, and a batch
//! whose journal record is torn is dropped whole.
//!
//! Recovery: after a failed journal write or sync fjall refuses every later
//! write ("poisoned"), and its memory may hold the failed batch.
//! [`Store::recover`] therefore closes the database and opens it again from
//! disk, as for sled.
//!
//! The only module that names fjall.

use std::path::{Path, PathBuf};
use std::time::Duration;

use fjall::{Database, Keyspace, KeyspaceCreateOptions, PersistMode, Readable as _};

use super::local::{Reopenable, check_format, is_no_space, prepare_dir, refuse};
use super::{Batch, Entries, Op, Store, StoreError, Table};

/// fjall's block cache; as for sled, the working set (queues, heads of the
/// log) is small, so this bounds memory rather than speed.
const CACHE_BYTES: u64 = 64 * 1024 * 1024;
/// Journal kept before memtables are forced out: bounds what a restart
/// replays (the 10 s restart target holds with this at 1,000,000 queued).
const JOURNAL_BYTES: u64 = 128 * 1024 * 1024;
/// Background flush and compaction threads.
const WORKER_THREADS: usize = 2;

/// The file fjall writes last when it creates a database: it marks a store.
const MARKER: &str = "version";

struct Inner {
    db: Database,
    /// Indexed by [`Table::code`].
    tables: Vec<Keyspace>,
}

impl std::fmt::Debug for Inner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("fjall").field("tables", &self.tables.len()).finish()
    }
}

impl Inner {
    fn table(&self, t: Table) -> &Keyspace {
        &self.tables[t.code() as usize]
    }
}

#[derive(Debug)]
pub struct FjallStore {
    inner: Reopenable<Inner>,
    path: PathBuf,
    tuning: Tuning,
}

fn map_err(e: fjall::Error) -> StoreError {
    match e {
        fjall::Error::Poisoned => StoreError::Io("an earlier write failed; the store must be reopened".into()),
        fjall::Error::Locked => StoreError::Io("the store is locked by another process".into()),
        fjall::Error::JournalRecovery(e) => StoreError::Corrupt(format!("the journal cannot be replayed: {e:?}")),
        fjall::Error::Io(io) => io_error(&io),
        other => {
            // lsm-tree's errors wrap the I/O error that caused them.
            let mut cause: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(&other);
            while let Some(c) = cause {
                if let Some(io) = c.downcast_ref::<std::io::Error>() {
                    return io_error(io);
                }
                cause = c.source();
            }
            StoreError::Corrupt(format!("fjall reports {other:?}"))
        }
    }
}

fn io_error(io: &std::io::Error) -> StoreError {
    if is_no_space(io) { StoreError::NoSpace } else { StoreError::Io(io.to_string()) }
}

/// Settings that apply when a store is created: fjall keeps each table's
/// options with it and reads them back when it opens the store.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Tuning {
    /// Bytes of a table held in memory (and in the journal) before they are
    /// written to a sorted file; None is fjall's default (64 MiB).
    pub memtable_bytes: Option<u64>,
}

/// Opens fjall in `dir`, waiting a little for a lock that a process just
/// exiting (or a reopen) still holds.
fn open_inner(dir: &Path, tuning: Tuning) -> Result<Inner, StoreError> {
    let mut attempts = 0;
    let db = loop {
        let opened = Database::builder(dir)
            .cache_size(CACHE_BYTES)
            .max_journaling_size(JOURNAL_BYTES)
            .worker_threads(WORKER_THREADS)
            .open();
        match opened {
            Ok(db) => break db,
            Err(fjall::Error::Locked) if attempts < 40 => {
                attempts += 1;
                std::thread::sleep(Duration::from_millis(50));
            }
            Err(fjall::Error::Locked) => {
                return Err(refuse(dir, "is in use by another broker process (its lock is held)".into()));
            }
            Err(e) => {
                return Err(match map_err(e) {
                    StoreError::NoSpace => StoreError::NoSpace,
                    other => refuse(dir, format!("cannot open the store: {other}")),
                });
            }
        }
    };
    let mut tables = Vec::with_capacity(Table::ALL.len());
    for t in Table::ALL {
        debug_assert_eq!(t.code() as usize, tables.len(), "Table::ALL is in code order");
        let options = || match tuning.memtable_bytes {
            Some(bytes) => KeyspaceCreateOptions::default().max_memtable_size(bytes),
            None => KeyspaceCreateOptions::default(),
        };
        let ks = db
            .keyspace(t.name(), options)
            .map_err(|e| refuse(dir, format!("cannot open table {}: {}", t.name(), map_err(e))))?;
        tables.push(ks);
    }
    // Creating the keyspaces wrote fjall's own metadata: make it durable
    // before any commit is acknowledged.
    db.persist(PersistMode::SyncAll).map_err(|e| refuse(dir, format!("cannot sync the store: {}", map_err(e))))?;
    // fjall does not sync every folder it creates (a keyspace's, or the
    // journal it starts when it recovers): sync them all, deepest first,
    // so that no name a commit depends on can vanish in a power loss.
    sync_folders(dir).map_err(|e| refuse(dir, format!("cannot sync the data directory: {e}")))?;
    Ok(Inner { db, tables })
}

/// `fsync`s `dir` and every folder below it, children before parents.
fn sync_folders(dir: &Path) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        if entry.file_type()?.is_dir() {
            sync_folders(&entry.path())?;
        }
    }
    certs::durable_file::sync_dir(dir)
}

fn write_batch(inner: &Inner, batch: &Batch, durability: Option<PersistMode>) -> Result<(), StoreError> {
    let mut b = inner.db.batch().durability(durability);
    for op in &batch.ops {
        match op {
            Op::Put(t, k, v) => b.insert(inner.table(*t), k.as_slice(), v.as_slice()),
            Op::Delete(t, k) => b.remove(inner.table(*t), k.as_slice()),
        }
    }
    b.commit().map_err(map_err)
}

impl FjallStore {
    /// Opens the store in `dir`, creating it if `dir` is missing or empty.
    /// Refuses a directory that holds anything else, or a store of another
    /// format, instead of resetting it.
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        Self::open_with(dir, Tuning::default())
    }

    /// [`Self::open`], creating a new store's tables with `tuning`.
    pub fn open_with(dir: &Path, tuning: Tuning) -> Result<Self, StoreError> {
        let fresh = prepare_dir(dir)?;
        if !fresh && !dir.join(MARKER).is_file() {
            return Err(refuse(
                dir,
                "is not empty and is not a broker data directory for the fjall engine (no fjall 'version' file); \
                 refusing to use it"
                    .into(),
            ));
        }
        let inner = open_inner(dir, tuning)?;
        let empty = inner.tables.iter().all(|t| t.is_empty().unwrap_or(false));
        let store = Self { inner: Reopenable::new(inner), path: dir.to_owned(), tuning };
        check_format(&store, dir, fresh || empty)?;
        Ok(store)
    }

    /// Does `dir` hold a store of this engine?
    pub fn is_store(dir: &Path) -> bool {
        dir.join(MARKER).is_file()
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn inner(&self) -> Result<std::sync::Arc<Inner>, StoreError> {
        self.inner.get()
    }

    /// Applies every write in `batch` atomically, without syncing it: the
    /// writes are visible at once but may be lost in a crash. For bulk
    /// loading and benchmarks only; never used for acknowledged writes.
    pub fn commit_unflushed(&self, batch: &Batch) -> Result<(), StoreError> {
        write_batch(&*self.inner()?, batch, None)
    }

    /// Makes everything written so far durable (after `commit_unflushed`).
    pub fn sync(&self) -> Result<(), StoreError> {
        self.inner()?.db.persist(PersistMode::SyncData).map_err(map_err)
    }
}

impl Store for FjallStore {
    fn commit(&self, batch: &Batch) -> Result<(), StoreError> {
        write_batch(&*self.inner()?, batch, Some(PersistMode::SyncData))
    }

    fn get(&self, table: Table, k: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.inner()?.table(table).get(k).map_err(map_err)?.map(|v| v.to_vec()))
    }

    fn range(&self, table: Table, start: &[u8], end: &[u8], limit: usize) -> Result<Entries, StoreError> {
        if start >= end || limit == 0 {
            return Ok(vec![]);
        }
        let inner = self.inner()?;
        let mut out = Vec::new();
        for guard in inner.table(table).range(start..end).take(limit) {
            let (k, v) = guard.into_inner().map_err(map_err)?;
            out.push((k.to_vec(), v.to_vec()));
        }
        Ok(out)
    }

    fn size_on_disk(&self) -> Result<u64, StoreError> {
        self.inner()?.db.disk_space().map_err(map_err)
    }

    fn recover(&self) -> Result<(), StoreError> {
        self.inner.reopen(&self.path, || open_inner(&self.path, self.tuning))
    }

    fn backup_to(&self, dir: &Path) -> Result<u64, StoreError> {
        let target = FjallStore::open(dir)?;
        let target_inner = target.inner()?;
        if target_inner.tables.iter().map(|t| t.len().unwrap_or(usize::MAX)).sum::<usize>() > 1 {
            return Err(refuse(dir, "backup target already holds data".into()));
        }
        let inner = self.inner()?;
        // A snapshot: the copy is of one moment even if a commit runs.
        let snapshot = inner.db.snapshot();
        let mut copied = 0u64;
        for t in Table::ALL {
            let mut b = target_inner.db.batch();
            let mut pending = 0usize;
            for guard in snapshot.iter(inner.table(t)) {
                let (k, v) = guard.into_inner().map_err(map_err)?;
                b.insert(target_inner.table(t), k, v);
                pending += 1;
                copied += 1;
                if pending == 10_000 {
                    std::mem::replace(&mut b, target_inner.db.batch()).commit().map_err(map_err)?;
                    pending = 0;
                }
            }
            b.commit().map_err(map_err)?;
        }
        target.sync()?;
        Ok(copied)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::engine_contract as contract;

    #[test]
    fn a_directory_it_makes_is_for_its_user_only() {
        contract::a_directory_it_makes_is_for_its_user_only(FjallStore::open);
    }

    #[test]
    fn commit_get_range_and_reopen() {
        contract::commit_get_range_and_reopen(FjallStore::open);
    }

    #[test]
    fn a_data_directory_in_use_is_refused() {
        contract::a_data_directory_in_use_is_refused(FjallStore::open);
    }

    #[test]
    fn refuses_foreign_directories_and_sled_stores() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("notes.txt"), "mine").unwrap();
        let err = FjallStore::open(dir.path()).unwrap_err().to_string();
        assert!(err.contains("not a broker data directory for the fjall engine"), "{err}");
        assert_eq!(std::fs::read_to_string(dir.path().join("notes.txt")).unwrap(), "mine", "never reset");

        let sled_dir = tempfile::tempdir().unwrap();
        drop(crate::store::sled_store::SledStore::open(sled_dir.path()).unwrap());
        let err = FjallStore::open(sled_dir.path()).unwrap_err().to_string();
        assert!(err.contains("no fjall 'version' file"), "{err}");
    }

    #[test]
    fn refuses_a_store_of_another_format() {
        let dir = tempfile::tempdir().unwrap();
        {
            let s = FjallStore::open(dir.path()).unwrap();
            let mut b = Batch::default();
            b.put(Table::Meta, crate::store::keys::meta::FORMAT.to_vec(), b"something else".to_vec());
            s.commit(&b).unwrap();
        }
        let err = FjallStore::open(dir.path()).unwrap_err().to_string();
        assert!(err.contains("holds store format \"something else\""), "{err}");
    }

    #[test]
    fn a_backup_is_a_copy_of_every_table() {
        let dir = tempfile::tempdir().unwrap();
        let s = FjallStore::open(&dir.path().join("a")).unwrap();
        let mut b = Batch::default();
        for t in Table::ALL.into_iter().filter(|t| *t != Table::Meta) {
            b.put(t, vec![t.code()], vec![t.code(); 3]);
        }
        s.commit(&b).unwrap();
        assert_eq!(s.backup_to(&dir.path().join("b")).unwrap(), Table::ALL.len() as u64, "10 rows and the format");
        drop(s);
        let copy = FjallStore::open(&dir.path().join("b")).unwrap();
        for t in Table::ALL.into_iter().filter(|t| *t != Table::Meta) {
            assert_eq!(copy.get(t, &[t.code()]).unwrap(), Some(vec![t.code(); 3]), "{t:?}");
        }
        drop(copy);
        let err = FjallStore::open(&dir.path().join("a")).unwrap().backup_to(&dir.path().join("b")).unwrap_err();
        assert!(err.to_string().contains("already holds data"), "{err}");
    }
}
