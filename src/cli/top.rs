//! `duejob top`: a live terminal view of the daemon's figures, refreshed about once a second
//! (ratatui on crossterm: drawn into the alternate screen, only what changed is redrawn). Fits
//! 80×24. `q`, Esc or Ctrl-C quits and gives the terminal back as it was; a daemon that goes away
//! is shown as unreachable and reconnected to, not a crash.

use std::time::{Duration, Instant};

use clap::Args;
use ratatui::crossterm::event::{self, Event, KeyCode, KeyEventKind, KeyModifiers};
use ratatui::layout::{Constraint, Layout};
use ratatui::style::{Modifier, Style};
use ratatui::text::Line;
use ratatui::widgets::{Block, Paragraph, Row, Table};
use ratatui::Frame;

use super::fmt::millis;
use super::{CliError, CliResult, ClientOpts};
use duejob::client::Client;
use duejob::wire::{AlertInfo, State, Stats};

/// `top` arguments.
#[derive(Debug, Args)]
pub struct TopArgs {
    /// Seconds between refreshes.
    #[arg(long, default_value_t = 1.0)]
    interval: f64,
    #[command(flatten)]
    opts: ClientOpts,
}

/// What one refresh read.
struct Sample {
    at: Instant,
    stats: Stats,
    alerts: Vec<AlertInfo>,
}

/// `duejob top`.
pub fn run(a: &TopArgs) -> CliResult {
    if !(0.1..=60.0).contains(&a.interval) {
        return Err(CliError::usage(
            "--interval must be between 0.1 and 60 seconds",
        ));
    }
    use std::io::IsTerminal;
    if !std::io::stdout().is_terminal() {
        return Err(CliError::usage(
            "duejob top needs a terminal; for scripts, `duejob stats --json`",
        ));
    }
    let every = Duration::from_secs_f64(a.interval);
    let mut terminal = ratatui::try_init()?;
    let result = (|| -> CliResult {
        let mut client: Option<Client> = None;
        let mut prev: Option<Sample> = None;
        let mut last: Option<Sample> = None;
        let mut next = Instant::now();
        loop {
            if Instant::now() >= next {
                next = Instant::now() + every;
                let error = match read(&mut client, &a.opts) {
                    Ok(s) => {
                        prev = last.take();
                        last = Some(s);
                        None
                    }
                    Err(e) => {
                        client = None;
                        Some(e)
                    }
                };
                terminal
                    .draw(|f| draw(f, &a.opts, last.as_ref(), prev.as_ref(), error.as_deref()))?;
            }
            let wait = next.saturating_duration_since(Instant::now());
            if event::poll(wait)? {
                match event::read()? {
                    Event::Key(k) if k.kind == KeyEventKind::Press => {
                        let ctrl_c = k.code == KeyCode::Char('c')
                            && k.modifiers.contains(KeyModifiers::CONTROL);
                        if ctrl_c || matches!(k.code, KeyCode::Char('q') | KeyCode::Esc) {
                            return Ok(());
                        }
                    }
                    Event::Resize(..) => next = Instant::now(),
                    _ => {}
                }
            }
        }
    })();
    ratatui::try_restore()?;
    result
}

fn read(client: &mut Option<Client>, opts: &ClientOpts) -> Result<Sample, String> {
    if client.is_none() {
        *client = Some(Client::connect(&opts.socket).map_err(|e| e.to_string())?);
    }
    let c = client.as_mut().expect("connected");
    let stats = c.stats().map_err(|e| e.to_string())?;
    let alerts = c.alerts().map_err(|e| e.to_string())?.alerts;
    Ok(Sample {
        at: Instant::now(),
        stats,
        alerts,
    })
}

fn dur(ms: Option<f64>) -> String {
    ms.map_or_else(|| "-".into(), millis)
}

fn draw(
    f: &mut Frame,
    opts: &ClientOpts,
    s: Option<&Sample>,
    prev: Option<&Sample>,
    error: Option<&str>,
) {
    let bold = Style::default().add_modifier(Modifier::BOLD);
    let [title, queues, recent, wal, alerts, help] = Layout::vertical([
        Constraint::Length(1),
        Constraint::Min(4),
        Constraint::Min(4),
        Constraint::Length(1),
        Constraint::Length(3),
        Constraint::Length(1),
    ])
    .areas(f.area());
    let head = match (s, error) {
        (_, Some(e)) => format!(
            "duejob top: {}: unreachable ({e}); retrying",
            opts.socket.display()
        ),
        (Some(s), None) => format!(
            "duejob top: {}  workers {}/{} busy  order {}",
            opts.socket.display(),
            s.stats.sched.busy,
            s.stats.sched.workers,
            s.stats.sched.order
        ),
        (None, None) => "duejob top: connecting".into(),
    };
    f.render_widget(Paragraph::new(Line::styled(head, bold)), title);
    f.render_widget(
        Paragraph::new(Line::from("q: quit")).style(Style::default().add_modifier(Modifier::DIM)),
        help,
    );
    let Some(s) = s else {
        return;
    };
    let st = &s.stats;
    // Per queue: what waits and runs now.
    let rows = st.sched.queues.iter().map(|(name, q)| {
        let c = |x: State| q.count(x).to_string();
        let mut n = name.clone();
        if q.paused_until.is_some() {
            n.push('*');
        }
        Row::new(vec![
            n,
            c(State::Ready),
            c(State::Scheduled),
            c(State::Retrying),
            format!("{}/{}", q.count(State::Running), q.max_workers),
            q.reserved.to_string(),
            dur(q.oldest_ready_age_ms.map(|v| v as f64)),
            dur(q.slack_ms.map(|v| v as f64)),
            q.late.to_string(),
            q.deadline_misses.to_string(),
        ])
    });
    let w = [
        Constraint::Length(14),
        Constraint::Length(7),
        Constraint::Length(6),
        Constraint::Length(6),
        Constraint::Length(7),
        Constraint::Length(4),
        Constraint::Length(7),
        Constraint::Length(7),
        Constraint::Length(5),
        Constraint::Length(6),
    ];
    let header = Row::new([
        "queue", "ready", "sched", "retry", "run/max", "rsv", "oldest", "slack", "late", "missed",
    ])
    .style(bold);
    f.render_widget(
        Table::new(rows, w)
            .header(header)
            .block(Block::bordered().title(" now (* paused) ")),
        queues,
    );
    // The last minute.
    let rows = st.sched.queues.iter().map(|(name, q)| {
        let r = &q.recent;
        let some = |p: &duejob::wire::Percentiles, v: f64| (p.count > 0).then_some(v);
        Row::new(vec![
            name.clone(),
            dur(some(&r.wait_ms, r.wait_ms.p50)),
            dur(some(&r.wait_ms, r.wait_ms.p99)),
            dur(some(&r.run_ms, r.run_ms.p50)),
            dur(some(&r.run_ms, r.run_ms.p99)),
            format!("{:.1}", r.done_per_s),
            format!(
                "{:.0}",
                r.retries as f64 * 60_000.0 / r.window_ms.max(1) as f64
            ),
        ])
    });
    let w = [
        Constraint::Length(16),
        Constraint::Length(8),
        Constraint::Length(8),
        Constraint::Length(8),
        Constraint::Length(8),
        Constraint::Length(8),
        Constraint::Length(10),
    ];
    let header = Row::new([
        "queue",
        "wait p50",
        "wait p99",
        "run p50",
        "run p99",
        "done/s",
        "retries/m",
    ])
    .style(bold);
    f.render_widget(
        Table::new(rows, w)
            .header(header)
            .block(Block::bordered().title(" last minute ")),
        recent,
    );
    // The WAL.
    let wr = &st.wal;
    let groups_s = prev.map_or(0.0, |p| {
        let dt = s.at.duration_since(p.at).as_secs_f64().max(1e-3);
        wr.groups.saturating_sub(p.stats.wal.groups) as f64 / dt
    });
    let mut line = format!(
        "WAL: {groups_s:.0} groups/s, fsync p99 ≤{}, {:.1} MiB, {} segments",
        millis(wr.fsync_p99_us as f64 / 1000.0),
        wr.bytes as f64 / (1 << 20) as f64,
        wr.segments
    );
    if let Some(c) = &st.catalog {
        line.push_str(&format!(
            "; catalog lag {}{}",
            c.lag_records,
            if c.failing { " FAILING" } else { "" }
        ));
    }
    f.render_widget(Paragraph::new(line), wal);
    // Firing alerts.
    let firing: Vec<String> = s
        .alerts
        .iter()
        .filter(|a| a.state == "firing")
        .map(|a| {
            format!(
                "{}({})",
                a.alert,
                a.queue.as_deref().or(a.kind.as_deref()).unwrap_or("daemon")
            )
        })
        .collect();
    let text = if firing.is_empty() {
        "none firing".to_string()
    } else {
        format!("FIRING: {}", firing.join(", "))
    };
    f.render_widget(
        Paragraph::new(text)
            .wrap(ratatui::widgets::Wrap { trim: true })
            .block(Block::bordered().title(" alerts ")),
        alerts,
    );
}
