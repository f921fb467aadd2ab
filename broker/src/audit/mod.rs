//! The audit log: one type, [`AuditLog`], that appends entries (with the
//! Merkle nodes they complete), restores itself from the store, and reports
//! its size and root for tree heads and the [`checkpoint`]; the
//! store-backed Merkle node source for proofs; tree head signing.
//!
//! Entries carry metadata and digests only: never ciphertext, never
//! plaintext. An entry is encoded once, here; the stored bytes are the
//! Merkle leaf and are served verbatim.

pub mod checkpoint;

use std::sync::Arc;

use referral_proto::Digest;
use referral_proto::audit::{AUDIT_ENTRY_FORMAT_VERSION, encode_entry};
use referral_proto::keys::SigningKey;
use referral_proto::merkle::{Frontier, NodeSource, leaf_hash};
use referral_proto::pb;
use referral_proto::receipt::{ReceiptError, ReceiptStatement, SignedTreeHead, TreeHead};
use referral_proto::time::Timestamp;

use crate::store::keys::meta;
use crate::store::tables::{Tables, Writes};
use crate::store::{Store, StoreError};

/// The audit log as its single writer sees it: the Merkle frontier of every
/// entry so far. Appending encodes the entry and adds it, with the nodes
/// it completes, to a batch of writes; the new state counts only once that
/// batch is durable (the committer keeps a copy per batch and adopts it
/// after the commit).
#[derive(Debug, Clone, Default)]
pub struct AuditLog {
    frontier: Frontier,
}

impl AuditLog {
    /// The log as the store holds it.
    pub fn restore(store: &dyn Store) -> Result<Self, StoreError> {
        let size = Tables(store).counter(meta::AUDIT_SIZE)?;
        Ok(Self { frontier: Frontier::restore(&StoreNodes(store), size)? })
    }

    pub fn size(&self) -> u64 {
        self.frontier.size()
    }

    pub fn root(&self) -> Digest {
        self.frontier.root()
    }

    /// What the checkpoint file records of this log.
    pub fn checkpoint(&self) -> checkpoint::Checkpoint {
        checkpoint::Checkpoint { tree_size: self.size(), root: self.root() }
    }

    /// Appends the entry for `event` logged at `at`; returns its index.
    pub fn append(&mut self, writes: &mut Writes, at: Timestamp, event: pb::audit_entry::Event) -> u64 {
        let index = self.size();
        self.append_bytes(writes, entry_bytes(index, at, event));
        index
    }

    /// Appends an entry already encoded.
    pub fn append_bytes(&mut self, writes: &mut Writes, bytes: Vec<u8>) {
        let index = self.size();
        for node in self.frontier.append(leaf_hash(&bytes)) {
            if stores_level(node.level) {
                writes.merkle_node(node.level, node.index, node.hash.0);
            }
        }
        writes.audit_entry(index, bytes);
    }

    /// Records the log's size, once per batch that appended (start-up
    /// restores the frontier from it).
    pub fn record_size(&self, writes: &mut Writes) {
        writes.audit_size(self.size());
    }
}

/// The Merkle frontier of the log the store holds.
pub fn restore_frontier(store: &dyn Store) -> Result<Frontier, StoreError> {
    Ok(AuditLog::restore(store)?.frontier)
}

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
        let v = Tables(self.0)
            .merkle_node(level, index)?
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

/// How many receipt signatures [`ReceiptSigner`] remembers: enough for
/// the receipts of the last few seconds at full load, about 1.5 MB (each
/// holds the signed bytes, about 250, once, and the signature).
pub const RECENT_RECEIPT_SIGNATURES: usize = 4096;

/// Signs the receipts the committer stores unsigned, with the broker's log
/// key, as they are sent; and remembers the last signatures it made. The
/// same receipt usually goes out more than once: the ACCEPTED receipt in the
/// `Submit` answer and again in the sender's `WatchReceipts` stream, the
/// ACKNOWLEDGED one to each acker and to the sender. Ed25519 is
/// deterministic, so a copy carries the signature made for the first one
/// (looked up by the exact bytes signed) instead of costing another
/// signature.
#[derive(Debug)]
pub struct ReceiptSigner {
    key: Arc<SigningKey>,
    recent: std::sync::Mutex<RecentSignatures>,
}

#[derive(Debug, Default)]
struct RecentSignatures {
    by_input: std::collections::HashMap<Arc<[u8]>, [u8; 64]>,
    /// Oldest first, for eviction (the same bytes as the map's keys).
    order: std::collections::VecDeque<Arc<[u8]>>,
}

impl ReceiptSigner {
    pub fn new(key: Arc<SigningKey>) -> Self {
        Self { key, recent: Default::default() }
    }

    /// `stored` with its broker signature (a stored receipt's signature is empty).
    pub fn sign(&self, mut stored: pb::Receipt) -> Result<pb::Receipt, ReceiptError> {
        let statement =
            ReceiptStatement::try_from(stored.statement.clone().ok_or(ReceiptError::Missing("statement"))?)?;
        let input = statement.signing_input();
        let known = self.recent.lock().expect("receipt signatures lock").by_input.get(&input[..]).copied();
        let signature = match known {
            Some(s) => s,
            None => {
                let s = self.key.sign(&input);
                let input: Arc<[u8]> = input.into();
                let mut recent = self.recent.lock().expect("receipt signatures lock");
                if recent.by_input.insert(input.clone(), s).is_none() {
                    recent.order.push_back(input);
                    while recent.order.len() > RECENT_RECEIPT_SIGNATURES {
                        if let Some(old) = recent.order.pop_front() {
                            recent.by_input.remove(&old);
                        }
                    }
                }
                s
            }
        };
        stored.broker_signature = signature.to_vec();
        Ok(stored)
    }

    /// How many signatures are remembered.
    pub fn remembered(&self) -> usize {
        self.recent.lock().expect("receipt signatures lock").by_input.len()
    }
}

/// Reads `count` entries from `from`.
pub fn read_entries(store: &dyn Store, from: u64, to: u64, limit: usize) -> Result<Vec<(u64, Vec<u8>)>, StoreError> {
    Tables(store).audit_entries(from, to, limit)
}

#[cfg(test)]
mod tests {
    use super::*;
    use referral_proto::receipt::{Receipt, sign_stored};

    fn key() -> SigningKey {
        SigningKey::from_seed([7; 32])
    }

    fn stored(n: u64) -> pb::Receipt {
        let v = referral_proto::test_vectors::build();
        let mut p = pb::Receipt::from(&v.receipt);
        p.statement.as_mut().unwrap().log_index = n;
        p.broker_signature.clear();
        p
    }

    #[test]
    fn a_receipt_sent_again_carries_the_same_signature_without_signing_again() {
        let signer = ReceiptSigner::new(Arc::new(key()));
        let first = signer.sign(stored(7)).unwrap();
        assert_eq!(first, sign_stored(stored(7), &key()).unwrap(), "the bytes a fresh signature gives");
        Receipt::try_from(first.clone()).unwrap().verify(&key().verifying_key()).unwrap();
        assert_eq!(signer.sign(stored(7)).unwrap(), first);
        assert_eq!(signer.remembered(), 1, "the copy reused the signature");
        // Another statement is signed on its own, and verifies.
        let other = signer.sign(stored(8)).unwrap();
        assert_ne!(other.broker_signature, first.broker_signature);
        Receipt::try_from(other).unwrap().verify(&key().verifying_key()).unwrap();
        assert_eq!(signer.remembered(), 2);
    }

    #[test]
    fn remembered_signatures_are_bounded_and_a_forgotten_one_is_made_again() {
        let signer = ReceiptSigner::new(Arc::new(key()));
        let first = signer.sign(stored(0)).unwrap();
        for n in 1..=RECENT_RECEIPT_SIGNATURES as u64 {
            signer.sign(stored(n)).unwrap();
        }
        assert_eq!(signer.remembered(), RECENT_RECEIPT_SIGNATURES, "the oldest was forgotten");
        assert_eq!(signer.sign(stored(0)).unwrap(), first, "signed again, to the same bytes");
    }

    #[test]
    fn a_stored_receipt_without_a_statement_is_refused() {
        let signer = ReceiptSigner::new(Arc::new(key()));
        let mut p = stored(1);
        p.statement = None;
        assert_eq!(signer.sign(p).unwrap_err(), ReceiptError::Missing("statement"));
        assert_eq!(signer.remembered(), 0);
    }
}
