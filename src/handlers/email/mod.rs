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
//!
//! One file per part: `payload.rs` (checking and building the message), `pool.rs` (the server
//! and its connections), `health.rs` (the figures `stats` shows).

mod health;
mod payload;
mod pool;

use lettre::message::Message;
use lettre::transport::smtp::Error as SmtpError;

use super::{Admitted, Handler, JobContext, JobError, KindHealth};
use crate::config::SmtpConfig;
use health::Health;
use payload::{admit_payload, build_message, parse_payload};
use pool::Server;

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
            Outbox::Smtp(s) => s.name(),
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
        self.health.record(|| self.server(), ctx.id, &r);
        r
    }

    fn health(&self) -> Option<KindHealth> {
        if matches!(self.outbox, Outbox::Unconfigured) {
            return None;
        }
        Some(self.health.snapshot())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::handlers::StopSignal;
    use lettre::transport::stub::StubTransport;

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
            replay_of: None,
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
            replay_of: None,
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
            replay_of: None,
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
