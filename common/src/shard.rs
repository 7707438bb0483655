//! Stable hashing that crosses processes: gateways and workers must agree on which shard owns a query.
//!
//! The shard of a query is `xxh3_64(query id as 16 big-endian bytes) mod shards`. The algorithm and its
//! inputs are pinned by a golden test; changing them reshuffles every registration in a running cluster.

use crate::normalize::QueryId;

/// Default number of virtual shards leased among workers.
pub const DEFAULT_SHARDS: u32 = 256;

pub fn shard_of(id: QueryId, shards: u32) -> u32 {
    assert!(shards > 0, "at least one shard");
    (xxhash_rust::xxh3::xxh3_64(&id.0.to_be_bytes()) % shards as u64) as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn golden_values() {
        // If this fails, the hash changed: every deployed cluster would re-shard. Do not update lightly.
        assert_eq!(
            shard_of(QueryId(0), 256),
            (xxhash_rust::xxh3::xxh3_64(&[0u8; 16]) % 256) as u32
        );
        let pinned: Vec<u32> = (0u128..8)
            .map(|i| shard_of(QueryId(i * 0x0123_4567_89ab_cdef), 256))
            .collect();
        assert_eq!(pinned, GOLDEN);
    }

    const GOLDEN: [u32; 8] = [104, 49, 91, 253, 207, 41, 100, 84];

    #[test]
    fn spreads_evenly() {
        let mut counts = [0u32; 16];
        for i in 0..16_000u128 {
            counts[shard_of(QueryId(i.wrapping_mul(0x9e37_79b9_7f4a_7c15)), 16) as usize] += 1;
        }
        assert!(
            counts.iter().all(|&c| (800..1200).contains(&c)),
            "{counts:?}"
        );
    }
}
