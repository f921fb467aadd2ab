//! Sealed envelopes kept until the broker has answered, so that a resend
//! under the same message id is byte for byte the same envelope (PROTOCOL.md
//! 10.13) and the broker answers it with the original receipt.
//!
//! Sealing is randomised (HPKE's ephemeral key) and time-stamped, so sealing
//! the same notice again makes another envelope, which the broker must
//! refuse as `duplicate_conflict`: it cannot tell a retry from an attempt to
//! swap the content of an accepted referral. The client therefore writes
//! the sealed envelope to `<profile>/state/outbox/<message id>.envelope`
//! before submitting it, submits exactly those bytes on every retry, and
//! removes the file once the broker has answered with a receipt (or refused
//! the envelope for good, in which case nothing was stored under the id).
//!
//! Files here are written crash-safely (temporary file, fsync, rename, fsync
//! of the folder) with mode 0600 in a 0700 folder: an envelope is ciphertext,
//! but its header is routing metadata of a referral.

use std::path::{Path, PathBuf};

use certs::durable_file;

use prost::Message as _;
use referral_proto::ids::MessageId;
use referral_proto::pb;

use crate::ClientError;

/// The outbox of one profile.
#[derive(Debug, Clone)]
pub struct Outbox {
    dir: PathBuf,
}

fn state_err(path: &Path) -> impl Fn(std::io::Error) -> ClientError + '_ {
    move |e| ClientError::State { path: path.to_owned(), message: e.to_string() }
}

/// Creates `dir` (and its parents) with mode 0700 when missing, durably.
pub(crate) fn create_private_dir(dir: &Path) -> Result<(), ClientError> {
    durable_file::create_dir_all_mode(dir, 0o700).map_err(state_err(dir))
}

/// Writes `bytes` to `path` (mode 0600, in a 0700 folder) with the
/// project's one crash-safe discipline, [`certs::durable_file`]: after a
/// crash the file holds either its old contents or all of `bytes`.
pub(crate) fn write_durably(path: &Path, bytes: &[u8]) -> Result<(), ClientError> {
    let dir = path.parent().ok_or_else(|| ClientError::State { path: path.to_owned(), message: "no folder".into() })?;
    create_private_dir(dir)?;
    durable_file::write_mode(path, bytes, 0o600).map_err(state_err(path))
}

fn sync_dir(dir: &Path) -> Result<(), ClientError> {
    durable_file::sync_dir(dir).map_err(state_err(dir))
}

impl Outbox {
    pub fn new(state_dir: &Path) -> Self {
        Self { dir: state_dir.join("outbox") }
    }

    /// Where the envelope of `id` is kept.
    pub fn path(&self, id: MessageId) -> PathBuf {
        self.dir.join(format!("{id}.envelope"))
    }

    /// Keeps `envelope` until [`Outbox::remove`].
    pub fn store(&self, id: MessageId, envelope: &pb::Envelope) -> Result<(), ClientError> {
        write_durably(&self.path(id), &envelope.encode_to_vec())
    }

    /// The envelope kept for `id`, if any.
    pub fn load(&self, id: MessageId) -> Result<Option<pb::Envelope>, ClientError> {
        let path = self.path(id);
        match std::fs::read(&path) {
            Ok(bytes) => pb::Envelope::decode(bytes.as_slice())
                .map(Some)
                .map_err(|_| ClientError::State { path, message: "not a stored envelope".into() }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(ClientError::State { path, message: e.to_string() }),
        }
    }

    /// Forgets the envelope of `id` (the broker has answered for it).
    pub fn remove(&self, id: MessageId) -> Result<(), ClientError> {
        let path = self.path(id);
        match std::fs::remove_file(&path) {
            Ok(()) => sync_dir(&self.dir),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(ClientError::State { path, message: e.to_string() }),
        }
    }

    /// The message ids whose envelopes are still waiting for an answer.
    pub fn pending(&self) -> Result<Vec<MessageId>, ClientError> {
        let entries = match std::fs::read_dir(&self.dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(ClientError::State { path: self.dir.clone(), message: e.to_string() }),
        };
        let mut ids: Vec<MessageId> = entries
            .filter_map(Result::ok)
            .filter_map(|e| e.file_name().to_str()?.strip_suffix(".envelope")?.parse().ok())
            .collect();
        ids.sort();
        Ok(ids)
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt as _;

    use super::*;

    #[test]
    fn stored_private_and_removed() {
        let tmp = tempfile::tempdir().unwrap();
        let outbox = Outbox::new(&tmp.path().join("state"));
        let id = MessageId::generate(1_764_000_000_000);
        assert_eq!(outbox.load(id).unwrap(), None);
        let env = pb::Envelope { signature: vec![7; 64], ..Default::default() };
        outbox.store(id, &env).unwrap();
        assert_eq!(outbox.load(id).unwrap(), Some(env));
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&outbox.path(id)), 0o600);
        assert_eq!(mode(&tmp.path().join("state").join("outbox")), 0o700);
        assert_eq!(outbox.pending().unwrap(), [id]);
        outbox.remove(id).unwrap();
        assert_eq!(outbox.load(id).unwrap(), None);
        assert!(outbox.pending().unwrap().is_empty());
    }
}
