//! SIGKILL the daemon at random moments while thousands of submits and exec jobs are in flight;
//! after the last restart every acknowledged job reaches `succeeded`, and no id was given twice.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::common::{cli, tempdir, Conn, Daemon};
use serde_json::Value;

/// Waits until `acks` reaches `n` (a round ends on progress, not on a clock: a slow disk only
/// makes it longer), then a random extra moment, so that kills land mid-flight.
fn progress_then_pause(acks: &AtomicUsize, n: usize, extra_ms: u64) {
    let t = Instant::now();
    while acks.load(Ordering::Relaxed) < n {
        assert!(
            t.elapsed() < Duration::from_secs(120),
            "no progress: {} acknowledgements",
            acks.load(Ordering::Relaxed)
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    std::thread::sleep(Duration::from_millis(extra_ms));
}

/// Submits pipelined jobs (window of 8) until the connection dies or `stop` is set; returns the
/// acknowledged (id, tag) pairs, counting each in `acks` as it comes.
fn client(
    sock: std::path::PathBuf,
    out: String,
    worker: usize,
    round: usize,
    stop: Arc<AtomicBool>,
    acks: Arc<AtomicUsize>,
) -> Vec<(u64, String)> {
    let mut acked = Vec::new();
    let Ok(mut c) = Conn::connect(&sock) else {
        return acked;
    };
    let _ = c.w.set_write_timeout(Some(Duration::from_secs(5)));
    let mut sent: std::collections::VecDeque<String> = Default::default();
    let mut n = 0u64;
    loop {
        while sent.len() < 8 && !stop.load(Ordering::Relaxed) {
            let tag = format!("r{round}-w{worker}-{n}");
            n += 1;
            // Every third job is an exec job; the rest are noop, so thousands fit in the test.
            let line = if n % 3 == 0 {
                serde_json::json!({"op":"submit","queue":"default","kind":"exec",
                    "payload":{"argv":["sh","-c", format!("echo {tag} >> {out}")]}})
            } else {
                serde_json::json!({"op":"submit","queue":"bulk","kind":"noop","payload":{"tag": tag}})
            };
            use std::io::Write;
            if c.w.write_all(format!("{line}\n").as_bytes()).is_err() {
                return acked;
            }
            sent.push_back(tag);
        }
        let Some(tag) = sent.pop_front() else {
            return acked;
        };
        let mut line = String::new();
        use std::io::BufRead;
        match c.r.read_line(&mut line) {
            Ok(n) if n > 0 => {}
            _ => return acked,
        }
        let v: Value = serde_json::from_str(&line).expect("reply is JSON");
        if v["ok"] == true {
            acked.push((v["id"].as_u64().unwrap(), tag));
            acks.fetch_add(1, Ordering::Relaxed);
        }
    }
}

#[test]
fn sigkill_mid_load_loses_no_acknowledged_job() {
    let dir = tempdir();
    let out = dir.path().join("exec-out.txt");
    // Small segments, sealed every 200 ms, and a checkpoint as soon as one is sealed with dead
    // records: SIGKILL lands during checkpoints and releases too.
    let cfg = dir.path().join("duejob.toml");
    std::fs::write(
        &cfg,
        "segment_size_mib = 1\ncheckpoint_after_mib = 1\nseal_after = \"200ms\"\n",
    )
    .unwrap();
    let mut d = Daemon::start_in(
        dir.path(),
        &["--workers", "4", "--config", cfg.to_str().unwrap()],
    );
    let mut acked: HashMap<u64, String> = HashMap::new();
    let mut seed = 0x9e3779b97f4a7c15u64 ^ std::process::id() as u64;
    let mut rnd = |max: u64| {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed % max
    };
    let rounds = 4;
    for round in 0..rounds {
        let stop = Arc::new(AtomicBool::new(false));
        let acks = Arc::new(AtomicUsize::new(0));
        let threads: Vec<_> = (0..4)
            .map(|w| {
                let (sock, out, stop) = (d.socket(), out.display().to_string(), stop.clone());
                let acks = acks.clone();
                std::thread::spawn(move || client(sock, out, w, round, stop, acks))
            })
            .collect();
        progress_then_pause(&acks, 300, rnd(300));
        if round + 1 < rounds {
            d.kill9();
        } else {
            stop.store(true, Ordering::Relaxed);
        }
        for t in threads {
            for (id, tag) in t.join().unwrap() {
                assert!(
                    acked.insert(id, tag).is_none(),
                    "id {id} acknowledged twice"
                );
            }
        }
        if round + 1 < rounds {
            d.restart();
        }
    }
    assert!(
        acked.len() >= 1000,
        "only {} jobs acknowledged; the test needs thousands in flight",
        acked.len()
    );

    d.wait_idle(Duration::from_secs(180));
    let mut c = d.conn();
    // Whether a checkpoint finished between the kills depends on timing (the checkpointer works
    // a tenth of the time); one more, taken now, makes the log checked below end in one.
    let v = c.call(r#"{"op":"checkpoint"}"#);
    assert_eq!(v["ok"], true, "{v}");
    for id in acked.keys() {
        let v = c.call(&format!(r#"{{"op":"status","id":{id}}}"#));
        assert_eq!(v["job"]["state"], "succeeded", "job {id}: {v}");
    }
    d.stop();

    // The WAL holds one submit per id, and each acknowledged id is the job that was acknowledged.
    let (st, dump, err) = cli(&["wal", "dump", "--json", d.data().to_str().unwrap()]);
    assert!(st.success(), "{err}");
    let mut submits: BTreeMap<u64, Value> = BTreeMap::new();
    for line in dump.lines() {
        let v: Value = serde_json::from_str(line).unwrap();
        if v["type"] == "submit" {
            let id = v["record"]["id"].as_u64().unwrap();
            assert!(
                submits.insert(id, v["record"].clone()).is_none(),
                "id {id} submitted twice in the WAL"
            );
        }
    }
    let exec_out = std::fs::read_to_string(&out).unwrap_or_default();
    let ran: std::collections::HashSet<&str> = exec_out.lines().collect();
    for (id, tag) in &acked {
        let rec = &submits[id];
        let payload = rec["payload"].as_str().unwrap();
        assert!(
            payload.contains(tag.as_str()),
            "id {id} holds {payload}, acknowledged as {tag}"
        );
        if rec["kind"] == "exec" {
            assert!(
                ran.contains(tag.as_str()),
                "exec job {id} ({tag}) never ran"
            );
        }
    }
    assert!(
        d.data().join("wal/checkpoint").exists(),
        "no checkpoint in place after the forced one"
    );
    let t = Instant::now();
    let (st, _, err) = cli(&["wal", "verify", d.data().to_str().unwrap()]);
    assert!(
        st.success(),
        "verify after crashes: {err} ({:?})",
        t.elapsed()
    );
}

/// What each workload job ends as, whatever the crashes: (request, expected terminal state).
fn lifecycle_job(n: u64, dir: &std::path::Path, tag: &str) -> (Value, &'static str) {
    match n % 4 {
        0 => (
            serde_json::json!({"op":"submit","queue":"work","kind":"noop","payload":{"tag":tag}}),
            "succeeded",
        ),
        // Always fails: dead after its 2 attempts.
        1 => (
            serde_json::json!({"op":"submit","queue":"work","kind":"exec",
                "payload":{"argv":["sh","-c", format!("exit 3 # {tag}")]}}),
            "dead",
        ),
        // Fails once, then succeeds (the marker survives crashes).
        2 => {
            let m = dir.join(format!("flaky-{tag}"));
            let script = format!(
                "[ -e {m} ] || {{ touch {m}; exit 1; }} # {tag}",
                m = m.display()
            );
            (
                serde_json::json!({"op":"submit","queue":"work","kind":"exec","payload":{"argv":["sh","-c",script]}}),
                "succeeded",
            )
        }
        // Runs past its timeout every time: dead.
        _ => (
            serde_json::json!({"op":"submit","queue":"work","kind":"sleep","payload":{"ms":10000},
                "timeout_ms":50,"max_attempts":1,"key":tag}),
            "dead",
        ),
    }
}

#[test]
fn crash_loop_with_failures_retries_and_timeouts_ends_every_job_exactly_once() {
    let dir = tempdir();
    let cfg = dir.path().join("duejob.toml");
    std::fs::write(&cfg, "workers = 4\n[queues.work]\ndue_in = \"1h\"\nmax_attempts = 2\nbackoff = { base = \"20ms\", cap = \"100ms\" }\n").unwrap();
    let mut d = Daemon::start_in(dir.path(), &["--config", cfg.to_str().unwrap()]);
    let mut acked: HashMap<u64, (&'static str, String)> = HashMap::new();
    for round in 0..4u64 {
        let stop = Arc::new(AtomicBool::new(false));
        let acks = Arc::new(AtomicUsize::new(0));
        let threads: Vec<_> = (0..3u64)
            .map(|w| {
                let (sock, stop, dir) = (d.socket(), stop.clone(), dir.path().to_path_buf());
                let acks = acks.clone();
                std::thread::spawn(move || {
                    let mut got = Vec::new();
                    let Ok(mut c) = Conn::connect(&sock) else {
                        return got;
                    };
                    let mut n = 0u64;
                    // Throttled, so the backlog stays small while kills still land mid-flight.
                    while !stop.load(Ordering::Relaxed) && n < 120 {
                        std::thread::sleep(Duration::from_millis(3));
                        let tag = format!("r{round}w{w}n{n}");
                        let (req, expect) = lifecycle_job(n, &dir, &tag);
                        n += 1;
                        use std::io::{BufRead, Write};
                        if c.w.write_all(format!("{req}\n").as_bytes()).is_err() {
                            break;
                        }
                        let mut line = String::new();
                        if !matches!(c.r.read_line(&mut line), Ok(k) if k > 0) {
                            break;
                        }
                        let v: Value = serde_json::from_str(&line).unwrap();
                        if v["ok"] == true {
                            got.push((v["id"].as_u64().unwrap(), expect, tag));
                            acks.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    got
                })
            })
            .collect();
        progress_then_pause(&acks, 30, 50 * round);
        if round < 3 {
            d.kill9();
        } else {
            stop.store(true, Ordering::Relaxed);
        }
        for t in threads {
            for (id, expect, tag) in t.join().unwrap() {
                assert!(
                    acked.insert(id, (expect, tag)).is_none(),
                    "id {id} acknowledged twice"
                );
            }
        }
        if round < 3 {
            d.restart();
        }
    }
    assert!(acked.len() >= 100, "only {} jobs acknowledged", acked.len());
    let t0 = Instant::now();
    let stats = d.wait_idle(Duration::from_secs(180));
    eprintln!(
        "{} jobs acknowledged; idle after {:?}",
        acked.len(),
        t0.elapsed()
    );
    let mut c = d.conn();
    for (id, (expect, tag)) in &acked {
        let j = c.status(*id);
        assert_eq!(j["state"], *expect, "job {id} ({tag}): {j}");
    }
    d.stop();

    // Every durable job (acknowledged or written just before a crash) counts: the totals must be
    // exactly what the submits in the WAL imply.
    let (st, dump, err) = cli(&["wal", "dump", "--json", d.data().to_str().unwrap()]);
    assert!(st.success(), "{err}");
    let (mut want_ok, mut want_dead) = (0u64, 0u64);
    for line in dump.lines() {
        let v: Value = serde_json::from_str(line).unwrap();
        if v["type"] != "submit" {
            continue;
        }
        let p = v["record"]["payload"].as_str().unwrap();
        let failing = p.contains("exit 3") || v["record"]["kind"] == "sleep";
        if failing {
            want_dead += 1;
        } else {
            want_ok += 1;
        }
    }
    let t = &stats["totals"];
    assert_eq!(
        (t["succeeded"].as_u64(), t["dead"].as_u64()),
        (Some(want_ok), Some(want_dead)),
        "{stats}"
    );
    assert_eq!(t["cancelled"], 0);
}
