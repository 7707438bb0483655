//! A lock-free latency histogram for live figures during a run (the ramp's stop rule, progress bars,
//! p99 over time).
//!
//! Thousands of connection tasks record into one [`LiveHist`] with a relaxed `fetch_add` per delivery;
//! the progress reporter swaps the counters out every interval and ships them as sparse
//! `(bucket, count)` pairs. Buckets are log-linear with 32 sub-buckets per power of two (≈3 % resolution),
//! plenty for "is p99 above 50 ms". Exact figures for the report come from the accounting pass
//! ([`crate::accounting`]) with hdrhistogram, computed from commit timestamps after the run.

use std::sync::atomic::{AtomicU64, Ordering};

/// Values below this are their own bucket.
const LINEAR: u64 = 64;
/// Sub-buckets per power of two above [`LINEAR`].
const SUB_BITS: u32 = 5;
const SUB: usize = 1 << SUB_BITS;
/// Powers of two covered above 64 µs: up to 2^46 µs (≈ 2 years), far beyond any run.
const OCTAVES: usize = 40;
pub const BUCKETS: usize = LINEAR as usize + OCTAVES * SUB;

/// The bucket of a value (microseconds).
pub fn bucket_of(v: u64) -> usize {
    if v < LINEAR {
        return v as usize;
    }
    let exp = 63 - v.leading_zeros(); // ≥ 6
    let sub = ((v >> (exp - SUB_BITS)) as usize) & (SUB - 1);
    let octave = (exp - 6) as usize;
    if octave >= OCTAVES {
        return BUCKETS - 1;
    }
    LINEAR as usize + octave * SUB + sub
}

/// The smallest value in a bucket.
pub fn bucket_low(i: usize) -> u64 {
    if i < LINEAR as usize {
        return i as u64;
    }
    let octave = (i - LINEAR as usize) / SUB;
    let sub = ((i - LINEAR as usize) % SUB) as u64;
    let exp = octave as u32 + 6;
    (1u64 << exp) | (sub << (exp - SUB_BITS))
}

/// Shared recorder.
pub struct LiveHist {
    counts: Box<[AtomicU64]>,
}

impl Default for LiveHist {
    fn default() -> Self {
        LiveHist {
            counts: (0..BUCKETS).map(|_| AtomicU64::new(0)).collect(),
        }
    }
}

impl LiveHist {
    pub fn record(&self, micros: u64) {
        self.counts[bucket_of(micros)].fetch_add(1, Ordering::Relaxed);
    }

    /// Take the counts recorded since the last call, as sparse pairs.
    pub fn take(&self) -> Vec<(u16, u64)> {
        self.counts
            .iter()
            .enumerate()
            .filter_map(|(i, c)| {
                if c.load(Ordering::Relaxed) == 0 {
                    return None;
                }
                let n = c.swap(0, Ordering::Relaxed);
                (n > 0).then_some((i as u16, n))
            })
            .collect()
    }
}

/// A plain (single-owner) set of bucket counts: merged from [`LiveHist::take`] snapshots.
#[derive(Clone, Debug)]
pub struct Buckets {
    counts: Vec<u64>,
    total: u64,
}

impl Default for Buckets {
    fn default() -> Self {
        Buckets {
            counts: vec![0; BUCKETS],
            total: 0,
        }
    }
}

impl Buckets {
    pub fn merge(&mut self, sparse: &[(u16, u64)]) {
        for &(i, n) in sparse {
            if let Some(c) = self.counts.get_mut(i as usize) {
                *c += n;
                self.total += n;
            }
        }
    }

    pub fn count(&self) -> u64 {
        self.total
    }

    /// The lower bound of the bucket holding quantile `q` (0..=1); `None` when empty.
    pub fn quantile(&self, q: f64) -> Option<u64> {
        if self.total == 0 {
            return None;
        }
        let rank = ((q * self.total as f64).ceil() as u64).clamp(1, self.total);
        let mut seen = 0;
        for (i, &c) in self.counts.iter().enumerate() {
            seen += c;
            if seen >= rank {
                return Some(bucket_low(i));
            }
        }
        None
    }

    pub fn clear(&mut self) {
        self.counts.iter_mut().for_each(|c| *c = 0);
        self.total = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_monotonic_and_tight() {
        let mut last = 0;
        for v in (0..10_000_000u64).step_by(997) {
            let b = bucket_of(v);
            assert!(b >= last, "bucket order at {v}");
            last = b;
            let low = bucket_low(b);
            assert!(low <= v, "{v} below its bucket's low {low}");
            // Within ~3 % of the value.
            assert!(v - low <= v / 30 + 1, "{v} vs {low}");
        }
    }

    #[test]
    fn quantiles_from_merged_snapshots() {
        let h = LiveHist::default();
        for v in 1..=1000u64 {
            h.record(v * 100);
        }
        let mut b = Buckets::default();
        b.merge(&h.take());
        assert!(h.take().is_empty(), "take resets");
        assert_eq!(b.count(), 1000);
        let p99 = b.quantile(0.99).unwrap();
        assert!((96_000..=99_000).contains(&p99), "{p99}");
        let p50 = b.quantile(0.5).unwrap();
        assert!((48_000..=50_000).contains(&p50), "{p50}");
    }
}
