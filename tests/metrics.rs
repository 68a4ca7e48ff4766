//! `serve --metrics`: Prometheus text that a real parser (Python's prometheus_client) reads,
//! with the exact counts of what ran; loopback only unless told otherwise; read-only.

use std::io::{Read, Write};
use std::time::Duration;

use serde_json::Value;

use crate::common::{python_with, tempdir, wait_stats, Daemon};

/// A GET of `path` on `addr`: (status line, body).
fn get(addr: &str, method: &str, path: &str) -> (String, String) {
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut resp = String::new();
    s.read_to_string(&mut resp).unwrap();
    let (head, body) = resp.split_once("\r\n\r\n").unwrap_or((&resp, ""));
    (
        head.lines().next().unwrap_or("").to_string(),
        body.to_string(),
    )
}

/// The metrics as Python's prometheus_client parser reads them: family name to its samples
/// (name, labels, value).
fn parsed(text: &str) -> Value {
    let py = python_with("prometheus_client");
    let script = r#"
import json, sys
from prometheus_client.parser import text_string_to_metric_families
out = {}
for f in text_string_to_metric_families(sys.stdin.read()):
    out[f.name] = {"type": f.type, "samples": [
        {"name": s.name, "labels": s.labels, "value": s.value} for s in f.samples]}
print(json.dumps(out))
"#;
    let mut child = std::process::Command::new(py)
        .args(["-c", script])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "the parser refused:\n{text}");
    serde_json::from_slice(&out.stdout).unwrap()
}

/// The value of the sample `name` with these labels.
fn sample(m: &Value, family: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    m[family]["samples"]
        .as_array()
        .unwrap_or_else(|| panic!("no family {family}: {m}"))
        .iter()
        .find(|s| s["name"] == name && labels.iter().all(|(k, v)| s["labels"][*k] == *v))
        .unwrap_or_else(|| panic!("no {name}{labels:?} in {}", m[family]))["value"]
        .as_f64()
        .unwrap()
}

#[test]
fn metrics_parse_with_a_real_parser_and_count_exactly_what_ran() {
    let dir = tempdir();
    let cfg = dir.path().join("duejob.toml");
    std::fs::write(
        &cfg,
        "workers = 2\n[queues.default]\n[queues.bulk]\nmax_attempts = 2\n\
         backoff = { base = \"10ms\", cap = \"10ms\" }\n",
    )
    .unwrap();
    let d = Daemon::start_in(
        dir.path(),
        &[
            "--config",
            cfg.to_str().unwrap(),
            "--metrics",
            "127.0.0.1:0",
        ],
    );
    let log = d.log_text();
    let addr = log
        .split("metrics at http://")
        .nth(1)
        .and_then(|r| r.split("/metrics").next())
        .unwrap_or_else(|| panic!("{log}"))
        .to_string();
    let mut c = d.conn();
    for _ in 0..3 {
        let id = c.submit(r#"{"op":"submit","queue":"default","kind":"noop"}"#);
        c.wait_state(id, "succeeded");
    }
    let dead = c.submit(
        r#"{"op":"submit","queue":"bulk","kind":"exec","payload":{"argv":["/bin/false"]}}"#,
    );
    c.wait_state(dead, "dead");
    let s = wait_stats(&d, Duration::from_secs(10), |s| s["busy"] == 0);
    let (status, body) = get(&addr, "GET", "/metrics");
    assert!(status.contains("200"), "{status}");
    let m = parsed(&body);
    let dq = [("queue", "default"), ("kind", "noop")];
    let bq = [("queue", "bulk"), ("kind", "exec")];
    assert_eq!(m["duejob_jobs_submitted"]["type"], "counter");
    assert_eq!(
        sample(
            &m,
            "duejob_jobs_submitted",
            "duejob_jobs_submitted_total",
            &dq
        ),
        3.0
    );
    assert_eq!(
        sample(
            &m,
            "duejob_jobs_succeeded",
            "duejob_jobs_succeeded_total",
            &dq
        ),
        3.0
    );
    assert_eq!(
        sample(
            &m,
            "duejob_jobs_submitted",
            "duejob_jobs_submitted_total",
            &bq
        ),
        1.0
    );
    assert_eq!(
        sample(&m, "duejob_jobs_dead", "duejob_jobs_dead_total", &bq),
        1.0
    );
    assert_eq!(
        sample(&m, "duejob_retries", "duejob_retries_total", &bq),
        1.0
    );
    assert_eq!(
        sample(
            &m,
            "duejob_jobs",
            "duejob_jobs",
            &[("queue", "bulk"), ("state", "dead")]
        ),
        1.0
    );
    assert_eq!(
        sample(
            &m,
            "duejob_queue_workers_max",
            "duejob_queue_workers_max",
            &[("queue", "bulk")]
        ),
        2.0
    );
    // Histograms: every attempt waited and ran; +Inf holds them all; buckets never decrease.
    assert_eq!(m["duejob_wait_seconds"]["type"], "histogram");
    let q = [("queue", "default")];
    assert_eq!(
        sample(&m, "duejob_wait_seconds", "duejob_wait_seconds_count", &q),
        3.0
    );
    assert_eq!(
        sample(
            &m,
            "duejob_run_seconds",
            "duejob_run_seconds_count",
            &[("queue", "bulk")]
        ),
        2.0
    );
    assert_eq!(
        sample(
            &m,
            "duejob_wait_seconds",
            "duejob_wait_seconds_bucket",
            &[("queue", "default"), ("le", "+Inf")]
        ),
        3.0
    );
    for fam in [
        "duejob_wait_seconds",
        "duejob_run_seconds",
        "duejob_wal_fsync_seconds",
        "duejob_wal_group_records",
    ] {
        // Per series (its labels but `le`), in order: cumulative counts never decrease.
        let mut last: std::collections::BTreeMap<String, f64> = Default::default();
        for smp in m[fam]["samples"].as_array().unwrap() {
            if !smp["name"].as_str().unwrap().ends_with("_bucket") {
                continue;
            }
            let mut labels = smp["labels"].clone();
            labels.as_object_mut().unwrap().remove("le");
            let v = smp["value"].as_f64().unwrap();
            let prev = last.insert(labels.to_string(), v).unwrap_or(0.0);
            assert!(v >= prev, "{fam}: {smp} after {prev}");
        }
        assert!(!last.is_empty(), "{fam} has buckets");
    }
    let fsyncs = sample(&m, "duejob_wal_fsyncs", "duejob_wal_fsyncs_total", &[]);
    assert_eq!(
        sample(
            &m,
            "duejob_wal_fsync_seconds",
            "duejob_wal_fsync_seconds_count",
            &[]
        ),
        fsyncs
    );
    assert!(fsyncs >= s["wal"]["fsyncs"].as_f64().unwrap());
    // Read-only, one path.
    assert!(get(&addr, "POST", "/metrics").0.contains("405"));
    assert!(get(&addr, "GET", "/").0.contains("404"));
}

#[test]
fn metrics_on_a_public_address_need_to_be_asked_for() {
    let dir = tempdir();
    let mut d = Daemon::start_in_unchecked(dir.path(), &["--metrics", "0.0.0.0:0"]);
    let st = d.wait_exit(Duration::from_secs(30));
    assert!(!st.success());
    assert!(
        d.log_text().contains("--metrics-public"),
        "{}",
        d.log_text()
    );
}
