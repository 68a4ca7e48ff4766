//! exec jobs per second: N jobs running `true`, submitted at once into an in-process runtime in a
//! temp dir, timed until every one has succeeded. Measures what an exec attempt costs the daemon
//! (fork and exec, the process group, the output pipes, the run journal).
//!
//! `cargo run --release --example exec_bench -- 3000`

use std::time::{Duration, Instant};

use duejob::{Config, JobSpec, Runtime};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let n: u64 = std::env::args()
        .nth(1)
        .map(|s| s.parse())
        .transpose()?
        .unwrap_or(3000);
    let dir = tempfile::Builder::new()
        .prefix("duejob-execbench-")
        .tempdir()?;
    let rt = Runtime::builder(dir.path())
        .config(Config::with_workers(4))
        .start()?;
    let spec = JobSpec::new("default", "exec", r#"{"argv":["true"]}"#);
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
                "{total} exec jobs (`true`, 4 workers): {:.0} jobs/s ({done} succeeded, {dead} dead) in {secs:.2} s",
                total as f64 / secs
            );
            break;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    rt.shutdown();
    Ok(())
}
