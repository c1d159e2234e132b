//! A hash for device ids that keeps neighbouring ids in neighbouring buckets.
//!
//! Meters report through gateways, so a message holds a run of consecutive device ids (the
//! generated fleet: eight per message). The standard map (hashbrown's SwissTable) picks the
//! bucket from the hash's low bits and a 7-bit tag from its top bits. Keeping the id itself in
//! the low bits puts a message's devices in one or two cache lines of the table instead of
//! one line each, which was the first cache miss of every reading; mixing the id into the top
//! bits keeps the tags distinct, so probes still compare few keys.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

/// Device id → `V`, laid out by id (see the module docs).
pub(crate) type DeviceMap<V> = HashMap<i32, V, BuildHasherDefault<DeviceIdHasher>>;

/// Odd constant of Fibonacci hashing (2^64 / φ): multiplying by it spreads every input bit
/// into the top bits.
const MIX: u64 = 0x9E37_79B9_7F4A_7C15;

/// The seven top bits hashbrown reads its tag from.
const TAG_BITS: u64 = 0x7F << 57;

/// Low 32 bits: the id; top 7 bits: a mix of it. Other keys than `i32` fall back to a
/// multiplicative hash of their bytes, so the hasher stays correct for any key.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct DeviceIdHasher(u64);

impl Hasher for DeviceIdHasher {
    fn write(&mut self, bytes: &[u8]) {
        for &byte in bytes {
            self.0 = (self.0.rotate_left(5) ^ u64::from(byte)).wrapping_mul(MIX);
        }
    }

    fn write_i32(&mut self, id: i32) {
        let id = u64::from(id as u32);
        self.0 = id | (id.wrapping_mul(MIX) & TAG_BITS);
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::hash::BuildHasher;

    fn hash(id: i32) -> u64 {
        BuildHasherDefault::<DeviceIdHasher>::default().hash_one(id)
    }

    #[test]
    fn consecutive_ids_take_consecutive_buckets() {
        for id in [0, 1_000_384, i32::MAX - 1, -5] {
            assert_eq!(hash(id + 1) & 0xFFFF, (hash(id) + 1) & 0xFFFF, "id {id}");
        }
    }

    #[test]
    fn tags_of_a_run_of_ids_differ() {
        let tags: std::collections::HashSet<u64> =
            (1_000_384..1_000_400).map(|id| hash(id) >> 57).collect();
        assert!(tags.len() >= 12, "only {} distinct tags", tags.len());
    }

    #[test]
    fn map_holds_ids_that_share_their_low_bits() {
        // Multiples of 2^16 collide in every bucket index a small table uses.
        let ids: Vec<i32> = (-500..500).map(|i| i * 65_536).collect();
        let map: DeviceMap<usize> = ids.iter().enumerate().map(|(i, &id)| (id, i)).collect();
        assert_eq!(map.len(), ids.len());
        for (i, id) in ids.iter().enumerate() {
            assert_eq!(map[id], i);
        }
        assert!(!map.contains_key(&1));
    }
}
