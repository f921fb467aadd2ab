//! Crash-safe file writing: the one way the broker, `certs` and
//! `agency-client` put a file on disk.
//!
//! A file is replaced by writing a temporary file in the same folder,
//! writing all of it, `fsync`ing it, renaming it over the target and then
//! `fsync`ing the folder. After a crash or a power loss at any moment the
//! target is therefore either wholly old or wholly new, never empty or
//! torn; and once [`write()`] has returned, the new content survives a power
//! loss. (A rename alone is atomic but not durable: the folder's entry and
//! the file's data may reach the disk in either order, which is how a
//! power loss leaves zero-length files behind.)
//!
//! Folders made by [`create_dir_all`] are durable in the same way: each new
//! folder's entry is synced in its parent.
//!
//! Why here: `certs` is the lowest crate that writes files and both the
//! broker and `agency-client` already depend on it, so one small module
//! serves all three without a crate of its own for some eighty lines.

use std::fs::{File, OpenOptions};
use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// Mode for public files; the process umask narrows it, as for any new file.
const PUBLIC_MODE: u32 = 0o666;

/// Durably replaces (or creates) `path` with `contents`.
pub fn write(path: impl AsRef<Path>, contents: impl AsRef<[u8]>) -> std::io::Result<()> {
    write_mode(path, contents, PUBLIC_MODE)
}

/// As [`write()`], with the file created with `mode` (e.g. `0o600` for a
/// secret): the mode is set when the temporary file is created, so the
/// content is never readable by others, not even for a moment.
pub fn write_mode(path: impl AsRef<Path>, contents: impl AsRef<[u8]>, mode: u32) -> std::io::Result<()> {
    let path = path.as_ref();
    let dir = folder_of(path);
    let tmp = temporary_name(path)?;
    let result = (|| {
        let mut f = OpenOptions::new().write(true).create_new(true).mode(mode).open(&tmp)?;
        f.write_all(contents.as_ref())?;
        f.sync_all()?;
        drop(f);
        std::fs::rename(&tmp, path)
    })();
    if result.is_err() {
        // Best effort: a leftover temporary file is harmless but untidy.
        let _ = std::fs::remove_file(&tmp);
    }
    result?;
    sync_dir(dir)
}

/// `fsync`s a folder, making the creation, renaming and removal of its
/// entries durable.
pub fn sync_dir(dir: impl AsRef<Path>) -> std::io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Creates `dir` and any missing parents, durably: each folder it creates
/// is synced in its parent. Existing folders are left as they are.
pub fn create_dir_all(dir: impl AsRef<Path>) -> std::io::Result<()> {
    create_dir_all_mode(dir, 0o777)
}

/// As [`create_dir_all`], creating missing folders with `mode` (narrowed by
/// the umask).
pub fn create_dir_all_mode(dir: impl AsRef<Path>, mode: u32) -> std::io::Result<()> {
    let dir = dir.as_ref();
    if dir.as_os_str().is_empty() || dir.is_dir() {
        return Ok(());
    }
    if let Some(parent) = dir.parent() {
        create_dir_all_mode(parent, mode)?;
    }
    match std::os::unix::fs::DirBuilderExt::mode(&mut std::fs::DirBuilder::new(), mode).create(dir) {
        Ok(()) => {}
        // Another process made it meanwhile; it is then that one's to sync.
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && dir.is_dir() => return Ok(()),
        Err(e) => return Err(e),
    }
    sync_dir(folder_of(dir))
}

/// The folder holding `path` (`.` for a bare file name).
fn folder_of(path: &Path) -> PathBuf {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_owned(),
        _ => PathBuf::from("."),
    }
}

/// A name beside `path` that no other writer uses: hidden, and unique per
/// process and call, so two writers never share a temporary file.
fn temporary_name(path: &Path) -> std::io::Result<PathBuf> {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let name = path.file_name().ok_or_else(|| {
        std::io::Error::new(std::io::ErrorKind::InvalidInput, format!("{} is not a file name", path.display()))
    })?;
    let mut tmp = std::ffi::OsString::from(".");
    tmp.push(name);
    tmp.push(format!(".{}.{}.tmp", std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed)));
    Ok(path.with_file_name(tmp))
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt as _;

    use super::*;

    #[test]
    fn replaces_the_whole_file_and_leaves_nothing_beside_it() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("state.toml");
        write(&p, "a long first version\n").unwrap();
        write(&p, "short\n").unwrap();
        assert_eq!(std::fs::read_to_string(&p).unwrap(), "short\n");
        let names: Vec<_> = std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(names, ["state.toml"], "no temporary file left behind");
    }

    #[test]
    fn a_secret_is_created_with_its_mode() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("k.key");
        write(&p, "public").unwrap();
        write_mode(&p, "secret", 0o600).unwrap();
        assert_eq!(std::fs::metadata(&p).unwrap().permissions().mode() & 0o777, 0o600);
        assert_eq!(std::fs::read_to_string(&p).unwrap(), "secret");
    }

    #[test]
    fn a_failed_write_leaves_the_old_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        write(&p, "old").unwrap();
        // A folder in the way of the rename makes the write fail after the temporary file exists.
        let blocked = dir.path().join("sub");
        std::fs::create_dir(&blocked).unwrap();
        std::fs::write(blocked.join("x"), "").unwrap();
        assert!(write(&blocked, "new").is_err());
        assert_eq!(std::fs::read_to_string(&p).unwrap(), "old");
        let mut names: Vec<_> = std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
        names.sort();
        assert_eq!(names, ["f", "sub"], "the temporary file is removed");
    }

    #[test]
    fn creates_nested_folders() {
        let dir = tempfile::tempdir().unwrap();
        let deep = dir.path().join("a/b/c");
        create_dir_all_mode(&deep, 0o700).unwrap();
        assert!(deep.is_dir());
        assert_eq!(std::fs::metadata(&deep).unwrap().permissions().mode() & 0o777, 0o700);
        create_dir_all(&deep).unwrap();
        write(deep.join("f"), "x").unwrap();
    }
}
