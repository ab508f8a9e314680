//! Merkle trees over record hashes (RFC 6962 construction), and the proofs
//! auditors already know how to check.
//!
//! Two trees use the same hashing:
//!
//! - a **segment's tree**: the records of one segment; its root is signed in the
//!   segment header, so an [inclusion proof](inclusion_proof) shows a record is
//!   in a sealed segment without the other records;
//! - a **writer's tree**: every record the writer ever wrote, leaf `i` being the
//!   record with `seq = i + 1`. Its root at a segment's last record is signed in
//!   the header (format 2) and in a C2SP checkpoint, so a [consistency
//!   proof](consistency_proof) shows a later trail extends an earlier one.
//!
//! A writer does not keep its whole tree: a [`TreeFrontier`] (the roots of the
//! perfect subtrees that make up the tree so far, at most 64 hashes) is enough
//! to keep appending and to compute the root, and each segment stores the
//! frontier it starts from.
//!
//! Proof generation and verification follow RFC 9162 sections 2.1.3 and 2.1.4
//! (the same algorithms as RFC 6962), so any transparency-log tooling can check
//! them.
use sha2::{Digest, Sha256};

use super::hash::Hash256;

/// Hash of a leaf: `SHA-256(0x00 || record_hash)`.
pub fn leaf_hash(record_hash: &Hash256) -> Hash256 {
    let mut hasher = Sha256::new();
    hasher.update([0u8]);
    hasher.update(record_hash.as_bytes());
    Hash256::from_bytes(hasher.finalize().into())
}

/// Hash of an inner node: `SHA-256(0x01 || left || right)`.
pub fn node_hash(left: &Hash256, right: &Hash256) -> Hash256 {
    let mut hasher = Sha256::new();
    hasher.update([1u8]);
    hasher.update(left.as_bytes());
    hasher.update(right.as_bytes());
    Hash256::from_bytes(hasher.finalize().into())
}

/// The RFC 6962 Merkle tree hash of the record hashes, in order.
///
/// Computed bottom-up: pair neighbours left to right and carry an odd last node up
/// unchanged. That gives the same root as RFC 6962's recursive split at the largest
/// power of two below `n` (a unit test holds the two together). The empty list has
/// root `SHA-256("")`.
pub fn merkle_root(record_hashes: &[Hash256]) -> Hash256 {
    let leaves: Vec<Hash256> = record_hashes.iter().map(leaf_hash).collect();
    root_of_leaves(&leaves)
}

/// The root of the empty tree, `SHA-256("")`.
pub fn empty_root() -> Hash256 {
    Hash256::from_bytes(Sha256::digest([]).into())
}

/// The Merkle tree hash over leaves that are already leaf-hashed.
pub fn root_of_leaves(leaves: &[Hash256]) -> Hash256 {
    match leaves {
        [] => empty_root(),
        [single] => *single,
        _ => {
            let mut level: Vec<Hash256> = leaves
                .chunks(2)
                .map(|pair| match pair {
                    [left, right] => node_hash(left, right),
                    [single] => *single,
                    _ => unreachable!("chunks(2) yields one or two items"),
                })
                .collect();
            while level.len() > 1 {
                let mut write = 0;
                for read in (0..level.len()).step_by(2) {
                    level[write] = match level.get(read + 1) {
                        Some(right) => node_hash(&level[read], right),
                        None => level[read],
                    };
                    write += 1;
                }
                level.truncate(write);
            }
            level[0]
        }
    }
}

/// The largest power of two strictly below `n` (`n >= 2`): where RFC 6962 splits
/// a tree of `n` leaves.
fn split_point(n: u64) -> u64 {
    debug_assert!(n >= 2);
    1 << (63 - (n - 1).leading_zeros())
}

/// Why a stored frontier cannot be used.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("a tree of {size} leaves has {expected} frontier roots, not {found}")]
pub struct InvalidFrontier {
    size: u64,
    expected: u32,
    found: usize,
}

/// The roots of the perfect subtrees that make up a tree of `size` leaves,
/// largest first (one per set bit of `size`): all a writer needs to keep
/// appending to its tree and to compute the root.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TreeFrontier {
    size: u64,
    roots: Vec<Hash256>,
}

impl TreeFrontier {
    /// The empty tree.
    pub fn new() -> Self {
        TreeFrontier::default()
    }

    /// A frontier as stored; the number of roots must match `size`.
    pub fn from_parts(size: u64, roots: Vec<Hash256>) -> Result<Self, InvalidFrontier> {
        if roots.len() != size.count_ones() as usize {
            return Err(InvalidFrontier {
                size,
                expected: size.count_ones(),
                found: roots.len(),
            });
        }
        Ok(TreeFrontier { size, roots })
    }

    /// Number of leaves in the tree.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// The subtree roots, largest first.
    pub fn roots(&self) -> &[Hash256] {
        &self.roots
    }

    /// Append the leaf of a record.
    pub fn push_record(&mut self, record_hash: &Hash256) {
        self.push_leaf(leaf_hash(record_hash));
    }

    /// Append an already leaf-hashed node.
    pub fn push_leaf(&mut self, leaf: Hash256) {
        let mut node = leaf;
        let mut size = self.size;
        // Each set low bit is a subtree as large as `node`: merge them.
        while size & 1 == 1 {
            let left = self.roots.pop().expect("one root per set bit");
            node = node_hash(&left, &node);
            size >>= 1;
        }
        self.roots.push(node);
        self.size += 1;
    }

    /// The tree's root (RFC 6962 `MTH` over all leaves so far).
    pub fn root(&self) -> Hash256 {
        let mut roots = self.roots.iter().rev();
        let Some(last) = roots.next() else {
            return empty_root();
        };
        roots.fold(*last, |right, left| node_hash(left, &right))
    }

    /// The subtrees as `(start, end, root)` leaf ranges, in order.
    fn ranges(&self) -> impl Iterator<Item = (u64, u64, Hash256)> + '_ {
        let mut start = 0u64;
        let bits = (0..64).rev().filter(|bit| self.size >> bit & 1 == 1);
        bits.zip(&self.roots).map(move |(bit, root)| {
            let range = (start, start + (1u64 << bit), *root);
            start = range.1;
            range
        })
    }
}

/// A tree whose leaves are known from some point on, with the frontier of
/// everything before it: what a verifier holds when retention moved the oldest
/// segments elsewhere, and what it needs to build proofs.
#[derive(Clone, Copy, Debug)]
pub struct PartialTree<'a> {
    /// The tree before the first known leaf.
    pub before: &'a TreeFrontier,
    /// Leaf hashes from `before.size()` on, in order.
    pub leaves: &'a [Hash256],
}

impl PartialTree<'_> {
    /// Number of leaves in the tree.
    pub fn size(&self) -> u64 {
        self.before.size() + self.leaves.len() as u64
    }

    /// The root of the subtree over leaves `[start, end)`, if what is known
    /// suffices: any range from the first known leaf on, a subtree of the
    /// frontier, or a range made of those.
    pub fn subtree_root(&self, start: u64, end: u64) -> Option<Hash256> {
        let base = self.before.size();
        if start >= end || end > self.size() {
            return None;
        }
        if start >= base {
            let (from, to) = ((start - base) as usize, (end - base) as usize);
            return Some(root_of_leaves(&self.leaves[from..to]));
        }
        if let Some((_, _, root)) = self
            .before
            .ranges()
            .find(|&(from, to, _)| from == start && to == end)
        {
            return Some(root);
        }
        if end <= base || end - start < 2 {
            return None;
        }
        let k = split_point(end - start);
        Some(node_hash(
            &self.subtree_root(start, start + k)?,
            &self.subtree_root(start + k, end)?,
        ))
    }
}

/// The RFC 6962 audit path of leaf `index` in the tree of the first `size`
/// leaves, leaf to root; `None` if `index >= size` or the nodes it needs are
/// not known.
pub fn inclusion_proof(tree: &PartialTree<'_>, index: u64, size: u64) -> Option<Vec<Hash256>> {
    if index >= size || size > tree.size() {
        return None;
    }
    let mut proof = Vec::new();
    path(tree, index, 0, size, &mut proof)?;
    Some(proof)
}

fn path(
    tree: &PartialTree<'_>,
    index: u64,
    start: u64,
    end: u64,
    out: &mut Vec<Hash256>,
) -> Option<()> {
    let n = end - start;
    if n == 1 {
        return Some(());
    }
    let k = split_point(n);
    if index < k {
        path(tree, index, start, start + k, out)?;
        out.push(tree.subtree_root(start + k, end)?);
    } else {
        path(tree, index - k, start + k, end, out)?;
        out.push(tree.subtree_root(start, start + k)?);
    }
    Some(())
}

/// The RFC 6962 consistency proof that the tree of the first `old_size` leaves
/// is a prefix of the tree of the first `new_size`; empty when the sizes are
/// equal or `old_size` is 0. `None` if `old_size > new_size` or the nodes it
/// needs are not known.
pub fn consistency_proof(
    tree: &PartialTree<'_>,
    old_size: u64,
    new_size: u64,
) -> Option<Vec<Hash256>> {
    if old_size > new_size || new_size > tree.size() {
        return None;
    }
    let mut proof = Vec::new();
    if old_size > 0 && old_size < new_size {
        subproof(tree, old_size, 0, new_size, true, &mut proof)?;
    }
    Some(proof)
}

fn subproof(
    tree: &PartialTree<'_>,
    m: u64,
    start: u64,
    end: u64,
    complete: bool,
    out: &mut Vec<Hash256>,
) -> Option<()> {
    let n = end - start;
    if m == n {
        if !complete {
            out.push(tree.subtree_root(start, end)?);
        }
        return Some(());
    }
    let k = split_point(n);
    if m <= k {
        subproof(tree, m, start, start + k, complete, out)?;
        out.push(tree.subtree_root(start + k, end)?);
    } else {
        subproof(tree, m - k, start + k, end, false, out)?;
        out.push(tree.subtree_root(start, start + k)?);
    }
    Some(())
}

/// Check an audit path (RFC 9162 section 2.1.3.2): the leaf hash at `index` in a
/// tree of `size` leaves with root `root`.
pub fn verify_inclusion(
    index: u64,
    size: u64,
    leaf: &Hash256,
    proof: &[Hash256],
    root: &Hash256,
) -> bool {
    if index >= size {
        return false;
    }
    let (mut fnode, mut snode) = (index, size - 1);
    let mut hash = *leaf;
    for sibling in proof {
        if snode == 0 {
            return false;
        }
        if fnode & 1 == 1 || fnode == snode {
            hash = node_hash(sibling, &hash);
            while fnode & 1 == 0 && fnode != 0 {
                fnode >>= 1;
                snode >>= 1;
            }
        } else {
            hash = node_hash(&hash, sibling);
        }
        fnode >>= 1;
        snode >>= 1;
    }
    snode == 0 && hash == *root
}

/// Check a consistency proof (RFC 9162 section 2.1.4.2): the tree of `old_size`
/// leaves with root `old_root` is a prefix of the tree of `new_size` leaves with
/// root `new_root`.
pub fn verify_consistency(
    old_size: u64,
    new_size: u64,
    old_root: &Hash256,
    new_root: &Hash256,
    proof: &[Hash256],
) -> bool {
    if old_size > new_size {
        return false;
    }
    if old_size == new_size {
        return proof.is_empty() && old_root == new_root;
    }
    if old_size == 0 {
        // The empty tree is a prefix of every tree.
        return proof.is_empty();
    }
    if proof.is_empty() {
        return false;
    }
    let mut path: Vec<Hash256> = Vec::with_capacity(proof.len() + 1);
    if old_size.is_power_of_two() {
        path.push(*old_root);
    }
    path.extend_from_slice(proof);
    let (mut fnode, mut snode) = (old_size - 1, new_size - 1);
    while fnode & 1 == 1 {
        fnode >>= 1;
        snode >>= 1;
    }
    let (mut first, mut second) = (path[0], path[0]);
    for node in &path[1..] {
        if snode == 0 {
            return false;
        }
        if fnode & 1 == 1 || fnode == snode {
            first = node_hash(node, &first);
            second = node_hash(node, &second);
            while fnode & 1 == 0 && fnode != 0 {
                fnode >>= 1;
                snode >>= 1;
            }
        } else {
            second = node_hash(&second, node);
        }
        fnode >>= 1;
        snode >>= 1;
    }
    snode == 0 && first == *old_root && second == *new_root
}

#[cfg(test)]
mod tests {
    use super::*;

    fn recursive_root(leaves: &[Hash256]) -> Hash256 {
        match leaves.len() {
            0 => Hash256::from_bytes(Sha256::digest([]).into()),
            1 => leaf_hash(&leaves[0]),
            n => {
                let k = 1usize << (usize::BITS - 1 - (n - 1).leading_zeros());
                node_hash(&recursive_root(&leaves[..k]), &recursive_root(&leaves[k..]))
            }
        }
    }

    fn leaves(n: usize) -> Vec<Hash256> {
        (0..n)
            .map(|i| Hash256::from_bytes(Sha256::digest(i.to_be_bytes()).into()))
            .collect()
    }

    #[test]
    fn bottom_up_root_equals_rfc6962_recursive_definition_for_every_size_up_to_70() {
        for n in 0..70 {
            assert_eq!(
                merkle_root(&leaves(n)),
                recursive_root(&leaves(n)),
                "n = {n}"
            );
        }
    }

    #[test]
    fn changing_or_reordering_any_leaf_changes_the_root() {
        let base = leaves(9);
        let root = merkle_root(&base);
        for i in 0..base.len() {
            let mut changed = base.clone();
            changed[i] = Hash256::ZERO;
            assert_ne!(merkle_root(&changed), root);
        }
        let mut swapped = base.clone();
        swapped.swap(3, 4);
        assert_ne!(merkle_root(&swapped), root);
    }

    fn leaf_hashes(n: usize) -> Vec<Hash256> {
        leaves(n).iter().map(leaf_hash).collect()
    }

    #[test]
    fn frontier_root_equals_the_tree_root_at_every_size() {
        let all = leaf_hashes(80);
        let mut frontier = TreeFrontier::new();
        assert_eq!(frontier.root(), empty_root());
        for n in 1..=80 {
            frontier.push_leaf(all[n - 1]);
            assert_eq!(frontier.size(), n as u64);
            assert_eq!(frontier.roots().len(), n.count_ones() as usize);
            assert_eq!(frontier.root(), root_of_leaves(&all[..n]), "n = {n}");
        }
        assert!(TreeFrontier::from_parts(5, vec![Hash256::ZERO]).is_err());
    }

    #[test]
    fn inclusion_proofs_verify_for_every_leaf_and_fail_when_anything_changes() {
        for size in 1..=40u64 {
            let all = leaf_hashes(size as usize);
            let tree = PartialTree {
                before: &TreeFrontier::new(),
                leaves: &all,
            };
            let root = root_of_leaves(&all);
            for index in 0..size {
                let proof = inclusion_proof(&tree, index, size).unwrap();
                let leaf = all[index as usize];
                assert!(verify_inclusion(index, size, &leaf, &proof, &root));
                assert!(!verify_inclusion(
                    index,
                    size,
                    &Hash256::ZERO,
                    &proof,
                    &root
                ));
                if size > 1 {
                    let other = (index + 1) % size;
                    assert!(!verify_inclusion(other, size, &leaf, &proof, &root));
                }
            }
        }
    }

    #[test]
    fn consistency_proofs_verify_between_every_pair_of_sizes() {
        let all = leaf_hashes(40);
        let tree = PartialTree {
            before: &TreeFrontier::new(),
            leaves: &all,
        };
        for new in 1..=40u64 {
            let new_root = root_of_leaves(&all[..new as usize]);
            for old in 0..=new {
                let old_root = root_of_leaves(&all[..old as usize]);
                let proof = consistency_proof(&tree, old, new).unwrap();
                assert!(
                    verify_consistency(old, new, &old_root, &new_root, &proof),
                    "{old} -> {new}"
                );
                if old > 0 && old < new {
                    assert!(!verify_consistency(
                        old,
                        new,
                        &Hash256::ZERO,
                        &new_root,
                        &proof
                    ));
                    assert!(!verify_consistency(
                        old,
                        new,
                        &old_root,
                        &Hash256::ZERO,
                        &proof
                    ));
                }
            }
        }
    }

    #[test]
    fn a_partial_tree_proves_what_its_frontier_and_leaves_cover() {
        let all = leaf_hashes(50);
        let full = PartialTree {
            before: &TreeFrontier::new(),
            leaves: &all,
        };
        for base in [0usize, 1, 7, 16, 31, 32] {
            let mut before = TreeFrontier::new();
            for leaf in &all[..base] {
                before.push_leaf(*leaf);
            }
            let partial = PartialTree {
                before: &before,
                leaves: &all[base..],
            };
            assert_eq!(partial.subtree_root(0, 50), full.subtree_root(0, 50));
            for index in base as u64..50 {
                let proof = inclusion_proof(&partial, index, 50);
                assert_eq!(proof, inclusion_proof(&full, index, 50), "{base} {index}");
            }
            for old in base as u64..=50 {
                let proof = consistency_proof(&partial, old, 50);
                assert_eq!(proof, consistency_proof(&full, old, 50), "{base} {old}");
            }
        }
    }

    /// The tree of the Certificate Transparency test vectors (RFC 6962 reference
    /// code): eight leaves of arbitrary data and the published roots.
    #[test]
    fn roots_match_the_certificate_transparency_test_vectors() {
        let data: [&str; 8] = [
            "",
            "00",
            "10",
            "2021",
            "3031",
            "40414243",
            "5051525354555657",
            "606162636465666768696a6b6c6d6e6f",
        ];
        let leaves: Vec<Hash256> = data
            .iter()
            .map(|d| {
                let mut hasher = Sha256::new();
                hasher.update([0u8]);
                hasher.update(hex::decode(d).unwrap());
                Hash256::from_bytes(hasher.finalize().into())
            })
            .collect();
        let expected = [
            "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
            "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
            "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
            "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
            "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
            "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
            "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
            "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
        ];
        // The reference consistency proof from size 2 to size 5.
        let tree = PartialTree {
            before: &TreeFrontier::new(),
            leaves: &leaves,
        };
        let proof: Vec<String> = consistency_proof(&tree, 2, 5)
            .unwrap()
            .iter()
            .map(Hash256::to_hex)
            .collect();
        assert_eq!(
            proof,
            [
                "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
                "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
            ]
        );
        let mut frontier = TreeFrontier::new();
        for (n, root) in expected.iter().enumerate() {
            frontier.push_leaf(leaves[n]);
            assert_eq!(
                root_of_leaves(&leaves[..=n]).to_hex(),
                *root,
                "size {}",
                n + 1
            );
            assert_eq!(frontier.root().to_hex(), *root, "size {}", n + 1);
        }
    }
}
