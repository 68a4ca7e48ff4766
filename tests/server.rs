//! The socket server under hostile conditions: its socket file removed or replaced, a path that
//! is not a socket, a client that never reads, and more clients than file descriptors.

use std::io::Write;
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use crate::common::{tempdir, Conn, Daemon};
use serde_json::Value;

fn wait_for(what: &str, mut f: impl FnMut() -> bool) {
    let t = Instant::now();
    while !f() {
        assert!(t.elapsed() < Duration::from_secs(60), "never: {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn sigterm_stops_the_daemon_when_its_socket_file_was_removed_or_replaced() {
    // Removed: the stop must not depend on connecting to our own path.
    let dir = tempdir();
    let mut d = Daemon::start_in(dir.path(), &["--workers", "2"]);
    std::fs::remove_file(d.socket()).unwrap();
    let st = d.stop();
    assert!(st.success(), "{}", d.log_text());

    // Replaced by another file: the daemon stops and leaves that file alone.
    let dir = tempdir();
    let mut d = Daemon::start_in(dir.path(), &["--workers", "2"]);
    std::fs::remove_file(d.socket()).unwrap();
    std::fs::write(d.socket(), "someone else's").unwrap();
    let st = d.stop();
    assert!(st.success(), "{}", d.log_text());
    assert_eq!(
        std::fs::read_to_string(d.socket()).unwrap(),
        "someone else's"
    );
    assert!(d.log_text().contains("no longer this daemon's socket"));
}

#[test]
fn on_sigterm_open_connections_are_answered_then_closed() {
    let dir = tempdir();
    let mut d = Daemon::start_in(dir.path(), &["--workers", "2"]);
    let mut busy = d.conn();
    // A running job keeps the daemon draining after the signal.
    let id =
        busy.submit(r#"{"op":"submit","queue":"default","kind":"sleep","payload":{"ms":3000}}"#);
    busy.wait_state(id, "running");
    let mut open = d.conn();
    assert_eq!(open.call(r#"{"op":"hello"}"#)["ok"], true);
    d.signal(rustix::process::Signal::TERM);
    wait_for("the signal is handled", || {
        d.log_text().contains("signal received")
    });
    // The daemon stops reading open connections: the client sees the end of the stream (it
    // would otherwise wait for ever, here for the 60 s read timeout, and fail).
    assert!(
        open.closed(),
        "an open connection is still served after SIGTERM"
    );
    assert!(d.wait_exit(Duration::from_secs(60)).success());
}

#[test]
fn a_socket_path_that_is_not_a_stale_socket_is_never_deleted() {
    let dir = tempdir();
    let file = dir.path().join("precious.txt");
    std::fs::write(&file, "keep me").unwrap();
    let sub = dir.path().join("a-directory");
    std::fs::create_dir(&sub).unwrap();
    for (path, what) in [(&file, "a regular file"), (&sub, "a directory")] {
        let mut d = Daemon::start_in_unchecked(
            dir.path(),
            &["--workers", "2", "--socket", path.to_str().unwrap()],
        );
        let st = d.wait_exit(Duration::from_secs(60));
        assert!(!st.success());
        let log = d.log_text();
        assert!(
            log.contains(what) && log.contains("refusing to replace"),
            "{log}"
        );
    }
    assert_eq!(std::fs::read_to_string(&file).unwrap(), "keep me");
    assert!(sub.is_dir());

    // A live daemon's socket is not taken over either; a stale one (SIGKILL) is replaced.
    let mut first = Daemon::start_in(dir.path(), &["--workers", "2"]);
    let other = tempdir();
    let mut second = Daemon::start_in_unchecked(
        other.path(),
        &[
            "--workers",
            "2",
            "--socket",
            first.socket().to_str().unwrap(),
        ],
    );
    assert!(!second.wait_exit(Duration::from_secs(60)).success());
    assert!(second.log_text().contains("another daemon is listening"));
    assert_eq!(first.conn().call(r#"{"op":"hello"}"#)["ok"], true);
    first.kill9();
    first.restart();
    assert!(first.log_text().contains("removing the stale socket"));
}

/// RSS of a process, in KiB.
fn rss_kib(pid: u32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    s.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap()
}

#[test]
fn a_client_that_never_reads_cannot_make_the_daemon_buffer_without_bound() {
    let dir = tempdir();
    let d = Daemon::start_in(dir.path(), &["--workers", "2"]);
    let pid = d.child.as_ref().unwrap().id();
    let before = rss_kib(pid);
    let s = UnixStream::connect(d.socket()).unwrap();
    s.set_write_timeout(Some(Duration::from_secs(3))).unwrap();
    // 300,000 pipelined submits, never reading a reply. The daemon must stop taking them in.
    const N: usize = 300_000;
    let line = b"{\"op\":\"submit\",\"queue\":\"bulk\",\"kind\":\"noop\",\"delay_ms\":3600000}\n";
    let all: Vec<u8> = line.repeat(N);
    let mut sent = 0;
    let blocked = loop {
        if sent == all.len() {
            break false;
        }
        let end = (sent + (64 << 10)).min(all.len());
        match (&s).write(&all[sent..end]) {
            Ok(n) => sent += n,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break true,
            Err(e) => panic!("write: {e}"),
        }
    };
    assert!(
        blocked,
        "the daemon read all {N} requests without any being answered"
    );
    // Taken in (accepted into the WAL) is bounded: what the daemon may hold unanswered, plus
    // the replies it already wrote into the socket's buffers (about 4,000 of these, at most 64 KiB
    // in its own write buffer and the socket's send buffer) that the client has not read.
    let mut other = d.conn();
    let s2 = other.call(r#"{"op":"stats"}"#);
    let accepted = s2["totals"]["scheduled"].as_u64().unwrap() as usize;
    let in_buffers = 8_000;
    assert!(
        accepted <= duejob::server::conn::MAX_UNANSWERED + in_buffers,
        "{accepted} requests taken in without a reply read"
    );
    let grown = rss_kib(pid).saturating_sub(before);
    assert!(grown < 128 << 10, "RSS grew by {grown} KiB");
    // Once the client reads, everything goes through, in order.
    let reader = {
        let s = s.try_clone().unwrap();
        std::thread::spawn(move || {
            let mut c = Conn {
                w: s.try_clone().unwrap(),
                r: std::io::BufReader::new(s),
            };
            for i in 0..N {
                let v: Value = c.recv();
                assert_eq!(v["ok"], true, "reply {i}: {v}");
                assert_eq!(v["id"], i as u64 + 1);
            }
        })
    };
    s.set_write_timeout(None).unwrap();
    (&s).write_all(&all[sent..]).unwrap();
    reader.join().unwrap();
}

fn hello_or_busy(d: &Daemon, n: usize) -> (Vec<Conn>, usize, usize) {
    let (mut served, mut busy) = (Vec::new(), 0);
    for _ in 0..n {
        let mut c = d.conn();
        // A client past the cap is told `busy` and closed at once, maybe before its request is
        // written (then the write fails): the `busy` line is there to read either way.
        let _ = c.w.write_all(b"{\"op\":\"hello\"}\n");
        let v = c.recv();
        if v["ok"] == true {
            served.push(c);
        } else {
            assert_eq!(v["error"]["code"], "busy", "{v}");
            busy += 1;
        }
    }
    let k = served.len();
    (served, k, busy)
}

#[test]
fn past_the_file_descriptor_limit_clients_are_answered_busy_instead_of_hanging() {
    // A soft and hard limit of 100 descriptors: the daemon sizes its connection cap from it.
    let dir = tempdir();
    let d = Daemon::start_with_fd_limit(dir.path(), &["--workers", "2"], 100);
    let (served, ok, busy) = hello_or_busy(&d, 90);
    assert!(ok >= 10 && busy > 0, "{ok} served, {busy} busy");
    drop(served);
    // Closed connections make room again (once their threads notice: until then a new client is
    // answered busy and closed, maybe before its request is written).
    wait_for("room again", || {
        d.conn()
            .try_call(r#"{"op":"hello"}"#)
            .is_some_and(|v| v["ok"] == true)
    });

    // A cap set higher than the descriptors allow is refused at start: clients could otherwise
    // take the descriptors the WAL needs to open its next segment.
    let dir = tempdir();
    let cfg = dir.path().join("duejob.toml");
    std::fs::write(&cfg, "max_connections = 1000\n").unwrap();
    let mut d = Daemon::with_fd_limit(
        dir.path(),
        &["--workers", "2", "--config", cfg.to_str().unwrap()],
        100,
    );
    d.spawn();
    assert!(!d.wait_exit(Duration::from_secs(60)).success());
    let log = d.log_text();
    assert!(
        log.contains("max_connections = 1000") && log.contains("open-file limit (100)"),
        "{log}"
    );
}

#[test]
fn a_daemon_refused_its_socket_runs_no_job() {
    // Jobs wait in the log; the next start is refused (its --socket is a regular file): it must
    // stop before it runs any of them (each run would count an interrupted attempt).
    let dir = tempdir();
    let mut d = Daemon::start_in(dir.path(), &["--workers", "2"]);
    let marker = dir.path().join("ran");
    let req = serde_json::json!({"op":"submit","queue":"default","kind":"exec","delay_ms":1500,
        "payload":{"argv":["sh","-c",format!("echo x >> {}", marker.display())]}});
    d.conn().submit(&req.to_string());
    assert!(d.stop().success());
    let file = dir.path().join("in-the-way");
    std::fs::write(&file, "x").unwrap();
    let mut refused = Daemon::start_in_unchecked(
        dir.path(),
        &["--workers", "2", "--socket", file.to_str().unwrap()],
    );
    assert!(!refused.wait_exit(Duration::from_secs(60)).success());
    assert!(refused.log_text().contains("refusing to replace"));
    assert!(
        !refused.log_text().contains("recovered"),
        "the runtime never started"
    );
    let (st, dump, err) =
        crate::common::cli(&["wal", "dump", "--json", d.data().to_str().unwrap()]);
    assert!(st.success(), "{err}");
    assert!(
        !dump.contains(r#""type":"start""#),
        "a refused daemon started a job:\n{dump}"
    );
    assert!(!marker.exists());
}

#[test]
fn every_request_read_before_sigterm_is_answered_by_what_is_in_the_log() {
    // 20,000 pipelined submits, and SIGTERM while they are being taken in: every submit the log
    // holds must have had its `ok`; whatever was not answered ok is not in the log.
    let dir = tempdir();
    let mut d = Daemon::start_in(dir.path(), &["--workers", "2"]);
    let s = UnixStream::connect(d.socket()).unwrap();
    let reader = {
        let s = s.try_clone().unwrap();
        std::thread::spawn(move || {
            use std::io::BufRead;
            let mut ok = Vec::new();
            let mut refused = 0;
            for line in std::io::BufReader::new(s).lines() {
                let v: Value = serde_json::from_str(&line.unwrap()).unwrap();
                if v["ok"] == true {
                    ok.push(v["id"].as_u64().unwrap());
                } else {
                    assert_eq!(v["error"]["code"], "shutting_down", "{v}");
                    refused += 1;
                }
            }
            (ok, refused)
        })
    };
    let line = b"{\"op\":\"submit\",\"queue\":\"bulk\",\"kind\":\"noop\",\"delay_ms\":3600000}\n";
    let writer = {
        let s = s.try_clone().unwrap();
        std::thread::spawn(move || {
            let _ = (&s).write_all(&line.repeat(20_000));
        })
    };
    // The exact moment does not matter; it only must fall while requests are being taken in.
    wait_for("some submits are in", || {
        d.conn().call(r#"{"op":"stats"}"#)["totals"]["scheduled"]
            .as_u64()
            .unwrap()
            > 100
    });
    d.signal(rustix::process::Signal::TERM);
    assert!(
        d.wait_exit(Duration::from_secs(60)).success(),
        "{}",
        d.log_text()
    );
    let (ok, refused) = reader.join().unwrap();
    let _ = writer.join();
    let (st, dump, err) =
        crate::common::cli(&["wal", "dump", "--json", d.data().to_str().unwrap()]);
    assert!(st.success(), "{err}");
    let mut logged: Vec<u64> = dump
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .filter(|v| v["type"] == "submit")
        .map(|v| v["record"]["id"].as_u64().unwrap())
        .collect();
    logged.sort_unstable();
    let mut answered = ok.clone();
    answered.sort_unstable();
    assert_eq!(
        answered,
        logged,
        "{} answered ok, {} in the log ({refused} refused)",
        ok.len(),
        logged.len()
    );
}

#[test]
fn two_daemons_started_at_once_on_one_socket_path_never_both_serve() {
    // Each has its own data dir; the socket path is shared. One must win and the other stop,
    // whatever the interleaving (checking, then renaming into place, raced before).
    for round in 0..8 {
        let dir = tempdir();
        let sock = dir.path().join("shared.sock");
        let (a, b) = (dir.path().join("a"), dir.path().join("b"));
        std::fs::create_dir_all(&a).unwrap();
        std::fs::create_dir_all(&b).unwrap();
        let args = ["--workers", "2", "--socket", sock.to_str().unwrap()];
        let mut da = Daemon::start_in_unchecked(&a, &args);
        let mut db = Daemon::start_in_unchecked(&b, &args);
        // Exactly one exits (refused); were both serving, neither would, and this would fail.
        let t = Instant::now();
        let (mut loser, winner) = loop {
            if da.child.as_mut().unwrap().try_wait().unwrap().is_some() {
                break (da, db);
            }
            if db.child.as_mut().unwrap().try_wait().unwrap().is_some() {
                break (db, da);
            }
            assert!(
                t.elapsed() < Duration::from_secs(60),
                "round {round}: both still run"
            );
            std::thread::sleep(Duration::from_millis(10));
        };
        let st = loser.wait_exit(Duration::from_secs(5));
        assert!(!st.success(), "round {round}");
        let log = loser.log_text();
        assert!(
            log.contains("another daemon is listening") || log.contains("appeared while"),
            "round {round}: {log}"
        );
        let mut c = Conn::connect(&sock).unwrap();
        assert_eq!(
            c.call(r#"{"op":"hello"}"#)["ok"],
            true,
            "round {round}: the winner serves"
        );
        drop(winner);
    }
}

#[test]
fn a_client_that_never_reads_big_replies_cannot_make_the_daemon_buffer_them_without_bound() {
    // Few requests, big replies: `status` of a job with a 900 KB payload, pipelined and never
    // read. Counting requests is not enough; the bytes held must stay bounded too.
    let dir = tempdir();
    let d = Daemon::start_in(dir.path(), &["--workers", "2"]);
    let pid = d.child.as_ref().unwrap().id();
    let big = format!(
        r#"{{"op":"submit","queue":"bulk","kind":"noop","delay_ms":3600000,"payload":{{"pad":"{}"}}}}"#,
        "p".repeat(900_000)
    );
    let id = d.conn().submit(&big);
    let before = rss_kib(pid);
    let s = UnixStream::connect(d.socket()).unwrap();
    s.set_write_timeout(Some(Duration::from_secs(3))).unwrap();
    let line = format!("{{\"op\":\"status\",\"id\":{id}}}\n");
    let all = line.repeat(100_000); // 2.5 MB of requests: 90 GB of replies
    let mut sent = 0;
    let blocked = loop {
        if sent == all.len() {
            break false;
        }
        let end = (sent + (64 << 10)).min(all.len());
        match (&s).write(&all.as_bytes()[sent..end]) {
            Ok(n) => sent += n,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break true,
            Err(e) => panic!("write: {e}"),
        }
    };
    assert!(
        blocked,
        "the daemon took in every request without a reply read"
    );
    let grown = rss_kib(pid).saturating_sub(before);
    assert!(grown < 200 << 10, "RSS grew by {grown} KiB");
    // Reading resumes it: a few replies come through whole.
    let mut c = Conn {
        w: s.try_clone().unwrap(),
        r: std::io::BufReader::new(s),
    };
    for _ in 0..3 {
        let v = c.recv();
        assert_eq!(
            v["job"]["payload"]["pad"].as_str().map(str::len),
            Some(900_000)
        );
    }
}

/// Issue 15: a lone burst is committed and answered by the connection's reader itself, a larger
/// one goes through the commit thread and the writer. One connection switching between the two
/// ways at every step (bursts of 1 to 9 requests, sent without waiting for the replies of the
/// ones before; submits mixed with `status` and with bad lines) gets every reply, in request
/// order, each saying the truth.
#[test]
fn replies_stay_in_request_order_when_a_connection_switches_between_lone_and_pipelined_bursts() {
    let dir = tempdir();
    let d = Daemon::start_in(dir.path(), &["--workers", "2"]);
    let mut c = d.conn();
    let submit = r#"{"op":"submit","queue":"bulk","kind":"noop","delay_ms":3600000}"#;
    let first = c.submit(submit);
    let status = format!(r#"{{"op":"status","id":{first}}}"#);
    // What each request is: 0 submit, 1 status of the first job, 2 a bad line.
    let mut kinds = Vec::new();
    for round in 0..300usize {
        let n = round % 9 + 1;
        let burst: Vec<usize> = (0..n).map(|i| (round + i) % 3).collect();
        let mut text = String::new();
        for k in &burst {
            text.push_str(match k {
                0 => submit,
                1 => &status,
                _ => r#"{"op":"nope"}"#,
            });
            text.push('\n');
        }
        c.send_raw(text.as_bytes());
        kinds.extend(burst);
        // Apart, so that the reader takes each burst on its own.
        std::thread::sleep(Duration::from_micros(500));
    }
    let mut last_id = first;
    let mut submitted = 1u64;
    for (i, k) in kinds.iter().enumerate() {
        let r = c.recv();
        match k {
            0 => {
                assert_eq!(r["ok"], true, "reply {i}: {r}");
                let id = r["id"].as_u64().unwrap();
                assert!(id > last_id, "reply {i}: id {id} after {last_id}");
                last_id = id;
                submitted += 1;
            }
            1 => {
                assert_eq!(r["ok"], true, "reply {i}: {r}");
                assert_eq!(r["job"]["id"], first, "reply {i}: {r}");
            }
            _ => assert_eq!(r["ok"], false, "reply {i}: {r}"),
        }
    }
    let s = crate::common::stats(&d);
    assert_eq!(s["totals"]["scheduled"], submitted, "{s}");
}

/// Issue 15 (found in review): a reader that answers a lone request itself stopped reading the
/// connection when that reply could not be written, so a client that sends its submits without
/// reading the replies (and has shut its read side) lost every submit after the first. Each is
/// carried out, as when the writer thread answers.
#[test]
fn a_client_that_stops_reading_still_has_every_submit_it_sent_carried_out() {
    let dir = tempdir();
    let d = Daemon::start_in(dir.path(), &[]);
    let mut s = UnixStream::connect(d.socket()).unwrap();
    s.shutdown(std::net::Shutdown::Read).unwrap();
    for i in 0..20 {
        let line = format!(
            r#"{{"op":"submit","queue":"bulk","kind":"noop","delay_ms":3600000,"payload":{{"i":{i}}}}}"#
        );
        s.write_all(format!("{line}\n").as_bytes()).unwrap();
        // One at a time: each is a lone burst, answered (into the void) by the reader.
        std::thread::sleep(Duration::from_millis(5));
    }
    drop(s);
    let st = crate::common::wait_stats(&d, Duration::from_secs(60), |st| {
        st["totals"]["scheduled"] == 20
    });
    assert_eq!(st["totals"]["scheduled"], 20, "{st}");
}
