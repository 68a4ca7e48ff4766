//! Seeing the system under load: `stats` tells the truth about lateness (ready jobs past their
//! deadline count the moment it passes, figures over the last minute), the log says so.

use std::time::Duration;

use serde_json::json;

use crate::common::{alert_lines, cli, stats, tempdir, wait_alert, wait_stats, Daemon};

/// A daemon with one worker and a notifications queue due in 300 ms.
fn one_worker(dir: &std::path::Path) -> Daemon {
    let cfg = dir.join("duejob.toml");
    std::fs::write(
        &cfg,
        "workers = 1\n[queues.notifications]\ndue_in = \"300ms\"\nretry_past_deadline = true\n\
         backoff = { base = \"10ms\", cap = \"10ms\" }\n[queues.bulk]\ndue_in = \"1h\"\n",
    )
    .unwrap();
    Daemon::start_in(dir, &["--config", cfg.to_str().unwrap()])
}

#[test]
fn ready_jobs_past_their_deadline_are_late_and_missed_before_any_worker_takes_them() {
    let dir = tempdir();
    let d = one_worker(dir.path());
    let mut c = d.conn();
    // The one worker is held by a bulk job until the test lets it go.
    let gate = dir.path().join("gate");
    let bulk = c.submit(
        &json!({"op": "submit", "queue": "bulk", "kind": "exec",
                "payload": {"argv": ["/bin/sh", "-c",
                    format!("while [ ! -f {} ]; do sleep 0.05; done", gate.display())]}})
        .to_string(),
    );
    c.wait_state(bulk, "running");
    // One batch: one deadline, so one sweep finds all five.
    let r = c.call(
        r#"{"op":"submit_batch","jobs":[{"queue":"notifications","kind":"noop"},{"queue":"notifications","kind":"noop"},{"queue":"notifications","kind":"noop"},{"queue":"notifications","kind":"noop"},{"queue":"notifications","kind":"noop"}]}"#,
    );
    let ids: Vec<u64> = r["ids"]
        .as_array()
        .unwrap_or_else(|| panic!("{r}"))
        .iter()
        .map(|v| v.as_u64().unwrap())
        .collect();
    let s = wait_stats(&d, Duration::from_secs(30), |s| {
        s["queues"]["notifications"]["late"] == 5
    });
    let q = &s["queues"]["notifications"];
    assert_eq!(q["deadline_misses"], 5, "{q}");
    assert_eq!(q["states"]["ready"], 5, "{q}");
    assert!(q["slack_ms"].as_i64().unwrap() < 0, "{q}");
    assert_eq!(q["recent"]["wait_ms"]["count"], 0, "none started: {q}");
    // The log says so, with the worst lateness.
    let t = std::time::Instant::now();
    while !d
        .log_text()
        .contains("queue notifications: 5 more job(s) past their deadline")
    {
        assert!(t.elapsed() < Duration::from_secs(30), "{}", d.log_text());
        std::thread::sleep(Duration::from_millis(20));
    }
    // The table shows the late jobs and a negative slack.
    let sock = d.socket();
    let (st, text, err) = cli(&["stats", "--socket", sock.to_str().unwrap()]);
    assert!(st.success(), "{err}");
    let row = text
        .lines()
        .find(|l| l.starts_with("notifications"))
        .unwrap_or_else(|| panic!("{text}"));
    let cols: Vec<&str> = row.split_whitespace().collect();
    assert_eq!(&cols[1..3], &["5", "5"], "ready, late: {text}");
    assert!(cols[7].starts_with('-'), "slack negative: {text}");
    // The worker is free: they run, late; they are no longer late, and still missed once each.
    std::fs::write(&gate, "").unwrap();
    for id in ids {
        c.wait_state(id, "succeeded");
    }
    let s = stats(&d);
    let q = &s["queues"]["notifications"];
    assert_eq!(
        (q["late"].as_u64(), q["deadline_misses"].as_u64()),
        (Some(0), Some(5)),
        "{q}"
    );
    assert_eq!(q["recent"]["done"], 5, "{q}");
    assert_eq!(q["recent"]["wait_ms"]["count"], 5, "{q}");
    assert!(
        q["recent"]["wait_ms"]["p50"].as_f64().unwrap() >= 300.0,
        "{q}"
    );
    assert!(q["recent"]["done_per_s"].as_f64().unwrap() > 0.0, "{q}");
    assert_eq!(s["queues"]["bulk"]["deadline_misses"], 0);
}

#[test]
fn a_cancelled_late_job_is_no_longer_late_and_a_retry_is_not_missed_twice() {
    let dir = tempdir();
    let d = one_worker(dir.path());
    let mut c = d.conn();
    let gate = dir.path().join("gate");
    let hold = json!({"op": "submit", "queue": "bulk", "kind": "exec",
            "payload": {"argv": ["/bin/sh", "-c",
                format!("while [ ! -f {} ]; do sleep 0.05; done", gate.display())]}});
    let bulk = c.submit(&hold.to_string());
    c.wait_state(bulk, "running");
    let late = c.submit(r#"{"op":"submit","queue":"notifications","kind":"noop"}"#);
    // Fails once, then succeeds: its retry becomes ready past its deadline.
    let flag = dir.path().join("failed-once");
    let retried = c.submit(
        &json!({"op": "submit", "queue": "notifications", "kind": "exec", "max_attempts": 3,
                "payload": {"argv": ["/bin/sh", "-c",
                    format!("test -f {f} || {{ touch {f}; exit 1; }}", f = flag.display())]}})
        .to_string(),
    );
    wait_stats(&d, Duration::from_secs(30), |s| {
        s["queues"]["notifications"]["late"] == 2
    });
    let r = c.call(&json!({"op": "cancel", "id": late}).to_string());
    assert_eq!(r["ok"], true, "{r}");
    let s = stats(&d);
    assert_eq!(s["queues"]["notifications"]["late"], 1, "{s}");
    std::fs::write(&gate, "").unwrap();
    let j = c.wait_state(retried, "succeeded");
    assert_eq!(j["attempts"].as_array().unwrap().len(), 2, "{j}");
    let q = &stats(&d)["queues"]["notifications"];
    assert_eq!(q["late"], 0, "{q}");
    assert_eq!(q["deadline_misses"], 2, "each job once: {q}");
    assert_eq!(q["recent"]["retries"], 1, "{q}");
}

#[test]
fn a_retrying_queue_fires_an_alert_with_its_figures_and_resolves_when_the_fault_ends() {
    let dir = tempdir();
    let out = dir.path().join("alerts.jsonl");
    let cfg = dir.path().join("duejob.toml");
    std::fs::write(
        &cfg,
        format!(
            "alert_command = [\"/bin/sh\", \"-c\", \"cat >> {}\"]\nalert_clear = \"1s\"\n\
             [queues.notifications]\ndue_in = \"1h\"\nmax_attempts = 100\n\
             backoff = {{ base = \"50ms\", cap = \"100ms\" }}\n",
            out.display()
        ),
    )
    .unwrap();
    let d = Daemon::start_in(dir.path(), &["--config", cfg.to_str().unwrap()]);
    let mut c = d.conn();
    // Fails until the database is back.
    let back = dir.path().join("database-is-back");
    let id = c.submit(
        &json!({"op": "submit", "queue": "notifications", "kind": "exec",
                "payload": {"argv": ["/bin/sh", "-c", format!("test -f {}", back.display())]}})
        .to_string(),
    );
    let fired = wait_alert(&out, |v| v["alert"] == "retrying" && v["state"] == "firing");
    assert_eq!(fired["queue"], "notifications", "{fired}");
    assert!(fired["value"].as_f64().unwrap() > 0.0, "{fired}");
    assert_eq!(fired["threshold"], 0.0, "{fired}");
    assert!(fired["since"].as_u64().unwrap() <= fired["at"].as_u64().unwrap());
    assert!(
        fired["figures"]["retries"].as_u64().unwrap() >= 1,
        "the queue's figures: {fired}"
    );
    // `alerts` says so too, and so do `stats` and the log.
    let r = c.call(r#"{"op":"alerts"}"#);
    let a = r["alerts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["alert"] == "retrying" && a["queue"] == "notifications")
        .cloned()
        .unwrap_or_else(|| panic!("{r}"));
    assert_eq!(a["state"], "firing", "{r}");
    assert_eq!(r["alerts"][0]["state"], "firing", "firing first: {r}");
    assert!(stats(&d)["alerts"]["firing"].as_u64().unwrap() >= 1);
    assert!(d
        .log_text()
        .contains("alert retrying firing for queue notifications"));
    let sock = d.socket();
    let (st, text, err) = cli(&["alerts", "--socket", sock.to_str().unwrap()]);
    assert!(st.success(), "{err}");
    assert!(
        text.lines().any(|l| l.starts_with("retrying")
            && l.contains("notifications")
            && l.contains("firing")),
        "{text}"
    );
    // The fault ends: the job succeeds, retries stop, the alert resolves (once).
    std::fs::write(&back, "").unwrap();
    c.wait_state(id, "succeeded");
    let resolved = wait_alert(&out, |v| {
        v["alert"] == "retrying" && v["state"] == "resolved"
    });
    assert_eq!(resolved["since"], fired["since"], "{resolved}");
    let s = stats(&d);
    assert_eq!(s["alerts"]["command_failures"], 0, "{s}");
    let n = |state: &str| {
        alert_lines(&out)
            .iter()
            .filter(|v| v["alert"] == "retrying" && v["state"] == state)
            .count()
    };
    assert_eq!((n("firing"), n("resolved")), (1, 1), "no flapping");
}

#[test]
fn a_hanging_alert_command_is_killed_at_its_timeout_and_never_holds_jobs_up() {
    let dir = tempdir();
    let started = dir.path().join("started");
    let cfg = dir.path().join("duejob.toml");
    std::fs::write(
        &cfg,
        format!(
            "alert_command = [\"/bin/sh\", \"-c\", \"echo $$ >> {}; sleep 600\"]\n\
             alert_timeout = \"2s\"\n\
             [queues.default]\nbackoff = {{ base = \"50ms\", cap = \"50ms\" }}\n",
            started.display()
        ),
    )
    .unwrap();
    let d = Daemon::start_in(dir.path(), &["--config", cfg.to_str().unwrap()]);
    let mut c = d.conn();
    let failing = c.submit(
        r#"{"op":"submit","queue":"default","kind":"exec","max_attempts":2,"payload":{"argv":["/bin/false"]}}"#,
    );
    c.wait_state(failing, "dead");
    // The command hangs: jobs go on being acknowledged and run meanwhile.
    let t = std::time::Instant::now();
    while !started.exists() {
        assert!(
            t.elapsed() < Duration::from_secs(30),
            "the command never ran"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    for _ in 0..20 {
        let id = c.submit(r#"{"op":"submit","queue":"default","kind":"noop"}"#);
        c.wait_state(id, "succeeded");
    }
    let s = wait_stats(&d, Duration::from_secs(30), |s| {
        s["alerts"]["command_failures"].as_u64() >= Some(1)
    });
    let e = s["alerts"]["last_command_error"].as_str().unwrap();
    assert!(e.contains("timed out"), "{e}");
    assert!(d.log_text().contains("alert_command failed"));
    // Its process group was killed.
    let pid: i32 = std::fs::read_to_string(&started)
        .unwrap()
        .lines()
        .next()
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let t = std::time::Instant::now();
    while std::path::Path::new(&format!("/proc/{pid}")).exists()
        && !std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .unwrap_or_default()
            .contains(") Z")
    {
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "pid {pid} still runs"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}
