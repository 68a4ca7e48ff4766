//! The command line: argument definitions (clap) and dispatch to the subcommands.
//! `src/main.rs` only calls [`main_with_args`].

mod alert_cmds;
mod catalog_cmds;
mod client_cmds;
mod demo;
pub mod fmt;
mod serve;
mod top;
mod wal;

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

/// Boxed error for the command line.
pub type CliResult = Result<(), Box<dyn std::error::Error>>;

/// duejob: a durable, deadline-ordered job runner for one box.
#[derive(Debug, Parser)]
#[command(name = "duejob", version, about, long_about = None)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// Options of every client subcommand.
#[derive(Debug, Clone, Args)]
pub struct ClientOpts {
    /// Daemon socket.
    #[arg(
        long,
        env = "DUEJOB_SOCKET",
        default_value = "./duejob-data/duejob.sock"
    )]
    pub socket: PathBuf,
    /// Print machine-readable JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the daemon.
    Serve(serve::ServeArgs),
    /// Submit a job; prints its id.
    Submit(client_cmds::SubmitArgs),
    /// Show a job's state and timeline.
    Status {
        /// Job id.
        id: u64,
        #[command(flatten)]
        opts: ClientOpts,
    },
    /// Show per-queue and WAL figures.
    Stats {
        #[command(flatten)]
        opts: ClientOpts,
    },
    /// A live view of the figures (per queue, the WAL, firing alerts), refreshed each second;
    /// q quits.
    Top(top::TopArgs),
    /// Show the alert rules and which fire (the daemon evaluates them once a second).
    Alerts {
        #[command(flatten)]
        opts: ClientOpts,
    },
    /// Cancel a job that has not ended (a running exec job's process group is killed).
    Cancel {
        /// Job id.
        id: u64,
        #[command(flatten)]
        opts: ClientOpts,
    },
    /// List jobs by submission time, newest first, from the catalog (every job within
    /// history_retention).
    Jobs(catalog_cmds::JobsArgs),
    /// Submit the finished jobs of a time window again, duplicates discarded (try --dry-run).
    Replay(catalog_cmds::ReplayArgs),
    /// The catalog: the index of every job's history.
    #[command(subcommand)]
    Catalog(catalog_cmds::CatalogCommand),
    /// Dead letters: jobs whose attempts or deadline ran out.
    #[command(subcommand)]
    Dead(client_cmds::DeadCommand),
    /// Queues.
    #[command(subcommand)]
    Queue(QueueCommand),
    /// WAL tools: offline (read-only, but for salvage's new copy; safe while the daemon runs),
    /// and `checkpoint`, which asks the daemon.
    #[command(subcommand)]
    Wal(WalCommand),
    /// Demo: a bulk flood with notifications overtaking it, against plain FIFO.
    Demo(demo::DemoArgs),
}

#[derive(Debug, Subcommand)]
enum QueueCommand {
    /// List queues with their limits and depths, what is changed live, what is paused.
    List {
        #[command(flatten)]
        opts: ClientOpts,
    },
    /// Change a queue while the daemon runs (checked like the config file; kept across
    /// restarts; the config file gives the defaults).
    Set(alert_cmds::QueueSetArgs),
    /// Pause a queue: it still takes jobs and holds them ready; none starts until resumed.
    Pause {
        /// The queue.
        queue: String,
        /// Resume by itself after this long (e.g. 10m).
        #[arg(long = "for", value_name = "DURATION")]
        for_: Option<String>,
        #[command(flatten)]
        opts: ClientOpts,
    },
    /// Resume a paused queue.
    Resume {
        /// The queue.
        queue: String,
        #[command(flatten)]
        opts: ClientOpts,
    },
}

#[derive(Debug, Subcommand)]
enum WalCommand {
    /// Check every segment and record; exit 0 only when the log is sound.
    Verify {
        /// Data directory (holds wal/).
        data: PathBuf,
    },
    /// Summarize segments, LSN and time ranges, record counts, jobs by state and queue.
    Inspect {
        /// Data directory.
        data: PathBuf,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Print records, one per line.
    Dump(wal::DumpArgs),
    /// Copy every record that checks out into a new data directory (the way out of a damaged
    /// log; the damaged one is only read).
    Salvage(wal::SalvageArgs),
    /// Ask the running daemon for a checkpoint now: it seals its current segment, folds the log
    /// into wal/checkpoint and releases the segments it covers to DATA/archive/.
    Checkpoint {
        #[command(flatten)]
        opts: ClientOpts,
    },
}

/// Parses `args` and runs the subcommand. Returns the process exit code.
pub fn main_with_args(args: impl IntoIterator<Item = std::ffi::OsString>) -> i32 {
    let cli = match Cli::try_parse_from(args) {
        Ok(c) => c,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() { 2 } else { 0 };
        }
    };
    let default_log = match cli.command {
        Command::Serve(_) => "info",
        _ => "warn",
    };
    let _ =
        env_logger::Builder::from_env(env_logger::Env::default().default_filter_or(default_log))
            .format_timestamp_millis()
            .try_init();
    let result = match cli.command {
        Command::Serve(a) => serve::run(a),
        Command::Submit(a) => client_cmds::submit(a),
        Command::Status { id, opts } => client_cmds::status(id, &opts),
        Command::Stats { opts } => client_cmds::stats(&opts),
        Command::Alerts { opts } => alert_cmds::alerts(&opts),
        Command::Top(a) => top::run(&a),
        Command::Cancel { id, opts } => client_cmds::cancel(id, &opts),
        Command::Dead(d) => client_cmds::dead(d),
        Command::Jobs(a) => catalog_cmds::jobs(a),
        Command::Replay(a) => catalog_cmds::replay(a),
        Command::Catalog(c) => catalog_cmds::catalog(c),
        Command::Queue(QueueCommand::List { opts }) => client_cmds::queue_list(&opts),
        Command::Queue(QueueCommand::Set(a)) => alert_cmds::queue_set(&a),
        Command::Queue(QueueCommand::Pause { queue, for_, opts }) => {
            alert_cmds::queue_pause(&queue, for_.as_deref(), &opts)
        }
        Command::Queue(QueueCommand::Resume { queue, opts }) => {
            alert_cmds::queue_resume(&queue, &opts)
        }
        Command::Wal(WalCommand::Verify { data }) => return wal::verify(&data),
        Command::Wal(WalCommand::Inspect { data, json }) => wal::inspect(&data, json),
        Command::Wal(WalCommand::Dump(a)) => wal::dump(&a),
        Command::Wal(WalCommand::Salvage(a)) => wal::salvage(&a),
        Command::Wal(WalCommand::Checkpoint { opts }) => client_cmds::checkpoint(&opts),
        Command::Demo(a) => demo::run(&a),
    };
    match result {
        Ok(()) => 0,
        Err(e) if is_broken_pipe(e.as_ref()) => 0,
        Err(e) => {
            let mut msg = e.to_string();
            let mut src = e.source();
            while let Some(s) = src {
                msg.push_str(&format!(": {s}"));
                src = s.source();
            }
            eprintln!("duejob: error: {msg}");
            1
        }
    }
}

fn is_broken_pipe(e: &(dyn std::error::Error + 'static)) -> bool {
    e.downcast_ref::<std::io::Error>()
        .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
}
