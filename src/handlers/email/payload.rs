//! The payload: parsed, every address and header checked, and the whole message built at
//! submit time; a Message-ID generated when the payload has none.

use std::collections::BTreeMap;
use std::str::FromStr;

use lettre::message::header::{HeaderName, HeaderValue};
use lettre::message::{Mailbox, Message, MultiPart, SinglePart};
use serde::Deserialize;

use crate::handlers::Admitted;

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

pub(super) fn parse_payload(payload: &str) -> Result<EmailPayload, String> {
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


#[cfg(test)]
mod tests {
    use super::*;

    fn ok(payload: &str) -> Admitted {
        admit_payload(payload).unwrap_or_else(|e| panic!("{payload}: {e}"))
    }

    fn err(payload: &str) -> String {
        admit_payload(payload).expect_err(payload)
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

}
