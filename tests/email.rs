//! The `email` kind against a real SMTP server: aiosmtpd (`tests/smtp/server.py`) on a loopback
//! port, storing every message it accepts in a temp dir, which the tests read back.
//!
//! Needs a Python with aiosmtpd (`.ci/run` installs it; by hand: `python3 -m pip install
//! aiosmtpd`). A missing aiosmtpd fails these tests with that hint; it never skips them.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::{cli, tempdir, wait_alert, Conn, Daemon};
use serde_json::{json, Value};

/// A Python interpreter that has aiosmtpd.
fn python() -> String {
    crate::common::python_with("aiosmtpd")
}

/// A port below the kernel's ephemeral range (32768 and up) that is free now: no `bind(0)` of
/// another test can be handed it, so it stays free while a test needs it unbound (a server that
/// is down).
fn quiet_port() -> u16 {
    loop {
        let port = fastrand::u16(20_000..26_000);
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

/// A port nobody listens on right now.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The SMTP server process; killed on drop.
struct Smtp {
    child: Option<Child>,
    port: u16,
    store: PathBuf,
    args: Vec<String>,
}

impl Smtp {
    fn new(dir: &Path, port: u16, args: &[&str]) -> Smtp {
        let store = dir.join("mail");
        std::fs::create_dir_all(&store).unwrap();
        Smtp {
            child: None,
            port,
            store,
            args: args.iter().map(|s| s.to_string()).collect(),
        }
    }

    fn started(dir: &Path, args: &[&str]) -> Smtp {
        // The port is free when picked; should another process take it before the server binds
        // it, the server does not start, and another port is tried.
        let mut last = String::new();
        for _ in 0..5 {
            let mut s = Smtp::new(dir, free_port(), args);
            match s.try_start() {
                Ok(()) => return s,
                Err(e) => last = e,
            }
        }
        panic!("SMTP server did not start: {last}");
    }

    fn start(&mut self) {
        if let Err(e) = self.try_start() {
            panic!("SMTP server did not start: {e}");
        }
    }

    fn try_start(&mut self) -> Result<(), String> {
        assert!(self.child.is_none());
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/smtp/server.py");
        let mut child = Command::new(python())
            .arg(script)
            .args(["--port", &self.port.to_string()])
            .arg("--dir")
            .arg(&self.store)
            .args(&self.args)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start the SMTP server");
        let mut line = String::new();
        let mut out = BufReader::new(child.stdout.take().unwrap());
        let read = out.read_line(&mut line);
        if !matches!(read, Ok(n) if n > 0) || !line.starts_with("READY") {
            let _ = child.kill();
            let _ = child.wait();
            return Err(format!("port {}: {line:?}", self.port));
        }
        self.child = Some(child);
        Ok(())
    }

    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Every stored message, in arrival order.
    fn messages(&self) -> Vec<Stored> {
        let mut names: Vec<PathBuf> = std::fs::read_dir(&self.store)
            .unwrap()
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|x| x == "json"))
            .collect();
        names.sort();
        names
            .iter()
            .map(|p| Stored::parse(&std::fs::read_to_string(p).unwrap()))
            .collect()
    }

    fn wait_for(&self, n: usize, limit: Duration) -> Vec<Stored> {
        let t = Instant::now();
        loop {
            let m = self.messages();
            if m.len() >= n {
                return m;
            }
            assert!(
                t.elapsed() < limit,
                "{} of {n} messages after {limit:?}",
                m.len()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Smtp {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A message as the server stored it.
#[derive(Debug)]
struct Stored {
    mail_from: String,
    rcpt_tos: Vec<String>,
    /// Header name (lower case) to its values, unfolded.
    headers: BTreeMap<String, Vec<String>>,
    data: String,
}

impl Stored {
    fn parse(json_text: &str) -> Stored {
        let v: Value = serde_json::from_str(json_text).unwrap();
        let data = v["data"].as_str().unwrap().replace("\r\n", "\n");
        let head = data.split("\n\n").next().unwrap_or("");
        let mut headers: BTreeMap<String, Vec<String>> = BTreeMap::new();
        let mut last: Option<String> = None;
        for line in head.lines() {
            if line.starts_with([' ', '\t']) {
                if let Some(k) = &last {
                    let vals = headers.get_mut(k).unwrap();
                    let cur = vals.last_mut().unwrap();
                    cur.push(' ');
                    cur.push_str(line.trim());
                }
                continue;
            }
            if let Some((k, val)) = line.split_once(':') {
                let k = k.trim().to_ascii_lowercase();
                headers
                    .entry(k.clone())
                    .or_default()
                    .push(val.trim().to_string());
                last = Some(k);
            }
        }
        Stored {
            mail_from: v["mail_from"].as_str().unwrap().to_string(),
            rcpt_tos: v["rcpt_tos"]
                .as_array()
                .unwrap()
                .iter()
                .map(|r| r.as_str().unwrap().to_string())
                .collect(),
            headers,
            data,
        }
    }

    fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .and_then(|v| v.first())
            .map(String::as_str)
            .unwrap_or_else(|| panic!("no {name} header in:\n{}", self.data))
    }

    fn message_id(&self) -> &str {
        self.header("message-id")
    }
}

/// A daemon whose `email` queue retries fast and for long (the setup docs/config.md
/// recommends for email: an outage must not use up the attempts), plus an `other` queue.
fn daemon_for(dir: &Path, port: u16, smtp_extra: &str) -> Daemon {
    daemon_with_env(dir, port, smtp_extra, &[])
}

fn daemon_with_env(dir: &Path, port: u16, smtp_extra: &str, envs: &[(&str, &str)]) -> Daemon {
    let cfg = dir.join("duejob.toml");
    std::fs::write(
        &cfg,
        format!(
            "workers = 4\n\
             [queues.email]\ndue_in = \"1h\"\nmax_attempts = 1000\nretry_past_deadline = true\n\
             backoff = {{ base = \"50ms\", cap = \"200ms\" }}\n\
             [queues.other]\ndue_in = \"1m\"\n\
             [smtp]\nhost = \"127.0.0.1\"\nport = {port}\ntls = \"none\"\ntimeout = \"5s\"\n{smtp_extra}\n"
        ),
    )
    .unwrap();
    Daemon::start_with_env(dir, &["--config", cfg.to_str().unwrap()], envs)
}

fn email(payload: Value) -> String {
    json!({"op":"submit","queue":"email","kind":"email","payload":payload}).to_string()
}

fn simple(n: usize) -> Value {
    json!({"from":"shop@example.com","to":format!("user{n}@example.org"),
           "subject":format!("mail {n}"),"text":format!("body {n}"),
           "message_id":format!("<mail-{n}@example.com>")})
}

fn stats(c: &mut Conn) -> Value {
    c.call(r#"{"op":"stats"}"#)
}

/// Polls `status` until the job has made `n` attempts; returns the first attempt's error, after
/// checking that the failures did not end the job.
/// Attempts of a job (its `status`) that have *ended* in failure. An attempt that has started
/// but not yet failed does not count: it may still be cut short, or still be counted elsewhere.
fn failed_attempts(job: &Value) -> usize {
    job["attempts"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|a| a["outcome"] == "failed")
        .count()
}

/// Waits until `n` attempts of job `id` have failed; returns the first attempt's error.
fn wait_attempts(c: &mut Conn, id: u64, n: usize) -> String {
    let t = Instant::now();
    loop {
        let j = c.status(id);
        if failed_attempts(&j) >= n {
            assert_ne!(j["state"], "dead", "{j}");
            return j["attempts"][0]["error"].as_str().unwrap().to_string();
        }
        assert!(t.elapsed() < Duration::from_secs(60), "{j}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn text_and_html_mails_arrive_with_their_headers() {
    let dir = tempdir();
    let smtp = Smtp::started(dir.path(), &[]);
    let d = daemon_for(dir.path(), smtp.port, "pool_size = 2");
    let mut c = d.conn();
    let text = c.submit(&email(json!({
        "from": "Shop <shop@example.com>",
        "to": ["ann@example.org", "Bob Smith <bob@example.org>"],
        "cc": "carol@example.org",
        "bcc": ["audit@example.com"],
        "reply_to": "help@example.com",
        "subject": "Your order 1234",
        "text": "Thanks for your order.\nIt ships today.\n.A line that starts with a dot\n.",
        "headers": {"X-Order": "1234", "List-Unsubscribe": "<mailto:unsub@example.com>"},
        "message_id": "<order-1234@example.com>"
    })));
    let html = c.submit(&email(json!({
        "from": "shop@example.com", "to": "dave@example.org",
        "subject": "Grüße aus Köln", "html": "<p>Hello <b>Dave</b></p>"
    })));
    let both = c.submit(&email(json!({
        "from": "shop@example.com", "to": "erin@example.org", "subject": "Both",
        "text": "plain part", "html": "<i>rich part</i>"
    })));
    for id in [text, html, both] {
        c.wait_state(id, "succeeded");
    }
    let mails = smtp.wait_for(3, Duration::from_secs(30));
    assert_eq!(mails.len(), 3);
    let by_id = |want: &str| -> &Stored {
        mails
            .iter()
            .find(|m| m.message_id() == want)
            .unwrap_or_else(|| panic!("no mail {want}: {mails:?}"))
    };

    let m = by_id("<order-1234@example.com>");
    assert_eq!(m.mail_from, "shop@example.com");
    let mut rcpt = m.rcpt_tos.clone();
    rcpt.sort();
    assert_eq!(
        rcpt,
        [
            "ann@example.org",
            "audit@example.com",
            "bob@example.org",
            "carol@example.org"
        ]
    );
    assert_eq!(m.header("from"), "Shop <shop@example.com>");
    assert_eq!(
        m.header("to"),
        "ann@example.org, \"Bob Smith\" <bob@example.org>"
    );
    assert_eq!(m.header("cc"), "carol@example.org");
    assert_eq!(m.header("reply-to"), "help@example.com");
    assert_eq!(m.header("subject"), "Your order 1234");
    assert_eq!(m.header("x-order"), "1234");
    assert_eq!(m.header("list-unsubscribe"), "<mailto:unsub@example.com>");
    assert!(m.header("content-type").starts_with("text/plain"));
    assert!(m.data.contains("It ships today."), "{}", m.data);
    // Dot-stuffed on the wire, un-stuffed by the server: the line arrives as written.
    assert!(
        m.data.contains("\n.A line that starts with a dot\n.\n")
            || m.data.ends_with("\n.A line that starts with a dot\n."),
        "{:?}",
        m.data
    );
    assert!(
        !m.headers.contains_key("bcc"),
        "bcc leaked into the headers"
    );
    assert!(!m.data.contains("audit@example.com"));
    assert!(m.headers.contains_key("date"));

    // The generated Message-ID is the job's key and the mail's header.
    let key = c.status(html)["key"].as_str().unwrap().to_string();
    assert!(key.ends_with("@example.com>"), "{key}");
    let m = by_id(&key);
    assert!(m.header("content-type").starts_with("text/html"));
    assert!(
        m.header("subject").starts_with("=?utf-8?"),
        "non-ASCII subject is RFC 2047 encoded: {}",
        m.header("subject")
    );
    assert!(m.data.contains("<b>Dave</b>"));

    let key = c.status(both)["key"].as_str().unwrap().to_string();
    let m = by_id(&key);
    assert!(m
        .header("content-type")
        .starts_with("multipart/alternative"));
    assert!(m.data.contains("plain part") && m.data.contains("<i>rich part</i>"));

    let s = stats(&mut c);
    assert_eq!(s["kinds"]["email"]["succeeded"], 3, "{s}");
    assert_eq!(s["kinds"]["email"]["consecutive_failures"], 0);
}

#[test]
fn a_permanent_rejection_ends_the_job_dead_at_once_and_a_temporary_one_retries() {
    let dir = tempdir();
    let smtp = Smtp::started(dir.path(), &[]);
    let d = daemon_for(dir.path(), smtp.port, "");
    let mut c = d.conn();
    let rejected = c.submit(&email(json!({
        "from": "shop@example.com", "to": "reject-me@example.org", "subject": "s", "text": "t"
    })));
    let deferred = c.submit(&email(json!({
        "from": "shop@example.com", "to": "tempfail@example.org", "subject": "s", "text": "t"
    })));
    let j = c.wait_state(rejected, "dead");
    let attempts = j["attempts"].as_array().unwrap();
    assert_eq!(attempts.len(), 1, "no retry after a 5xx: {j}");
    let err = attempts[0]["error"].as_str().unwrap();
    assert!(
        err.contains("550") && err.contains("mailbox unavailable (test rejection)"),
        "the server's reply is kept: {err}"
    );
    // The 4xx keeps retrying (1000 attempts allowed): wait for a few, then cancel it.
    let e = wait_attempts(&mut c, deferred, 3);
    assert!(e.contains("451") && e.contains("will retry"), "{e}");
    assert_eq!(
        c.call(&format!(r#"{{"op":"cancel","id":{deferred}}}"#))["ok"],
        true
    );
    let s = stats(&mut c);
    let h = &s["kinds"]["email"];
    assert_eq!(h["permanent_failures"], 1, "{s}");
    assert!(h["temporary_failures"].as_u64().unwrap() >= 3, "{s}");
    assert!(smtp.messages().is_empty());
}

#[test]
fn a_server_that_is_down_delays_email_only_and_every_mail_goes_out_once_it_returns() {
    let dir = tempdir();
    // A port no other test can be handed while this one's server is down.
    let mut smtp = Smtp::new(dir.path(), quiet_port(), &[]);
    let d = daemon_for(dir.path(), smtp.port, "pool_size = 2");
    let mut c = d.conn();
    let ids: Vec<u64> = (0..20).map(|n| c.submit(&email(simple(n)))).collect();
    // Other queues run on while the SMTP server is down (G6, docs/guarantees.md).
    let others: Vec<u64> = (0..50)
        .map(|_| c.submit(r#"{"op":"submit","queue":"other","kind":"noop","payload":{}}"#))
        .collect();
    for id in others {
        c.wait_state(id, "succeeded");
    }
    // Every email has failed at least twice, none is dead, and stats say why.
    let t = Instant::now();
    loop {
        let tries: Vec<usize> = ids
            .iter()
            .map(|&id| failed_attempts(&c.status(id)))
            .collect();
        if tries.iter().all(|&n| n >= 2) {
            break;
        }
        assert!(t.elapsed() < Duration::from_secs(60), "{tries:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
    let s = stats(&mut c);
    assert_eq!(s["totals"]["dead"], 0, "{s}");
    let h = &s["kinds"]["email"];
    assert!(h["consecutive_failures"].as_u64().unwrap() >= 40, "{s}");
    assert!(
        h["last_error"]
            .as_str()
            .unwrap()
            .contains("temporary failure"),
        "{s}"
    );
    assert!(
        d.log_text().contains("failed attempts in a row"),
        "the outage is logged"
    );
    let sock = d.socket();
    let (st, out, _) = cli(&["stats", "--socket", sock.to_str().unwrap()]);
    assert!(st.success());
    assert!(out.contains("email: FAILING ("), "{out}");
    assert!(out.contains("last error at "), "{out}");
    assert!(smtp.messages().is_empty());

    smtp.start();
    for &id in &ids {
        c.wait_state(id, "succeeded");
    }
    let mails = smtp.messages();
    let mut got: Vec<&str> = mails.iter().map(|m| m.message_id()).collect();
    got.sort();
    let mut want: Vec<String> = (0..20).map(|n| format!("<mail-{n}@example.com>")).collect();
    want.sort();
    assert_eq!(got, want, "every mail exactly once");
    let s = stats(&mut c);
    assert_eq!(s["kinds"]["email"]["consecutive_failures"], 0, "{s}");
    assert_eq!(s["kinds"]["email"]["succeeded"], 20, "{s}");
    let (_, out, _) = cli(&["stats", "--socket", sock.to_str().unwrap()]);
    assert!(out.contains("email: ok; 20 sent"), "{out}");
    assert!(d.log_text().contains("accepts mail again"));
}

#[test]
fn a_sigkill_mid_send_delivers_every_mail_at_least_once_and_counts_the_duplicates() {
    const N: usize = 60;
    let dir = tempdir();
    // The server stores each mail, then takes 25 ms to say so: sends are in flight when the
    // daemon dies, and some of those mails are already stored.
    let smtp = Smtp::started(dir.path(), &["--delay-ms", "25"]);
    let mut d = daemon_for(dir.path(), smtp.port, "pool_size = 4");
    let ids: Vec<u64> = {
        let mut c = d.conn();
        (0..N).map(|n| c.submit(&email(simple(n)))).collect()
    };
    smtp.wait_for(10, Duration::from_secs(60));
    d.kill9();
    let at_kill = smtp.messages().len();
    d.restart();
    d.wait_idle(Duration::from_secs(120));
    let mails = smtp.messages();
    let mut counts: BTreeMap<String, usize> = BTreeMap::new();
    for m in &mails {
        *counts.entry(m.message_id().to_string()).or_default() += 1;
    }
    for n in 0..N {
        let id = format!("<mail-{n}@example.com>");
        assert!(counts.contains_key(&id), "{id} never delivered");
    }
    assert_eq!(counts.len(), N, "nothing but the submitted mails");
    let duplicates = mails.len() - N;
    eprintln!(
        "SIGKILL mid-send: {at_kill} of {N} delivered before the kill, {} deliveries in all, \
         {duplicates} duplicates (at-least-once)",
        mails.len()
    );
    // Every duplicate is a mail the server took while its attempt was never recorded as ended:
    // the job's timeline shows that attempt `interrupted` by the restart, or, when the kill came
    // before the attempt's `start` record reached the log (docs/guarantees.md, G3), the run is
    // not in it and the job has a single attempt. A mail whose success was recorded is never
    // sent again, and one kill sends a mail at most twice.
    let mut c = d.conn();
    for (n, id) in ids.iter().enumerate() {
        let sent = counts[&format!("<mail-{n}@example.com>")];
        let j = c.status(*id);
        let outcomes: Vec<&str> = j["attempts"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a["outcome"].as_str().unwrap_or("?"))
            .collect();
        assert_eq!(outcomes.last(), Some(&"succeeded"), "{j}");
        if sent > 1 {
            assert!(
                sent == 2 && (outcomes.contains(&"interrupted") || outcomes.len() == 1),
                "mail {n} sent {sent} times, timeline {outcomes:?}: {j}"
            );
        }
    }
    let s = c.call(r#"{"op":"stats"}"#);
    assert_eq!(s["totals"]["succeeded"].as_u64(), Some(N as u64), "{s}");
}

#[test]
fn a_resubmitted_email_is_not_sent_twice() {
    let dir = tempdir();
    let smtp = Smtp::started(dir.path(), &[]);
    let d = daemon_for(dir.path(), smtp.port, "");
    let mut c = d.conn();
    let first = c.call(&email(simple(1)));
    let again = c.call(&email(simple(1)));
    assert_eq!(first["duplicate"], false, "{first}");
    assert_eq!(again["duplicate"], true, "{again}");
    assert_eq!(first["id"], again["id"]);
    c.wait_state(first["id"].as_u64().unwrap(), "succeeded");
    // An explicit key wins over the Message-ID.
    let mut keyed: Value = serde_json::from_str(&email(simple(1))).unwrap();
    keyed["key"] = json!("my-own-key");
    let third = c.call(&keyed.to_string());
    assert_eq!(third["duplicate"], false, "{third}");
    c.wait_state(third["id"].as_u64().unwrap(), "succeeded");
    assert_eq!(smtp.wait_for(2, Duration::from_secs(30)).len(), 2);
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(smtp.messages().len(), 2);
}

#[test]
fn bad_email_payloads_are_refused_before_acknowledgement() {
    let dir = tempdir();
    let smtp = Smtp::started(dir.path(), &[]);
    let d = daemon_for(dir.path(), smtp.port, "");
    let mut c = d.conn();
    let cases = [
        (
            json!({"to":"a@b.io","subject":"s","text":"t"}),
            "missing field `from`",
        ),
        (
            json!({"from":"not an address","to":"a@b.io","subject":"s","text":"t"}),
            "from: invalid address",
        ),
        (
            json!({"from":"a@b.io","to":["ok@b.io","nope"],"subject":"s","text":"t"}),
            "to[1]: invalid address",
        ),
        (
            json!({"from":"a@b.io","subject":"s","text":"t"}),
            "no recipient",
        ),
        (
            json!({"from":"a@b.io","to":"c@d.io","subject":"s"}),
            "give text, html or both",
        ),
        (
            json!({"from":"a@b.io","to":"c@d.io","subject":"x\r\nBcc: evil@e.io","text":"t"}),
            "line breaks",
        ),
        (
            json!({"from":"a@b.io","to":"c@d.io","subject":"s","text":"t","headers":{"X-A":"v\nBcc: e@e.io"}}),
            "line breaks",
        ),
        (
            json!({"from":"a@b.io","to":"c@d.io","subject":"s","text":"t","headers":{"Subject":"again"}}),
            "payload's own fields",
        ),
        (
            json!({"from":"a@b.io","to":"c@d.io","subject":"s","text":"t","message_id":"nothing"}),
            "message_id",
        ),
        (json!("just a string"), "email payload"),
    ];
    for (payload, want) in cases {
        let r = c.call(&email(payload.clone()));
        assert_eq!(r["ok"], false, "{payload}: {r}");
        assert_eq!(r["error"]["code"], "invalid_payload", "{payload}: {r}");
        let msg = r["error"]["message"].as_str().unwrap();
        assert!(msg.contains(want), "{payload}: {msg:?} lacks {want:?}");
    }
    let s = stats(&mut c);
    assert_eq!(
        s["wal"]["records"], 0,
        "nothing refused reached the WAL: {s}"
    );
    assert!(smtp.messages().is_empty());
}

#[test]
fn without_smtp_settings_email_jobs_are_refused_with_the_reason() {
    let dir = tempdir();
    let d = Daemon::start_in(dir.path(), &[]);
    let r = d.conn().call(
        &json!({"op":"submit","queue":"default","kind":"email","payload":simple(1)}).to_string(),
    );
    assert_eq!(r["error"]["code"], "invalid_payload", "{r}");
    assert!(
        r["error"]["message"].as_str().unwrap().contains("[smtp]"),
        "{r}"
    );
}

#[test]
fn credentials_come_from_the_environment_and_never_reach_the_log() {
    let secret = "s3cret-Pa55word";
    let dir = tempdir();
    let smtp = Smtp::started(dir.path(), &["--user", "mailer", "--password", secret]);
    let good = dir.path().join("good");
    std::fs::create_dir_all(&good).unwrap();
    let d = daemon_with_env(
        &good,
        smtp.port,
        "username = \"mailer\"\npassword_env = \"DUEJOB_TEST_SMTP_PASSWORD\"",
        &[("DUEJOB_TEST_SMTP_PASSWORD", secret)],
    );
    let id = d.conn().submit(&email(simple(7)));
    d.conn().wait_state(id, "succeeded");
    assert_eq!(
        smtp.wait_for(1, Duration::from_secs(30))[0].message_id(),
        "<mail-7@example.com>"
    );

    // A wrong password is the operator's to fix: the mail waits in retrying, never dead.
    let bad = dir.path().join("bad");
    std::fs::create_dir_all(&bad).unwrap();
    let d2 = daemon_with_env(
        &bad,
        smtp.port,
        "username = \"mailer\"\npassword_env = \"DUEJOB_TEST_SMTP_PASSWORD\"",
        &[("DUEJOB_TEST_SMTP_PASSWORD", "wrong-password")],
    );
    let mut c = d2.conn();
    let id = c.submit(&email(simple(8)));
    let e = wait_attempts(&mut c, id, 2);
    assert!(e.contains("535"), "{e}");
    for log in [d.log_text(), d2.log_text()] {
        assert!(
            !log.contains(secret) && !log.contains("wrong-password"),
            "{log}"
        );
    }
    // A password variable that is not set stops the start with a clear error.
    let unset = dir.path().join("unset");
    std::fs::create_dir_all(&unset).unwrap();
    let cfg = unset.join("duejob.toml");
    std::fs::write(
        &cfg,
        "[smtp]\nhost = \"127.0.0.1\"\nusername = \"u\"\npassword_env = \"DUEJOB_TEST_UNSET_VARIABLE\"\n",
    )
    .unwrap();
    let mut d3 = Daemon::start_in_unchecked(&unset, &["--config", cfg.to_str().unwrap()]);
    assert!(!d3.wait_exit(Duration::from_secs(30)).success());
    assert!(
        d3.log_text()
            .contains("DUEJOB_TEST_UNSET_VARIABLE is not set"),
        "{}",
        d3.log_text()
    );
}

/// A throwaway CA and a certificate for `localhost` signed by it, made with the openssl command.
/// Returns (CA file, certificate, key).
fn test_certificates(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    let run = |args: &[&str]| {
        let out = Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .output()
            .expect("the TLS tests need the openssl command");
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    run(&[
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
        "-days",
        "2",
        "-subj",
        "/CN=duejob test CA",
    ]);
    run(&[
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "key.pem",
        "-out",
        "leaf.csr",
        "-subj",
        "/CN=localhost",
    ]);
    std::fs::write(
        dir.join("ext.cnf"),
        "subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n",
    )
    .unwrap();
    run(&[
        "x509",
        "-req",
        "-in",
        "leaf.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "cert.pem",
        "-days",
        "2",
        "-extfile",
        "ext.cnf",
    ]);
    (
        dir.join("ca.pem"),
        dir.join("cert.pem"),
        dir.join("key.pem"),
    )
}

/// A daemon sending to `localhost` (the name in the test certificate) with TLS mode `mode`.
fn tls_daemon(dir: &Path, port: u16, mode: &str, smtp_extra: &str) -> Daemon {
    let cfg = dir.join("duejob.toml");
    std::fs::write(
        &cfg,
        format!(
            "workers = 2\n[queues.email]\ndue_in = \"1h\"\nmax_attempts = 1000\n\
             backoff = {{ base = \"50ms\", cap = \"200ms\" }}\n\
             [smtp]\nhost = \"localhost\"\nport = {port}\ntls = \"{mode}\"\n{smtp_extra}\n"
        ),
    )
    .unwrap();
    Daemon::start_in(dir, &["--config", cfg.to_str().unwrap()])
}

#[test]
fn starttls_and_implicit_tls_deliver_and_an_untrusted_certificate_is_refused() {
    let dir = tempdir();
    let (ca, cert, key) = test_certificates(dir.path());
    let (cert, key) = (cert.to_str().unwrap(), key.to_str().unwrap());
    let tls_args = |mode| vec!["--tls", mode, "--cert", cert, "--key", key];
    for (mode, server_mode) in [("starttls", "starttls"), ("tls", "implicit")] {
        let sub = dir.path().join(mode);
        std::fs::create_dir_all(&sub).unwrap();
        // The server refuses MAIL before STARTTLS (or speaks only TLS): a delivery proves TLS.
        let mut args = tls_args(server_mode);
        args.extend(["--user", "u", "--password", "p"]);
        let smtp = Smtp::started(&sub, &args);
        let extra = format!(
            "ca_file = \"{}\"\nusername = \"u\"\npassword = \"p\"",
            ca.display()
        );
        let d = tls_daemon(&sub, smtp.port, mode, &extra);
        let mut c = d.conn();
        let id = c.submit(&email(simple(1)));
        c.wait_state(id, "succeeded");
        let m = smtp.wait_for(1, Duration::from_secs(30));
        assert_eq!(m[0].message_id(), "<mail-1@example.com>", "{mode}");
    }

    // Without the CA the certificate is not trusted: a temporary failure, never a plain-text send.
    let sub = dir.path().join("untrusted");
    std::fs::create_dir_all(&sub).unwrap();
    let smtp = Smtp::started(&sub, &tls_args("starttls"));
    let d = tls_daemon(&sub, smtp.port, "starttls", "");
    let mut c = d.conn();
    let id = c.submit(&email(simple(2)));
    let e = wait_attempts(&mut c, id, 2);
    assert!(
        e.contains("temporary failure") && e.to_lowercase().contains("certificate"),
        "{e}"
    );
    assert!(smtp.messages().is_empty());
}

/// The Kickserv incident, end to end: notification emails to an SMTP server that answers 451
/// while a bulk flood holds the workers. The retrying alert fires with the queue's figures; the
/// operator pauses bulk and the notifications get the workers; the outage ends, the alert
/// resolves; every email is delivered once, before any bulk job that was held.
#[test]
fn the_incident_an_smtp_outage_under_a_bulk_flood_alerts_and_the_operators_pause_lets_mail_through()
{
    let dir = tempdir();
    let fault = dir.path().join("smtp-outage");
    std::fs::write(&fault, "").unwrap();
    let smtp = Smtp::started(dir.path(), &["--fault-file", fault.to_str().unwrap()]);
    let alerts = dir.path().join("alerts.jsonl");
    let cfg = dir.path().join("duejob.toml");
    std::fs::write(
        &cfg,
        format!(
            "workers = 2\nalert_command = [\"/bin/sh\", \"-c\", \"cat >> {}\"]\nalert_clear = \"1s\"\n\
             [queues.notifications]\ndue_in = \"30s\"\nmax_attempts = 1000\nretry_past_deadline = true\n\
             backoff = {{ base = \"100ms\", cap = \"200ms\" }}\n\
             [queues.bulk]\ndue_in = \"1h\"\n\
             [smtp]\nhost = \"127.0.0.1\"\nport = {}\ntls = \"none\"\ntimeout = \"5s\"\n",
            alerts.display(),
            smtp.port
        ),
    )
    .unwrap();
    let d = Daemon::start_in(dir.path(), &["--config", cfg.to_str().unwrap()]);
    let mut c = d.conn();
    // The flood: more bulk jobs than workers, each holding one for a while.
    let flood: Vec<Value> = (0..60)
        .map(|_| json!({"queue": "bulk", "kind": "exec", "payload": {"argv": ["sleep", "0.3"]}}))
        .collect();
    let r = c.call(&json!({"op": "submit_batch", "jobs": flood}).to_string());
    assert_eq!(r["ok"], true, "{r}");
    let mails: Vec<u64> = (0..5)
        .map(|n| {
            let r = c.call(
                &json!({"op": "submit", "queue": "notifications", "kind": "email",
                        "payload": simple(n)})
                .to_string(),
            );
            r["id"].as_u64().unwrap_or_else(|| panic!("{r}"))
        })
        .collect();
    // The alert fires, with what the operator needs.
    let fired = wait_alert(&alerts, |v| {
        v["alert"] == "retrying" && v["queue"] == "notifications" && v["state"] == "firing"
    });
    assert!(
        fired["figures"]["retries"].as_u64().unwrap() >= 1,
        "{fired}"
    );
    assert!(d
        .log_text()
        .contains("alert retrying firing for queue notifications"));
    // The operator's fix: pause bulk (running bulk jobs finish; no other starts).
    let r = c.call(r#"{"op":"queue_pause","queue":"bulk"}"#);
    assert_eq!(r["paused"], true, "{r}");
    let paused_at = crate::common::stats(&d)["queues"]["bulk"]["states"]["succeeded"]
        .as_u64()
        .unwrap();
    // The outage ends: every email goes out, once; the alert resolves.
    std::fs::remove_file(&fault).unwrap();
    let mut last_mail = 0;
    for &id in &mails {
        let j = c.wait_state(id, "succeeded");
        last_mail = last_mail.max(j["finished_at"].as_u64().unwrap());
    }
    let got = smtp.wait_for(mails.len(), Duration::from_secs(30));
    let mut ids: Vec<&str> = got.iter().map(|m| m.message_id()).collect();
    ids.sort();
    ids.dedup();
    assert_eq!((got.len(), ids.len()), (5, 5), "each mail once");
    wait_alert(&alerts, |v| {
        v["alert"] == "retrying" && v["queue"] == "notifications" && v["state"] == "resolved"
    });
    // The held bulk jobs start only after the resume, after every email.
    let s = crate::common::stats(&d);
    assert!(
        s["queues"]["bulk"]["states"]["ready"].as_u64().unwrap() > 0,
        "bulk jobs held while paused: {s}"
    );
    // At most the two that were running when the pause came finished since.
    assert!(
        s["queues"]["bulk"]["states"]["succeeded"].as_u64().unwrap() <= paused_at + 2,
        "{s}"
    );
    let r = c.call(r#"{"op":"queue_resume","queue":"bulk"}"#);
    assert_eq!(r["paused"], false, "{r}");
    d.wait_idle(Duration::from_secs(120));
    let jobs = c.call(r#"{"op":"jobs","queue":"bulk","limit":100}"#);
    let started_after: Vec<u64> = jobs["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|j| j["attempts"][0]["started_at"].as_u64())
        .filter(|&t| t > last_mail)
        .collect();
    assert!(!started_after.is_empty(), "bulk went on after the mails");
}
