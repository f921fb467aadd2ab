//! RFC 9162 Merkle tree hashing over the audit log, with incremental append
//! and logarithmic proofs.
//!
//! Leaf hash `SHA-256(0x00 || entry)`, interior `SHA-256(0x01 || left || right)`,
//! the empty tree's root is `SHA-256("")`. A tree of `n` leaves splits at the
//! largest power of two below `n`, so every subtree met while proving is a
//! *complete, aligned* subtree: node `(level, index)` covers leaves
//! `[index << level, (index + 1) << level)`. The broker stores exactly those
//! nodes as they complete ([`Frontier::append`]), and proofs read
//! O(log² n) of them at most through [`NodeSource`], never the whole log.

use crate::Digest;

/// `SHA-256(0x00 || entry)`.
pub fn leaf_hash(entry: &[u8]) -> Digest {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    ctx.update(&[0x00]);
    ctx.update(entry);
    Digest::from_ring(ctx.finish())
}

/// `SHA-256(0x01 || left || right)`.
pub fn node_hash(left: &Digest, right: &Digest) -> Digest {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    ctx.update(&[0x01]);
    ctx.update(&left.0);
    ctx.update(&right.0);
    Digest::from_ring(ctx.finish())
}

/// The root of the empty tree, `SHA-256("")`.
pub fn empty_root() -> Digest {
    Digest::of(&[])
}

/// Largest power of two strictly below `n` (n >= 2).
fn split_point(n: u64) -> u64 {
    debug_assert!(n >= 2);
    1 << (63 - (n - 1).leading_zeros())
}

/// Reads hashes of complete, aligned subtrees: level 0 is the leaf hashes.
pub trait NodeSource {
    type Error;
    fn node(&self, level: u32, index: u64) -> Result<Digest, Self::Error>;
}

/// The root of leaves `[start, end)`, which must be a range met while
/// splitting a tree (its complete parts are aligned).
pub fn subtree_root<S: NodeSource>(src: &S, start: u64, end: u64) -> Result<Digest, S::Error> {
    let n = end - start;
    if n.is_power_of_two() && start.is_multiple_of(n) {
        return src.node(n.trailing_zeros(), start >> n.trailing_zeros());
    }
    let k = split_point(n);
    Ok(node_hash(&subtree_root(src, start, start + k)?, &subtree_root(src, start + k, end)?))
}

/// The root of a tree of `size` leaves.
pub fn root<S: NodeSource>(src: &S, size: u64) -> Result<Digest, S::Error> {
    if size == 0 { Ok(empty_root()) } else { subtree_root(src, 0, size) }
}

/// RFC 9162 §2.1.3.1 audit path for leaf `index` in a tree of `size` leaves.
pub fn inclusion_proof<S: NodeSource>(src: &S, index: u64, size: u64) -> Result<Vec<Digest>, S::Error> {
    assert!(index < size, "inclusion proof for leaf {index} of a tree of {size}");
    let mut path = Vec::new();
    path_rec(src, index, 0, size, &mut path)?;
    Ok(path)
}

fn path_rec<S: NodeSource>(src: &S, m: u64, start: u64, end: u64, out: &mut Vec<Digest>) -> Result<(), S::Error> {
    let n = end - start;
    if n == 1 {
        return Ok(());
    }
    let k = split_point(n);
    if m < k {
        path_rec(src, m, start, start + k, out)?;
        out.push(subtree_root(src, start + k, end)?);
    } else {
        path_rec(src, m - k, start + k, end, out)?;
        out.push(subtree_root(src, start, start + k)?);
    }
    Ok(())
}

/// RFC 9162 §2.1.4.1 consistency proof from `first` to `second` leaves.
pub fn consistency_proof<S: NodeSource>(src: &S, first: u64, second: u64) -> Result<Vec<Digest>, S::Error> {
    assert!(first <= second, "consistency proof from {first} to {second}");
    let mut out = Vec::new();
    if first > 0 && first < second {
        subproof(src, first, 0, second, true, &mut out)?;
    }
    Ok(out)
}

fn subproof<S: NodeSource>(
    src: &S,
    m: u64,
    start: u64,
    end: u64,
    complete: bool,
    out: &mut Vec<Digest>,
) -> Result<(), S::Error> {
    let n = end - start;
    if m == n {
        if !complete {
            out.push(subtree_root(src, start, end)?);
        }
        return Ok(());
    }
    let k = split_point(n);
    if m <= k {
        subproof(src, m, start, start + k, complete, out)?;
        out.push(subtree_root(src, start + k, end)?);
    } else {
        subproof(src, m - k, start + k, end, false, out)?;
        out.push(subtree_root(src, start, start + k)?);
    }
    Ok(())
}

/// Why a proof did not verify.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProofError {
    #[error("leaf index {index} is not below tree size {size}")]
    IndexOutOfRange { index: u64, size: u64 },
    #[error("proof has the wrong number of hashes for these tree sizes")]
    WrongLength,
    #[error("proof does not lead to the expected root hash")]
    RootMismatch,
    #[error("first tree size {first} is larger than second tree size {second}")]
    SizesOutOfOrder { first: u64, second: u64 },
}

/// RFC 9162 §2.1.3.2: verifies that `leaf` is leaf `index` of the tree of
/// `size` leaves with root `root`.
pub fn verify_inclusion(
    leaf: &Digest,
    index: u64,
    size: u64,
    path: &[Digest],
    root: &Digest,
) -> Result<(), ProofError> {
    if index >= size {
        return Err(ProofError::IndexOutOfRange { index, size });
    }
    let (mut fnode, mut snode) = (index, size - 1);
    let mut r = *leaf;
    for p in path {
        if snode == 0 {
            return Err(ProofError::WrongLength);
        }
        if fnode & 1 == 1 || fnode == snode {
            r = node_hash(p, &r);
            if fnode & 1 == 0 {
                while fnode & 1 == 0 && fnode != 0 {
                    fnode >>= 1;
                    snode >>= 1;
                }
            }
        } else {
            r = node_hash(&r, p);
        }
        fnode >>= 1;
        snode >>= 1;
    }
    if snode != 0 {
        return Err(ProofError::WrongLength);
    }
    if &r != root {
        return Err(ProofError::RootMismatch);
    }
    Ok(())
}

/// RFC 9162 §2.1.4.2: verifies that the tree of `first` leaves with root
/// `first_root` is a prefix of the tree of `second` leaves with `second_root`.
pub fn verify_consistency(
    first: u64,
    second: u64,
    first_root: &Digest,
    second_root: &Digest,
    proof: &[Digest],
) -> Result<(), ProofError> {
    if first > second {
        return Err(ProofError::SizesOutOfOrder { first, second });
    }
    if first == second || first == 0 {
        if !proof.is_empty() {
            return Err(ProofError::WrongLength);
        }
        return if first == 0 || first_root == second_root { Ok(()) } else { Err(ProofError::RootMismatch) };
    }
    let mut path: Vec<Digest> = Vec::with_capacity(proof.len() + 1);
    if first.is_power_of_two() {
        path.push(*first_root);
    }
    path.extend_from_slice(proof);
    let Some((&head, rest)) = path.split_first() else {
        return Err(ProofError::WrongLength);
    };
    let (mut fnode, mut snode) = (first - 1, second - 1);
    while fnode & 1 == 1 {
        fnode >>= 1;
        snode >>= 1;
    }
    let (mut fr, mut sr) = (head, head);
    for c in rest {
        if snode == 0 {
            return Err(ProofError::WrongLength);
        }
        if fnode & 1 == 1 || fnode == snode {
            fr = node_hash(c, &fr);
            sr = node_hash(c, &sr);
            if fnode & 1 == 0 {
                while fnode & 1 == 0 && fnode != 0 {
                    fnode >>= 1;
                    snode >>= 1;
                }
            }
        } else {
            sr = node_hash(&sr, c);
        }
        fnode >>= 1;
        snode >>= 1;
    }
    if snode != 0 {
        return Err(ProofError::WrongLength);
    }
    if &fr != first_root || &sr != second_root {
        return Err(ProofError::RootMismatch);
    }
    Ok(())
}

/// The right edge of the tree: one complete subtree root per set bit of the
/// size, largest first. Enough to append and to compute the root in
/// O(log n) without reading anything else.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Frontier {
    size: u64,
    /// (level, hash), levels strictly decreasing.
    nodes: Vec<(u32, Digest)>,
}

/// A node that became complete on append: store it for proofs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NewNode {
    pub level: u32,
    pub index: u64,
    pub hash: Digest,
}

impl Frontier {
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Rebuilds the frontier of a tree of `size` leaves from stored nodes.
    pub fn restore<S: NodeSource>(src: &S, size: u64) -> Result<Self, S::Error> {
        let mut nodes = Vec::new();
        let mut consumed = 0u64;
        for level in (0..64u32).rev() {
            if size & (1 << level) != 0 {
                nodes.push((level, src.node(level, consumed >> level)?));
                consumed += 1 << level;
            }
        }
        Ok(Self { size, nodes })
    }

    /// Appends a leaf hash; returns every node that became complete (the leaf
    /// itself first), for the caller to store.
    pub fn append(&mut self, leaf: Digest) -> Vec<NewNode> {
        let index = self.size;
        let mut created = vec![NewNode { level: 0, index, hash: leaf }];
        self.nodes.push((0, leaf));
        while self.nodes.len() >= 2 {
            let (l2, right) = self.nodes[self.nodes.len() - 1];
            let (l1, left) = self.nodes[self.nodes.len() - 2];
            if l1 != l2 {
                break;
            }
            self.nodes.truncate(self.nodes.len() - 2);
            let hash = node_hash(&left, &right);
            let level = l1 + 1;
            self.nodes.push((level, hash));
            created.push(NewNode { level, index: index >> level, hash });
        }
        self.size += 1;
        created
    }

    pub fn root(&self) -> Digest {
        let mut iter = self.nodes.iter().rev();
        let Some(&(_, mut acc)) = iter.next() else {
            return empty_root();
        };
        for (_, h) in iter {
            acc = node_hash(h, &acc);
        }
        acc
    }
}

/// An in-memory node store; for tests, tools and test vectors.
#[derive(Clone, Debug, Default)]
pub struct MemoryTree {
    levels: Vec<Vec<Digest>>,
    frontier: Frontier,
}

impl MemoryTree {
    pub fn append_entry(&mut self, entry: &[u8]) -> u64 {
        self.append_leaf(leaf_hash(entry))
    }

    pub fn append_leaf(&mut self, leaf: Digest) -> u64 {
        let index = self.frontier.size();
        for n in self.frontier.append(leaf) {
            let level = n.level as usize;
            if self.levels.len() <= level {
                self.levels.resize(level + 1, Vec::new());
            }
            debug_assert_eq!(self.levels[level].len() as u64, n.index);
            self.levels[level].push(n.hash);
        }
        index
    }

    pub fn size(&self) -> u64 {
        self.frontier.size()
    }

    pub fn root(&self) -> Digest {
        self.frontier.root()
    }
}

impl NodeSource for MemoryTree {
    type Error = std::convert::Infallible;
    fn node(&self, level: u32, index: u64) -> Result<Digest, Self::Error> {
        Ok(self.levels[level as usize][index as usize])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// RFC 9162 MTH computed directly from the definition.
    fn mth(leaves: &[Vec<u8>]) -> Digest {
        match leaves.len() {
            0 => empty_root(),
            1 => leaf_hash(&leaves[0]),
            n => {
                let k = split_point(n as u64) as usize;
                node_hash(&mth(&leaves[..k]), &mth(&leaves[k..]))
            }
        }
    }

    fn tree(n: usize) -> (MemoryTree, Vec<Vec<u8>>) {
        let leaves: Vec<Vec<u8>> = (0..n).map(|i| format!("entry {i}").into_bytes()).collect();
        let mut t = MemoryTree::default();
        for l in &leaves {
            t.append_entry(l);
        }
        (t, leaves)
    }

    #[test]
    fn roots_match_the_definition() {
        for n in 0..70 {
            let (t, leaves) = tree(n);
            assert_eq!(t.root(), mth(&leaves), "n={n}");
            assert_eq!(root(&t, n as u64).unwrap(), mth(&leaves), "n={n}");
            for m in 0..=n {
                assert_eq!(root(&t, m as u64).unwrap(), mth(&leaves[..m]), "prefix {m} of {n}");
            }
        }
    }

    #[test]
    fn frontier_restores_from_nodes() {
        let (mut t, _) = tree(37);
        let mut f = Frontier::restore(&t, 37).unwrap();
        assert_eq!(f, t.frontier);
        let created = f.append(leaf_hash(b"next"));
        t.append_entry(b"next");
        assert_eq!(f.root(), t.root());
        assert_eq!(created.iter().map(|n| n.level).collect::<Vec<_>>(), [0, 1]);
    }

    #[test]
    fn known_empty_and_single_roots() {
        assert_eq!(empty_root().to_hex(), "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
        // SHA-256(0x00): the leaf hash of an empty entry.
        assert_eq!(leaf_hash(b"").to_hex(), "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d");
    }

    proptest! {
        #[test]
        fn inclusion_proofs_verify_and_tampering_fails(n in 1u64..300, i in 0u64..300, flip in 0usize..32) {
            let i = i % n;
            let (t, leaves) = tree(n as usize);
            let root = t.root();
            let leaf = leaf_hash(&leaves[i as usize]);
            let path = inclusion_proof(&t, i, n).unwrap();
            prop_assert!(path.len() <= 64 - (n.leading_zeros() as usize) + 1);
            prop_assert_eq!(verify_inclusion(&leaf, i, n, &path, &root), Ok(()));
            // Another leaf, another index, or an altered hash: refused.
            prop_assert!(verify_inclusion(&leaf_hash(b"forged"), i, n, &path, &root).is_err());
            if n > 1 {
                prop_assert!(verify_inclusion(&leaf, (i + 1) % n, n, &path, &root).is_err());
            }
            if !path.is_empty() {
                let mut bad = path.clone();
                bad[flip % path.len()].0[flip] ^= 1;
                prop_assert!(verify_inclusion(&leaf, i, n, &bad, &root).is_err());
                prop_assert!(verify_inclusion(&leaf, i, n, &path[1..], &root).is_err());
            }
        }

        #[test]
        fn consistency_proofs_verify_and_tampering_fails(n in 1u64..300, m in 0u64..300, flip in 0usize..32) {
            let m = m % (n + 1);
            let (t, leaves) = tree(n as usize);
            let (r1, r2) = (mth(&leaves[..m as usize]), t.root());
            let proof = consistency_proof(&t, m, n).unwrap();
            prop_assert_eq!(verify_consistency(m, n, &r1, &r2, &proof), Ok(()));
            if m > 0 && m < n {
                let mut bad = proof.clone();
                let j = flip % bad.len();
                bad[j].0[flip] ^= 1;
                prop_assert!(verify_consistency(m, n, &r1, &r2, &bad).is_err());
                // A forked history: same size, different first leaf.
                let mut forked = leaves.clone();
                forked[0] = b"rewritten".to_vec();
                prop_assert!(verify_consistency(m, n, &mth(&forked[..m as usize]), &r2, &proof).is_err());
                prop_assert!(verify_consistency(m, n, &r1, &mth(&forked), &proof).is_err());
            }
        }
    }
}
