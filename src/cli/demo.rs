//! `duejob demo`: the incident, replayed. A daemon in a temp dir gets a flood of bulk jobs, then a
//! steady trickle of notifications; the run is repeated under plain FIFO, and a table compares
//! how long each queue's jobs waited for a worker. Everything goes through the real socket.

use std::io::Write;
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
    Ok(())
}
