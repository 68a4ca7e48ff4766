//! Model-based test of the one job state machine: random sequences of submits (whose attempts
//! succeed, fail, fail for good, time out or hold until cancelled), cancels, dead retries and
//! purges, driven through a `Runtime` on in-memory storage. At every restart in the sequence and
//! at its end, the daemon settles, stops, and starts again on the same log: every job's status
//! (state, every attempt and its outcome, times) must be exactly what it was, and `wal inspect`'s
//! count of jobs by state must agree with it. Checkpoints come at random points too: a restart
//! from a checkpoint and the log after it must give exactly what the whole log gave.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use duejob::job::State;
use duejob::wal::io::MemStorage;
use duejob::wal::reader::{read_log_after, After};
use duejob::wire::DeadSelect;
use duejob::wire::JobInfo;
use duejob::{Config, JobContext, JobError, JobSpec, Runtime};
use proptest::prelude::*;

/// What an attempt does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Act {
    Succeed,
    Fail,
    FailForGood,
    /// Runs until its timeout tells it to stop.
    TimeOut,
    /// Runs until the job is cancelled.
    Hold,
}

impl Act {
    fn letter(self) -> char {
        match self {
            Act::Succeed => 'S',
            Act::Fail => 'F',
            Act::FailForGood => 'P',
            Act::TimeOut => 'T',
            Act::Hold => 'H',
        }
    }
}

/// The act of attempt `attempt` of a job with this script (the last act repeats).
fn act_of(script: &str, attempt: u32) -> char {
    let i = (attempt as usize).saturating_sub(1).min(script.len() - 1);
    script.as_bytes()[i] as char
}

#[derive(Debug, Clone)]
enum Op {
    Submit {
        script: Vec<Act>,
        /// `default` retries within milliseconds; `bulk` waits an hour, so its failed jobs stay
        /// `retrying` across restarts.
        slow_retries: bool,
        max_attempts: u32,
        /// An hour: the job stays `scheduled`.
        delayed: bool,
        key: Option<u8>,
    },
    Cancel(usize),
    DeadRetry(usize),
    Purge(usize),
    /// Wait until nothing runs or is about to.
    Settle,
    /// Settle, stop, start again on the same log, compare.
    Restart,
    /// Take a checkpoint (and release the segments it covers).
    Checkpoint,
}

fn arb_act() -> impl Strategy<Value = Act> {
    prop_oneof![
        4 => Just(Act::Succeed),
        3 => Just(Act::Fail),
        1 => Just(Act::FailForGood),
        1 => Just(Act::TimeOut),
        1 => Just(Act::Hold),
    ]
}

fn arb_op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (
            proptest::collection::vec(arb_act(), 1..4),
            any::<bool>(),
            1u32..4,
            prop::bool::weighted(0.15),
            proptest::option::weighted(0.2, 0u8..3),
        )
            .prop_map(|(script, slow_retries, max_attempts, delayed, key)| Op::Submit {
                script,
                slow_retries,
                max_attempts,
                delayed,
                key
            }),
        2 => any::<usize>().prop_map(Op::Cancel),
        2 => any::<usize>().prop_map(Op::DeadRetry),
        1 => any::<usize>().prop_map(Op::Purge),
        2 => Just(Op::Settle),
        1 => Just(Op::Restart),
        1 => Just(Op::Checkpoint),
    ]
}

fn config() -> Config {
    let mut c = Config::with_workers(2);
    // In memory, a segment is allocated whole.
    c.segment_size = 256 << 10;
    for q in &mut c.queues {
        q.max_attempts = 3;
        (q.backoff_base, q.backoff_cap) = match q.name.as_str() {
            "bulk" => (Duration::from_secs(3600), Duration::from_secs(3600)),
            _ => (Duration::from_millis(1), Duration::from_millis(4)),
        };
        q.retry_past_deadline = true;
    }
    c
}

/// The handler: payload `{"s": "SFT"}` says what each attempt does.
fn scripted(ctx: &JobContext<'_>) -> Result<(), JobError> {
    let v: serde_json::Value = serde_json::from_str(ctx.payload).expect("payload");
    let script = v["s"].as_str().expect("script");
    let t = Instant::now();
    match act_of(script, ctx.attempt) {
        'S' => Ok(()),
        'F' => Err(JobError::new("failed")),
        'P' => Err(JobError::permanent("failed for good")),
        _ => {
            // Held until the dispatcher says stop (timeout or cancel); a cap so that a bug
            // cannot hang the test.
            while ctx.should_stop().is_none() && t.elapsed() < Duration::from_secs(20) {
                std::thread::sleep(Duration::from_millis(1));
            }
            Err(JobError::new("stopped"))
        }
    }
}

fn start(mem: &MemStorage) -> Runtime {
    Runtime::builder("/nonexistent-unused")
        .config(config())
        .storage(Arc::new(mem.clone()))
        .register("scripted", scripted)
        .start()
        .expect("runtime starts")
}

struct Run {
    mem: MemStorage,
    rt: Option<Runtime>,
    /// Job id and script, in submission order.
    jobs: Vec<(u64, String)>,
    purged: BTreeSet<u64>,
}

impl Run {
    fn rt(&self) -> &Runtime {
        self.rt.as_ref().expect("running")
    }

    fn pick(&self, i: usize) -> Option<u64> {
        (!self.jobs.is_empty()).then(|| self.jobs[i % self.jobs.len()].0)
    }

    fn apply(&mut self, op: &Op) {
        match op {
            Op::Submit {
                script,
                slow_retries,
                max_attempts,
                delayed,
                key,
            } => {
                let script: String = script.iter().map(|a| a.letter()).collect();
                let payload = serde_json::json!({ "s": script }).to_string();
                let key = key.map(|k| format!("key-{k}"));
                let spec = JobSpec {
                    max_attempts: Some(*max_attempts),
                    delay_ms: delayed.then_some(3_600_000),
                    timeout_ms: script.contains('T').then_some(30),
                    key: key.as_deref(),
                    ..JobSpec::new(
                        if *slow_retries { "bulk" } else { "default" },
                        "scripted",
                        &payload,
                    )
                };
                let s = self.rt().submit(&spec).expect("submit");
                if !s.duplicate {
                    self.jobs.push((s.id, script));
                }
            }
            Op::Cancel(i) => {
                if let Some(id) = self.pick(*i) {
                    let _ = self.rt().cancel(id);
                }
            }
            Op::DeadRetry(i) => {
                if let Some(id) = self.pick(*i) {
                    let _ = self.rt().dead_retry(&DeadSelect::one(id));
                }
            }
            Op::Purge(i) => {
                if let Some(id) = self.pick(*i) {
                    if self.rt().dead_purge(&DeadSelect::one(id)).is_ok() {
                        self.purged.insert(id);
                    }
                }
            }
            Op::Settle => {
                self.settle();
            }
            Op::Restart => self.restart(),
            Op::Checkpoint => {
                self.rt().checkpoint().expect("checkpoint");
            }
        }
    }

    /// Waits until every job has ended, waits for its delay, or waits an hour for its retry;
    /// cancels held attempts on the way. Returns every job's status.
    fn settle(&self) -> BTreeMap<u64, JobInfo> {
        let t = Instant::now();
        loop {
            let mut all = BTreeMap::new();
            let mut busy = Vec::new();
            for (id, script) in &self.jobs {
                let j = self.rt().status(*id).unwrap().expect("known job");
                let settled = match j.state {
                    State::Succeeded | State::Dead | State::Cancelled | State::Scheduled => true,
                    State::Retrying => j.queue == "bulk",
                    State::Running => {
                        if act_of(script, j.attempts.len() as u32) == 'H' {
                            let _ = self.rt().cancel(*id);
                        }
                        false
                    }
                    _ => false,
                };
                if !settled {
                    busy.push(j.clone());
                }
                all.insert(*id, j);
            }
            if busy.is_empty() {
                return all;
            }
            assert!(
                t.elapsed() < Duration::from_secs(20),
                "jobs never settled: {busy:#?}"
            );
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    /// Settles, stops, starts again on the same log; every status must be what it was, and
    /// `wal inspect`'s counts must match.
    fn restart(&mut self) {
        let before = self.settle();
        self.rt.take().expect("running").shutdown();
        self.rt = Some(start(&self.mem));
        let after = self.settle();
        for (id, b) in &before {
            assert_eq!(Some(b), after.get(id), "job {id} changed across a restart");
        }
        let mut expected: BTreeMap<String, u64> = BTreeMap::new();
        for (id, j) in &after {
            let as_counted = if self.purged.contains(id) {
                "purged".to_string()
            } else {
                j.state.to_string()
            };
            *expected.entry(as_counted).or_default() += 1;
        }
        let (mut census, summary) = duejob::checkpoint::census(&self.mem).expect("checkpoint");
        let after = summary.map_or(After::START, |s| s.after());
        read_log_after(&self.mem, after, &mut |r| {
            census.record(&r.record);
            Ok(())
        })
        .expect("log reads");
        let counted: BTreeMap<String, u64> = census
            .by_state()
            .into_iter()
            .map(|(c, n)| (c.to_string(), n))
            .collect();
        assert_eq!(counted, expected, "wal inspect disagrees with the daemon");
        assert_eq!(census.stale_records(), 0);
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    #[test]
    fn every_job_is_the_same_after_a_restart_and_inspect_agrees(
        ops in proptest::collection::vec(arb_op(), 1..24)
    ) {
        let mem = MemStorage::new();
        let mut run = Run { rt: Some(start(&mem)), mem, jobs: Vec::new(), purged: BTreeSet::new() };
        for op in &ops {
            run.apply(op);
        }
        run.restart();
        // Every submit acknowledged is a job after the restarts.
        let ids: HashMap<u64, ()> = run.jobs.iter().map(|(id, _)| (*id, ())).collect();
        prop_assert_eq!(ids.len(), run.jobs.len());
        run.rt.take().expect("running").shutdown();
    }
}

#[test]
fn the_state_names_inspect_counts_are_the_daemons() {
    // The census and the daemon name states the same way (serde names).
    for s in State::ALL {
        let json = serde_json::to_value(s).unwrap();
        assert_eq!(json.as_str().unwrap(), s.to_string());
    }
}
