//! `consume --listen`: `/healthz`, `/readyz` and `/metrics` for an orchestrator and Prometheus.

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use bytes::Bytes;
use http_body_util::Full;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode, header};
use hyper_util::rt::TokioIo;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tracing::debug;

use crate::http::error_body;

/// How a delivery ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    Handled,
    Failed,
    DeadLettered,
    Duplicate,
}

impl Outcome {
    /// The word in logs and in the metric label.
    pub fn word(self) -> &'static str {
        match self {
            Self::Handled => "handled",
            Self::Failed => "failed",
            Self::DeadLettered => "dead_lettered",
            Self::Duplicate => "duplicate",
        }
    }
}

type OutcomeLabel = [(&'static str, &'static str); 1];

/// What a consumer counts.
pub struct ConsumerMetrics {
    registry: Registry,
    deliveries: Family<OutcomeLabel, Counter>,
    /// Seconds each handler run took, successful or not.
    pub handler_duration: Histogram,
}

impl Default for ConsumerMetrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("bandwidth_forwarder_consumer");
        let deliveries = Family::<OutcomeLabel, Counter>::default();
        let handler_duration = Histogram::new(exponential_buckets(0.001, 2.0, 16));
        registry.register(
            "deliveries",
            "Deliveries by outcome: handled, failed (to be retried), dead_lettered, duplicate (skipped)",
            deliveries.clone(),
        );
        registry.register(
            "handler_duration_seconds",
            "Time each handler run took",
            handler_duration.clone(),
        );
        Self {
            registry,
            deliveries,
            handler_duration,
        }
    }
}

impl ConsumerMetrics {
    /// Counts one delivery's outcome.
    pub fn delivery(&self, outcome: Outcome) {
        self.deliveries
            .get_or_create(&[("outcome", outcome.word())])
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

/// Serves the probes on `listener` until the task is dropped; `ready` is true while consuming.
pub async fn serve(listener: TcpListener, ready: Arc<AtomicBool>, metrics: Arc<ConsumerMetrics>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let (ready, metrics) = (ready.clone(), metrics.clone());
        let service = service_fn(move |request| {
            let response = answer(&request, ready.load(Ordering::SeqCst), &metrics);
            async move { Ok::<_, Infallible>(response) }
        });
        tokio::spawn(async move {
            let connection = http1::Builder::new().serve_connection(TokioIo::new(stream), service);
            if let Err(error) = connection.await {
                debug!(%error, "probe connection ended with an error");
            }
        });
    }
}

fn answer<B>(
    request: &Request<B>,
    ready: bool,
    metrics: &ConsumerMetrics,
) -> Response<Full<Bytes>> {
    if !matches!(*request.method(), Method::GET | Method::HEAD) {
        return text(
            StatusCode::METHOD_NOT_ALLOWED,
            "application/json",
            error_body("method_not_allowed", "this route only answers GET, HEAD"),
        );
    }
    match request.uri().path() {
        "/healthz" => text(
            StatusCode::OK,
            "application/json",
            r#"{"status":"ok"}"#.into(),
        ),
        "/readyz" if ready => text(
            StatusCode::OK,
            "application/json",
            r#"{"status":"ready"}"#.into(),
        ),
        "/readyz" => text(
            StatusCode::SERVICE_UNAVAILABLE,
            "application/json",
            r#"{"status":"not_ready"}"#.into(),
        ),
        "/metrics" => text(
            StatusCode::OK,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
            metrics.render(),
        ),
        _ => text(
            StatusCode::NOT_FOUND,
            "application/json",
            error_body("not_found", "no such route"),
        ),
    }
}

fn text(status: StatusCode, content_type: &'static str, body: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static(content_type),
    );
    response
}
