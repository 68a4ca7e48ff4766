//! The SMTP server and a small pool of connections to it: lettre's `SmtpConnection` (connect,
//! STARTTLS or implicit TLS, EHLO, AUTH), with the dot-stuffed body and its terminator sent in one
//! write (see the module doc of `email`).

use std::sync::Mutex;
use std::time::Duration;

use lettre::message::Message;
use lettre::transport::smtp::authentication::{Credentials, Mechanism};
use lettre::transport::smtp::client::{Certificate, SmtpConnection, TlsParameters};
use lettre::transport::smtp::commands::{Data, Mail, Rcpt};
use lettre::transport::smtp::extension::{ClientId, Extension, MailBodyParameter, MailParameter};
use lettre::transport::smtp::Error as SmtpError;

use crate::config::{SmtpConfig, SmtpTls};

/// How to reach the SMTP server, and the connections kept open to it.
pub(super) struct Server {
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
    /// `host:port`, for error texts and logs.
    pub(super) fn name(&self) -> String {
        format!("{}:{}", self.host, self.port)
    }

    /// The server `c` names; connects only when the first email goes out.
    pub(super) fn new(c: &SmtpConfig) -> Result<Server, String> {
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

    /// Sends one message over a pooled connection: MAIL, RCPT for each recipient, DATA, then the
    /// body.
    pub(super) fn send(&self, m: &Message) -> Result<(), SmtpError> {
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


#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_body_is_dot_stuffed_and_terminated_in_one_buffer() {
        assert_eq!(
            dot_stuffed(b"a\r\n.b\r\n..c\r\nd."),
            b"a\r\n..b\r\n...c\r\nd.\r\n.\r\n"
        );
        assert_eq!(dot_stuffed(b".start"), b"..start\r\n.\r\n");
        assert_eq!(dot_stuffed(b""), b"\r\n.\r\n");
    }

}
