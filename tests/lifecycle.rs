//! Job lifecycle through the real daemon: retries with backoff, dead letters, timeouts,
//! cancellation, idempotency keys, and the timeline `status` shows.

use std::time::Duration;

use crate::common::{cli, tempdir, Conn, Daemon};
use serde_json::{json, Value};

/// A daemon with a `work` queue retrying fast: backoff 100 ms doubling to 400 ms, 5 attempts.
fn daemon(dir: &std::path::Path) -> Daemon {
    let cfg = dir.join("duejob.toml");
    std::fs::write(
        &cfg,
        "workers = 4\n[queues.work]\ndue_in = \"5m\"\nmax_attempts = 5\nbackoff = { base = \"100ms\", cap = \"400ms\" }\n\
         [queues.fast]\ndue_in = \"5m\"\nreserved = 1\n\
         [queues.slowpoke]\ndue_in = \"5m\"\nmax_attempts = 1\ntimeout = \"100ms\"\n\
         [queues.patient]\ndue_in = \"1h\"\nmax_attempts = 3\nbackoff = { base = \"30m\", cap = \"30m\" }\n",
    )
    .unwrap();
    Daemon::start_in(dir, &["--config", cfg.to_str().unwrap()])
}

fn exec(queue: &str, script: &str) -> Value {
    json!({"op":"submit","queue":queue,"kind":"exec","payload":{"argv":["sh","-c",script]}})
}

fn u(v: &Value) -> u64 {
    v.as_u64().unwrap_or_else(|| panic!("not a number: {v}"))
}

#[test]
fn a_job_failing_twice_then_succeeding_retries_within_the_backoff_bounds() {
    let dir = tempdir();
    let d = daemon(dir.path());
    let count = dir.path().join("count");
    let script = format!(
        "n=$(cat {c} 2>/dev/null || echo 0); n=$((n+1)); echo $n > {c}; echo try $n; [ $n -ge 3 ] || exit 9",
        c = count.display()
    );
    let mut c = d.conn();
    let id = c.submit(&exec("work", &script).to_string());
    let j = c.wait_state(id, "succeeded");
    let attempts = j["attempts"].as_array().unwrap();
    assert_eq!(attempts.len(), 3, "{j}");
    for (n, a) in attempts.iter().enumerate() {
        assert_eq!(u(&a["number"]), n as u64 + 1);
        assert!(u(&a["ended_at"]) >= u(&a["started_at"]));
    }
    for n in 0..2 {
        let a = &attempts[n];
        assert_eq!(a["outcome"], "failed");
        assert_eq!(a["error"], "exited with status 9");
        assert_eq!(a["exit_code"], 9);
        assert_eq!(a["output_tail"], format!("try {}\n", n + 1));
        // Full jitter: the scheduled delay lies in [0, min(cap, base * 2^(n))].
        let delay = u(&a["retry_at"]) - u(&a["ended_at"]);
        let bound = (100u64 << n).min(400);
        assert!(
            delay <= bound,
            "retry {} waited {delay} ms > {bound}",
            n + 1
        );
        // The next attempt never starts before its retry time.
        assert!(
            u(&attempts[n + 1]["started_at"]) >= u(&a["retry_at"]),
            "{j}"
        );
    }
    assert_eq!(attempts[2]["outcome"], "succeeded");
    let s = c.call(r#"{"op":"stats"}"#);
    assert_eq!(s["queues"]["work"]["retries"], 2, "{s}");
    assert_eq!(s["queues"]["work"]["failures"], 2, "{s}");
}

#[test]
fn an_always_failing_job_dies_is_listed_and_dead_retry_runs_it_again() {
    let dir = tempdir();
    let d = daemon(dir.path());
    let runs = dir.path().join("runs");
    let mut req = exec(
        "work",
        // The program prints a NUL byte: it is kept as U+FFFD, never as NUL in the WAL.
        &format!(
            "echo run >> {}; printf 'bo\\000om\\n' >&2; exit 7",
            runs.display()
        ),
    );
    req["max_attempts"] = 2.into(); // the job's own limit overrides the queue's 5
    let mut c = d.conn();
    let id = c.submit(&req.to_string());
    let ok_id = c.submit(&exec("fast", "true").to_string());
    let j = c.wait_state(id, "dead");
    assert_eq!(j["attempts"].as_array().unwrap().len(), 2, "{j}");
    let last = &j["attempts"][1];
    assert_eq!(last["error"], "exited with status 7 (attempt 2 of 2)");
    assert_eq!(last["output_tail"], "--- stderr ---\nbo\u{fffd}om\n");
    assert!(j["finished_at"].is_u64());
    c.wait_state(ok_id, "succeeded");

    let s = d.socket();
    let sock = s.to_str().unwrap();
    let (st, out, err) = cli(&["dead", "list", "--socket", sock]);
    assert!(st.success(), "{err}");
    assert!(
        out.contains(&id.to_string())
            && out.contains("exited with status 7")
            && out.contains("1 dead job(s)"),
        "{out}"
    );
    let (_, out, _) = cli(&["dead", "list", "--socket", sock, "--queue", "fast"]);
    assert!(out.contains("0 dead job(s)"), "{out}");
    let (_, out, _) = cli(&["dead", "list", "--socket", sock, "--since", "2999-01-01"]);
    assert!(out.contains("0 dead job(s)"), "{out}");

    // Back with fresh attempts: it runs twice more, then is dead again.
    let (st, out, err) = cli(&["dead", "retry", "--socket", sock, &id.to_string()]);
    assert!(
        st.success() && out.contains("1 job(s) put back"),
        "{out}{err}"
    );
    let t = std::time::Instant::now();
    while std::fs::read_to_string(&runs).unwrap().lines().count() < 4 {
        assert!(
            t.elapsed() < Duration::from_secs(30),
            "dead retry did not run it again"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let j = c.wait_state(id, "dead");
    assert_eq!(j["attempts"].as_array().unwrap().len(), 4, "{j}");
    let (st, out, _) = cli(&[
        "dead", "retry", "--socket", sock, "--all", "--queue", "fast",
    ]);
    assert!(st.success() && out.contains("0 job(s)"), "{out}");
    // Purge: gone from the list, the timeline stays.
    let (st, out, _) = cli(&["dead", "purge", "--socket", sock]);
    assert!(
        st.success() && out.contains(&format!("1 job(s) purged: {id}")),
        "{out}"
    );
    let (_, out, _) = cli(&["dead", "list", "--socket", sock]);
    assert!(out.contains("0 dead job(s)"), "{out}");
    assert_eq!(c.status(id)["state"], "dead");
    let v = c.call(&format!(r#"{{"op":"dead_retry","id":{id}}}"#));
    assert_eq!(
        v["error"]["code"], "wrong_state",
        "purged jobs cannot be retried: {v}"
    );
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("is purged"),
        "{v}"
    );
}

#[test]
fn retries_never_push_a_job_past_its_deadline() {
    let dir = tempdir();
    let d = daemon(dir.path());
    let mut req = exec("work", "sleep 0.2; exit 1");
    req["due_in_ms"] = 100.into();
    let mut c = d.conn();
    let id = c.submit(&req.to_string());
    let j = c.wait_state(id, "dead");
    assert_eq!(j["attempts"].as_array().unwrap().len(), 1, "{j}");
    let err = j["attempts"][0]["error"].as_str().unwrap();
    assert!(
        err.contains("not retried: the next attempt would start after the deadline"),
        "{err}"
    );
}

#[test]
fn cancel_of_a_running_job_kills_it_and_a_cancelled_job_stays_cancelled_across_sigkill() {
    let dir = tempdir();
    let mut d = daemon(dir.path());
    let pidfile = dir.path().join("pid");
    let mut c = d.conn();
    let id = c.submit(
        &exec(
            "work",
            &format!("echo $$ > {}; exec sleep 60", pidfile.display()),
        )
        .to_string(),
    );
    c.wait_state(id, "running");
    let t = std::time::Instant::now();
    let pid = loop {
        if let Ok(p) = std::fs::read_to_string(&pidfile) {
            if p.ends_with('\n') {
                break p.trim().to_string();
            }
        }
        assert!(t.elapsed() < Duration::from_secs(30));
        std::thread::sleep(Duration::from_millis(10));
    };
    let v = c.call(&format!(r#"{{"op":"cancel","id":{id}}}"#));
    assert_eq!(
        (v["state"].as_str(), v["was"].as_str()),
        (Some("cancelled"), Some("running")),
        "{v}"
    );
    let t = std::time::Instant::now();
    while std::path::Path::new(&format!("/proc/{pid}/cmdline")).exists()
        && !std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .unwrap_or_default()
            .contains(") Z")
    {
        assert!(
            t.elapsed() < Duration::from_secs(60),
            "cancelled job's process {pid} still runs"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    let j = c.status(id);
    assert_eq!(j["state"], "cancelled");
    assert_eq!(j["attempts"][0]["outcome"], "cancelled");
    // The killed handler's late report changes nothing. The exact event: its worker is free
    // again, which happens only once the dispatcher has handled that report.
    let t = std::time::Instant::now();
    while c.call(r#"{"op":"stats"}"#)["busy"] != 0 {
        assert!(t.elapsed() < Duration::from_secs(60));
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(c.status(id)["state"], "cancelled");

    // A delayed job cancelled, then the daemon SIGKILLed: after restart it stays cancelled and
    // never runs.
    let marker = dir.path().join("must-not-exist");
    let mut req = exec("work", &format!("touch {}", marker.display()));
    req["delay_ms"] = 3000.into();
    let later = c.submit(&req.to_string());
    assert_eq!(
        c.call(&format!(r#"{{"op":"cancel","id":{later}}}"#))["ok"],
        true
    );
    d.kill9();
    d.restart();
    // Were the job live again after the restart, waiting for idle would wait for it to run (and
    // leave its marker): the exact event, not a guess at how long it would take.
    d.wait_idle(Duration::from_secs(60));
    let mut c = d.conn();
    assert_eq!(c.status(later)["state"], "cancelled");
    assert_eq!(c.status(id)["state"], "cancelled");
    assert!(!marker.exists(), "a cancelled job ran after restart");
}

fn keyed(key: &str) -> String {
    json!({"op":"submit","queue":"work","kind":"noop","key":key}).to_string()
}

#[test]
fn duplicate_keys_sequential_batched_concurrent_and_across_sigkill() {
    let dir = tempdir();
    let mut d = daemon(dir.path());
    let mut c = d.conn();
    let a = c.call(&keyed("invoice-1"));
    assert_eq!(a["duplicate"], false, "{a}");
    let b = c.call(&keyed("invoice-1"));
    assert_eq!(
        (b["id"].clone(), b["lsn"].clone(), b["duplicate"].clone()),
        (a["id"].clone(), a["lsn"].clone(), json!(true)),
        "{b}"
    );

    // Inside one batch and against an earlier key.
    let v = c.call(
        &json!({"op":"submit_batch","jobs":[
            {"queue":"work","kind":"noop","key":"k-2"},
            {"queue":"work","kind":"noop","key":"invoice-1"},
            {"queue":"work","kind":"noop","key":"k-2"},
            {"queue":"work","kind":"noop"}]})
        .to_string(),
    );
    let ids: Vec<u64> = v["ids"].as_array().unwrap().iter().map(u).collect();
    assert_eq!(ids[1], u(&a["id"]), "{v}");
    assert_eq!(ids[2], ids[0], "{v}");
    assert_ne!(ids[3], ids[0]);
    assert_eq!(v["duplicates"], json!([1, 2]), "{v}");

    // Many connections racing one key: exactly one job.
    let sock = d.socket();
    let racers: Vec<_> = (0..8)
        .map(|_| {
            let sock = sock.clone();
            std::thread::spawn(move || {
                let mut c = Conn::connect(&sock).unwrap();
                (0..20)
                    .map(|_| c.call(&keyed("race")))
                    .collect::<Vec<Value>>()
            })
        })
        .collect();
    let replies: Vec<Value> = racers.into_iter().flat_map(|t| t.join().unwrap()).collect();
    let distinct: std::collections::HashSet<u64> = replies.iter().map(|r| u(&r["id"])).collect();
    assert_eq!(
        distinct.len(),
        1,
        "racing submits made {} jobs",
        distinct.len()
    );
    assert_eq!(
        replies.iter().filter(|r| r["duplicate"] == false).count(),
        1
    );
    d.wait_idle(Duration::from_secs(30));
    let s = c.call(r#"{"op":"stats"}"#);
    // invoice-1, k-2, the unkeyed one and race: 4 jobs ran.
    assert_eq!(s["queues"]["work"]["states"]["succeeded"], 4, "{s}");

    // A key acknowledged before a SIGKILL is still known after it.
    let before = c.call(&keyed("survives"));
    d.kill9();
    d.restart();
    let mut c = d.conn();
    let after = c.call(&keyed("survives"));
    assert_eq!(
        (after["id"].clone(), after["duplicate"].clone()),
        (before["id"].clone(), json!(true)),
        "{after}"
    );
    let raced_again = c.call(&keyed("race"));
    assert_eq!(u(&raced_again["id"]), *distinct.iter().next().unwrap());
    assert_eq!(c.status(u(&a["id"]))["key"], "invoice-1");
}

#[test]
fn bad_input_for_lifecycle_ops_and_flags() {
    let dir = tempdir();
    let d = daemon(dir.path());
    let mut c = d.conn();
    let code = |v: Value| v["error"]["code"].as_str().unwrap_or("none").to_string();
    let long_key = "k".repeat(257);
    assert_eq!(code(c.call(&keyed(&long_key))), "bad_request");
    assert_eq!(code(c.call(&keyed(""))), "bad_request");
    assert_eq!(c.call(&keyed(&"k".repeat(256)))["ok"], true);
    assert_eq!(
        code(c.call(r#"{"op":"submit","queue":"work","kind":"noop","key":7}"#)),
        "bad_request"
    );
    assert_eq!(
        code(c.call(r#"{"op":"submit","queue":"work","kind":"noop","timeout_ms":-1}"#)),
        "bad_request"
    );
    assert_eq!(
        code(
            c.call(r#"{"op":"submit","queue":"work","kind":"noop","timeout_ms":999999999999999}"#)
        ),
        "bad_request"
    );
    assert_eq!(
        code(c.call(r#"{"op":"submit","queue":"work","kind":"noop","max_attempts":5000}"#)),
        "bad_request"
    );
    assert_eq!(code(c.call(r#"{"op":"cancel","id":4242}"#)), "not_found");
    assert_eq!(
        code(c.call(r#"{"op":"dead_retry","id":4242}"#)),
        "not_found"
    );
    assert_eq!(
        code(c.call(r#"{"op":"dead_purge","id":4242}"#)),
        "not_found"
    );
    assert_eq!(
        code(c.call(r#"{"op":"dead_retry","all":true,"queue":"nope"}"#)),
        "unknown_queue"
    );
    assert_eq!(
        code(c.call(r#"{"op":"dead_list","queue":"nope"}"#)),
        "unknown_queue"
    );
    assert_eq!(
        code(c.call(r#"{"op":"dead_list","since":"yesterday"}"#)),
        "bad_request"
    );
    assert_eq!(code(c.call(r#"{"op":"dead_retry"}"#)), "bad_request");
    let live = c.submit(r#"{"op":"submit","queue":"work","kind":"noop","delay_ms":3600000}"#);
    assert_eq!(
        code(c.call(&format!(r#"{{"op":"dead_retry","id":{live}}}"#))),
        "wrong_state"
    );
    let sock = d.socket();
    let s = sock.to_str().unwrap();
    for (args, needle) in [
        (
            vec![
                "submit",
                "--socket",
                s,
                "--queue",
                "work",
                "--kind",
                "noop",
                "--timeout=-5s",
            ],
            "--timeout",
        ),
        (
            vec![
                "submit", "--socket", s, "--queue", "work", "--kind", "noop", "--delay", "99999d",
            ],
            "10 years",
        ),
        (
            vec![
                "submit", "--socket", s, "--queue", "work", "--kind", "noop", "--key", &long_key,
            ],
            "key must be",
        ),
        (vec!["dead", "retry", "--socket", s, "4242"], "no job 4242"),
        (
            vec!["dead", "list", "--socket", s, "--since", "last week"],
            "invalid time",
        ),
        (vec!["cancel", "--socket", s, "4242"], "no job 4242"),
    ] {
        let (st, _, err) = cli(&args);
        assert!(!st.success() && err.contains(needle), "{args:?}: {err}");
    }
    let (st, _, err) = cli(&["dead", "retry", "--socket", s]);
    assert!(!st.success() && err.contains("required"), "{err}");
}

/// Regression: the commit thread acknowledged before it handed the jobs to the dispatcher, so a
/// request sent right after an acknowledgement could find no such job.
#[test]
fn a_job_is_known_as_soon_as_its_submit_is_acknowledged() {
    let dir = tempdir();
    let d = daemon(dir.path());
    let threads: Vec<_> = (0..4)
        .map(|_| {
            let sock = d.socket();
            std::thread::spawn(move || {
                let mut c = Conn::connect(&sock).unwrap();
                for _ in 0..1000 {
                    let id = c.submit(
                        r#"{"op":"submit","queue":"work","kind":"noop","delay_ms":3600000}"#,
                    );
                    let v = c.call(&format!(r#"{{"op":"cancel","id":{id}}}"#));
                    assert_eq!(v["was"], "scheduled", "{v}");
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
}

#[test]
fn queue_timeouts_apply_retrying_jobs_cancel_and_purge_honours_before() {
    let dir = tempdir();
    let d = daemon(dir.path());
    let mut c = d.conn();
    // The queue's timeout applies to a job that names none.
    let slow =
        c.submit(r#"{"op":"submit","queue":"slowpoke","kind":"sleep","payload":{"ms":20000}}"#);
    let j = c.wait_state(slow, "dead");
    assert_eq!(j["timeout_ms"], 100, "{j}");
    assert_eq!(j["attempts"][0]["outcome"], "timed_out", "{j}");

    // A job waiting for its retry (backoff up to 30 min) can be cancelled and never runs again.
    let runs = dir.path().join("patient-runs");
    let id =
        c.submit(&exec("patient", &format!("echo x >> {}; exit 1", runs.display())).to_string());
    let j = c.wait_state(id, "retrying");
    assert!(j["next_attempt_at"].is_u64(), "{j}");
    let v = c.call(&format!(r#"{{"op":"cancel","id":{id}}}"#));
    assert_eq!(v["was"], "retrying", "{v}");
    assert_eq!(c.status(id)["state"], "cancelled");
    assert_eq!(std::fs::read_to_string(&runs).unwrap().lines().count(), 1);

    // purge --before: only jobs that died before the time.
    let sock = d.socket();
    let s = sock.to_str().unwrap();
    let (st, out, _) = cli(&["dead", "purge", "--socket", s, "--before", "2000-01-01"]);
    assert!(st.success() && out.starts_with("0 job(s) purged"), "{out}");
    let (st, out, _) = cli(&[
        "dead",
        "purge",
        "--socket",
        s,
        "--queue",
        "slowpoke",
        "--before",
        "2999-01-01",
    ]);
    assert!(
        st.success() && out.contains(&format!("1 job(s) purged: {slow}")),
        "{out}"
    );
}
