//! A hash for device ids that keeps neighbouring ids in neighbouring buckets.
//!
//! Meters report through gateways, so a message holds a run of consecutive device ids (the
//! generated fleet: eight per message). The standard map (hashbrown's SwissTable) picks the
//! bucket from the hash's low bits and a 7-bit tag from its top bits. Keeping an id's position
//! within its aligned block of 64 ids in the lowest bits puts a message's devices in one or two
//! cache lines of the table instead of one line each, which was the first cache miss of every
//! reading. The block number is mixed into the bits above, so ids that share their low bits
//! (multiples of 4,096, say, as ids handed out in ranges are) still spread over the whole
//! table instead of probing one run of buckets, which would make inserts quadratic; mixing
//! the id into the top bits keeps the tags distinct, so probes still compare few keys.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

/// Device id → `V`, laid out by id (see the module docs).
pub(crate) type DeviceMap<V> = HashMap<i32, V, BuildHasherDefault<DeviceIdHasher>>;

/// Odd constant of Fibonacci hashing (2^64 / φ): multiplying by it spreads every input bit
/// into the top bits.
const MIX: u64 = 0x9E37_79B9_7F4A_7C15;

/// The seven top bits hashbrown reads its tag from.
const TAG_BITS: u64 = 0x7F << 57;

/// Ids per block that keep neighbouring buckets (log2).
const BLOCK_BITS: u32 = 6;

/// Low 6 bits: the id's place in its block of 64; the 26 bits above: a mix of the block
/// number; top 7 bits: a mix of the id. Other keys than `i32` fall back to a multiplicative
/// hash of their bytes, so the hasher stays correct for any key.
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
        let within = id & ((1 << BLOCK_BITS) - 1);
        let block = ((id >> BLOCK_BITS).wrapping_mul(MIX) >> 32) << BLOCK_BITS;
        self.0 = (within | block) & 0xFFFF_FFFF | (id.wrapping_mul(MIX) & TAG_BITS);
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
    fn ids_that_share_their_low_bits_spread_over_the_buckets() {
        // 65,536 ids alike in their low 15 bits, in a table of 2^17 buckets: each run of 64
        // buckets gets about its share (32), not a pile that every insert probes past.
        let mut per_run = std::collections::HashMap::<u64, usize>::new();
        for k in 0..65_536 {
            *per_run.entry((hash(k << 15) & 0x1_FFFF) >> 6).or_default() += 1;
        }
        let fullest = per_run.values().max().copied().unwrap_or_default();
        assert!(fullest < 100, "a run of 64 buckets holds {fullest} ids");
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
