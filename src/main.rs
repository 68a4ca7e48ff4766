//! The `duejob` binary: the command line (`cli/`: argument definitions, the client subcommands,
//! the daemon's start-up, the offline WAL tools' printing and the demo), on the library's public
//! API only.

mod cli;

fn main() {
    std::process::exit(cli::main_with_args(std::env::args_os()));
}
