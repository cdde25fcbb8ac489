//! A cheap hash for ids this side chose itself.

use std::collections::HashMap;
use std::hash::BuildHasherDefault;

/// A map keyed by ids this side chose itself (see [`OwnIds`]).
pub(super) type OwnIdMap<V> = HashMap<u64, V, BuildHasherDefault<OwnIds>>;

/// Hashes ids this side chose itself (the request ids it numbers, the
/// method ids of its own calls) with one multiplication instead of SipHash,
/// three of which a call used to pay. A peer can only look such keys up,
/// which costs what the table's own keys make it cost: a keyed hash is
/// needed only where the peer chooses the keys that go in (`serving`,
/// `conns`, the channel registry keep the standard one).
#[derive(Clone, Copy, Default)]
pub(super) struct OwnIds(u64);

impl std::hash::Hasher for OwnIds {
    fn finish(&self) -> u64 {
        // Fibonacci hashing: consecutive ids spread over the high bits (the
        // table's control bytes) and, folded, over the low ones (its
        // buckets).
        let h = self.0.wrapping_mul(0x9e37_79b9_7f4a_7c15);
        h ^ (h >> 32)
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(b);
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 ^= n;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::hash::BuildHasher;

    #[test]
    fn consecutive_ids_spread_over_control_bytes_and_buckets() {
        let hasher = BuildHasherDefault::<OwnIds>::default();
        let hashes: Vec<u64> = (1000..1128u64).map(|id| hasher.hash_one(id)).collect();
        let top7: std::collections::HashSet<u64> = hashes.iter().map(|h| h >> 57).collect();
        let low7: std::collections::HashSet<u64> = hashes.iter().map(|h| h & 0x7f).collect();
        assert!(top7.len() >= 64, "{} distinct control bytes of 128", top7.len());
        assert!(low7.len() >= 64, "{} distinct low bits of 128", low7.len());
        let mut m = OwnIdMap::default();
        for id in 0..10_000u64 {
            m.insert(id * 2 + 1, id);
        }
        assert!((0..10_000u64).all(|id| m.get(&(id * 2 + 1)) == Some(&id)));
        assert_eq!(m.get(&2), None);
    }
}
