//! `duejob top` for real, in a terminal: run under tmux (its own server, 80×24), the screen
//! captured, keys sent; it shows the figures, refreshes, quits on `q` and on Ctrl-C, and gives
//! the terminal back.

use std::process::Command;
use std::time::{Duration, Instant};

use crate::common::{tempdir, Daemon, BIN};

/// A tmux server of this test's own (`-L`), killed when dropped.
struct Tmux {
    name: String,
}

impl Tmux {
    fn new() -> Tmux {
        let name = format!("duejob-top-{}-{}", std::process::id(), rand_suffix());
        Tmux { name }
    }

    fn run(&self, args: &[&str]) -> String {
        let out = Command::new("tmux")
            .arg("-L")
            .arg(&self.name)
            .args(args)
            .output()
            .expect("tmux (apt-get install tmux)");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// A shell in an 80×24 window.
    fn shell(&self) {
        // `-f /dev/null`: no user configuration.
        let out = Command::new("tmux")
            .args([
                "-L",
                &self.name,
                "-f",
                "/dev/null",
                "new-session",
                "-d",
                "-x",
                "80",
                "-y",
                "24",
                "sh",
            ])
            .env("TERM", "xterm-256color")
            .output()
            .expect("tmux (apt-get install tmux)");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    fn screen(&self) -> String {
        self.run(&["capture-pane", "-p"])
    }

    fn wait_screen(&self, what: &str, f: impl Fn(&str) -> bool) -> String {
        let t = Instant::now();
        loop {
            let s = self.screen();
            if f(&s) {
                return s;
            }
            assert!(
                t.elapsed() < Duration::from_secs(30),
                "{what}; the screen:\n{s}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = Command::new("tmux")
            .args(["-L", &self.name, "kill-server"])
            .output();
    }
}

fn rand_suffix() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos() as u64)
}

#[test]
fn top_shows_the_queues_refreshes_and_quits_on_q_and_ctrl_c_giving_the_terminal_back() {
    let dir = tempdir();
    let d = Daemon::start_in(dir.path(), &["--workers", "4"]);
    let mut c = d.conn();
    assert_eq!(c.call(r#"{"op":"queue_pause","queue":"bulk"}"#)["ok"], true);
    for _ in 0..3 {
        c.submit(r#"{"op":"submit","queue":"bulk","kind":"noop"}"#);
    }
    let tmux = Tmux::new();
    tmux.shell();
    let sock = d.socket();
    let cmd = format!(
        "{BIN} top --interval 0.2 --socket {}; echo EXITED $?",
        sock.display()
    );
    tmux.run(&["send-keys", &cmd, "Enter"]);
    let s = tmux.wait_screen("top shows the queues", |s| {
        s.contains("duejob top") && s.lines().any(|l| l.contains("bulk*"))
    });
    let bulk = s.lines().find(|l| l.contains("bulk*")).unwrap();
    let cols: Vec<&str> = bulk.split_whitespace().collect();
    assert_eq!(cols[1], "3", "3 ready in the paused queue: {s}");
    assert!(
        s.contains("notifications") && s.contains("none firing"),
        "{s}"
    );
    // Every line fits the 80 columns (a wider one would wrap or be cut).
    assert!(s.lines().all(|l| l.chars().count() <= 80), "{s}");
    // It refreshes: resumed, the jobs run and the view shows it.
    assert_eq!(
        c.call(r#"{"op":"queue_resume","queue":"bulk"}"#)["ok"],
        true
    );
    tmux.wait_screen("the resume shows", |s| {
        s.lines().any(|l| {
            l.trim_start_matches('│').starts_with("bulk ")
                && l.split_whitespace().nth(1) == Some("0")
        })
    });
    tmux.run(&["send-keys", "q"]);
    let s = tmux.wait_screen("top exits on q", |s| s.contains("EXITED 0"));
    assert!(
        !s.contains("last minute"),
        "the alternate screen is left: {s}"
    );
    // Ctrl-C too.
    tmux.run(&["send-keys", &cmd, "Enter"]);
    tmux.wait_screen("top runs again", |s| s.contains("last minute"));
    tmux.run(&["send-keys", "C-c"]);
    let s = tmux.wait_screen("top exits on Ctrl-C", |s| {
        s.matches("EXITED 0").count() == 2
    });
    assert!(!s.contains("last minute"), "{s}");
}

#[test]
fn top_says_the_daemon_is_unreachable_instead_of_failing() {
    let dir = tempdir();
    let tmux = Tmux::new();
    tmux.shell();
    let cmd = format!(
        "{BIN} top --interval 0.2 --socket {}; echo EXITED $?",
        dir.path().join("nope.sock").display()
    );
    tmux.run(&["send-keys", &cmd, "Enter"]);
    tmux.wait_screen("unreachable", |s| s.contains("unreachable"));
    tmux.run(&["send-keys", "q"]);
    tmux.wait_screen("top exits on q", |s| s.contains("EXITED 0"));
}

#[test]
fn top_without_a_terminal_says_so() {
    let (st, _, err) = crate::common::cli(&["top", "--socket", "/nonexistent/sock"]);
    assert!(!st.success() && err.contains("needs a terminal"), "{err}");
}
