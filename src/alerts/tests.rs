//! The rules over made-up figures: fire after the hold time, resolve only after the clear time,
//! no flapping inside the hysteresis band.

use super::*;
use crate::wire::{Percentiles, RecentStats, SchedStats, WalReport};

fn queue(ready: u64, slack: Option<i64>, retries: u64, recent_retries: u64) -> QueueStats {
    let mut states = BTreeMap::new();
    states.insert(crate::job::State::Ready, ready);
    QueueStats {
        states,
        max_workers: 4,
        reserved: 0,
        due_in_ms: 30_000,
        lend_limit_ms: 300,
        paused_until: None,
        overridden: Vec::new(),
        oldest_ready_age_ms: slack.map(|s| (30_000 - s).max(0) as u64),
        slack_ms: slack,
        late: 0,
        deadline_misses: 0,
        failures: retries,
        retries,
        timeouts: 0,
        borrowed: 0,
        wait_ms: Percentiles::default(),
        run_ms: Percentiles::default(),
        recent: RecentStats {
            window_ms: 60_000,
            retries: recent_retries,
            ..RecentStats::default()
        },
    }
}

fn stats(q: QueueStats) -> Stats {
    let mut queues = BTreeMap::new();
    queues.insert("notifications".to_string(), q);
    Stats {
        sched: SchedStats {
            totals: BTreeMap::new(),
            queues,
            workers: 4,
            busy: 0,
            order: "deadline".into(),
        },
        wal: serde_json::from_value::<WalReport>(serde_json::json!({
            "sync": "always", "segments": 1, "bytes": 0, "records": 0, "sync_marks": 0,
            "groups": 0, "mean_group": 0.0, "max_group": 0, "fsyncs": 0, "fsync_p50_us": 0,
            "fsync_p99_us": 0, "keys": 0, "keys_evicted": 0,
            "checkpoint": {"auto": true, "bytes_since": 0, "checkpoints": 0, "last_at": null,
                "last_lsn": 0, "last_ms": 0, "last_bytes": 0, "failures": 0, "released": 0,
                "archive_segments": 0, "archive_bytes": 0}
        }))
        .expect("a WAL report"),
        kinds: BTreeMap::new(),
        catalog: None,
        alerts: None,
    }
}

fn cfg(clear_s: u64) -> Arc<Config> {
    let mut c = Config::with_workers(4);
    c.queues.retain(|q| q.name == "notifications");
    c.alerts.clear = Duration::from_secs(clear_s);
    Arc::new(c)
}

fn names(ev: &[Event]) -> Vec<(&'static str, &'static str)> {
    ev.iter().map(|e| (e.alert, e.state)).collect()
}

/// The events of these rules only.
fn only(ev: &[Event], rules: &[&str]) -> Vec<(&'static str, &'static str)> {
    ev.iter()
        .filter(|e| rules.contains(&e.alert))
        .map(|e| (e.alert, e.state))
        .collect()
}

fn state_of(ev: &Evaluator, rule: &str) -> String {
    ev.list()
        .into_iter()
        .find(|a| a.alert == rule)
        .map(|a| a.state)
        .unwrap_or_default()
}

#[test]
fn retrying_fires_at_once_and_resolves_after_the_clear_time_without_retries() {
    let mut ev = Evaluator::new(cfg(5));
    assert!(ev.tick(0, &stats(queue(0, None, 0, 0)), &[]).is_empty());
    let e = ev.tick(1_000, &stats(queue(0, None, 1, 1)), &[]);
    assert_eq!(names(&e), [("retrying", "firing")]);
    assert_eq!(e[0].queue.as_deref(), Some("notifications"));
    assert_eq!(e[0].value, 1.0);
    assert!(e[0].figures.is_some());
    let json = serde_json::to_value(&e[0]).unwrap();
    for k in [
        "alert",
        "queue",
        "state",
        "value",
        "threshold",
        "since",
        "at",
        "figures",
    ] {
        assert!(json.get(k).is_some(), "{k} in {json}");
    }
    // Still retrying: firing, no new event.
    assert!(ev.tick(2_000, &stats(queue(0, None, 2, 2)), &[]).is_empty());
    // Retries stop: clear for 5 s, then resolved (once).
    assert!(ev.tick(3_000, &stats(queue(0, None, 2, 2)), &[]).is_empty());
    assert!(ev.tick(7_000, &stats(queue(0, None, 2, 2)), &[]).is_empty());
    // A retry inside the clear time starts the clear time again.
    assert!(ev.tick(7_500, &stats(queue(0, None, 3, 3)), &[]).is_empty());
    assert!(ev.tick(8_000, &stats(queue(0, None, 3, 3)), &[]).is_empty());
    assert!(ev
        .tick(12_900, &stats(queue(0, None, 3, 3)), &[])
        .is_empty());
    let e = ev.tick(13_000, &stats(queue(0, None, 3, 3)), &[]);
    assert_eq!(names(&e), [("retrying", "resolved")]);
    assert_eq!(e[0].since, 1_000, "since it fired");
    assert!(ev
        .tick(14_000, &stats(queue(0, None, 3, 3)), &[])
        .is_empty());
}

#[test]
fn slack_waits_its_hold_time_and_does_not_flap_between_its_thresholds() {
    let mut ev = Evaluator::new(cfg(0));
    // Threshold: 10% of 30 s = 3 s. Under it for less than the hold (2 s): nothing.
    assert!(ev
        .tick(0, &stats(queue(5, Some(2_000), 0, 0)), &[])
        .is_empty());
    assert!(ev
        .tick(1_000, &stats(queue(5, Some(2_500), 0, 0)), &[])
        .is_empty());
    assert_eq!(state_of(&ev, "slack"), "pending");
    let e = ev.tick(2_000, &stats(queue(5, Some(2_500), 0, 0)), &[]);
    assert_eq!(names(&e), [("slack", "firing")]);
    // Between 3 s and 6 s: neither fires again nor resolves.
    assert!(ev
        .tick(3_000, &stats(queue(5, Some(4_000), 0, 0)), &[])
        .is_empty());
    assert!(ev
        .tick(4_000, &stats(queue(5, Some(2_900), 0, 0)), &[])
        .is_empty());
    assert_eq!(state_of(&ev, "slack"), "firing");
    // Above twice the threshold: resolved (clear time 0).
    let e = ev.tick(5_000, &stats(queue(5, Some(7_000), 0, 0)), &[]);
    assert_eq!(names(&e), [("slack", "resolved")]);
    // Back under it briefly: pending, then it clears before the hold.
    assert!(ev
        .tick(6_000, &stats(queue(5, Some(1_000), 0, 0)), &[])
        .is_empty());
    assert!(ev
        .tick(7_000, &stats(queue(5, Some(9_000), 0, 0)), &[])
        .is_empty());
    assert!(ev.list().iter().all(|a| a.state == "ok"), "{:?}", ev.list());
}

#[test]
fn late_jobs_and_a_stalled_queue_fire_and_a_failing_kind_after_three_failures() {
    let mut c = Config::with_workers(4);
    c.queues.retain(|q| q.name == "notifications");
    c.queues[0].alert_stall = Duration::from_secs(10);
    c.alerts.clear = Duration::ZERO;
    let mut ev = Evaluator::new(Arc::new(c));
    let mut q = queue(3, Some(-500), 0, 0);
    q.late = 3;
    let watched = ["deadline_missed", "stall"];
    let e = ev.tick(0, &stats(q.clone()), &[]);
    assert_eq!(only(&e, &watched), [("deadline_missed", "firing")]);
    let e = e.iter().find(|e| e.alert == "deadline_missed").unwrap();
    assert_eq!(e.value, 3.0);
    assert!(e.severe);
    // Nothing ends for 10 s while jobs are ready: stalled.
    let e = ev.tick(5_000, &stats(q.clone()), &[]);
    assert!(only(&e, &watched).is_empty(), "{e:?}");
    let e = ev.tick(10_000, &stats(q.clone()), &[]);
    assert_eq!(only(&e, &watched), [("stall", "firing")]);
    // An attempt ends: the stall resolves.
    q.run_ms.count = 1;
    let e = ev.tick(11_000, &stats(q.clone()), &[]);
    assert_eq!(only(&e, &watched), [("stall", "resolved")]);
    let mut s = stats(q);
    for (n, fires) in [(1, false), (2, false), (3, true)] {
        s.kinds.insert(
            "email".into(),
            crate::wire::KindHealth {
                consecutive_failures: n,
                ..Default::default()
            },
        );
        let e = ev.tick(12_000 + n * 1000, &s, &[]);
        assert_eq!(
            only(&e, &["kind_failing"]) == [("kind_failing", "firing")],
            fires,
            "{n}: {e:?}"
        );
    }
}

#[test]
fn slow_fsyncs_over_the_last_ten_seconds_fire_wal_sync() {
    let mut ev = Evaluator::new(cfg(0));
    let s = stats(queue(0, None, 0, 0));
    let mut b = vec![0u64; 24];
    // Fast fsyncs (≤ 1 ms).
    b[10] = 1_000;
    ev.tick(0, &s, &b);
    b[10] = 2_000;
    assert!(ev.tick(1_000, &s, &b).is_empty());
    // Then only slow ones (≤ 2^18 µs = 262 ms) for 6 s: past the 5 s hold.
    for t in 2..=8u64 {
        b[18] += 100;
        let e = ev.tick(t * 1000, &s, &b);
        if t < 7 {
            assert!(e.is_empty(), "{t}: {e:?}");
        } else if t == 7 {
            assert_eq!(names(&e), [("wal_sync", "firing")], "{t}");
        }
    }
}

#[test]
fn the_quantile_of_buckets_needs_enough_samples() {
    assert_eq!(quantile_upper(&[0, 5], 0.99), None);
    assert_eq!(quantile_upper(&[0, 100, 0, 1], 0.99), Some(2));
    assert_eq!(quantile_upper(&[0, 90, 0, 10], 0.99), Some(8));
}
