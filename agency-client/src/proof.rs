//! A saved inclusion proof (`audit prove --out FILE`) and its offline check
//! (`audit check-proof FILE`): the file carries the entry, its audit path,
//! the broker's signed tree head and the signed directory that published
//! the broker's log key, so that anyone holding the federation key can
//! check it without the broker.

use std::path::Path;

use referral_proto::Digest;
use referral_proto::audit::decode_entry;
use referral_proto::directory::{Directory, SignedDirectory};
use referral_proto::ids::MessageId;
use referral_proto::keys::VerifyingKey;
use referral_proto::merkle::{leaf_hash, verify_inclusion};
use referral_proto::pb;
use referral_proto::receipt::{SignedTreeHead, TreeHead};
use referral_proto::time::Timestamp;
use serde::{Deserialize, Serialize};

use crate::auditor::{Proven, entry_json};

/// The format of saved proofs this version writes and reads.
pub const PROOF_FORMAT: u32 = 1;

/// A proof as saved. Bytes are hex; the `entry` object is the readable form
/// of `entry_bytes`, checked against them.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct SavedProof {
    pub format: u32,
    pub message_id: String,
    pub entry: serde_json::Value,
    pub entry_bytes: String,
    pub leaf_index: u64,
    pub tree_size: u64,
    pub root: String,
    pub tree_head_timestamp: String,
    pub tree_head_signature: String,
    pub audit_path: Vec<String>,
    /// The signed directory (protobuf `SignedDirectory`) whose broker log
    /// key signed the tree head.
    pub signed_directory: String,
}

impl SavedProof {
    pub fn new(message_id: MessageId, p: &Proven) -> Self {
        Self {
            format: PROOF_FORMAT,
            message_id: message_id.to_string(),
            entry: entry_json(&p.entry),
            entry_bytes: hex::encode(&p.entry_bytes),
            leaf_index: p.index,
            tree_size: p.head.head.tree_size,
            root: p.head.head.root_hash.to_hex(),
            tree_head_timestamp: p.head.head.timestamp.to_string(),
            tree_head_signature: hex::encode(p.head.signature),
            audit_path: p.path.iter().map(Digest::to_hex).collect(),
            signed_directory: hex::encode(prost::Message::encode_to_vec(&p.directory)),
        }
    }
}

/// Why a saved proof does not hold.
#[derive(Debug, thiserror::Error)]
pub enum ProofError {
    #[error("not a saved proof: {0}")]
    Format(String),
    #[error("the directory in the proof does not verify with this profile's federation key: {0}")]
    Directory(#[from] referral_proto::directory::DirectoryError),
    #[error("the tree head's signature does not verify with the broker log key of directory version {0}")]
    TreeHead(u64),
    #[error("the entry bytes are not an audit entry: {0}")]
    Entry(#[from] referral_proto::audit::EntryError),
    #[error("the readable entry in the file is not what the entry bytes say")]
    Readable,
    #[error("the entry proven is not the submission of message {0}")]
    NotTheSubmission(String),
    #[error("the inclusion proof does not verify: {0}")]
    Inclusion(#[from] referral_proto::merkle::ProofError),
}

/// What a saved proof proves, once checked.
#[derive(Debug, Clone, Serialize)]
pub struct Checked {
    pub message_id: String,
    pub leaf_index: u64,
    pub tree_size: u64,
    pub root: String,
    pub signed_at: String,
    pub directory_version: u64,
}

fn bytes(field: &str, text: &str) -> Result<Vec<u8>, ProofError> {
    hex::decode(text).map_err(|_| ProofError::Format(format!("{field} is not hex")))
}

fn digest(field: &str, text: &str) -> Result<Digest, ProofError> {
    Digest::from_slice(&bytes(field, text)?).ok_or_else(|| ProofError::Format(format!("{field} is not 32 bytes")))
}

/// Checks `text` (a saved proof) against the federation key alone.
pub fn check(text: &str, federation_key: &VerifyingKey) -> Result<Checked, ProofError> {
    let p: SavedProof = serde_json::from_str(text).map_err(|e| ProofError::Format(e.to_string()))?;
    if p.format != PROOF_FORMAT {
        return Err(ProofError::Format(format!("format {} (this version reads {PROOF_FORMAT})", p.format)));
    }
    let signed_at = Timestamp::parse_rfc3339(&p.tree_head_timestamp)
        .map_err(|e| ProofError::Format(format!("tree_head_timestamp: {e}")))?;
    let signed: pb::SignedDirectory =
        prost::Message::decode(bytes("signed_directory", &p.signed_directory)?.as_slice())
            .map_err(|_| ProofError::Format("signed_directory is not a signed directory".into()))?;
    // The directory must have been valid when the broker signed the head.
    let directory: Directory = SignedDirectory::from_pb(signed)?.verify(federation_key, None, signed_at)?;
    let signature: [u8; 64] = bytes("tree_head_signature", &p.tree_head_signature)?
        .try_into()
        .map_err(|_| ProofError::Format("tree_head_signature is not 64 bytes".into()))?;
    let root = digest("root", &p.root)?;
    let head =
        SignedTreeHead { head: TreeHead { tree_size: p.tree_size, root_hash: root, timestamp: signed_at }, signature };
    head.verify(&directory.broker_log_key).map_err(|_| ProofError::TreeHead(directory.version))?;
    let entry_bytes = bytes("entry_bytes", &p.entry_bytes)?;
    let entry = decode_entry(&entry_bytes, p.leaf_index)?;
    if entry_json(&entry) != p.entry {
        return Err(ProofError::Readable);
    }
    let proven = match &entry.event {
        Some(pb::audit_entry::Event::Submitted(s)) => {
            s.header.as_ref().and_then(|h| MessageId::from_bytes(&h.message_id).ok()).map(|m| m.to_string())
        }
        _ => None,
    };
    if proven.as_deref() != Some(p.message_id.as_str()) {
        return Err(ProofError::NotTheSubmission(p.message_id));
    }
    let path = p.audit_path.iter().map(|h| digest("audit_path", h)).collect::<Result<Vec<_>, _>>()?;
    verify_inclusion(&leaf_hash(&entry_bytes), p.leaf_index, p.tree_size, &path, &root)?;
    Ok(Checked {
        message_id: p.message_id,
        leaf_index: p.leaf_index,
        tree_size: p.tree_size,
        root: p.root,
        signed_at: signed_at.to_string(),
        directory_version: directory.version,
    })
}

/// Reads and checks a saved proof file.
pub fn check_file(path: &Path, federation_key: &VerifyingKey) -> anyhow::Result<Result<Checked, ProofError>> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| anyhow::Error::new(e).context(format!("cannot read {}", path.display())))?;
    Ok(check(&text, federation_key))
}
