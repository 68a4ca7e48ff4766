//! The fairness scenarios of docs/guarantees.md ("Performance targets") through the real daemon (socket, WAL, dispatcher), each under
//! deadline order, plain FIFO and strict priority, side by side.
//!
//! `cargo run --release --example fairness` (about 4 minutes; `--scale 0.25` for a quick look)
//!
//! - flood: W=4; 10,000 bulk jobs of 10 ms submitted at once, then 20 notifications/s (1 ms) for
//!   20 s. Target: notification p99 wait ≤ 20 ms, no missed deadline, bulk makespan within 5% of
//!   FIFO's.
//! - long-sync: the same with bulk jobs of 2 s (400 of them, so bulk outlasts the 20 s).
//!   Target: notification p99 wait ≤ 20 ms.
//! - overload: notifications (due in 1 s, 8 ms each) arrive at 550/s, more than 4 workers can run,
//!   beside 2,000 bulk jobs (due in 2 s, 1 ms) for 10 s. Strict priority starves bulk;
//!   deadline order still serves bulk jobs as their deadlines come.

use std::time::{Duration, Instant};

use clap::Parser;
use duejob::client::Submit;
use duejob::config::{Config, Order};
use duejob::wire::{Request, State};
use duejob::{Client, Runtime};

#[derive(Parser)]
struct Args {
    /// Multiplies job counts and durations (1.0 = the scenarios as specified).
    #[arg(long, default_value_t = 1.0)]
    scale: f64,
    /// Only this scenario (flood, long-sync, overload).
    #[arg(long)]
    only: Option<String>,
}

struct Scenario {
    name: &'static str,
    bulk: u64,
    bulk_ms: u64,
    note_rate: f64,
    note_ms: u64,
    seconds: f64,
    bulk_due: Option<&'static str>,
    note_due: Option<&'static str>,
}

struct Outcome {
    p50: f64,
    p99: f64,
    max: f64,
    missed: u64,
    sent: u64,
    bulk_done: u64,
    /// Bulk jobs finished while notifications were still arriving.
    bulk_in_window: u64,
    makespan: Option<Duration>,
}

fn run(s: &Scenario, order: Order) -> Result<Outcome, Box<dyn std::error::Error>> {
    let dir = tempfile::tempdir()?;
    let mut toml = format!("workers = 4\norder = \"{}\"\n", order.name());
    toml.push_str(&format!(
        "[queues.notifications]\ndue_in = \"{}\"\nreserved = 1\n[queues.bulk]\ndue_in = \"{}\"\n",
        s.note_due.unwrap_or("30s"),
        s.bulk_due.unwrap_or("1h")
    ));
    let cfg = Config::from_toml(&toml, None)?;
    let rt = Runtime::builder(dir.path()).config(cfg).start()?;
    let sock = dir.path().join("duejob.sock");
    let server = duejob::server::serve(rt.handle(), &sock)?;
    let mut c = Client::connect(&sock)?;
    let t0 = Instant::now();
    let bulk = Submit::new("bulk", "sleep").payload(serde_json::json!({ "ms": s.bulk_ms }));
    let mut left = s.bulk;
    while left > 0 {
        let k = left.min(1000);
        c.submit_batch(&vec![bulk.clone(); k as usize])?;
        left -= k;
    }
    let note =
        Submit::new("notifications", "sleep").payload(serde_json::json!({ "ms": s.note_ms }));
    let every = Duration::from_secs_f64(1.0 / s.note_rate);
    let end = t0 + Duration::from_secs_f64(s.seconds);
    let mut next = Instant::now();
    let mut sent = 0u64;
    // Pipelined sends so the sender keeps its rate even when each submit waits for a sync.
    let mut pending = 0u64;
    while Instant::now() < end {
        while Instant::now() >= next && Instant::now() < end {
            c.send(&Request::Submit(note.clone()))?;
            pending += 1;
            sent += 1;
            next += every;
        }
        while pending > 0 {
            duejob::client::check(c.read_reply()?)?;
            pending -= 1;
        }
        std::thread::sleep(
            next.saturating_duration_since(Instant::now())
                .min(Duration::from_millis(5)),
        );
    }
    let bulk_in_window = c.stats()?.sched.queues["bulk"].states[&State::Succeeded];
    // Wait for the notifications (and, when it will finish in reasonable time, the bulk flood).
    let mut makespan = None;
    loop {
        let st = c.stats()?;
        let q = |name: &str, state: State| st.sched.queues[name].states[&state];
        if makespan.is_none() && q("bulk", State::Succeeded) >= s.bulk {
            makespan = Some(t0.elapsed());
        }
        let notes_done = q("notifications", State::Succeeded) >= sent;
        let bulk_finishes = s.bulk * s.bulk_ms / 4 < 60_000;
        if notes_done && (makespan.is_some() || !bulk_finishes) {
            let w = &st.sched.queues["notifications"].wait_ms;
            let out = Outcome {
                p50: w.p50,
                p99: w.p99,
                max: w.max,
                missed: st.sched.queues["notifications"].deadline_misses,
                sent,
                bulk_done: q("bulk", State::Succeeded),
                bulk_in_window,
                makespan,
            };
            server.stop();
            rt.shutdown_within(Duration::ZERO);
            return Ok(out);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let a = Args::parse();
    let k = |n: f64| (n * a.scale).max(1.0);
    let scenarios = [
        Scenario {
            name: "flood",
            bulk: k(10_000.0) as u64,
            bulk_ms: 10,
            note_rate: 20.0,
            note_ms: 1,
            seconds: k(20.0),
            bulk_due: None,
            note_due: None,
        },
        Scenario {
            name: "long-sync",
            bulk: k(400.0) as u64,
            bulk_ms: 2000,
            note_rate: 20.0,
            note_ms: 1,
            seconds: k(20.0),
            bulk_due: None,
            note_due: None,
        },
        Scenario {
            name: "overload",
            bulk: k(2000.0) as u64,
            bulk_ms: 1,
            note_rate: 550.0,
            note_ms: 8,
            seconds: k(10.0),
            bulk_due: Some("2s"),
            note_due: Some("1s"),
        },
    ];
    println!(
        "{:<10} {:<9} {:>6} {:>9} {:>9} {:>9} {:>7} {:>14} {:>10}",
        "scenario",
        "order",
        "notes",
        "wait p50",
        "wait p99",
        "wait max",
        "missed",
        "bulk in window",
        "makespan"
    );
    for s in scenarios
        .iter()
        .filter(|s| a.only.as_deref().is_none_or(|o| o == s.name))
    {
        let mut fifo_makespan = None;
        let mut rows = Vec::new();
        for order in [Order::Fifo, Order::Deadline, Order::Priority] {
            let o = run(s, order)?;
            if order == Order::Fifo {
                fifo_makespan = o.makespan;
            }
            let ratio = match (o.makespan, fifo_makespan) {
                (Some(m), Some(f)) => format!(" ({:.3}x FIFO)", m.as_secs_f64() / f.as_secs_f64()),
                _ => String::new(),
            };
            let row = format!(
                "{:<10} {:<9} {:>6} {:>7.1}ms {:>7.1}ms {:>7.1}ms {:>7} {:>8}/{:<5} {:>9}{}",
                s.name,
                order.name(),
                o.sent,
                o.p50,
                o.p99,
                o.max,
                o.missed,
                o.bulk_in_window,
                o.bulk_done,
                o.makespan
                    .map(|m| format!("{:.2}s", m.as_secs_f64()))
                    .unwrap_or_else(|| "-".into()),
                ratio
            );
            println!("{row}");
            rows.push(row);
        }
    }
    Ok(())
}
