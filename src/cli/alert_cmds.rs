//! `duejob alerts`: the alert rules and their state.

use std::io::Write;

use super::client_cmds::print_reply;
use super::fmt::{millis, time};
use super::{CliResult, ClientOpts};
use duejob::client::Client;

/// `duejob alerts`: firing ones first, then those pending or ok.
pub fn alerts(opts: &ClientOpts) -> CliResult {
    let mut c = Client::connect(&opts.socket)?;
    let list = c.alerts()?;
    if opts.json {
        return print_reply(&list);
    }
    let mut out = std::io::stdout().lock();
    writeln!(
        out,
        "{:<20} {:<16} {:<8} {:>12} {:>12}  since",
        "alert", "queue/kind", "state", "value", "threshold"
    )?;
    for a in &list.alerts {
        let fmt = |v: f64| match a.unit.as_str() {
            "ms" => millis(v),
            "µs fsync p99" => millis(v / 1000.0),
            _ => format!("{v}"),
        };
        writeln!(
            out,
            "{:<20} {:<16} {:<8} {:>12} {:>12}  {}",
            a.alert,
            a.queue.as_deref().or(a.kind.as_deref()).unwrap_or("-"),
            a.state,
            fmt(a.value),
            fmt(a.threshold),
            a.since.map(time).unwrap_or_default()
        )?;
    }
    let s = &list.summary;
    writeln!(
        out,
        "{} firing; since start {} fired, {} resolved; alert_command: {} runs, {} failed{}",
        s.firing,
        s.fired,
        s.resolved,
        s.command_runs,
        s.command_failures,
        s.last_command_error
            .as_deref()
            .map(|e| format!(" (last: {e})"))
            .unwrap_or_default()
    )?;
    Ok(())
}
