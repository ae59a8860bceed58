//! Prometheus metrics: what an operator needs to see the forwarder keep its promise.

use std::sync::OnceLock;
use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::{Registry, Unit};

use crate::event::KNOWN_TYPES;

/// The `type` label of an event type outside [`KNOWN_TYPES`].
pub const OTHER_TYPE: &str = "other";

/// One label, by name and value. Every value comes from a fixed set (a caller's event type is
/// mapped onto the known types or `other`), so the series are bounded and counting allocates
/// nothing.
type StatusLabel = [(&'static str, u16); 1];
type TypeLabel = [(&'static str, &'static str); 1];
type ReasonLabel = [(&'static str, &'static str); 1];
type OutcomeLabel = [(&'static str, &'static str); 1];

/// Histograms by outcome share one bucket layout: 0.5 ms to about 8 s.
type OutcomeHistograms = Family<OutcomeLabel, Histogram, fn() -> Histogram>;

fn latency_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.0005, 2.0, 15))
}

/// The `outcome` label of an accepted callback; a refused one is labelled by its error word.
pub const PUBLISHED: &str = "published";

/// An event type's label, itself if Bandwidth documents it, else `other`, and where that series
/// stands: the type's place in [`KNOWN_TYPES`], or just past them for `other`.
fn type_label(kind: &str) -> (usize, &'static str) {
    match KNOWN_TYPES.iter().position(|known| *known == kind) {
        Some(index) => (index, KNOWN_TYPES[index]),
        None => (KNOWN_TYPES.len(), OTHER_TYPE),
    }
}

/// The series every accepted callback moves, each looked up in its family once, when first
/// used (a family hashes the labels on every lookup); a series still appears only once used.
#[derive(Default)]
struct Hot {
    ok: OnceLock<Counter>,
    published_duration: OnceLock<Histogram>,
    published_by_type: [OnceLock<Counter>; KNOWN_TYPES.len() + 1],
}

/// Every metric the service exposes, registered once at start.
pub struct Metrics {
    registry: Registry,
    requests: Family<StatusLabel, Counter>,
    events_published: Family<TypeLabel, Counter>,
    publish_failures: Family<ReasonLabel, Counter>,
    request_duration: OutcomeHistograms,
    hot: Hot,
    /// Seconds from the first publish of a request to its last confirm.
    pub confirm_latency: Histogram,
    /// 1 while a broker connection with declared topology is up.
    pub broker_connected: Gauge,
    /// 1 while the broker has blocked publishing (memory or disk alarm).
    pub broker_blocked: Gauge,
    /// Callback requests being handled now.
    pub inflight_requests: Gauge<i64, std::sync::atomic::AtomicI64>,
    /// Confirm channels open now.
    pub open_channels: Gauge<i64, std::sync::atomic::AtomicI64>,
    /// Reconnects since start.
    pub reconnects: Counter<u64, AtomicU64>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("bandwidth_forwarder");
        registry.register(
            "build",
            "The running version",
            Info::new(vec![("version", env!("CARGO_PKG_VERSION"))]),
        );
        let started: Gauge = Gauge::default();
        started.set(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |since| {
                    i64::try_from(since.as_secs()).unwrap_or(i64::MAX)
                }),
        );
        registry.register_with_unit(
            "process_start_time",
            "Start time of the process since the Unix epoch",
            Unit::Seconds,
            started,
        );
        let request_duration: OutcomeHistograms = Family::new_with_constructor(latency_histogram);
        registry.register_with_unit(
            "http_request_duration",
            "Time from a callback's arrival to its answer, by outcome (published or the error word)",
            Unit::Seconds,
            request_duration.clone(),
        );
        let requests = Family::<StatusLabel, Counter>::default();
        let events_published = Family::<TypeLabel, Counter>::default();
        let publish_failures = Family::<ReasonLabel, Counter>::default();
        let confirm_latency = latency_histogram();
        let broker_connected = Gauge::default();
        let broker_blocked = Gauge::default();
        let inflight_requests = Gauge::default();
        let open_channels = Gauge::default();
        let reconnects = Counter::default();
        registry.register(
            "http_requests",
            "Callback and probe requests by status",
            requests.clone(),
        );
        registry.register(
            "events_published",
            "Events confirmed by the broker, by type",
            events_published.clone(),
        );
        registry.register(
            "publish_failures",
            "Requests answered 503, by reason",
            publish_failures.clone(),
        );
        registry.register_with_unit(
            "publish_confirm",
            "Time from a request's first publish to its last confirm",
            Unit::Seconds,
            confirm_latency.clone(),
        );
        registry.register(
            "broker_connected",
            "1 while connected with topology declared",
            broker_connected.clone(),
        );
        registry.register(
            "broker_blocked",
            "1 while the broker blocks publishing",
            broker_blocked.clone(),
        );
        registry.register(
            "inflight_requests",
            "Callback requests being handled",
            inflight_requests.clone(),
        );
        registry.register(
            "open_channels",
            "Confirm channels open",
            open_channels.clone(),
        );
        registry.register(
            "broker_reconnects",
            "Broker connections opened after the first",
            reconnects.clone(),
        );
        Self {
            registry,
            requests,
            events_published,
            publish_failures,
            request_duration,
            hot: Hot::default(),
            confirm_latency,
            broker_connected,
            broker_blocked,
            inflight_requests,
            open_channels,
            reconnects,
        }
    }

    /// Counts a callback in flight until the returned guard drops, on every path (a request
    /// whose future is dropped mid-await too).
    pub fn in_flight(&self) -> InFlight<'_> {
        self.inflight_requests.inc();
        InFlight(&self.inflight_requests)
    }

    /// Counts one answered request.
    pub fn request(&self, status: u16) {
        let series = || self.requests.get_or_create(&[("status", status)]).clone();
        match status {
            200 => self.hot.ok.get_or_init(series).inc(),
            _ => series().inc(),
        };
    }

    /// Counts events confirmed for one event type.
    pub fn published(&self, kind: &str, count: u64) {
        let (index, label) = type_label(kind);
        self.hot.published_by_type[index]
            .get_or_init(|| {
                self.events_published
                    .get_or_create(&[("type", label)])
                    .clone()
            })
            .inc_by(count);
    }

    /// Records how long a callback took to answer, by `outcome` ([`PUBLISHED`] or the error word).
    pub fn callback_answered(&self, outcome: &'static str, seconds: f64) {
        let series = || {
            self.request_duration
                .get_or_create(&[("outcome", outcome)])
                .clone()
        };
        match outcome {
            PUBLISHED => self
                .hot
                .published_duration
                .get_or_init(series)
                .observe(seconds),
            _ => series().observe(seconds),
        }
    }

    /// Counts a request that failed to publish.
    pub fn publish_failed(&self, reason: &'static str) {
        self.publish_failures
            .get_or_create(&[("reason", reason)])
            .inc();
    }

    /// The text exposition.
    pub fn render(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = encode(&mut out, &self.registry);
        out
    }
}

/// One callback in the in-flight gauge; leaves it when dropped.
pub struct InFlight<'a>(&'a Gauge<i64, std::sync::atomic::AtomicI64>);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.dec();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_every_contract_metric() {
        let m = Metrics::new();
        m.request(202);
        m.published("message-received", 3);
        m.publish_failed("unroutable");
        m.confirm_latency.observe(0.002);
        let text = m.render();
        for needle in [
            "bandwidth_forwarder_http_requests_total{status=\"202\"} 1",
            "bandwidth_forwarder_events_published_total{type=\"message-received\"} 3",
            "bandwidth_forwarder_publish_failures_total{reason=\"unroutable\"} 1",
            "bandwidth_forwarder_publish_confirm_seconds_bucket",
            "bandwidth_forwarder_broker_connected 0",
            "bandwidth_forwarder_inflight_requests 0",
        ] {
            assert!(text.contains(needle), "missing `{needle}` in\n{text}");
        }
    }

    #[test]
    fn the_series_every_callback_moves_count_once_used_and_not_before() {
        let m = Metrics::new();
        let before = m.render();
        for needle in [
            "status=\"200\"",
            "outcome=\"published\"",
            "type=\"message-sent\"",
        ] {
            assert!(
                !before.contains(needle),
                "`{needle}` before any use:\n{before}"
            );
        }
        for _ in 0..3 {
            m.request(200);
            m.published("message-sent", 2);
            m.callback_answered(PUBLISHED, 0.001);
        }
        m.request(400);
        m.callback_answered("invalid_json", 0.001);
        let text = m.render();
        for needle in [
            "bandwidth_forwarder_http_requests_total{status=\"200\"} 3",
            "bandwidth_forwarder_http_requests_total{status=\"400\"} 1",
            "bandwidth_forwarder_events_published_total{type=\"message-sent\"} 6",
            "bandwidth_forwarder_http_request_duration_seconds_count{outcome=\"published\"} 3",
            "bandwidth_forwarder_http_request_duration_seconds_count{outcome=\"invalid_json\"} 1",
        ] {
            assert!(text.contains(needle), "missing `{needle}` in\n{text}");
        }
    }

    #[test]
    fn event_types_outside_the_known_set_share_one_series() {
        let m = Metrics::new();
        for known in KNOWN_TYPES {
            m.published(known, 1);
        }
        for i in 0..1_000 {
            m.published(&format!("made-up-{i}"), 1);
        }
        m.published(&"x".repeat(10_000), 1);
        let text = m.render();
        let series = text
            .lines()
            .filter(|line| line.starts_with("bandwidth_forwarder_events_published_total{"))
            .count();
        assert_eq!(series, KNOWN_TYPES.len() + 1, "{text}");
        assert!(
            text.contains("bandwidth_forwarder_events_published_total{type=\"other\"} 1001"),
            "{text}"
        );
    }
}
