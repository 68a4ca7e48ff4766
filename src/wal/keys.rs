//! The idempotency-key index, owned by the group-commit thread.
//!
//! Every submit passes through that one thread in log order, so checking and inserting a key there
//! is exact without a lock: of many connections racing the same key, the first record in the log
//! wins and every other gets `duplicate: true` with the first job's id.
//!
//! A key stays known for `retention` after its job's submission (terminal jobs included), and the
//! index is rebuilt from the WAL at start-up, so a key acknowledged before a crash is known after
//! it. Memory: about 90 bytes plus the key per entry, roughly 8 million 40-byte keys per GiB.
//! Beyond `max_keys` the oldest keys are forgotten early, loudly (error log, `stats`), rather than
//! refusing work: the dedup window shrinks, the primary path keeps going (G6,
//! docs/guarantees.md). The catalog will
//! move old keys to disk.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

/// A known key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeyEntry {
    /// The first job submitted with the key.
    pub id: u64,
    /// LSN of that job's submit record.
    pub lsn: u64,
    /// When the key is forgotten (ms since the epoch).
    pub expires: u64,
}

/// Keys by name, with their insertion order for expiry.
#[derive(Debug, Default)]
pub struct KeyIndex {
    map: HashMap<Arc<str>, KeyEntry>,
    order: VecDeque<Arc<str>>,
    retention_ms: u64,
    max_keys: usize,
    evicted: u64,
}

impl KeyIndex {
    /// An empty index.
    pub fn new(retention_ms: u64, max_keys: usize) -> KeyIndex {
        KeyIndex {
            retention_ms,
            max_keys: max_keys.max(1),
            ..KeyIndex::default()
        }
    }

    /// The live entry for `key`, if it has not expired at `now`.
    pub fn get(&self, key: &str, now: u64) -> Option<KeyEntry> {
        self.map.get(key).copied().filter(|e| e.expires > now)
    }

    /// Records `key` for job `id` submitted at `submitted_at` (unless already known).
    pub fn insert(&mut self, key: &str, id: u64, lsn: u64, submitted_at: u64, now: u64) {
        let expires = submitted_at.saturating_add(self.retention_ms);
        if expires <= now || self.get(key, now).is_some() {
            return;
        }
        let k: Arc<str> = Arc::from(key);
        self.map.insert(k.clone(), KeyEntry { id, lsn, expires });
        self.order.push_back(k);
        while self.map.len() > self.max_keys {
            if let Some(old) = self.order.pop_front() {
                if self.map.remove(&old).is_some() {
                    self.evicted += 1;
                    if self.evicted.is_power_of_two() {
                        log::error!(
                            "idempotency keys: more than {} within the retention window; forgot {} early (raise max_keys)",
                            self.max_keys, self.evicted
                        );
                    }
                }
            }
        }
    }

    /// Restores a key as a checkpoint holds it (unless it expired by `now` or is known).
    pub fn restore(&mut self, key: &str, e: KeyEntry, now: u64) {
        let retention = self.retention_ms;
        self.insert(key, e.id, e.lsn, e.expires.saturating_sub(retention), now);
    }

    /// Every key known, oldest first.
    pub fn entries(&self) -> impl Iterator<Item = (&str, &KeyEntry)> {
        self.order
            .iter()
            .filter_map(|k| self.map.get(k).map(|e| (&**k, e)))
    }

    /// Forgets keys whose retention has passed (oldest first; cheap when nothing expired).
    pub fn expire(&mut self, now: u64) {
        while let Some(front) = self.order.front() {
            match self.map.get(front) {
                Some(e) if e.expires > now => break,
                Some(_) => {
                    self.map.remove(front);
                    self.order.pop_front();
                }
                None => {
                    self.order.pop_front();
                }
            }
        }
    }

    /// Keys known.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// True when no key is known.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// Keys forgotten before their retention ended because of `max_keys`.
    pub fn evicted(&self) -> u64 {
        self.evicted
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_expire_after_retention_and_the_cap_evicts_oldest() {
        let mut k = KeyIndex::new(1000, 2);
        k.insert("a", 1, 10, 0, 0);
        k.insert("a", 2, 11, 0, 0);
        assert_eq!(k.get("a", 5).map(|e| e.id), Some(1), "first wins");
        k.insert("b", 3, 12, 500, 500);
        k.expire(1000);
        assert_eq!(
            k.get("a", 1000),
            None,
            "expired at submitted_at + retention"
        );
        assert_eq!(k.get("b", 1000).map(|e| e.id), Some(3));
        k.insert("c", 4, 13, 900, 900);
        k.insert("d", 5, 14, 900, 900);
        assert_eq!(k.len(), 2);
        assert_eq!(k.evicted(), 1);
        assert_eq!(k.get("b", 900), None, "oldest evicted over the cap");
        k.insert("old", 6, 15, 0, 5000);
        assert_eq!(
            k.get("old", 5000),
            None,
            "already expired keys are not stored"
        );
    }
}
