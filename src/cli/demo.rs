//! `duejob demo`: the incidents, replayed. A daemon in a temp dir gets a flood of bulk jobs, then a
//! steady trickle of notifications; the run is repeated under plain FIFO, and a table compares
//! how long each queue's jobs waited for a worker. Then the second incident: the notifications'
//! gateway starts answering "try again later" during a flood; duejob's alert fires, the
//! operator pauses bulk, the gateway comes back, the alert resolves, every notification is sent
//! once. Everything goes through the real socket.

use std::io::Write;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Args;

use crate::cli::fmt::millis;
use crate::cli::CliResult;
use duejob::client::{Client, Submit};
use duejob::config::{Config, Order};
use duejob::runtime::Runtime;
use duejob::wire::{State, Stats};

/// `demo` arguments.
#[derive(Debug, Clone, Args)]
pub struct DemoArgs {
    /// Bulk jobs in the flood.
    #[arg(long, default_value_t = 3000)]
    pub bulk: u64,
    /// Run time of one bulk job (ms).
    #[arg(long, default_value_t = 5)]
    pub bulk_ms: u64,
    /// Notifications per second during the flood.
    #[arg(long, default_value_t = 20)]
    pub rate: u64,
    /// Worker threads.
    #[arg(long, default_value_t = 4)]
    pub workers: usize,
    /// Only the second part: the failing gateway, the alert and the operator's fix.
    #[arg(long)]
    pub incident_only: bool,
}

/// The demo's notification kind: an SMS gateway that answers "try again later" while `down`.
struct Gateway {
    down: Arc<AtomicBool>,
    sent: Arc<AtomicU64>,
}

impl duejob::Handler for Gateway {
    fn run(&self, _ctx: &duejob::JobContext<'_>) -> Result<(), duejob::JobError> {
        std::thread::sleep(Duration::from_millis(2));
        if self.down.load(Ordering::SeqCst) {
            return Err(duejob::JobError::new(
                "gateway answered 503: try again later",
            ));
        }
        self.sent.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }
}

/// Part two: the gateway fails during a flood; the alert, the operator's fix, the recovery.
fn incident(a: &DemoArgs, out: &mut dyn Write) -> CliResult {
    let dir = tempfile::Builder::new().prefix("duejob-demo-").tempdir()?;
    let mut cfg = Config::with_workers(a.workers);
    for q in &mut cfg.queues {
        if q.name == "notifications" {
            q.reserved = 0;
            q.max_attempts = 1000;
            q.retry_past_deadline = true;
            q.backoff_base = Duration::from_millis(100);
            q.backoff_cap = Duration::from_millis(300);
        }
    }
    cfg.alerts.clear = Duration::from_secs(2);
    let (down, sent) = (Arc::new(AtomicBool::new(true)), Arc::new(AtomicU64::new(0)));
    let rt = Runtime::builder(dir.path())
        .config(cfg)
        .register(
            "sms",
            Gateway {
                down: down.clone(),
                sent: sent.clone(),
            },
        )
        .start()?;
    let sock = dir.path().join("duejob.sock");
    let server = duejob::server::serve(rt.handle(), &sock)?;
    let mut c = Client::connect(&sock)?;
    writeln!(
        out,
        "\nPart 2: the SMS gateway answers \"try again later\" while {} bulk jobs of 200 ms flood the workers.",
        a.workers * 20
    )?;
    let bulk = Submit::new("bulk", "sleep").payload(serde_json::json!({ "ms": 200 }));
    c.submit_batch(&vec![bulk; a.workers * 20])?;
    let sms = Submit::new("notifications", "sms");
    let n = 20u64;
    c.submit_batch(&vec![sms; n as usize])?;
    let t0 = Instant::now();
    let secs = |t: Instant| t.duration_since(t0).as_secs_f64();
    let firing = |c: &mut Client| -> Result<bool, Box<dyn std::error::Error>> {
        Ok(c.alerts()?.alerts.iter().any(|x| {
            x.alert == "retrying"
                && x.queue.as_deref() == Some("notifications")
                && x.state == "firing"
        }))
    };
    let (mut fired, mut paused, mut back, mut resolved) = (None, None, None, None);
    loop {
        let now = Instant::now();
        let s = c.stats()?;
        let q = &s.sched.queues["notifications"];
        let b = &s.sched.queues["bulk"];
        if fired.is_none() && firing(&mut c)? {
            fired = Some(now);
            writeln!(
                out,
                "  {:>5.1}s ALERT retrying firing for queue notifications ({} retries so far): alert_command would page now",
                secs(now),
                q.retries
            )?;
        }
        if fired.is_some() && paused.is_none() {
            c.queue_pause("bulk", None)?;
            paused = Some(now);
            writeln!(
                out,
                "  {:>5.1}s operator: duejob queue pause bulk    (bulk takes jobs, holds them ready)",
                secs(now)
            )?;
        }
        if paused.is_some_and(|p| now.duration_since(p) > Duration::from_secs(1)) && back.is_none()
        {
            down.store(false, Ordering::SeqCst);
            back = Some(now);
            writeln!(out, "  {:>5.1}s the gateway is back", secs(now))?;
        }
        let done = q.count(State::Succeeded);
        if back.is_some() && resolved.is_none() && done >= n && !firing(&mut c)? {
            resolved = Some(now);
            writeln!(
                out,
                "  {:>5.1}s alert resolved: {done}/{n} notifications sent; operator: duejob queue resume bulk",
                secs(now)
            )?;
            c.queue_resume("bulk")?;
        }
        if resolved.is_some() && b.count(State::Ready) + b.count(State::Running) == 0 {
            break;
        }
        if now.duration_since(t0) > Duration::from_secs(120) {
            return Err("the incident demo did not finish within 120 s".into());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let s = c.stats()?;
    let q = &s.sched.queues["notifications"];
    writeln!(
        out,
        "Every notification sent once: {} of {n} (the gateway counted {}), after {} retries; the alert fired {:.1} s in and resolved {:.1} s after the gateway came back; bulk finished after.",
        q.count(State::Succeeded),
        sent.load(Ordering::SeqCst),
        q.retries,
        fired.map_or(0.0, secs),
        resolved.zip(back).map_or(0.0, |(r, b)| r.duration_since(b).as_secs_f64())
    )?;
    server.stop();
    rt.shutdown();
    Ok(())
}

/// What one run measured.
#[derive(Debug, Clone)]
struct DemoRun {
    /// Final stats.
    stats: Stats,
    /// Time from the first bulk submit until the last bulk job finished.
    bulk_makespan: Duration,
    /// Notifications sent.
    notifications: u64,
}

fn count(stats: &Stats, queue: &str, state: State) -> u64 {
    stats.sched.queues.get(queue).map_or(0, |q| q.count(state))
}

/// Runs the scenario once under `order` and returns the figures.
fn run_once(
    a: &DemoArgs,
    order: Order,
    progress: bool,
) -> Result<DemoRun, Box<dyn std::error::Error>> {
    let dir = tempfile::Builder::new().prefix("duejob-demo-").tempdir()?;
    let mut cfg = Config::with_workers(a.workers);
    cfg.order = order;
    let rt = Runtime::builder(dir.path()).config(cfg).start()?;
    let sock = dir.path().join("duejob.sock");
    let server = duejob::server::serve(rt.handle(), &sock)?;
    let mut c = Client::connect(&sock)?;
    let t0 = Instant::now();
    let bulk_job = Submit::new("bulk", "sleep").payload(serde_json::json!({ "ms": a.bulk_ms }));
    let mut left = a.bulk;
    while left > 0 {
        let n = left.min(1000);
        c.submit_batch(&vec![bulk_job.clone(); n as usize])?;
        left -= n;
    }
    let note = Submit::new("notifications", "sleep").payload(serde_json::json!({ "ms": 1 }));
    let every = Duration::from_millis(1000 / a.rate.max(1));
    let mut sent = 0u64;
    let mut next_note = Instant::now();
    let mut next_report = Instant::now();
    let mut makespan = None;
    loop {
        let now = Instant::now();
        if makespan.is_none() && now >= next_note {
            c.submit(&note)?;
            sent += 1;
            next_note += every;
        }
        if now >= next_report || makespan.is_some() {
            let s = c.stats()?;
            let bulk_done = count(&s, "bulk", State::Succeeded);
            let notes_done = count(&s, "notifications", State::Succeeded);
            if progress {
                let w = &s.sched.queues["notifications"].wait_ms;
                eprint!(
                    "\r  [{:<8}] bulk {bulk_done:>6}/{}  notifications {notes_done:>4}/{sent:<4} wait p99 {:>8}  ",
                    order.name(),
                    a.bulk,
                    millis(w.p99)
                );
            }
            if makespan.is_none() && bulk_done >= a.bulk {
                makespan = Some(t0.elapsed());
            }
            if makespan.is_some() && notes_done >= sent {
                if progress {
                    eprintln!();
                }
                let stats = s;
                server.stop();
                rt.shutdown();
                return Ok(DemoRun {
                    stats,
                    bulk_makespan: makespan.unwrap_or_default(),
                    notifications: sent,
                });
            }
            next_report = now + Duration::from_millis(200);
        }
        let wake = next_note.min(next_report);
        std::thread::sleep(
            wake.saturating_duration_since(Instant::now())
                .min(Duration::from_millis(50)),
        );
    }
}

/// `duejob demo`.
pub fn run(a: &DemoArgs) -> CliResult {
    if a.incident_only {
        return incident(a, &mut std::io::stdout().lock());
    }
    eprintln!(
        "duejob demo: {} workers; {} bulk jobs of {} ms flood the `bulk` queue, then {} notifications/s (1 ms each) arrive.",
        a.workers, a.bulk, a.bulk_ms, a.rate
    );
    eprintln!("Each job is fdatasync'd to the WAL before it runs. Same run twice: duejob's deadline order, then plain FIFO.");
    let edf = run_once(a, Order::Deadline, true)?;
    let fifo = run_once(a, Order::Fifo, true)?;
    let mut out = std::io::stdout().lock();
    writeln!(out)?;
    writeln!(
        out,
        "{:<34} {:>18} {:>14}",
        "wait for a worker", "deadline (duejob)", "plain FIFO"
    )?;
    for q in ["notifications", "bulk"] {
        let (e, f) = (
            &edf.stats.sched.queues[q].wait_ms,
            &fifo.stats.sched.queues[q].wait_ms,
        );
        for (label, ev, fv) in [
            ("p50", e.p50, f.p50),
            ("p99", e.p99, f.p99),
            ("max", e.max, f.max),
        ] {
            writeln!(
                out,
                "{:<34} {:>18} {:>14}",
                format!("{q} wait {label}"),
                millis(ev),
                millis(fv)
            )?;
        }
    }
    let misses = |r: &DemoRun| r.stats.sched.queues["notifications"].deadline_misses;
    writeln!(
        out,
        "{:<34} {:>18} {:>14}",
        "notifications sent", edf.notifications, fifo.notifications
    )?;
    writeln!(
        out,
        "{:<34} {:>18} {:>14}",
        "notification deadlines missed",
        misses(&edf),
        misses(&fifo)
    )?;
    writeln!(
        out,
        "{:<34} {:>18} {:>14}",
        "bulk makespan",
        millis(edf.bulk_makespan.as_secs_f64() * 1000.0),
        millis(fifo.bulk_makespan.as_secs_f64() * 1000.0)
    )?;
    let (e99, f99) = (
        edf.stats.sched.queues["notifications"].wait_ms.p99,
        fifo.stats.sched.queues["notifications"].wait_ms.p99,
    );
    writeln!(out)?;
    writeln!(
        out,
        "Notifications overtook the flood: p99 wait {} under deadline order vs {} under FIFO ({}x), at a bulk makespan ratio of {:.2}.",
        millis(e99),
        millis(f99),
        if e99 > 0.0 { format!("{:.0}", f99 / e99) } else { "∞".into() },
        edf.bulk_makespan.as_secs_f64() / fifo.bulk_makespan.as_secs_f64().max(1e-9)
    )?;
    incident(a, &mut out)
}
