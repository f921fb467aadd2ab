//! The sled 0.34 store (the default before fjall; a data directory that
//! holds one keeps it): one tree with a one-byte table prefix per key, so
//! that a whole commit is one atomic sled batch.
//!
//! Durability: sled's `flush` writes the log with `sync_file_range`, which
//! does not flush the drive's cache, so every commit also `fdatasync`s the
//! database file through a separately opened handle (fsync is per inode).
//!
//! Recovery: after any I/O error (a full disk, say) sled 0.34 refuses every
//! later write with the same error, and its memory may hold the batch that
//! failed. [`Store::recover`] therefore closes the database and opens it
//! again from disk, which is what sled's crash recovery is for; the failed
//! batch is then either wholly there or wholly absent.
//!
//! The only module that names sled.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use super::local::{Reopenable, check_format, is_no_space, prepare_dir, refuse};
use super::{Batch, Entries, Op, Store, StoreError, Table};

/// sled's page cache; the store's working set (queues, heads of the log)
/// is small, so this bounds the broker's memory, not its speed.
const CACHE_BYTES: u64 = 64 * 1024 * 1024;

#[derive(Debug)]
struct Inner {
    db: sled::Db,
    tree: sled::Tree,
    data_file: File,
}

#[derive(Debug)]
pub struct SledStore {
    inner: Reopenable<Inner>,
    path: PathBuf,
}

fn key(t: Table, k: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(1 + k.len());
    out.push(t.code());
    out.extend_from_slice(k);
    out
}

fn map_err(e: sled::Error) -> StoreError {
    match e {
        sled::Error::Io(io) if is_no_space(&io) => StoreError::NoSpace,
        sled::Error::Io(io) => StoreError::Io(io.to_string()),
        sled::Error::Corruption { at, bt: _ } => StoreError::Corrupt(format!("sled reports corruption at {at:?}")),
        other => StoreError::Io(other.to_string()),
    }
}

fn io_err(e: std::io::Error) -> StoreError {
    if is_no_space(&e) { StoreError::NoSpace } else { StoreError::Io(e.to_string()) }
}

/// sled reports a held lock as an I/O error wrapping EWOULDBLOCK.
fn is_lock_error(e: &std::io::Error) -> bool {
    e.kind() == std::io::ErrorKind::WouldBlock || e.to_string().contains("could not acquire lock")
}

/// Opens sled in `dir`, waiting a little for a lock that a process just
/// exiting (or a reopen) still holds.
fn open_inner(dir: &Path) -> Result<Inner, StoreError> {
    let config = sled::Config::new()
        .path(dir)
        .cache_capacity(CACHE_BYTES)
        // The broker flushes itself on every commit; sled's timer would only add I/O.
        .flush_every_ms(None);
    let mut attempts = 0;
    let db = loop {
        // sled 0.34 panics on some damaged files instead of returning an
        // error; a damaged data directory must be reported, never crash.
        let opened = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| config.open())).map_err(|panic| {
            let what = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_default();
            refuse(dir, format!("is damaged: sled cannot read it ({what}); restore it from a backup"))
        })?;
        match opened {
            Ok(db) => break db,
            Err(sled::Error::Io(e)) if is_lock_error(&e) && attempts < 40 => {
                attempts += 1;
                std::thread::sleep(Duration::from_millis(50));
            }
            Err(sled::Error::Io(e)) if is_lock_error(&e) => {
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
    let tree: sled::Tree = (*db).clone();
    let data_file =
        File::open(dir.join("db")).map_err(|e| refuse(dir, format!("cannot open the database file: {e}")))?;
    make_files_durable(dir, &data_file)?;
    Ok(Inner { db, tree, data_file })
}

/// sled 0.34 creates `db` and writes `conf` (when it is missing, or has
/// fewer than 9 bytes, which it only warns about) without syncing either
/// file or the folder, so a power loss soon after can leave the folder
/// without them or `conf` empty. Syncing both files and the folder after
/// every open makes what sled just wrote durable before any commit is
/// acknowledged.
fn make_files_durable(dir: &Path, data_file: &File) -> Result<(), StoreError> {
    let sync = || -> std::io::Result<()> {
        File::open(dir.join("conf"))?.sync_all()?;
        data_file.sync_all()?;
        certs::durable_file::sync_dir(dir)
    };
    sync().map_err(|e| refuse(dir, format!("cannot sync the new store's files: {e}")))
}

fn apply(inner: &Inner, batch: &Batch) -> Result<(), StoreError> {
    let mut b = sled::Batch::default();
    for op in &batch.ops {
        match op {
            Op::Put(t, k, v) => b.insert(key(*t, k), v.as_slice()),
            Op::Delete(t, k) => b.remove(key(*t, k)),
        }
    }
    inner.tree.apply_batch(b).map_err(map_err)
}

fn make_durable(inner: &Inner) -> Result<(), StoreError> {
    inner.db.flush().map_err(map_err)?;
    inner.data_file.sync_data().map_err(io_err)
}

impl SledStore {
    /// Opens the store in `dir`, creating it if `dir` is missing or empty.
    /// Refuses a directory that holds anything else, or a store of another
    /// format, instead of resetting it.
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        let fresh = prepare_dir(dir)?;
        // sled rewrites a missing or empty `conf` (a power loss can leave it
        // so), so only `db` marks a store.
        let looks_like_sled = dir.join("db").is_file();
        if !fresh && !looks_like_sled {
            return Err(refuse(
                dir,
                "is not empty and is not a broker data directory (no sled 'db' file); refusing to use it".into(),
            ));
        }
        if !fresh && std::fs::metadata(dir.join("conf")).map(|m| m.len() <= 8).unwrap_or(true) {
            tracing::warn!(path = %dir.display(), "sled's 'conf' file is missing or empty (a power loss?); sled writes it again");
        }
        let inner = open_inner(dir)?;
        let empty = inner.tree.is_empty();
        let store = Self { inner: Reopenable::new(inner), path: dir.to_owned() };
        check_format(&store, dir, fresh || empty)?;
        Ok(store)
    }

    /// Opens an existing store; refuses a missing or empty directory
    /// instead of creating one (for tools that read a store).
    pub fn open_existing(dir: &Path) -> Result<Self, StoreError> {
        let has_files = std::fs::read_dir(dir).map(|mut d| d.next().is_some()).unwrap_or(false);
        if !has_files {
            return Err(refuse(dir, "holds no broker data".into()));
        }
        Self::open(dir)
    }

    /// Does `dir` hold a store of this engine?
    pub fn is_store(dir: &Path) -> bool {
        dir.join("db").is_file()
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn inner(&self) -> Result<Arc<Inner>, StoreError> {
        self.inner.get()
    }

    /// Applies every write in `batch` atomically, without flushing it to
    /// disk: the writes are visible at once but may be lost in a crash.
    /// For bulk loading and benchmarks only; never used for acknowledged
    /// writes, which go through [`Store::commit`].
    pub fn commit_unflushed(&self, batch: &Batch) -> Result<(), StoreError> {
        apply(&*self.inner()?, batch)
    }

    /// Number of records (all tables).
    pub fn len(&self) -> Result<usize, StoreError> {
        Ok(self.inner()?.tree.len())
    }

    pub fn is_empty(&self) -> Result<bool, StoreError> {
        Ok(self.inner()?.tree.is_empty())
    }
}

impl Store for SledStore {
    fn commit(&self, batch: &Batch) -> Result<(), StoreError> {
        let inner = self.inner()?;
        apply(&inner, batch)?;
        make_durable(&inner)
    }

    fn get(&self, table: Table, k: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.inner()?.tree.get(key(table, k)).map_err(map_err)?.map(|v| v.to_vec()))
    }

    fn range(&self, table: Table, start: &[u8], end: &[u8], limit: usize) -> Result<Entries, StoreError> {
        let (s, e) = (key(table, start), key(table, end));
        if s >= e {
            return Ok(vec![]);
        }
        let inner = self.inner()?;
        let mut out = Vec::new();
        for item in inner.tree.range(s..e).take(limit) {
            let (k, v) = item.map_err(map_err)?;
            out.push((k[1..].to_vec(), v.to_vec()));
        }
        Ok(out)
    }

    fn size_on_disk(&self) -> Result<u64, StoreError> {
        self.inner()?.db.size_on_disk().map_err(map_err)
    }

    fn recover(&self) -> Result<(), StoreError> {
        self.inner.reopen(&self.path, || open_inner(&self.path))
    }

    fn backup_to(&self, dir: &Path) -> Result<u64, StoreError> {
        let target = SledStore::open(dir)?;
        let target_inner = target.inner()?;
        if target_inner.tree.len() > 1 {
            return Err(refuse(dir, "backup target already holds data".into()));
        }
        let inner = self.inner()?;
        // sled iterators are not snapshots: the caller (the committer) runs
        // this between commits, so nothing changes while it copies.
        let mut raw = sled::Batch::default();
        let mut pending = 0usize;
        let mut copied = 0u64;
        for item in inner.tree.iter() {
            let (k, v) = item.map_err(map_err)?;
            raw.insert(k, v);
            pending += 1;
            copied += 1;
            if pending == 10_000 {
                target_inner.tree.apply_batch(std::mem::take(&mut raw)).map_err(map_err)?;
                pending = 0;
            }
        }
        target_inner.tree.apply_batch(raw).map_err(map_err)?;
        make_durable(&target_inner)?;
        Ok(copied)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::engine_contract as contract;

    #[test]
    fn a_directory_it_makes_is_for_its_user_only() {
        contract::a_directory_it_makes_is_for_its_user_only(SledStore::open);
    }

    #[test]
    fn commit_get_range_and_reopen() {
        contract::commit_get_range_and_reopen(SledStore::open);
    }

    #[test]
    fn a_data_directory_in_use_is_refused() {
        contract::a_data_directory_in_use_is_refused(SledStore::open);
    }

    #[test]
    fn refuses_foreign_directories() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("notes.txt"), "mine").unwrap();
        let err = SledStore::open(dir.path()).unwrap_err().to_string();
        assert!(err.contains("not a broker data directory"), "{err}");
        assert_eq!(std::fs::read_to_string(dir.path().join("notes.txt")).unwrap(), "mine", "never reset");
    }

    #[test]
    fn opens_after_a_power_loss_emptied_or_removed_sleds_conf() {
        let dir = tempfile::tempdir().unwrap();
        let put = |s: &SledStore, v: u8| {
            let mut b = Batch::default();
            b.put(Table::Audit, vec![v], vec![v]);
            s.commit(&b).unwrap();
        };
        put(&SledStore::open(dir.path()).unwrap(), 1);
        let conf = dir.path().join("conf");
        std::fs::write(&conf, "").unwrap();
        let s = SledStore::open(dir.path()).unwrap();
        assert_eq!(s.get(Table::Audit, &[1]).unwrap(), Some(vec![1]));
        put(&s, 2);
        drop(s);
        assert!(std::fs::metadata(&conf).unwrap().len() > 8, "sled wrote it again");
        std::fs::remove_file(&conf).unwrap();
        let s = SledStore::open(dir.path()).unwrap();
        assert_eq!(s.get(Table::Audit, &[2]).unwrap(), Some(vec![2]));
    }

    #[test]
    fn refuses_a_sled_store_of_another_format() {
        let dir = tempfile::tempdir().unwrap();
        {
            let db = sled::open(dir.path()).unwrap();
            db.insert(b"\x00store-format", b"something else".to_vec()).unwrap();
            db.flush().unwrap();
        }
        let err = SledStore::open(dir.path()).unwrap_err().to_string();
        assert!(err.contains("store format"), "{err}");
    }
}
