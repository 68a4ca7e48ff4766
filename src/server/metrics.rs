//! `duejob serve --metrics ADDR`: Prometheus metrics at `/metrics`, in the Prometheus text
//! exposition format (prometheus-client writes it), read-only, on loopback unless told otherwise.
//!
//! Each scrape reads the figures `stats` shows plus the dispatcher's counters and histograms
//! (one message to the dispatcher, as `stats` is) and the WAL's atomics: nothing is counted for
//! metrics alone on the job path but a per (queue, kind) counter array.

use std::net::SocketAddr;
use std::sync::Arc;
use std::thread::JoinHandle;

use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

use crate::runtime::Handle;
use crate::scheduler::{Buckets, KindCount, Metrics};
use crate::wire::{State, Stats};

/// The metrics endpoint, serving until stopped.
pub struct MetricsServer {
    server: Arc<tiny_http::Server>,
    thread: Option<JoinHandle<()>>,
    /// Where it listens.
    pub addr: SocketAddr,
}

/// Serves `/metrics` for `handle` on `addr`. A non-loopback address is refused unless `public`.
pub fn serve(handle: Handle, addr: SocketAddr, public: bool) -> Result<MetricsServer, String> {
    if !addr.ip().is_loopback() && !public {
        return Err(format!(
            "--metrics {addr}: not a loopback address; metrics show queue names and figures to \
             whoever can connect, so give --metrics-public to serve them there"
        ));
    }
    let server =
        Arc::new(tiny_http::Server::http(addr).map_err(|e| format!("--metrics {addr}: {e}"))?);
    let addr = server
        .server_addr()
        .to_ip()
        .ok_or_else(|| format!("--metrics {addr}: not an IP address"))?;
    let s = server.clone();
    let thread = std::thread::Builder::new()
        .name("duejob-metrics".into())
        .spawn(move || {
            for rq in s.incoming_requests() {
                let ok_path = rq.url() == "/metrics" || rq.url().starts_with("/metrics?");
                let resp = match (rq.method(), ok_path) {
                    (tiny_http::Method::Get, true) => match render(&handle) {
                        Ok(body) => tiny_http::Response::from_string(body).with_header(
                            "Content-Type: text/plain; version=0.0.4; charset=utf-8"
                                .parse::<tiny_http::Header>()
                                .expect("a header"),
                        ),
                        Err(e) => tiny_http::Response::from_string(e).with_status_code(503),
                    },
                    (tiny_http::Method::Get, false) => {
                        tiny_http::Response::from_string("not found: try /metrics\n")
                            .with_status_code(404)
                    }
                    _ => tiny_http::Response::from_string("read-only: GET /metrics\n")
                        .with_status_code(405),
                };
                let _ = rq.respond(resp);
            }
        })
        .map_err(|e| format!("--metrics: cannot start its thread: {e}"))?;
    log::info!("metrics at http://{addr}/metrics");
    Ok(MetricsServer {
        server,
        thread: Some(thread),
        addr,
    })
}

impl MetricsServer {
    /// Stops serving.
    pub fn stop(mut self) {
        self.server.unblock();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The page: every metric, in the Prometheus text format.
fn render(handle: &Handle) -> Result<String, String> {
    let (stats, m, fsync, groups) = handle.metrics().map_err(|e| e.message)?;
    let mut registry = Registry::default();
    registry.register_collector(Box::new(Collected {
        stats,
        m,
        fsync,
        groups,
    }));
    let mut out = String::new();
    prometheus_client::encoding::prometheus_text::encode(&mut out, &registry)
        .map_err(|e| e.to_string())?;
    Ok(out)
}

/// One scrape's figures.
#[derive(Debug)]
struct Collected {
    stats: Stats,
    m: Metrics,
    fsync: Vec<u64>,
    groups: Vec<u64>,
}

type Labels = Vec<(&'static str, String)>;

/// A histogram whose buckets are already counted.
#[derive(Debug)]
struct ConstHistogram<'a>(&'a Buckets);

impl EncodeMetric for ConstHistogram<'_> {
    fn encode(
        &self,
        mut e: prometheus_client::encoding::MetricEncoder,
    ) -> Result<(), std::fmt::Error> {
        // The encoder takes each bucket's own count and adds them up.
        let mut le = Vec::with_capacity(self.0.le.len() + 1);
        let mut below = 0;
        for &(bound, cumulative) in &self.0.le {
            le.push((bound, cumulative.saturating_sub(below)));
            below = below.max(cumulative);
        }
        le.push((f64::INFINITY, self.0.count.saturating_sub(below)));
        e.encode_histogram::<prometheus_client::encoding::NoLabelSet>(
            self.0.sum,
            self.0.count,
            &le,
            None,
        )
    }
    fn metric_type(&self) -> MetricType {
        MetricType::Histogram
    }
}

/// Power-of-two bucket counts (bucket i: at most 2^i `unit`s) as a histogram of `scale` × unit.
fn pow2(counts: &[u64], scale: f64) -> Buckets {
    let mut le = Vec::new();
    let mut seen = 0;
    let mut sum = 0.0;
    let last = counts.iter().rposition(|&c| c > 0).unwrap_or(0);
    for (i, &c) in counts.iter().enumerate().take(last + 1) {
        seen += c;
        let bound = (1u64 << i) as f64 * scale;
        // The sum is not kept: each observation is taken at its bucket's middle.
        sum += c as f64 * bound * 0.75;
        le.push((bound, seen));
    }
    Buckets {
        le,
        count: counts.iter().sum(),
        sum,
    }
}

struct Out<'a, 'b> {
    e: &'a mut DescriptorEncoder<'b>,
}

impl Out<'_, '_> {
    fn family<M: EncodeMetric>(
        &mut self,
        name: &str,
        help: &str,
        t: MetricType,
        series: impl IntoIterator<Item = (Labels, M)>,
    ) -> Result<(), std::fmt::Error> {
        let mut d = self.e.encode_descriptor(name, help, None, t)?;
        for (labels, m) in series {
            m.encode(d.encode_family(&labels)?)?;
        }
        Ok(())
    }

    fn counter(
        &mut self,
        name: &str,
        help: &str,
        series: impl IntoIterator<Item = (Labels, u64)>,
    ) -> Result<(), std::fmt::Error> {
        self.family(
            name,
            help,
            MetricType::Counter,
            series.into_iter().map(|(l, v)| (l, ConstCounter::new(v))),
        )
    }

    fn gauge(
        &mut self,
        name: &str,
        help: &str,
        series: impl IntoIterator<Item = (Labels, f64)>,
    ) -> Result<(), std::fmt::Error> {
        self.family(
            name,
            help,
            MetricType::Gauge,
            series.into_iter().map(|(l, v)| (l, ConstGauge::new(v))),
        )
    }
}

impl prometheus_client::collector::Collector for Collected {
    fn encode(&self, mut e: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let mut o = Out { e: &mut e };
        let s = &self.stats;
        let qk = |q: &str, k: &str| vec![("queue", q.to_string()), ("kind", k.to_string())];
        let q1 = |q: &str| vec![("queue", q.to_string())];
        for (name, help, what) in [
            (
                "duejob_jobs_submitted",
                "Jobs accepted (durable) since start-up.",
                KindCount::Submitted,
            ),
            (
                "duejob_jobs_succeeded",
                "Jobs that ended succeeded since start-up.",
                KindCount::Succeeded,
            ),
            (
                "duejob_jobs_dead",
                "Jobs that ended dead since start-up.",
                KindCount::Dead,
            ),
            (
                "duejob_retries",
                "Retries scheduled since start-up.",
                KindCount::Retries,
            ),
        ] {
            o.counter(
                name,
                help,
                self.m
                    .kinds
                    .iter()
                    .map(|(q, k, c)| (qk(q, k), c[what as usize])),
            )?;
        }
        let queues = &s.sched.queues;
        o.counter(
            "duejob_deadline_misses",
            "Jobs whose deadline passed while they were ready (each once), since start-up.",
            queues.iter().map(|(n, q)| (q1(n), q.deadline_misses)),
        )?;
        o.gauge(
            "duejob_jobs",
            "Jobs by state (finished ones as far as the daemon's memory goes).",
            queues.iter().flat_map(|(n, q)| {
                State::ALL.iter().map(move |st| {
                    (
                        vec![("queue", n.clone()), ("state", st.to_string())],
                        q.count(*st) as f64,
                    )
                })
            }),
        )?;
        o.gauge(
            "duejob_late_jobs",
            "Ready jobs past their deadline now.",
            queues.iter().map(|(n, q)| (q1(n), q.late as f64)),
        )?;
        o.gauge(
            "duejob_oldest_ready_age_seconds",
            "How long the queue's most urgent ready job has waited (0: none ready).",
            queues
                .iter()
                .map(|(n, q)| (q1(n), q.oldest_ready_age_ms.unwrap_or(0) as f64 / 1000.0)),
        )?;
        o.gauge(
            "duejob_min_slack_seconds",
            "Time left until the most urgent ready job's deadline (negative: late); absent when none is ready.",
            queues
                .iter()
                .filter(|(_, q)| q.count(State::Ready) > 0)
                .filter_map(|(n, q)| Some((q1(n), q.slack_ms? as f64 / 1000.0))),
        )?;
        o.gauge(
            "duejob_queue_workers_busy",
            "Workers running the queue's jobs.",
            queues
                .iter()
                .map(|(n, q)| (q1(n), q.count(State::Running) as f64)),
        )?;
        o.gauge(
            "duejob_queue_workers_max",
            "The queue's max_workers.",
            queues.iter().map(|(n, q)| (q1(n), q.max_workers as f64)),
        )?;
        o.gauge(
            "duejob_queue_workers_reserved",
            "Workers reserved for the queue.",
            queues.iter().map(|(n, q)| (q1(n), q.reserved as f64)),
        )?;
        o.gauge(
            "duejob_queue_paused",
            "1 while the queue is paused (queue pause).",
            queues
                .iter()
                .map(|(n, q)| (q1(n), f64::from(u8::from(q.paused_until.is_some())))),
        )?;
        o.gauge(
            "duejob_workers",
            "Worker threads.",
            [(vec![], s.sched.workers as f64)],
        )?;
        o.gauge(
            "duejob_workers_busy",
            "Workers running a job now.",
            [(vec![], s.sched.busy as f64)],
        )?;
        for (name, help, hs) in [
            (
                "duejob_wait_seconds",
                "Time from ready to started, since start-up.",
                &self.m.wait,
            ),
            (
                "duejob_run_seconds",
                "Run time of attempts, since start-up.",
                &self.m.run,
            ),
        ] {
            o.family(
                name,
                help,
                MetricType::Histogram,
                hs.iter().map(|(q, b)| (q1(q), ConstHistogram(b))),
            )?;
        }
        let fsync = pow2(&self.fsync, 1e-6);
        o.family(
            "duejob_wal_fsync_seconds",
            "WAL fdatasync latency (power-of-two buckets).",
            MetricType::Histogram,
            [(vec![], ConstHistogram(&fsync))],
        )?;
        let groups = pow2(&self.groups, 1.0);
        o.family(
            "duejob_wal_group_records",
            "Records per group commit (power-of-two buckets).",
            MetricType::Histogram,
            [(vec![], ConstHistogram(&groups))],
        )?;
        let w = &s.wal;
        o.counter(
            "duejob_wal_records",
            "WAL records written since start-up.",
            [(vec![], w.records)],
        )?;
        o.counter(
            "duejob_wal_bytes",
            "WAL bytes written since start-up.",
            [(vec![], w.bytes)],
        )?;
        // From the histogram read in the same moment, so that one scrape's count and
        // histogram agree (`stats` reads its own counter a little earlier).
        let fsyncs: u64 = self.fsync.iter().sum();
        o.counter(
            "duejob_wal_fsyncs",
            "WAL fdatasyncs since start-up.",
            [(vec![], fsyncs)],
        )?;
        o.gauge(
            "duejob_wal_segments",
            "WAL segments in wal/.",
            [(vec![], w.segments as f64)],
        )?;
        if let Some(c) = &s.catalog {
            o.gauge(
                "duejob_catalog_lag_records",
                "Durable records the catalog has not applied yet.",
                [(vec![], c.lag_records as f64)],
            )?;
            o.gauge(
                "duejob_catalog_failing",
                "1 while the catalog fails.",
                [(vec![], f64::from(u8::from(c.failing)))],
            )?;
        }
        if let Some(a) = &s.alerts {
            o.gauge(
                "duejob_alerts_firing",
                "Alert rule instances firing now (duejob alerts).",
                [(vec![], a.firing as f64)],
            )?;
            o.counter(
                "duejob_alert_command_failures",
                "alert_command runs that failed since start-up.",
                [(vec![], a.command_failures)],
            )?;
        }
        Ok(())
    }
}
