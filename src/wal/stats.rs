//! Lock-free WAL counters, written by the group-commit thread and read by `stats`.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// Buckets of a base-2 latency histogram in microseconds: bucket i holds values < 2^i µs.
const BUCKETS: usize = 32;

/// WAL counters. Only the commit thread writes; anyone may read.
#[derive(Debug)]
pub struct WalStats {
    /// Records appended (sync marks included).
    pub records: AtomicU64,
    /// Sync marks appended.
    pub marks: AtomicU64,
    /// Bytes appended (headers included).
    pub bytes: AtomicU64,
    /// Group commits (one write each).
    pub groups: AtomicU64,
    /// fdatasync calls.
    pub fsyncs: AtomicU64,
    /// Largest group, in records.
    pub max_group: AtomicU64,
    /// Segments in `wal/`.
    pub segments: AtomicU64,
    /// Bytes used in the current segment (header included).
    pub active_bytes: AtomicU64,
    /// Idempotency keys known.
    pub keys: AtomicU64,
    /// Keys forgotten early because of `max_keys`.
    pub keys_evicted: AtomicU64,
    /// LSN of the last record a completed fdatasync made durable (sync marks aside): readers
    /// that tail the log (the catalog) read up to it. Stored with `Release` after the sync.
    pub durable_lsn: AtomicU64,
    fsync_us: [AtomicU64; BUCKETS],
    /// Groups by size: bucket i holds groups of at most 2^i records.
    group_sizes: [AtomicU64; BUCKETS],
}

impl Default for WalStats {
    fn default() -> Self {
        WalStats {
            records: AtomicU64::new(0),
            marks: AtomicU64::new(0),
            bytes: AtomicU64::new(0),
            groups: AtomicU64::new(0),
            fsyncs: AtomicU64::new(0),
            max_group: AtomicU64::new(0),
            segments: AtomicU64::new(0),
            active_bytes: AtomicU64::new(0),
            keys: AtomicU64::new(0),
            keys_evicted: AtomicU64::new(0),
            durable_lsn: AtomicU64::new(0),
            fsync_us: std::array::from_fn(|_| AtomicU64::new(0)),
            group_sizes: std::array::from_fn(|_| AtomicU64::new(0)),
        }
    }
}

/// The power-of-two bucket of `v`: the smallest i with v <= 2^i (0 and 1 in bucket 0).
fn bucket_of(v: u64) -> usize {
    (64 - v.saturating_sub(1).leading_zeros() as usize).min(BUCKETS - 1)
}

impl WalStats {
    /// Records one fdatasync that took `us` microseconds.
    pub fn record_fsync(&self, us: u64) {
        self.fsyncs.fetch_add(1, Relaxed);
        self.fsync_us[bucket_of(us)].fetch_add(1, Relaxed);
    }

    /// Records one group of `n` records and `bytes` bytes.
    pub fn record_group(&self, n: u64, bytes: u64) {
        self.groups.fetch_add(1, Relaxed);
        self.records.fetch_add(n, Relaxed);
        self.bytes.fetch_add(bytes, Relaxed);
        self.max_group.fetch_max(n, Relaxed);
        let b = bucket_of(n);
        self.group_sizes[b].fetch_add(1, Relaxed);
    }

    /// Groups by size: count per bucket, bucket i holding groups of at most 2^i records.
    pub fn group_buckets(&self) -> Vec<u64> {
        self.group_sizes.iter().map(|c| c.load(Relaxed)).collect()
    }

    /// The fsync latency histogram: count per bucket, bucket i holding fsyncs of at most 2^i µs
    /// (cumulative since start).
    pub fn fsync_buckets(&self) -> Vec<u64> {
        self.fsync_us.iter().map(|c| c.load(Relaxed)).collect()
    }

    /// Upper bound (µs) of the fsync latency at quantile `q` (0..=1), or 0 with no fsync yet.
    pub fn fsync_quantile_us(&self, q: f64) -> u64 {
        let counts: Vec<u64> = self.fsync_us.iter().map(|c| c.load(Relaxed)).collect();
        let total: u64 = counts.iter().sum();
        if total == 0 {
            return 0;
        }
        let rank = ((total as f64) * q).ceil().max(1.0) as u64;
        let mut seen = 0;
        for (i, c) in counts.iter().enumerate() {
            seen += c;
            if seen >= rank {
                return 1u64 << i;
            }
        }
        1u64 << (BUCKETS - 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_are_bucket_upper_bounds() {
        let s = WalStats::default();
        assert_eq!(s.fsync_quantile_us(0.5), 0);
        for _ in 0..99 {
            s.record_fsync(150);
        }
        s.record_fsync(5000);
        assert_eq!(s.fsync_quantile_us(0.5), 256);
        assert_eq!(s.fsync_quantile_us(0.99), 256);
        assert_eq!(s.fsync_quantile_us(1.0), 8192);
    }
}
