//! The command line: argument definitions (clap) and dispatch to the subcommands.
//! `src/main.rs` only calls [`main_with_args`].

mod alert_cmds;
mod catalog_cmds;
mod client_cmds;
mod demo;
pub mod error;
pub mod fmt;
mod serve;
mod top;
mod wal;

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

pub use error::{exit, CliError};

/// What a subcommand returns.
pub type CliResult = Result<(), CliError>;

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
    /// Show an exec job's output (stdout and stderr as they came; the last 32-64 KiB of each
    /// attempt); -f follows it while it runs, through its retries, until the job ends.
    Log(client_cmds::LogArgs),
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
    /// Print a shell completion script (e.g. `duejob completions bash >
    /// ~/.local/share/bash-completion/completions/duejob`).
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
    /// Print the man page (roff; `duejob man | man -l -`), or write it with one page per
    /// subcommand into a directory (`duejob man --dir /usr/local/share/man/man1`).
    Man {
        /// Write duejob.1, duejob-submit.1, ... into this directory.
        #[arg(long, value_name = "DIR")]
        dir: Option<PathBuf>,
    },
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

/// Parses `args` and runs the subcommand. Returns the process exit code ([`exit`]).
pub fn main_with_args(args: impl IntoIterator<Item = std::ffi::OsString>) -> i32 {
    let args: Vec<std::ffi::OsString> = args.into_iter().collect();
    // Before `--` (what follows is a program's arguments).
    let json = args
        .iter()
        .take_while(|a| *a != "--")
        .any(|a| a == "--json");
    let cli = match Cli::try_parse_from(&args) {
        Ok(c) => c,
        Err(e) if !e.use_stderr() => {
            // --help, --version
            let _ = e.print();
            return exit::OK;
        }
        Err(e) if json => {
            let msg = e.kind().to_string();
            let detail = e.to_string();
            let first = detail
                .lines()
                .next()
                .unwrap_or(&msg)
                .trim_start_matches("error: ");
            let err = CliError::usage(first.to_string())
                .hint("`duejob help` lists the commands; `duejob COMMAND --help` the options");
            return report(&err, true);
        }
        Err(e) => {
            let _ = e.print();
            return exit::USAGE;
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
        Command::Log(a) => client_cmds::log(&a),
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
        Command::Completions { shell } => completions(shell),
        Command::Man { dir } => match dir {
            Some(d) => man_pages(&d),
            None => man_page(&mut std::io::stdout().lock()),
        },
    };
    match result {
        Ok(()) => exit::OK,
        Err(e) => report(&e, json),
    }
}

/// `duejob completions SHELL`: from the same definitions as the parser.
fn completions(shell: clap_complete::Shell) -> CliResult {
    use clap::CommandFactory;
    let mut cmd = Cli::command();
    // Into memory first: the generator panics on a write error (a closed pipe).
    let mut buf = Vec::new();
    clap_complete::generate(shell, &mut cmd, "duejob", &mut buf);
    let mut out = std::io::stdout().lock();
    std::io::Write::write_all(&mut out, &buf)?;
    std::io::Write::flush(&mut out)?;
    Ok(())
}

/// `duejob man`: the man page, from the same definitions as the parser; one section per
/// subcommand.
fn man_page(out: &mut dyn std::io::Write) -> CliResult {
    use clap::CommandFactory;
    let cmd = Cli::command();
    let mut out = out;
    let man = clap_mangen::Man::new(cmd.clone());
    man.render_title(&mut out)?;
    man.render_name_section(&mut out)?;
    man.render_synopsis_section(&mut out)?;
    man.render_description_section(&mut out)?;
    man.render_options_section(&mut out)?;
    man.render_subcommands_section(&mut out)?;
    let mut roff = clap_mangen::roff::Roff::new();
    roff.control("SH", ["EXIT STATUS"]);
    for (code, what) in [
        (exit::OK, "done"),
        (
            exit::FAILED,
            "the daemon refused the request, or the command failed",
        ),
        (exit::USAGE, "the command line is wrong"),
        (exit::NOT_FOUND, "no such job"),
        (
            exit::UNREACHABLE,
            "the daemon cannot be reached (not running, wrong socket, no permission, busy, \
             stopping)",
        ),
    ] {
        roff.control("TP", []);
        roff.text([clap_mangen::roff::bold(code.to_string())]);
        roff.text([clap_mangen::roff::roman(what)]);
    }
    roff.control("SH", ["ENVIRONMENT"]);
    roff.control("TP", []);
    roff.text([clap_mangen::roff::bold("DUEJOB_SOCKET")]);
    roff.text([clap_mangen::roff::roman(
        "the daemon's socket for the client commands (default ./duejob-data/duejob.sock)",
    )]);
    roff.control("TP", []);
    roff.text([clap_mangen::roff::bold("RUST_LOG")]);
    roff.text([clap_mangen::roff::roman(
        "log level of the daemon (info by default) and the commands (warn)",
    )]);
    roff.to_writer(&mut out)?;
    man.render_version_section(&mut out)?;
    man.render_authors_section(&mut out)?;
    Ok(())
}

/// `duejob man --dir DIR`: a page per subcommand (`duejob-queue-set.1`), and `duejob.1` with
/// the exit codes.
fn man_pages(dir: &std::path::Path) -> CliResult {
    use clap::CommandFactory;
    std::fs::create_dir_all(dir)
        .map_err(|e| CliError::failed(format!("{}: {e}", dir.display())))?;
    clap_mangen::generate_to(Cli::command(), dir)
        .map_err(|e| CliError::failed(format!("writing man pages into {}: {e}", dir.display())))?;
    let top = dir.join("duejob.1");
    let mut f = std::fs::File::create(&top)
        .map_err(|e| CliError::failed(format!("{}: {e}", top.display())))?;
    man_page(&mut f)
}

/// Prints an error (stderr, or the JSON envelope on stdout) and returns its exit code; a broken
/// pipe ends quietly.
fn report(e: &CliError, json: bool) -> i32 {
    if e.broken_pipe {
        return exit::OK;
    }
    if json {
        use std::io::Write;
        let mut out = std::io::stdout().lock();
        let _ = serde_json::to_writer(&mut out, &e.envelope());
        let _ = writeln!(out);
    } else {
        eprintln!("duejob: error: {}", e.message);
        if let Some(h) = &e.hint {
            eprintln!("  hint: {h}");
        }
    }
    e.exit
}
