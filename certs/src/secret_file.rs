//! Files that hold secrets: created with mode 0600 and refused when anyone
//! but the owner can read them.

use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};

use zeroize::Zeroizing;

#[derive(Debug, thiserror::Error)]
pub enum SecretFileError {
    #[error("{path}: already exists; refusing to overwrite a secret (pass --force to replace it)")]
    Exists { path: PathBuf },
    #[error("{path}: permissions are {mode:04o}; a secret must be readable by its owner only (run: chmod 600 {path})")]
    TooOpen { path: PathBuf, mode: u32 },
    #[error("{path}: not a regular file")]
    NotAFile { path: PathBuf },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> SecretFileError + '_ {
    move |source| SecretFileError::Io { path: path.to_owned(), source }
}

/// Writes `contents` to a file with mode 0600, crash-safely (see
/// [`crate::durable_file`]). With `overwrite`, an existing file is replaced
/// in one rename, so the old key stays readable until the new one is whole.
pub fn write(path: &Path, contents: &[u8], overwrite: bool) -> Result<(), SecretFileError> {
    if !overwrite && path.exists() {
        return Err(SecretFileError::Exists { path: path.to_owned() });
    }
    crate::durable_file::write_mode(path, contents, 0o600).map_err(io(path))
}

/// Reads a secret file, refusing one that group or others may access.
pub fn read(path: &Path) -> Result<Zeroizing<String>, SecretFileError> {
    let meta = std::fs::metadata(path).map_err(io(path))?;
    if !meta.is_file() {
        return Err(SecretFileError::NotAFile { path: path.to_owned() });
    }
    let mode = meta.permissions().mode() & 0o7777;
    if mode & 0o077 != 0 {
        return Err(SecretFileError::TooOpen { path: path.to_owned(), mode });
    }
    Ok(Zeroizing::new(std::fs::read_to_string(path).map_err(io(path))?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn written_0600_and_refused_when_opened_up() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("k.key");
        write(&p, b"secret", false).unwrap();
        assert_eq!(std::fs::metadata(&p).unwrap().permissions().mode() & 0o777, 0o600);
        assert_eq!(read(&p).unwrap().as_str(), "secret");
        assert!(matches!(write(&p, b"x", false), Err(SecretFileError::Exists { .. })));
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).unwrap();
        let err = read(&p).unwrap_err();
        assert!(matches!(err, SecretFileError::TooOpen { mode: 0o644, .. }));
        assert!(err.to_string().contains("chmod 600"), "{err}");
    }
}
