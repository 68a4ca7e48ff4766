//! A queue's figures over the last minute: waits, run times, jobs done, retries, failures.
//!
//! Six slots of ten seconds each, in a ring keyed by the monotonic clock: recording goes to the
//! current slot (reset first if it last held an older ten seconds), and a report merges the slots
//! of the last minute. After a flood ends, its waits leave the figures within a minute, where the
//! totals since start-up keep them forever.

use hdrhistogram::Histogram;

use crate::wire::RecentStats;

/// Seconds per slot.
pub const SLOT_S: u64 = 10;
/// Slots: the window is `SLOTS × SLOT_S` seconds.
pub const SLOTS: usize = 6;

#[derive(Debug, Clone)]
struct Slot {
    /// Which ten seconds it holds (monotonic seconds / SLOT_S); `u64::MAX`: none yet.
    epoch: u64,
    wait_us: Histogram<u64>,
    run_us: Histogram<u64>,
    done: u64,
    retries: u64,
    failures: u64,
}

/// The last minute of one queue.
#[derive(Debug, Clone)]
pub struct Recent {
    slots: Vec<Slot>,
}

impl Default for Recent {
    fn default() -> Recent {
        let slot = Slot {
            epoch: u64::MAX,
            wait_us: Histogram::new(3).expect("histogram"),
            run_us: Histogram::new(3).expect("histogram"),
            done: 0,
            retries: 0,
            failures: 0,
        };
        Recent {
            slots: vec![slot; SLOTS],
        }
    }
}

impl Recent {
    fn slot(&mut self, now_us: u64) -> &mut Slot {
        let epoch = now_us / 1_000_000 / SLOT_S;
        let s = &mut self.slots[(epoch % SLOTS as u64) as usize];
        if s.epoch != epoch {
            s.epoch = epoch;
            s.wait_us.reset();
            s.run_us.reset();
            s.done = 0;
            s.retries = 0;
            s.failures = 0;
        }
        s
    }

    /// A job started after waiting `us`.
    pub fn wait(&mut self, now_us: u64, us: u64) {
        let _ = self.slot(now_us).wait_us.record(us);
    }

    /// An attempt ran `us`.
    pub fn run(&mut self, now_us: u64, us: u64) {
        let _ = self.slot(now_us).run_us.record(us);
    }

    /// A job ended (succeeded or dead).
    pub fn done(&mut self, now_us: u64) {
        self.slot(now_us).done += 1;
    }

    /// An attempt failed; `retry`: a retry was scheduled.
    pub fn failed(&mut self, now_us: u64, retry: bool) {
        let s = self.slot(now_us);
        s.failures += 1;
        s.retries += u64::from(retry);
    }

    /// The figures of the last minute, at `now_us` (monotonic µs since the dispatcher began).
    pub fn report(&self, now_us: u64) -> RecentStats {
        let epoch = now_us / 1_000_000 / SLOT_S;
        let first = epoch.saturating_sub(SLOTS as u64 - 1);
        let mut wait = Histogram::<u64>::new(3).expect("histogram");
        let mut run = Histogram::<u64>::new(3).expect("histogram");
        let (mut done, mut retries, mut failures) = (0, 0, 0);
        for s in &self.slots {
            if s.epoch == u64::MAX || s.epoch < first || s.epoch > epoch {
                continue;
            }
            let _ = wait.add(&s.wait_us);
            let _ = run.add(&s.run_us);
            done += s.done;
            retries += s.retries;
            failures += s.failures;
        }
        let window_ms = (now_us / 1000).saturating_sub(first * SLOT_S * 1000).max(1);
        RecentStats {
            window_ms,
            wait_ms: super::dispatcher::percentiles(&wait),
            run_ms: super::dispatcher::percentiles(&run),
            done,
            done_per_s: done as f64 * 1000.0 / window_ms as f64,
            retries,
            failures,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: u64 = 1_000_000;

    #[test]
    fn a_flood_leaves_the_figures_after_a_minute() {
        let mut r = Recent::default();
        for _ in 0..100 {
            r.wait(5 * S, 5_000_000);
            r.done(5 * S);
        }
        r.failed(6 * S, true);
        let f = r.report(30 * S);
        assert_eq!((f.done, f.retries, f.failures), (100, 1, 1));
        assert_eq!(f.wait_ms.count, 100);
        assert!(f.wait_ms.p99 >= 4_990.0, "{f:?}");
        assert_eq!(f.window_ms, 30_000, "just after start-up: since then");
        // 55 s later its slot is more than a minute old.
        r.wait(70 * S, 1_000);
        let f = r.report(70 * S);
        assert_eq!((f.done, f.retries, f.wait_ms.count), (0, 0, 1));
        assert!(f.wait_ms.p99 < 2.0, "{f:?}");
        assert_eq!(f.window_ms, 50_000, "from the start of the oldest slot kept");
    }

    #[test]
    fn a_slot_reused_after_a_gap_starts_empty() {
        let mut r = Recent::default();
        r.done(S);
        // Sixty seconds later the same slot of the ring holds another ten seconds.
        r.done(61 * S);
        assert_eq!(r.report(61 * S).done, 1);
    }
}
