//! Audit log entries and the Merkle tree over them.
//!
//! Part one feeds the data to `decode_entry` (what auditors run over every
//! replayed entry) and hashes it as a leaf. Part two uses the first bytes as
//! parameters: a tree size of 1..300, leaf indexes and a byte to flip; it
//! builds a `MemoryTree` of that many entries and checks that inclusion and
//! consistency proofs verify, and that a proof with one flipped bit does not.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use prost::Message as _;
use referral_proto::audit::{AUDIT_ENTRY_FORMAT_VERSION, EntryError, EventKind, decode_entry};
use referral_proto::merkle::{
    Frontier, MemoryTree, consistency_proof, inclusion_proof, leaf_hash, root, verify_consistency, verify_inclusion,
};
use referral_proto::pb;

/// Largest tree the structured part builds (exclusive).
const MAX_TREE: u64 = 300;

fn entry(i: u64) -> Vec<u8> {
    format!("entry {i}").into_bytes()
}

fn tree_of(n: u64) -> MemoryTree {
    let mut t = MemoryTree::default();
    for i in 0..n {
        t.append_entry(&entry(i));
    }
    t
}

/// A tree of the largest size, to cross-check roots and proofs of prefixes.
fn big_tree() -> &'static MemoryTree {
    static T: OnceLock<MemoryTree> = OnceLock::new();
    T.get_or_init(|| tree_of(MAX_TREE - 1))
}

fn u16_at(data: &[u8], i: usize) -> u64 {
    let b = |j: usize| data.get(j).copied().unwrap_or(0);
    u64::from(u16::from_le_bytes([b(i), b(i + 1)]))
}

fn entries(data: &[u8]) {
    let _ = leaf_hash(data);
    let at_zero = decode_entry(data, 0);
    let Ok(raw) = pb::AuditEntry::decode(data) else {
        assert_eq!(at_zero, Err(EntryError::Decode));
        return;
    };
    let claimed = decode_entry(data, raw.index);
    let well_formed = raw.format_version == AUDIT_ENTRY_FORMAT_VERSION && raw.event.is_some();
    assert_eq!(claimed.is_ok(), well_formed);
    if let Ok(e) = claimed {
        assert_eq!(e, raw);
        let kind = EventKind::of(e.event.as_ref().expect("checked"));
        assert!(!kind.as_str().is_empty());
        assert_eq!(at_zero.is_ok(), e.index == 0);
        // Re-encoding an entry gives bytes that decode to the same entry.
        let again = referral_proto::audit::encode_entry(&e);
        assert_eq!(decode_entry(&again, e.index), Ok(e));
    }
}

fn proofs(data: &[u8]) {
    let n = 1 + u16_at(data, 0) % (MAX_TREE - 1); // 1..300
    let i = u16_at(data, 2) % n; // a leaf of the tree
    let m = u16_at(data, 4) % (n + 1); // an earlier size, 0..=n
    let flip_byte = data.get(6).copied().unwrap_or(0) as usize;
    let flip_bit = 1u8 << (data.get(7).copied().unwrap_or(0) % 8);

    let t = tree_of(n);
    let big = big_tree();
    let r = t.root();
    assert_eq!(root(&t, n), Ok(r));
    assert_eq!(root(big, n), Ok(r));
    assert_eq!(Frontier::restore(&t, n).map(|f| f.root()), Ok(r));

    // Inclusion.
    let leaf = leaf_hash(&entry(i));
    let path = inclusion_proof(&t, i, n).expect("in memory");
    assert_eq!(inclusion_proof(big, i, n).as_ref(), Ok(&path));
    assert_eq!(verify_inclusion(&leaf, i, n, &path, &r), Ok(()));
    assert!(verify_inclusion(&leaf_hash(b"forged"), i, n, &path, &r).is_err());
    assert!(verify_inclusion(&leaf, n, n, &path, &r).is_err());
    if n > 1 {
        assert!(verify_inclusion(&leaf, (i + 1) % n, n, &path, &r).is_err());
    }
    if !path.is_empty() {
        let mut bad = path.clone();
        let j = flip_byte % bad.len();
        bad[j].0[flip_byte % 32] ^= flip_bit;
        assert!(verify_inclusion(&leaf, i, n, &bad, &r).is_err());
        assert!(verify_inclusion(&leaf, i, n, &path[1..], &r).is_err());
    }
    let mut longer = path.clone();
    longer.push(r);
    assert!(verify_inclusion(&leaf, i, n, &longer, &r).is_err());

    // Consistency from size m to size n.
    let r1 = root(&t, m).expect("in memory");
    assert_eq!(root(big, m), Ok(r1));
    let proof = consistency_proof(&t, m, n).expect("in memory");
    assert_eq!(consistency_proof(big, m, n).as_ref(), Ok(&proof));
    assert_eq!(verify_consistency(m, n, &r1, &r, &proof), Ok(()));
    if m > 0 && m < n {
        let mut bad = proof.clone();
        let j = flip_byte % bad.len();
        bad[j].0[flip_byte % 32] ^= flip_bit;
        assert!(verify_consistency(m, n, &r1, &r, &bad).is_err());
        let mut bad_root = r1;
        bad_root.0[flip_byte % 32] ^= flip_bit;
        assert!(verify_consistency(m, n, &bad_root, &r, &proof).is_err());
        assert!(verify_consistency(m, n, &r1, &r, &proof[1..]).is_err());
    }
    if m < n {
        assert!(verify_consistency(n, m, &r, &r1, &proof).is_err());
    }
}

fuzz_target!(|data: &[u8]| {
    entries(data);
    proofs(data);
});
