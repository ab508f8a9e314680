//! Merkle root over a segment's record hashes (RFC 6962 construction).
//!
//! The segment header signs this root, so an auditor given a slice of records and
//! the list of leaf hashes (or an inclusion path) can prove the slice belongs to a
//! signed segment without seeing the other records.
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
    if record_hashes.is_empty() {
        return Hash256::from_bytes(Sha256::digest([]).into());
    }
    let mut level: Vec<Hash256> = record_hashes.iter().map(leaf_hash).collect();
    while level.len() > 1 {
        let mut next = Vec::with_capacity(level.len().div_ceil(2));
        for pair in level.chunks(2) {
            match pair {
                [left, right] => next.push(node_hash(left, right)),
                [single] => next.push(*single),
                _ => unreachable!("chunks(2) yields one or two items"),
            }
        }
        level = next;
    }
    level[0]
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
}
