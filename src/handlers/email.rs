//! `email`: sends one email through the configured SMTP server, with lettre's blocking SMTP
//! client (rustls) over a small pool of connections.
//!
//! Payload (JSON):
//!
//! ```json
//! {"from": "Shop <shop@example.com>", "to": ["ann@example.com"], "cc": [], "bcc": [],
//!  "reply_to": "help@example.com", "subject": "Your order", "text": "...", "html": "<p>...</p>",
//!  "headers": {"X-Order": "1234"}, "message_id": "<order-1234@example.com>"}
//! ```
//!
//! `to`, `cc`, `bcc` and `reply_to` take one address or a list; `text` and/or `html` give the
//! body (both: a multipart/alternative). Everything is checked at submit time by building the
//! whole message, so a bad address or header is refused before the job is acknowledged.
//!
//! Without `message_id` one is generated at submit time and written into the stored payload, so
//! every attempt (and every replay) sends the same Message-ID, and the job's idempotency key
//! defaults to it: a resubmitted email with the same Message-ID is not sent twice.
//!
//! Sending uses lettre's SMTP connection (`SmtpConnection`: connect, STARTTLS or implicit TLS,
//! EHLO, AUTH, commands) with a small pool of its own, rather than lettre's `SmtpTransport`:
//! lettre 0.11.23 writes a message's body and its final `CRLF.CRLF` in two writes on a socket
//! with Nagle's algorithm on, so every email waited ~40 ms for the server's delayed ACK
//! (measured here: 90 emails/s with 4 workers; lettre PR #1159 sets `TCP_NODELAY`, not yet in a
//! release). Here the dot-stuffed body and its terminator go out in one write.
//!
//! Failures: a permanent SMTP rejection (5xx, other than an authentication failure) ends the job
//! `dead` at once with the server's reply; anything else (4xx, connection refused, timeout, TLS,
//! authentication) is temporary and retried with the queue's backoff. [`Handler::health`] shows
//! the server's state in `stats`.

use std::collections::BTreeMap;
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use std::time::Duration;

use lettre::message::header::{HeaderName, HeaderValue};
use lettre::message::{Mailbox, Message, MultiPart, SinglePart};
use lettre::transport::smtp::authentication::{Credentials, Mechanism};
use lettre::transport::smtp::client::{Certificate, SmtpConnection, TlsParameters};
use lettre::transport::smtp::commands::{Data, Mail, Rcpt};
use lettre::transport::smtp::extension::{ClientId, Extension, MailBodyParameter, MailParameter};
use lettre::transport::smtp::Error as SmtpError;
use serde::Deserialize;

use super::{Admitted, Handler, JobContext, JobError, KindHealth};
use crate::config::{SmtpConfig, SmtpTls};

/// Most recipients (to + cc + bcc) of one email.
pub const MAX_RECIPIENTS: usize = 1000;
/// Longest Message-ID (it doubles as the idempotency key, at most 256 bytes).
pub const MAX_MESSAGE_ID: usize = 250;
/// Longest extra header value (RFC 5322's line limit).
pub const MAX_HEADER_VALUE: usize = 998;

/// Headers the payload sets through its own fields (or the transport sets); `headers` may not.
const RESERVED_HEADERS: &[&str] = &[
    "from",
    "sender",
    "to",
    "cc",
    "bcc",
    "reply-to",
    "subject",
    "message-id",
    "date",
    "mime-version",
    "content-type",
    "content-transfer-encoding",
    "content-disposition",
];

#[derive(Deserialize)]
#[serde(untagged)]
enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

fn one_or_many<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    Ok(match OneOrMany::deserialize(d)? {
        OneOrMany::One(s) => vec![s],
        OneOrMany::Many(v) => v,
    })
}

/// An email job's payload.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EmailPayload {
    /// Sender.
    pub from: String,
    /// Recipients.
    #[serde(default, deserialize_with = "one_or_many")]
    pub to: Vec<String>,
    /// Copy recipients.
    #[serde(default, deserialize_with = "one_or_many")]
    pub cc: Vec<String>,
    /// Blind copy recipients (in the envelope, not in the headers).
    #[serde(default, deserialize_with = "one_or_many")]
    pub bcc: Vec<String>,
    /// Reply-To addresses.
    #[serde(default, deserialize_with = "one_or_many")]
    pub reply_to: Vec<String>,
    /// Subject.
    pub subject: String,
    /// Plain-text body.
    pub text: Option<String>,
    /// HTML body.
    pub html: Option<String>,
    /// Extra headers, name to value.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// Message-ID, with or without the angle brackets.
    pub message_id: Option<String>,
}

fn parse_payload(payload: &str) -> Result<EmailPayload, String> {
    serde_json::from_str(payload).map_err(|e| format!("email payload: {e}"))
}

fn mailbox(field: &str, i: Option<usize>, s: &str) -> Result<Mailbox, String> {
    let at = match i {
        Some(i) => format!("{field}[{i}]"),
        None => field.to_string(),
    };
    if s.contains(['\r', '\n']) {
        return Err(format!("email payload: {at}: line breaks are not allowed"));
    }
    Mailbox::from_str(s).map_err(|e| format!("email payload: {at}: invalid address {s:?}: {e}"))
}

/// `<id@domain>` from `id@domain` or `<id@domain>`, checked.
fn normalize_message_id(id: &str) -> Result<String, String> {
    let inner = id
        .strip_prefix('<')
        .and_then(|s| s.strip_suffix('>'))
        .unwrap_or(id);
    let ok = !inner.is_empty()
        && inner.len() + 2 <= MAX_MESSAGE_ID
        && inner
            .bytes()
            .all(|b| b.is_ascii_graphic() && b != b'<' && b != b'>')
        && inner.split_once('@').is_some_and(|(l, r)| {
            !l.is_empty() && !r.is_empty() && !r.contains('@') && !l.contains('@')
        });
    if !ok {
        return Err(format!(
            "email payload: message_id {id:?}: use <left@right>, printable ASCII without spaces, \
             at most {MAX_MESSAGE_ID} bytes"
        ));
    }
    Ok(format!("<{inner}>"))
}

fn check_header(name: &str, value: &str) -> Result<HeaderValue, String> {
    let bad_name = name.is_empty()
        || name.len() > 76
        || !name.bytes().all(|b| (33..=126).contains(&b) && b != b':');
    if bad_name {
        return Err(format!(
            "email payload: header name {name:?}: use 1-76 printable ASCII characters, no ':' or space"
        ));
    }
    if RESERVED_HEADERS.contains(&name.to_ascii_lowercase().as_str()) {
        return Err(format!(
            "email payload: header {name:?} is set from the payload's own fields, not `headers`"
        ));
    }
    if value.contains(['\r', '\n']) {
        return Err(format!(
            "email payload: header {name}: line breaks are not allowed in the value"
        ));
    }
    if value.len() > MAX_HEADER_VALUE {
        return Err(format!(
            "email payload: header {name}: value longer than {MAX_HEADER_VALUE} bytes"
        ));
    }
    let hn = HeaderName::new_from_ascii(name.to_string())
        .map_err(|_| format!("email payload: header name {name:?} is not valid"))?;
    Ok(HeaderValue::new(hn, value.to_string()))
}

/// Builds the message a payload describes, checking every field.
pub fn build_message(p: &EmailPayload) -> Result<Message, String> {
    let mut b = Message::builder().from(mailbox("from", None, &p.from)?);
    let recipients = p.to.len() + p.cc.len() + p.bcc.len();
    if recipients == 0 {
        return Err("email payload: no recipient (give to, cc or bcc)".into());
    }
    if recipients > MAX_RECIPIENTS {
        return Err(format!(
            "email payload: {recipients} recipients; at most {MAX_RECIPIENTS}"
        ));
    }
    for (i, a) in p.to.iter().enumerate() {
        b = b.to(mailbox("to", Some(i), a)?);
    }
    for (i, a) in p.cc.iter().enumerate() {
        b = b.cc(mailbox("cc", Some(i), a)?);
    }
    for (i, a) in p.bcc.iter().enumerate() {
        b = b.bcc(mailbox("bcc", Some(i), a)?);
    }
    for (i, a) in p.reply_to.iter().enumerate() {
        b = b.reply_to(mailbox("reply_to", Some(i), a)?);
    }
    if p.subject.contains(['\r', '\n']) {
        return Err("email payload: subject: line breaks are not allowed".into());
    }
    b = b.subject(p.subject.as_str());
    if let Some(id) = &p.message_id {
        b = b.message_id(Some(normalize_message_id(id)?));
    }
    for (name, value) in &p.headers {
        b = b.raw_header(check_header(name, value)?);
    }
    let built = match (&p.text, &p.html) {
        (Some(t), Some(h)) => b.multipart(MultiPart::alternative_plain_html(t.clone(), h.clone())),
        (Some(t), None) => b.singlepart(SinglePart::plain(t.clone())),
        (None, Some(h)) => b.singlepart(SinglePart::html(h.clone())),
        (None, None) => return Err("email payload: give text, html or both".into()),
    };
    built.map_err(|e| format!("email payload: {e}"))
}

/// A fresh Message-ID on the sender's domain.
fn generate_message_id(from: &Mailbox) -> String {
    let ms = crate::job::now_ms();
    format!(
        "<{ms:x}.{:016x}{:016x}@{}>",
        fastrand::u64(..),
        fastrand::u64(..),
        from.email.domain()
    )
}

/// Checks an email payload and, when it has no Message-ID, adds one.
pub fn admit_payload(payload: &str) -> Result<Admitted, String> {
    let p = parse_payload(payload)?;
    build_message(&p)?;
    match &p.message_id {
        Some(id) => Ok(Admitted {
            payload: None,
            default_key: Some(normalize_message_id(id)?),
        }),
        None => {
            let id = generate_message_id(&mailbox("from", None, &p.from)?);
            let mut v: serde_json::Map<String, serde_json::Value> =
                serde_json::from_str(payload).map_err(|e| format!("email payload: {e}"))?;
            v.insert("message_id".into(), serde_json::Value::String(id.clone()));
            Ok(Admitted {
                payload: Some(serde_json::Value::Object(v).to_string()),
                default_key: Some(id),
            })
        }
    }
}

/// How to reach the SMTP server, and the connections kept open to it.
struct Server {
    host: String,
    port: u16,
    timeout: Duration,
    hello: ClientId,
    /// Implicit TLS (`Some` with `wrapper`) or STARTTLS (`Some`), or plain text.
    tls: Option<TlsParameters>,
    wrapper: bool,
    credentials: Option<Credentials>,
    pool_size: usize,
    /// Idle connections, most recently used last. Locked only to take or return one.
    idle: Mutex<Vec<SmtpConnection>>,
}

impl Server {
    fn new(c: &SmtpConfig) -> Result<Server, String> {
        let tls = match c.tls {
            SmtpTls::None => None,
            SmtpTls::StartTls | SmtpTls::Tls => Some(tls_parameters(c)?),
        };
        Ok(Server {
            host: c.host.clone(),
            port: c.port,
            timeout: c.timeout,
            hello: c
                .hello_name
                .clone()
                .map(ClientId::Domain)
                .unwrap_or_default(),
            tls,
            wrapper: c.tls == SmtpTls::Tls,
            credentials: c.username.as_ref().map(|u| {
                let pass = c.password.as_ref().map(|p| p.expose()).unwrap_or("");
                Credentials::new(u.clone(), pass.to_string())
            }),
            pool_size: c.pool_size as usize,
            idle: Mutex::new(Vec::new()),
        })
    }

    /// A new connection: TCP (or TLS), greeting, EHLO, STARTTLS when asked, AUTH when configured.
    fn connect(&self) -> Result<SmtpConnection, SmtpError> {
        let wrap = self.tls.as_ref().filter(|_| self.wrapper);
        let mut conn = SmtpConnection::connect(
            (self.host.as_str(), self.port),
            Some(self.timeout),
            &self.hello,
            wrap,
            None,
        )?;
        if let (Some(tls), false) = (&self.tls, self.wrapper) {
            conn.starttls(tls, &self.hello)?;
        }
        if let Some(c) = &self.credentials {
            conn.auth(&[Mechanism::Plain, Mechanism::Login], c)?;
        }
        Ok(conn)
    }

    /// An idle connection that still answers NOOP, or a new one.
    fn checkout(&self) -> Result<SmtpConnection, SmtpError> {
        loop {
            let conn = self.idle.lock().ok().and_then(|mut v| v.pop());
            let Some(mut c) = conn else {
                return self.connect();
            };
            if c.test_connected() {
                return Ok(c);
            }
            c.abort();
        }
    }

    fn checkin(&self, mut conn: SmtpConnection) {
        if self.pool_size > 0 && !conn.has_broken() {
            if let Ok(mut idle) = self.idle.lock() {
                if idle.len() < self.pool_size {
                    idle.push(conn);
                    return;
                }
            }
        }
        let _ = conn.quit();
    }

    /// Sends one message: MAIL, RCPT for each recipient, DATA, then the body.
    fn send(&self, m: &Message) -> Result<(), SmtpError> {
        let mut conn = self.checkout()?;
        let r = transmit(&mut conn, m);
        match &r {
            // The server refused this message; the session is fine: reset it and reuse it.
            Err(e) if (e.is_permanent() || e.is_transient()) && !conn.has_broken() => {
                if conn.command("RSET\r\n").is_ok() {
                    self.checkin(conn);
                } else {
                    conn.abort();
                }
            }
            Err(_) => conn.abort(),
            Ok(()) => self.checkin(conn),
        }
        r
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Ok(idle) = self.idle.get_mut() {
            for mut c in idle.drain(..) {
                let _ = c.quit();
            }
        }
    }
}

/// Certificate checks for `c.host`: the web PKI roots, plus `ca_file` when given.
fn tls_parameters(c: &SmtpConfig) -> Result<TlsParameters, String> {
    let mut b = TlsParameters::builder(c.host.clone());
    if let Some(path) = &c.ca_file {
        let pem =
            std::fs::read(path).map_err(|e| format!("smtp.ca_file {}: {e}", path.display()))?;
        let cert = Certificate::from_pem(&pem)
            .map_err(|e| format!("smtp.ca_file {}: {e}", path.display()))?;
        b = b.add_root_certificate(cert);
    }
    b.build()
        .map_err(|e| format!("smtp: TLS setup for {}: {e}", c.host))
}

/// The body as SMTP carries it after DATA: lines starting with `.` get another `.` (RFC 5321
/// 4.5.2), and `CRLF.CRLF` ends it, all in one buffer so that it leaves in one write.
fn dot_stuffed(body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(body.len() + body.len() / 64 + 8);
    let mut line_start = true;
    for &b in body {
        if line_start && b == b'.' {
            out.push(b'.');
        }
        out.push(b);
        line_start = b == b'\n';
    }
    out.extend_from_slice(b"\r\n.\r\n");
    out
}

fn transmit(conn: &mut SmtpConnection, m: &Message) -> Result<(), SmtpError> {
    let envelope = m.envelope();
    let body = m.formatted();
    let mut params = Vec::new();
    let non_ascii_address = envelope
        .from()
        .into_iter()
        .chain(envelope.to())
        .any(|a| !AsRef::<str>::as_ref(a).is_ascii());
    if non_ascii_address {
        params.push(MailParameter::SmtpUtfEight);
    }
    if !body.is_ascii() && conn.server_info().supports_feature(Extension::EightBitMime) {
        params.push(MailParameter::Body(MailBodyParameter::EightBitMime));
    }
    conn.command(Mail::new(envelope.from().cloned(), params))?;
    for to in envelope.to() {
        conn.command(Rcpt::new(to.clone(), Vec::new()))?;
    }
    conn.command(Data)?;
    let data = dot_stuffed(&body);
    match std::str::from_utf8(&data) {
        // `command` writes its argument in one write and reads the reply.
        Ok(text) => conn.command(text).map(|_| ()),
        // Not UTF-8 (lettre encodes bodies, so this should not happen): lettre's own path.
        Err(_) => conn.message(&body).map(|_| ()),
    }
}

/// Where messages go.
enum Outbox {
    /// No SMTP server configured: every email job is refused at submit.
    Unconfigured,
    /// The SMTP server.
    Smtp(Server),
    /// Unit tests: lettre's stub, which records instead of sending.
    #[cfg(test)]
    Stub(lettre::transport::stub::StubTransport),
}

/// Counters behind [`Handler::health`]. Atomics on the success path; the mutex only on failure.
#[derive(Default)]
struct Health {
    succeeded: AtomicU64,
    temporary: AtomicU64,
    permanent: AtomicU64,
    consecutive: AtomicU64,
    last_error: Mutex<Option<(String, u64)>>,
}

/// The `email` kind.
pub struct Email {
    outbox: Outbox,
    health: Health,
}

/// SMTP reply codes of a failed authentication: a configuration problem, mended by fixing the
/// credentials, not by giving up on the email.
const AUTH_CODES: &[&str] = &["530", "534", "535", "538"];

/// Whether an SMTP error ends the email for good.
fn is_permanent(e: &SmtpError) -> bool {
    if e.is_permanent() {
        let code = e.status().map(|c| c.to_string()).unwrap_or_default();
        return !AUTH_CODES.contains(&code.as_str());
    }
    // The message itself could not be sent (not the server's state): retrying cannot help.
    e.is_client()
}

impl Email {
    /// The kind before any SMTP server is configured: refuses every email job at submit.
    pub fn unconfigured() -> Email {
        Email {
            outbox: Outbox::Unconfigured,
            health: Health::default(),
        }
    }

    /// The kind sending through `smtp`.
    pub fn new(smtp: &SmtpConfig) -> Result<Email, String> {
        Ok(Email {
            outbox: Outbox::Smtp(Server::new(smtp)?),
            health: Health::default(),
        })
    }

    #[cfg(test)]
    fn stub(t: lettre::transport::stub::StubTransport) -> Email {
        Email {
            outbox: Outbox::Stub(t),
            health: Health::default(),
        }
    }

    /// The server, for error texts and logs.
    fn server(&self) -> String {
        match &self.outbox {
            Outbox::Smtp(s) => format!("{}:{}", s.host, s.port),
            _ => "(none)".into(),
        }
    }

    fn send(&self, m: &Message) -> Result<(), JobError> {
        let r = match &self.outbox {
            // Only jobs accepted under an earlier config get here (the kind refuses new ones):
            // they wait in retrying until the daemon runs with [smtp] again.
            Outbox::Unconfigured => {
                return Err(JobError::new(
                    "no SMTP server is configured ([smtp] in the config file); will retry",
                ))
            }
            Outbox::Smtp(server) => server.send(m),
            #[cfg(test)]
            Outbox::Stub(t) => {
                use lettre::Transport;
                return t
                    .send(m)
                    .map_err(|e| JobError::new(format!("stub transport: {e}")));
            }
        };
        r.map_err(|e| {
            if is_permanent(&e) {
                JobError::permanent(format!(
                    "SMTP server {} rejected the email for good: {e}",
                    self.server()
                ))
            } else {
                JobError::new(format!(
                    "SMTP server {}: temporary failure, will retry: {e}",
                    self.server()
                ))
            }
        })
    }

    fn record(&self, id: u64, r: &Result<(), JobError>) {
        let h = &self.health;
        match r {
            Ok(()) => {
                h.succeeded.fetch_add(1, Ordering::Relaxed);
                let was = h.consecutive.swap(0, Ordering::Relaxed);
                if was > 0 {
                    log::info!(
                        "email: SMTP server {} accepts mail again after {was} failed attempts",
                        self.server()
                    );
                }
            }
            Err(e) => {
                if let Ok(mut last) = h.last_error.lock() {
                    *last = Some((e.reason.clone(), crate::job::now_ms()));
                }
                if e.permanent {
                    // A 5xx is about this message: the server is up and answering.
                    h.permanent.fetch_add(1, Ordering::Relaxed);
                    h.consecutive.store(0, Ordering::Relaxed);
                    log::warn!("email job {id}: {}", e.reason);
                } else {
                    h.temporary.fetch_add(1, Ordering::Relaxed);
                    let n = h.consecutive.fetch_add(1, Ordering::Relaxed) + 1;
                    if n.is_power_of_two() {
                        log::error!(
                            "email job {id}: {} ({n} failed attempts in a row)",
                            e.reason
                        );
                    }
                }
            }
        }
    }
}

impl Handler for Email {
    fn validate(&self, payload: &str) -> Result<(), String> {
        self.admit(payload).map(|_| ())
    }

    fn admit(&self, payload: &str) -> Result<Admitted, String> {
        if matches!(self.outbox, Outbox::Unconfigured) {
            return Err(
                "the email kind has no SMTP server: add an [smtp] section to the config file"
                    .into(),
            );
        }
        admit_payload(payload)
    }

    fn run(&self, ctx: &JobContext<'_>) -> Result<(), JobError> {
        // Checked at submit; a payload that fails now (a WAL from another version) cannot be
        // mended by retrying.
        let p = parse_payload(ctx.payload).map_err(JobError::permanent)?;
        let m = build_message(&p).map_err(JobError::permanent)?;
        let r = self.send(&m);
        self.record(ctx.id, &r);
        r
    }

    fn health(&self) -> Option<KindHealth> {
        if matches!(self.outbox, Outbox::Unconfigured) {
            return None;
        }
        let h = &self.health;
        let last = h.last_error.lock().ok().and_then(|l| l.clone());
        Some(KindHealth {
            succeeded: h.succeeded.load(Ordering::Relaxed),
            temporary_failures: h.temporary.load(Ordering::Relaxed),
            permanent_failures: h.permanent.load(Ordering::Relaxed),
            consecutive_failures: h.consecutive.load(Ordering::Relaxed),
            last_error_at: last.as_ref().map(|l| l.1),
            last_error: last.map(|l| l.0),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::handlers::StopSignal;
    use lettre::transport::stub::StubTransport;

    fn ok(payload: &str) -> Admitted {
        admit_payload(payload).unwrap_or_else(|e| panic!("{payload}: {e}"))
    }

    fn err(payload: &str) -> String {
        admit_payload(payload).expect_err(payload)
    }

    #[test]
    fn the_body_is_dot_stuffed_and_terminated_in_one_buffer() {
        assert_eq!(
            dot_stuffed(b"a\r\n.b\r\n..c\r\nd."),
            b"a\r\n..b\r\n...c\r\nd.\r\n.\r\n"
        );
        assert_eq!(dot_stuffed(b".start"), b"..start\r\n.\r\n");
        assert_eq!(dot_stuffed(b""), b"\r\n.\r\n");
    }

    #[test]
    fn a_message_id_is_generated_once_and_becomes_the_key() {
        let a = ok(r#"{"from":"a@example.com","to":"b@example.org","subject":"hi","text":"x"}"#);
        let stored = a.payload.expect("payload completed");
        let v: serde_json::Value = serde_json::from_str(&stored).unwrap();
        let id = v["message_id"].as_str().unwrap();
        assert!(id.starts_with('<') && id.ends_with("@example.com>"), "{id}");
        assert_eq!(a.default_key.as_deref(), Some(id));
        // The stored payload is accepted as it is: the id is kept, not generated again.
        let again = ok(&stored);
        assert_eq!(again.payload, None);
        assert_eq!(again.default_key.as_deref(), Some(id));
        // Two submits without an id get different ids.
        let b = ok(r#"{"from":"a@example.com","to":"b@example.org","subject":"hi","text":"x"}"#);
        assert_ne!(b.default_key, Some(id.to_string()));
    }

    #[test]
    fn a_given_message_id_is_normalized_into_the_key() {
        let a = ok(
            r#"{"from":"a@x.io","to":["b@y.io"],"subject":"s","html":"<p>h</p>","message_id":"k1@x.io"}"#,
        );
        assert_eq!(a.default_key.as_deref(), Some("<k1@x.io>"));
    }

    #[test]
    fn bad_payloads_are_refused_with_the_field_named() {
        let cases: &[(&str, &str)] = &[
            ("not json", "email payload"),
            (
                r#"{"to":"b@y.io","subject":"s","text":"t"}"#,
                "missing field `from`",
            ),
            (
                r#"{"from":"nobody","to":"b@y.io","subject":"s","text":"t"}"#,
                "from: invalid address",
            ),
            (
                r#"{"from":"a@x.io","to":["b@y.io","bad@@y"],"subject":"s","text":"t"}"#,
                "to[1]: invalid address",
            ),
            (
                r#"{"from":"a@x.io","cc":"c d@y.io","subject":"s","text":"t"}"#,
                "cc[0]: invalid address",
            ),
            (
                r#"{"from":"a@x.io","subject":"s","text":"t"}"#,
                "no recipient",
            ),
            (
                r#"{"from":"a@x.io","to":"b@y.io","subject":"s"}"#,
                "give text, html or both",
            ),
            (
                r#"{"from":"a@x.io","to":"b@y.io","subject":"a\r\nBcc: evil@z.io","text":"t"}"#,
                "subject: line breaks",
            ),
            (
                r#"{"from":"a@x.io","to":"b@y.io","subject":"s","text":"t","headers":{"X-A":"1\r\nBcc: e@z.io"}}"#,
                "line breaks are not allowed in the value",
            ),
            (
                r#"{"from":"a@x.io","to":"b@y.io","subject":"s","text":"t","headers":{"Bad Name":"1"}}"#,
                "header name",
            ),
            (
                r#"{"from":"a@x.io","to":"b@y.io","subject":"s","text":"t","headers":{"bcc":"e@z.io"}}"#,
                "set from the payload's own fields",
            ),
            (
                r#"{"from":"a@x.io","to":"b@y.io","subject":"s","text":"t","message_id":"no-at-sign"}"#,
                "message_id",
            ),
            (
                r#"{"from":"a@x.io","to":"b@y.io","subject":"s","text":"t","message_id":"<a b@x.io>"}"#,
                "message_id",
            ),
            (
                r#"{"from":"a@x.io","to":"b@y.io","subject":"s","text":"t","attachments":[]}"#,
                "unknown field `attachments`",
            ),
            (
                r#"{"from":"a@x.io","to":5,"subject":"s","text":"t"}"#,
                "email payload",
            ),
        ];
        for (payload, want) in cases {
            let e = err(payload);
            assert!(e.contains(want), "{payload}: {e:?} lacks {want:?}");
        }
        let many: Vec<String> = (0..=MAX_RECIPIENTS).map(|i| format!("u{i}@y.io")).collect();
        let p = serde_json::json!({"from":"a@x.io","bcc":many,"subject":"s","text":"t"});
        assert!(err(&p.to_string()).contains("at most 1000"));
    }

    #[test]
    fn an_unconfigured_kind_refuses_at_submit_and_keeps_older_jobs_retrying() {
        let e = Email::unconfigured();
        let p = r#"{"from":"a@x.io","to":"b@y.io","subject":"s","text":"t"}"#;
        assert!(e.admit(p).unwrap_err().contains("[smtp]"));
        assert_eq!(e.health(), None);
        // A job accepted while [smtp] was configured, recovered without it: not dropped.
        let stop = StopSignal::new();
        let ctx = JobContext {
            id: 1,
            attempt: 1,
            queue: "q",
            payload: p,
            timeout: None,
            stop: &stop,
            serial: 1,
        };
        let err = e.run(&ctx).unwrap_err();
        assert!(!err.permanent && err.reason.contains("[smtp]"), "{err:?}");
    }

    #[test]
    fn the_stub_transport_gets_the_message_with_its_headers() {
        let stub = StubTransport::new_ok();
        let email = Email::stub(stub.clone());
        let payload = r#"{"from":"Shop <shop@x.io>","to":["ann@y.io","Bob <bob@y.io>"],"cc":"c@y.io",
            "bcc":"hidden@y.io","reply_to":"help@x.io","subject":"Grüße","text":"plain","html":"<b>rich</b>",
            "headers":{"X-Order":"1234"},"message_id":"<m1@x.io>"}"#;
        let stop = StopSignal::new();
        let ctx = JobContext {
            id: 7,
            attempt: 1,
            queue: "notifications",
            payload,
            timeout: None,
            stop: &stop,
            serial: 1,
        };
        email.run(&ctx).unwrap();
        let sent = stub.messages();
        assert_eq!(sent.len(), 1);
        let (envelope, text) = &sent[0];
        let mut rcpt: Vec<String> = envelope.to().iter().map(|a| a.to_string()).collect();
        rcpt.sort();
        assert_eq!(
            rcpt,
            ["ann@y.io", "bob@y.io", "c@y.io", "hidden@y.io"],
            "bcc is in the envelope"
        );
        assert_eq!(
            envelope.from().map(|a| a.to_string()).as_deref(),
            Some("shop@x.io")
        );
        for want in [
            "From: Shop <shop@x.io>",
            "Reply-To: help@x.io",
            "Cc: c@y.io",
            "Message-ID: <m1@x.io>",
            "X-Order: 1234",
            "multipart/alternative",
            "plain",
            "<b>rich</b>",
        ] {
            assert!(text.contains(want), "{want:?} missing from:\n{text}");
        }
        assert!(
            !text.contains("hidden@y.io"),
            "bcc must not be in the headers"
        );
        assert!(
            text.contains("Subject: =?utf-8?"),
            "non-ASCII subject encoded:\n{text}"
        );
        let h = email.health().unwrap();
        assert_eq!((h.succeeded, h.consecutive_failures), (1, 0));
    }

    #[test]
    fn stub_failures_are_temporary_and_counted() {
        let email = Email::stub(StubTransport::new_error());
        let stop = StopSignal::new();
        let ctx = JobContext {
            id: 1,
            attempt: 1,
            queue: "q",
            payload: r#"{"from":"a@x.io","to":"b@y.io","subject":"s","text":"t"}"#,
            timeout: None,
            stop: &stop,
            serial: 1,
        };
        for _ in 0..2 {
            let e = email.run(&ctx).unwrap_err();
            assert!(!e.permanent);
        }
        let h = email.health().unwrap();
        assert_eq!(
            (h.temporary_failures, h.consecutive_failures, h.succeeded),
            (2, 2, 0)
        );
        assert!(h.last_error.unwrap().contains("stub transport"));
    }
}
