//! Hash maps keyed by job id. Ids are dense, trusted u64s, so SipHash's flood resistance buys
//! nothing and costs a large share of recovery time: ids are mixed with one multiplication
//! (Fibonacci hashing) instead.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

/// Hasher for u64 job ids.
#[derive(Default, Clone, Copy)]
pub struct IdHasher(u64);

impl Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        // Only u64 keys are expected; anything else still hashes correctly, if slowly.
        for &b in bytes {
            self.0 = (self.0.rotate_left(8) ^ u64::from(b)).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        }
    }
    fn write_u64(&mut self, id: u64) {
        self.0 = id.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    }
}

/// A map from job id.
pub type IdMap<V> = HashMap<u64, V, BuildHasherDefault<IdHasher>>;

/// An empty [`IdMap`] with room for `n` entries.
pub fn id_map<V>(n: usize) -> IdMap<V> {
    HashMap::with_capacity_and_hasher(n, BuildHasherDefault::default())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dense_ids_spread_and_round_trip() {
        let mut m: IdMap<u64> = id_map(0);
        for id in 0..10_000u64 {
            m.insert(id, id * 2);
        }
        assert!((0..10_000u64).all(|id| m[&id] == id * 2));
        let mut h = IdHasher::default();
        h.write(b"abc");
        assert_ne!(h.finish(), 0);
    }
}
