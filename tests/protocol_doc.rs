//! The examples in docs/protocol.md are sent, in order, to a fresh daemon; every reply must have
//! the documented shape, and the same `ok`, state names, queue and kind names and error codes.

use std::time::Duration;

use crate::common::{tempdir, Daemon};
use serde_json::Value;

/// Keys whose values must match the document exactly; other values must only match in type.
const EXACT: &[&str] = &[
    "ok",
    "code",
    "state",
    "queue",
    "kind",
    "duplicate",
    "protocol",
    "sync",
    "order",
    "outcome",
    "number",
    "id",
    "ids",
    "message",
];

fn same_shape(path: &str, expected: &Value, actual: &Value, exact: bool) -> Result<(), String> {
    match (expected, actual) {
        (Value::Object(e), Value::Object(a)) => {
            for (k, ev) in e {
                let av = a.get(k).ok_or_else(|| format!("{path}.{k} missing"))?;
                same_shape(&format!("{path}.{k}"), ev, av, EXACT.contains(&k.as_str()))?;
            }
            Ok(())
        }
        (Value::Array(e), Value::Array(a)) if exact => {
            if e.len() != a.len() {
                return Err(format!("{path}: {} items, documented {}", a.len(), e.len()));
            }
            e.iter()
                .zip(a)
                .enumerate()
                .try_for_each(|(i, (ev, av))| same_shape(&format!("{path}[{i}]"), ev, av, true))
        }
        (Value::Array(e), Value::Array(a)) => match (e.first(), a.first()) {
            (Some(ev), Some(av)) => same_shape(&format!("{path}[0]"), ev, av, false),
            (Some(_), None) => Err(format!("{path}: empty, documented with items")),
            _ => Ok(()),
        },
        (e, a) if exact && e != a => Err(format!("{path}: {a}, documented {e}")),
        // Timing figures: null until there is a sample.
        (Value::Null, _) | (_, Value::Null) => Ok(()),
        (Value::Number(_), Value::Number(_))
        | (Value::String(_), Value::String(_))
        | (Value::Bool(_), Value::Bool(_)) => Ok(()),
        (e, a) => Err(format!("{path}: {a}, documented {e}")),
    }
}

#[test]
fn documented_examples_work_as_documented() {
    let doc =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/protocol.md")).unwrap();
    let dir = tempdir();
    let d = Daemon::start_in(dir.path(), &["--workers", "4"]);
    let mut c = d.conn();
    let mut in_block = false;
    let mut pending: Option<String> = None;
    let mut checked = 0;
    for line in doc.lines() {
        if line.starts_with("```") {
            in_block = line == "```jsonl";
            continue;
        }
        if !in_block {
            continue;
        }
        if let Some(req) = line.strip_prefix("> ") {
            assert!(pending.is_none(), "two requests without a reply in the doc");
            if req.contains(r#""op":"status","id":1}"#)
                || req.contains(r#""op":"stats""#)
                || req.contains(r#""op":"dead_"#)
                || req.contains(r#""op":"replay""#)
                || req.contains(r#""op":"log""#)
            {
                // Let the earlier jobs finish so the documented states hold.
                d.wait_until_none(&["ready", "running"], Duration::from_secs(60));
            }
            c.send(req);
            pending = Some(req.to_string());
        } else if let Some(rep) = line.strip_prefix("< ") {
            let req = pending.take().expect("reply without request");
            let expected: Value = serde_json::from_str(rep)
                .unwrap_or_else(|e| panic!("doc reply is not JSON ({e}): {rep}"));
            let actual = c.recv();
            if let Err(e) = same_shape("reply", &expected, &actual, false) {
                panic!("request {req}\n  documented {expected}\n  got        {actual}\n  {e}");
            }
            checked += 1;
        }
    }
    assert!(checked >= 15, "only {checked} examples found");
}
