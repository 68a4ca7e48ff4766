//! exec jobs per second: N jobs running `true`, submitted at once into an in-process runtime in a
//! temp dir, timed until every one has succeeded. Measures what an exec attempt costs the daemon
//! (fork and exec, the process group, the output pipes, the run journal).
//!
//! `cargo run --release --example exec_bench -- 3000`
//!
//! `-- 3000 --echo`: each job prints a line (kept under `DATA/output/` for `duejob log`);
//! `--no-output` keeps no output (`output_max_mib = 0`): the two side by side give what keeping
//! the output costs.

use std::time::{Duration, Instant};

use duejob::{Config, JobSpec, Runtime};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let n: u64 = args
        .iter()
        .find(|a| !a.starts_with("--"))
        .map(|s| s.parse())
        .transpose()?
        .unwrap_or(3000);
    let echo = args.iter().any(|a| a == "--echo");
    let mut cfg = Config::with_workers(4);
    if args.iter().any(|a| a == "--no-output") {
        cfg.output_max_bytes = 0;
    }
    let dir = tempfile::Builder::new()
        .prefix("duejob-execbench-")
        .tempdir()?;
    let rt = Runtime::builder(dir.path()).config(cfg).start()?;
    let argv = if echo {
        r#"{"argv":["echo","a line of output from a job"]}"#
    } else {
        r#"{"argv":["true"]}"#
    };
    let spec = JobSpec::new("default", "exec", argv);
    let t = Instant::now();
    // Submitted from 4 threads at once, so that groups form as they would from clients.
    std::thread::scope(|s| {
        for _ in 0..4 {
            s.spawn(|| {
                for _ in 0..n / 4 {
                    rt.submit(&spec).expect("submit");
                }
            });
        }
    });
    let total = n / 4 * 4;
    loop {
        let st = rt.stats()?;
        let done = st.sched.total(duejob::wire::State::Succeeded);
        let dead = st.sched.total(duejob::wire::State::Dead);
        if done + dead >= total {
            let secs = t.elapsed().as_secs_f64();
            println!(
                "{total} exec jobs ({}, 4 workers, output {}): {:.0} jobs/s ({done} succeeded, {dead} dead) in {secs:.2} s",
                if echo { "`echo`" } else { "`true`" },
                if args.iter().any(|a| a == "--no-output") { "off" } else { "kept" },
                total as f64 / secs
            );
            break;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    rt.shutdown();
    Ok(())
}
