//! The default store: sled 0.34, one tree with a one-byte table prefix per
//! key, so that a whole commit is one atomic sled batch.
//!
//! Durability: sled's `flush` writes the log with `sync_file_range`, which
//! does not flush the drive's cache, so every commit also `fdatasync`s the
//! database file through a separately opened handle (fsync is per inode).
//! The only module that names sled.

use std::fs::File;
use std::path::{Path, PathBuf};

use super::records::STORE_FORMAT;
use super::{Batch, Entries, Op, Store, StoreError, Table};
use crate::store::keys::meta;

/// sled's page cache; the store's working set (queues, heads of the log)
/// is small, so this bounds the broker's memory, not its speed.
const CACHE_BYTES: u64 = 128 * 1024 * 1024;

#[derive(Debug)]
pub struct SledStore {
    db: sled::Db,
    tree: sled::Tree,
    data_file: File,
    path: PathBuf,
}

fn table_byte(t: Table) -> u8 {
    match t {
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
    }
}

fn key(t: Table, k: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(1 + k.len());
    out.push(table_byte(t));
    out.extend_from_slice(k);
    out
}

fn map_err(e: sled::Error) -> StoreError {
    match e {
        sled::Error::Io(io)
            if io.raw_os_error() == Some(libc::ENOSPC)
                || io.kind() == std::io::ErrorKind::StorageFull =>
        {
            StoreError::NoSpace
        }
        sled::Error::Io(io) => StoreError::Io(io.to_string()),
        sled::Error::Corruption { at, bt: _ } => {
            StoreError::Corrupt(format!("sled reports corruption at {at:?}"))
        }
        other => StoreError::Io(other.to_string()),
    }
}

fn io_err(e: std::io::Error) -> StoreError {
    if e.raw_os_error() == Some(libc::ENOSPC) || e.kind() == std::io::ErrorKind::StorageFull {
        StoreError::NoSpace
    } else {
        StoreError::Io(e.to_string())
    }
}

/// sled reports a held lock as an I/O error wrapping EWOULDBLOCK.
fn is_lock_error(e: &std::io::Error) -> bool {
    e.kind() == std::io::ErrorKind::WouldBlock || e.to_string().contains("could not acquire lock")
}

impl SledStore {
    /// Opens the store in `dir`, creating it if `dir` is missing or empty.
    /// Refuses a directory that holds anything else, or a store of another
    /// format, instead of resetting it.
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        let refuse = |message: String| StoreError::Refused {
            path: dir.display().to_string(),
            message,
        };
        let fresh = match std::fs::read_dir(dir) {
            Ok(mut entries) => entries.next().is_none(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => true,
            Err(e) => return Err(refuse(format!("cannot read the data directory: {e}"))),
        };
        let looks_like_sled = dir.join("db").is_file() && dir.join("conf").is_file();
        if !fresh && !looks_like_sled {
            return Err(refuse(
                "is not empty and is not a broker data directory (no sled 'db' and 'conf' files); refusing to use it".into(),
            ));
        }
        let config = sled::Config::new()
            .path(dir)
            .cache_capacity(CACHE_BYTES)
            // The broker flushes itself on every commit; sled's timer would only add I/O.
            .flush_every_ms(None);
        // A process that just exited (a quick restart) may hold the lock for
        // a moment; another live broker holds it for good.
        let mut attempts = 0;
        let db = loop {
            match config.open() {
                Ok(db) => break db,
                Err(sled::Error::Io(e)) if is_lock_error(&e) && attempts < 40 => {
                    attempts += 1;
                    std::thread::sleep(std::time::Duration::from_millis(50));
                }
                Err(sled::Error::Io(e)) if is_lock_error(&e) => {
                    return Err(refuse(
                        "is in use by another broker process (its lock is held)".into(),
                    ));
                }
                Err(e) => return Err(refuse(format!("cannot open the store: {}", map_err(e)))),
            }
        };
        let tree: sled::Tree = (*db).clone();
        let data_file = File::open(dir.join("db"))
            .map_err(|e| refuse(format!("cannot open the database file: {e}")))?;
        let store = Self {
            db,
            tree,
            data_file,
            path: dir.to_owned(),
        };
        match store.get(Table::Meta, meta::FORMAT)? {
            Some(f) if f == STORE_FORMAT => {}
            Some(f) => {
                return Err(refuse(format!(
                    "holds store format {:?}, this broker reads {:?}",
                    String::from_utf8_lossy(&f),
                    String::from_utf8_lossy(STORE_FORMAT)
                )));
            }
            None if fresh || store.tree.is_empty() => {
                let mut b = Batch::default();
                b.put(Table::Meta, meta::FORMAT.to_vec(), STORE_FORMAT.to_vec());
                store.commit(&b)?;
            }
            None => {
                return Err(refuse(
                    "holds data but no store format marker; refusing to use it".into(),
                ));
            }
        }
        Ok(store)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Store for SledStore {
    fn commit(&self, batch: &Batch) -> Result<(), StoreError> {
        let mut b = sled::Batch::default();
        for op in &batch.ops {
            match op {
                Op::Put(t, k, v) => b.insert(key(*t, k), v.as_slice()),
                Op::Delete(t, k) => b.remove(key(*t, k)),
            }
        }
        self.tree.apply_batch(b).map_err(map_err)?;
        self.db.flush().map_err(map_err)?;
        self.data_file.sync_data().map_err(io_err)
    }

    fn get(&self, table: Table, k: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self
            .tree
            .get(key(table, k))
            .map_err(map_err)?
            .map(|v| v.to_vec()))
    }

    fn range(
        &self,
        table: Table,
        start: &[u8],
        end: &[u8],
        limit: usize,
    ) -> Result<Entries, StoreError> {
        let (s, e) = (key(table, start), key(table, end));
        if s >= e {
            return Ok(vec![]);
        }
        let mut out = Vec::new();
        for item in self.tree.range(s..e).take(limit) {
            let (k, v) = item.map_err(map_err)?;
            out.push((k[1..].to_vec(), v.to_vec()));
        }
        Ok(out)
    }

    fn size_on_disk(&self) -> Result<u64, StoreError> {
        self.db.size_on_disk().map_err(map_err)
    }

    fn backup_to(&self, dir: &Path) -> Result<u64, StoreError> {
        let target = SledStore::open(dir)?;
        if target.tree.len() > 1 {
            return Err(StoreError::Refused {
                path: dir.display().to_string(),
                message: "backup target already holds data".into(),
            });
        }
        // sled iterators are not snapshots: the caller (the committer) runs
        // this between commits, so nothing changes while it copies.
        let mut raw = sled::Batch::default();
        let mut pending = 0usize;
        let mut copied = 0u64;
        for item in self.tree.iter() {
            let (k, v) = item.map_err(map_err)?;
            raw.insert(k, v);
            pending += 1;
            copied += 1;
            if pending == 10_000 {
                target
                    .tree
                    .apply_batch(std::mem::take(&mut raw))
                    .map_err(map_err)?;
                pending = 0;
            }
        }
        target.tree.apply_batch(raw).map_err(map_err)?;
        target.db.flush().map_err(map_err)?;
        target.data_file.sync_data().map_err(io_err)?;
        Ok(copied)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commit_get_range_and_reopen() {
        let dir = tempfile::tempdir().unwrap();
        {
            let s = SledStore::open(dir.path()).unwrap();
            let mut b = Batch::default();
            for i in 0u64..10 {
                b.put(Table::Audit, i.to_be_bytes().to_vec(), vec![i as u8]);
            }
            b.put(Table::Queue, b"x".to_vec(), b"other table".to_vec());
            s.commit(&b).unwrap();
            let r = s
                .range(Table::Audit, &3u64.to_be_bytes(), &6u64.to_be_bytes(), 100)
                .unwrap();
            assert_eq!(r.iter().map(|(_, v)| v[0]).collect::<Vec<_>>(), [3, 4, 5]);
            assert_eq!(s.prefix(Table::Queue, b"", 10).unwrap().len(), 1);
        }
        let s = SledStore::open(dir.path()).unwrap();
        assert_eq!(
            s.get(Table::Audit, &9u64.to_be_bytes()).unwrap(),
            Some(vec![9])
        );
    }

    #[test]
    fn refuses_foreign_directories() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("notes.txt"), "mine").unwrap();
        let err = SledStore::open(dir.path()).unwrap_err().to_string();
        assert!(err.contains("not a broker data directory"), "{err}");
        assert_eq!(
            std::fs::read_to_string(dir.path().join("notes.txt")).unwrap(),
            "mine",
            "never reset"
        );
    }

    #[test]
    fn refuses_a_sled_store_of_another_format() {
        let dir = tempfile::tempdir().unwrap();
        {
            let db = sled::open(dir.path()).unwrap();
            db.insert(b"\x00store-format", b"something else".to_vec())
                .unwrap();
            db.flush().unwrap();
        }
        let err = SledStore::open(dir.path()).unwrap_err().to_string();
        assert!(err.contains("store format"), "{err}");
    }

    #[test]
    fn a_data_directory_in_use_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let _first = SledStore::open(dir.path()).unwrap();
        let err = SledStore::open(dir.path()).unwrap_err().to_string();
        assert!(err.contains("in use by another broker process"), "{err}");
    }
}
