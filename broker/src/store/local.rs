//! What the embedded engines ([`super::sled_store`], [`super::fjall_store`])
//! share: making and recognising a data directory, the store format
//! marker, and an open database that can be swapped for a fresh one after
//! an I/O error. Names no engine.

use std::path::Path;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use super::records::STORE_FORMAT;
use super::{Batch, Store, StoreError, Table};
use crate::store::keys::meta;

pub(crate) fn refuse(dir: &Path, message: String) -> StoreError {
    StoreError::Refused { path: dir.display().to_string(), message }
}

/// Makes `dir` if it is missing (mode 0700, durably); answers whether it
/// is fresh (just made, or empty).
pub(crate) fn prepare_dir(dir: &Path) -> Result<bool, StoreError> {
    match std::fs::read_dir(dir) {
        Ok(mut entries) => Ok(entries.next().is_none()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            // Only the broker's user may enter a directory the broker
            // makes, whatever the process umask: it holds ciphertext and
            // the audit log. Durably: a power loss must not take the
            // folder back.
            certs::durable_file::create_dir_all_mode(dir, 0o700)
                .map_err(|e| refuse(dir, format!("cannot create the data directory: {e}")))?;
            Ok(true)
        }
        Err(e) => Err(refuse(dir, format!("cannot read the data directory: {e}"))),
    }
}

/// Checks the store format marker of a store just opened in `dir`, and
/// writes it into a store that holds nothing yet (`empty`).
pub(crate) fn check_format(store: &dyn Store, dir: &Path, empty: bool) -> Result<(), StoreError> {
    match store.get(Table::Meta, meta::FORMAT)? {
        Some(f) if f == STORE_FORMAT => Ok(()),
        Some(f) => Err(refuse(
            dir,
            format!(
                "holds store format {:?}, this broker reads {:?}",
                String::from_utf8_lossy(&f),
                String::from_utf8_lossy(STORE_FORMAT)
            ),
        )),
        None if empty => {
            let mut b = Batch::default();
            b.put(Table::Meta, meta::FORMAT.to_vec(), STORE_FORMAT.to_vec());
            store.commit(&b)
        }
        None => Err(refuse(dir, "holds data but no store format marker; refusing to use it".into())),
    }
}

/// An open database that [`Self::reopen`] can replace, for
/// [`Store::recover`]: readers take an `Arc` for the length of one call.
#[derive(Debug)]
pub(crate) struct Reopenable<I> {
    /// None only while it is being reopened, or after that failed (then
    /// `error` says why).
    slot: RwLock<Option<Arc<I>>>,
    error: Mutex<Option<StoreError>>,
}

impl<I> Reopenable<I> {
    pub(crate) fn new(inner: I) -> Self {
        Self { slot: RwLock::new(Some(Arc::new(inner))), error: Mutex::new(None) }
    }

    pub(crate) fn get(&self) -> Result<Arc<I>, StoreError> {
        self.slot.read().expect("store lock").clone().ok_or_else(|| {
            self.error
                .lock()
                .expect("store lock")
                .clone()
                .unwrap_or_else(|| StoreError::Io("the store is being reopened after an I/O error".into()))
        })
    }

    /// Closes the database (waiting briefly for readers to let go of it)
    /// and puts the one `open` returns in its place.
    pub(crate) fn reopen(&self, path: &Path, open: impl FnOnce() -> Result<I, StoreError>) -> Result<(), StoreError> {
        let mut slot = self.slot.write().expect("store lock");
        if let Some(weak) = slot.take().map(|old| Arc::downgrade(&old)) {
            for _ in 0..200 {
                if weak.strong_count() == 0 {
                    break;
                }
                std::thread::sleep(Duration::from_millis(5));
            }
        }
        match open() {
            Ok(inner) => {
                *slot = Some(Arc::new(inner));
                *self.error.lock().expect("store lock") = None;
                tracing::warn!(path = %path.display(), "store reopened after an I/O error");
                Ok(())
            }
            Err(e) => {
                *self.error.lock().expect("store lock") = Some(e.clone());
                Err(e)
            }
        }
    }
}

/// Is this I/O error a full disk?
pub(crate) fn is_no_space(e: &std::io::Error) -> bool {
    e.raw_os_error() == Some(libc::ENOSPC) || e.kind() == std::io::ErrorKind::StorageFull
}
