//! Audit log entries as the committer writes them, the store-backed Merkle
//! node source, and tree head signing.
//!
//! Entries carry metadata and digests only: never ciphertext, never
//! plaintext. An entry is encoded once, here; the stored bytes are the
//! Merkle leaf and are served verbatim.

use std::sync::Arc;

use referral_proto::Digest;
use referral_proto::audit::{AUDIT_ENTRY_FORMAT_VERSION, encode_entry};
use referral_proto::keys::SigningKey;
use referral_proto::merkle::NodeSource;
use referral_proto::pb;
use referral_proto::receipt::{SignedTreeHead, TreeHead};
use referral_proto::time::Timestamp;

use crate::store::{Store, StoreError, Table, keys};

/// Encodes the entry at `index`.
pub fn entry_bytes(index: u64, at: Timestamp, event: pb::audit_entry::Event) -> Vec<u8> {
    encode_entry(&pb::AuditEntry {
        format_version: AUDIT_ENTRY_FORMAT_VERSION,
        index,
        logged_at_ms: at.0,
        event: Some(event),
    })
}

/// Merkle nodes below this level are not stored: they are recomputed from
/// at most 2^level entries when a proof or a restart needs them. That keeps
/// the writes per entry near one (the entry) instead of about three.
pub const LOWEST_STORED_LEVEL: u32 = 4;

/// Whether the committer stores a node of `level`.
pub fn stores_level(level: u32) -> bool {
    level >= LOWEST_STORED_LEVEL
}

/// Reads Merkle nodes from the store, recomputing the lowest levels from
/// the entries themselves.
#[derive(Debug)]
pub struct StoreNodes<'a>(pub &'a dyn Store);

impl NodeSource for StoreNodes<'_> {
    type Error = StoreError;
    fn node(&self, level: u32, index: u64) -> Result<Digest, StoreError> {
        if !stores_level(level) {
            let (from, to) = (index << level, (index + 1) << level);
            let entries = read_entries(self.0, from, to, 1 << level)?;
            if entries.len() as u64 != to - from {
                return Err(StoreError::Corrupt(format!("audit entries {from}..{to} are missing")));
            }
            let mut tree = referral_proto::merkle::MemoryTree::default();
            for (_, e) in &entries {
                tree.append_entry(e);
            }
            return Ok(tree.root());
        }
        let v = self
            .0
            .get(Table::MerkleNodes, &keys::merkle(level, index))?
            .ok_or_else(|| StoreError::Corrupt(format!("Merkle node ({level}, {index}) is missing")))?;
        Digest::from_slice(&v)
            .ok_or_else(|| StoreError::Corrupt(format!("Merkle node ({level}, {index}) is not 32 bytes")))
    }
}

/// Signs tree heads with the broker's log key.
#[derive(Debug, Clone)]
pub struct TreeHeadSigner {
    key: Arc<SigningKey>,
}

impl TreeHeadSigner {
    pub fn new(key: Arc<SigningKey>) -> Self {
        Self { key }
    }

    pub fn sign(&self, tree_size: u64, root_hash: Digest, timestamp: Timestamp) -> SignedTreeHead {
        TreeHead { tree_size, root_hash, timestamp }.sign(&self.key)
    }
}

/// Reads `count` entries from `from`.
pub fn read_entries(store: &dyn Store, from: u64, to: u64, limit: usize) -> Result<Vec<(u64, Vec<u8>)>, StoreError> {
    let rows = store.range(Table::Audit, &keys::audit(from), &keys::audit(to), limit)?;
    rows.into_iter()
        .map(|(k, v)| {
            let index =
                u64::from_be_bytes(k.as_slice().try_into().map_err(|_| StoreError::Corrupt("audit key".into()))?);
            Ok((index, v))
        })
        .collect()
}
