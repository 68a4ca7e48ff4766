//! duejob embedded in an application, and the same data talked to over the socket.
//!
//! `cargo run --example embedded`
//!
//! 1. Start a [`Runtime`] in-process with a kind of our own (`greet`, a closure) and a trait
//!    handler (`count`).
//! 2. Submit in-process, and over the socket with [`Client`] (what another process or language
//!    would do).
//! 3. Read the job's timeline back, then shut down cleanly.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use duejob::client::Submit;
use duejob::{Client, Handler, JobContext, JobError, JobSpec, Runtime};

/// A handler as a trait: counts the jobs it ran.
struct Count(Arc<AtomicU64>);

impl Handler for Count {
    fn validate(&self, payload: &str) -> Result<(), String> {
        serde_json::from_str::<serde_json::Value>(payload)
            .ok()
            .filter(|v| v["by"].is_u64())
            .map(|_| ())
            .ok_or_else(|| "count payload: {\"by\": N} expected".to_string())
    }
    fn run(&self, ctx: &JobContext<'_>) -> Result<(), JobError> {
        let v: serde_json::Value = serde_json::from_str(ctx.payload).map_err(|e| e.to_string())?;
        self.0
            .fetch_add(v["by"].as_u64().unwrap_or(0), Ordering::SeqCst);
        Ok(())
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = tempfile::tempdir()?;
    let counter = Arc::new(AtomicU64::new(0));
    let rt = Runtime::builder(dir.path())
        .workers(4)
        .register("greet", |ctx: &JobContext<'_>| -> Result<(), JobError> {
            println!(
                "  greet: job {} attempt {} payload {}",
                ctx.id, ctx.attempt, ctx.payload
            );
            Ok(())
        })
        .register("count", Count(counter.clone()))
        .start()?;

    // In-process: returns once the job's WAL record is durable.
    let s = rt.submit(&JobSpec::new("notifications", "greet", r#"{"to":"ada"}"#))?;
    println!("submitted in-process: job {} at LSN {}", s.id, s.lsn);
    let e = rt
        .submit(&JobSpec::new("default", "count", r#"{"by":"two"}"#))
        .unwrap_err();
    println!("rejected before anything was written: {e}");

    // Over the socket, as any other process would.
    let sock = dir.path().join("duejob.sock");
    let server = duejob::server::serve(rt.handle(), &sock)?;
    let mut client = Client::connect(&sock)?;
    let ids = client.submit_batch(&vec![
        Submit::new("bulk", "count")
            .payload(serde_json::json!({"by": 2}));
        5
    ])?;
    println!("submitted over the socket: jobs {ids:?}");

    std::thread::sleep(Duration::from_millis(200));
    let info = client.status(s.id)?;
    println!(
        "job {} is {} after {} attempt(s)",
        info.id,
        info.state,
        info.attempts.len()
    );
    println!("count jobs added up to {}", counter.load(Ordering::SeqCst));
    server.stop();
    rt.shutdown();
    Ok(())
}
