//! The client libraries in `clients/` (Python, Ruby, PHP), each run by its own test script
//! against a real daemon that is SIGKILLed and restarted in the middle: the script must
//! reconnect by itself, and a resubmit with a key must come back as the same job.

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::common::{tempdir, Daemon};

fn run_client_tests(interpreter: &str, script: &str) {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/clients/").to_string() + script;
    let dir = tempdir();
    let mut d = Daemon::start_in(dir.path(), &[]);
    let mut child = Command::new(interpreter)
        .arg(&script)
        .env("DUEJOB_SOCKET", d.socket())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{interpreter} (the CI installs it): {e}"));
    /// Killed if the test fails.
    struct Kill(Option<std::process::Child>);
    impl Drop for Kill {
        fn drop(&mut self) {
            if let Some(c) = self.0.as_mut() {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
    }
    let mut stdin = child.stdin.take().unwrap();
    let stdout = BufReader::new(child.stdout.take().unwrap());
    let mut child = Kill(Some(child));
    let mut lines = Vec::new();
    let mut restarted = false;
    for line in stdout.lines() {
        let line = line.unwrap();
        if line == "restart" {
            // The daemon dies; the client is told to go on before it is back, so it has to
            // wait for it.
            d.kill9();
            writeln!(stdin, "go").unwrap();
            std::thread::sleep(Duration::from_millis(200));
            d.restart();
            restarted = true;
        }
        lines.push(line);
    }
    let out = child.0.take().unwrap().wait_with_output().unwrap();
    assert!(
        out.status.success() && restarted && lines.last().map(String::as_str) == Some("ok"),
        "{script}: {}\nstdout: {lines:?}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn the_python_client_works_against_the_daemon_and_reconnects() {
    run_client_tests("python3", "python/test_duejob.py");
}

#[test]
fn the_ruby_client_works_against_the_daemon_and_reconnects() {
    run_client_tests("ruby", "ruby/test_duejob.rb");
}

#[test]
fn the_php_client_works_against_the_daemon_and_reconnects() {
    run_client_tests("php", "php/test_duejob.php");
}
