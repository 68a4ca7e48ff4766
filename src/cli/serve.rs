//! `duejob serve`: the daemon. SIGINT/SIGTERM stop accepting, let running jobs finish within the
//! grace period and exit 0; a second signal exits at once (nothing acknowledged is lost either
//! way: acknowledgements follow fdatasync).

use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};

use clap::Args;

use super::CliResult;
use duejob::config::{default_workers, Config};
use duejob::runtime::Runtime;
use duejob::wal::SyncMode;

/// `serve` arguments.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Data directory (WAL, socket, lock).
    #[arg(long, default_value = "./duejob-data")]
    data: PathBuf,
    /// TOML config file (queues, workers, sync, allow_uids; see docs/config.md).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Worker threads (default: CPU count, at least 4).
    #[arg(long)]
    workers: Option<usize>,
    /// WAL sync mode: always, batch:MS or never.
    #[arg(long)]
    sync: Option<String>,
    /// Socket path (default DATA/duejob.sock).
    #[arg(long)]
    socket: Option<PathBuf>,
    /// Serve Prometheus metrics at http://ADDR/metrics (e.g. 127.0.0.1:9464; port 0: any free
    /// one, logged); loopback only unless --metrics-public.
    #[arg(long, value_name = "ADDR")]
    metrics: Option<std::net::SocketAddr>,
    /// Allow --metrics on an address other than loopback.
    #[arg(long, requires = "metrics")]
    metrics_public: bool,
}

pub fn run(a: ServeArgs) -> CliResult {
    let mut cfg = match &a.config {
        Some(p) => Config::from_file(p, a.workers)?,
        None => Config::with_workers(a.workers.unwrap_or_else(default_workers)),
    };
    if let Some(s) = &a.sync {
        cfg.sync = SyncMode::parse(s)?;
    }
    cfg.validate()?;
    let grace = cfg.shutdown_grace;
    // Signals are handled from the start: one that arrives while recovery runs or before the
    // socket is up stops the daemon cleanly once it is up, instead of killing it half-way.
    let (tx, rx) = crossbeam_channel::bounded::<()>(1);
    let signals = AtomicUsize::new(0);
    ctrlc::set_handler(move || {
        if signals.fetch_add(1, Ordering::SeqCst) >= 1 {
            eprintln!("duejob: second signal: exiting now (acknowledged jobs are safe in the WAL)");
            std::process::exit(130);
        }
        let _ = tx.try_send(());
    })?;
    let fds = duejob::server::raise_fd_limit();
    log::debug!("open-file limit {fds}");
    // The socket comes first: a daemon that cannot have it (a live daemon there, a file in the
    // way, a connection cap the open-file limit cannot carry) stops before it runs any job.
    let socket = a
        .socket
        .clone()
        .unwrap_or_else(|| a.data.join("duejob.sock"));
    let bound = duejob::server::bind(&cfg, &socket, Some(&a.data))?;
    let rt = Runtime::builder(&a.data).config(cfg).start()?;
    let server = bound.serve(rt.handle());
    let metrics = match a.metrics {
        Some(addr) => Some(duejob::server::metrics::serve(
            rt.handle(),
            addr,
            a.metrics_public,
        )?),
        None => None,
    };
    log::info!(
        "duejob serving: data {}, socket {}, sync {}, {} workers",
        a.data.display(),
        socket.display(),
        rt.config().sync,
        rt.config().workers
    );
    let _ = rx.recv();
    log::info!(
        "signal received: no new connections; running jobs get {} s (a second signal exits at once)",
        grace.as_secs()
    );
    // Stop taking requests; let the runtime finish (every acknowledgement is sent); then give
    // the connections a moment to write the replies of what they had read: a submit that is in
    // the log is answered ok, not cut off.
    let closing = server.stop();
    if let Some(m) = metrics {
        m.stop();
    }
    rt.shutdown();
    let left = closing.wait(std::time::Duration::from_secs(5));
    if left > 0 {
        log::warn!("{left} connection(s) had not taken their last replies after 5 s; closing them");
    }
    Ok(())
}
