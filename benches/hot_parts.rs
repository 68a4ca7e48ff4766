//! criterion micro-benchmarks of the hot parts: record encode/decode, CRC-32C, the ready set at
//! a million jobs, and parsing a submit request line.
//!
//! `cargo bench --bench hot_parts`

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use duejob::config::Order;
use duejob::scheduler::ready::{Limits, ReadySet};
use duejob::wal::record::{rtype, Record, Submit, SCHEMA};
use duejob::wire::Request;

fn submit() -> Record<'static> {
    Record::Submit(Submit {
        id: 123_456,
        queue: "notifications".into(),
        kind: "exec".into(),
        payload: format!(r#"{{"pad":"{}"}}"#, "x".repeat(190)).into(),
        key: Some("welcome-mail-user-42".into()),
        submitted_at: 1_764_000_000_000,
        deadline: 1_764_000_030_000,
        run_at: None,
        max_attempts: 3,
        timeout_ms: Some(30_000),
    })
}

fn records(c: &mut Criterion) {
    let rec = submit();
    let mut buf = Vec::with_capacity(512);
    rec.encode_into(&mut buf);
    let mut g = c.benchmark_group("record");
    g.throughput(Throughput::Elements(1));
    g.bench_function("encode submit (200-byte payload)", |b| {
        let mut out = Vec::with_capacity(512);
        b.iter(|| {
            out.clear();
            black_box(&rec).encode_into(&mut out);
        })
    });
    g.bench_function("decode submit", |b| {
        b.iter(|| Record::decode(rtype::SUBMIT, SCHEMA, black_box(&buf)).unwrap())
    });
    g.finish();
    let mut g = c.benchmark_group("crc32c");
    let data = vec![7u8; 4096];
    g.throughput(Throughput::Bytes(data.len() as u64));
    g.bench_function("4 KiB", |b| b.iter(|| crc32c::crc32c(black_box(&data))));
    g.finish();
}

fn ready_set(c: &mut Criterion) {
    let limits = vec![
        Limits {
            max_workers: 4,
            reserved: 1,
            lend_limit_ms: 300,
        },
        Limits {
            max_workers: 4,
            reserved: 0,
            lend_limit_ms: 3000,
        },
        Limits {
            max_workers: 4,
            reserved: 0,
            lend_limit_ms: 36_000,
        },
    ];
    let mut g = c.benchmark_group("ready set");
    g.throughput(Throughput::Elements(1000));
    g.bench_function("1000 x (push + pick + finish) at 1M ready jobs", |b| {
        b.iter_batched_ref(
            || {
                let mut s = ReadySet::new(Order::Deadline, limits.clone());
                for i in 0..1_000_000u64 {
                    s.push((i % 3) as u16, 1_000_000 + (i * 7919) % 3_600_000, i);
                }
                (s, 2_000_000u64)
            },
            |(s, next)| {
                for _ in 0..1000 {
                    *next += 1;
                    s.push(
                        (*next % 3) as u16,
                        1_000_000 + (*next * 7919) % 3_600_000,
                        *next,
                    );
                    let p = s.pick(4, &mut |_| true, &mut |_, _| None).unwrap();
                    s.finished(p.queue);
                }
            },
            BatchSize::LargeInput,
        )
    });
    g.finish();
}

fn parse(c: &mut Criterion) {
    let line = format!(
        r#"{{"op":"submit","queue":"notifications","kind":"exec","payload":{{"argv":["send-sms","+15551234","{}"]}},"key":"sms-42","timeout_ms":30000}}"#,
        "x".repeat(150)
    );
    let mut g = c.benchmark_group("protocol");
    g.throughput(Throughput::Bytes(line.len() as u64));
    g.bench_function("parse submit line", |b| {
        b.iter(|| Request::parse(black_box(line.as_bytes())).unwrap())
    });
    g.finish();
}

criterion_group!(benches, records, ready_set, parse);
criterion_main!(benches);
