//! The JSON answers: one function writes every error body.

use bytes::Bytes;
use http_body_util::Full;
use hyper::header::{self, HeaderValue};
use hyper::{Response, StatusCode};
use serde_json::json;

use crate::metrics::Metrics;

pub(super) fn with_retry_after(
    mut response: Response<Full<Bytes>>,
    secs: u64,
) -> Response<Full<Bytes>> {
    response
        .headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from(secs));
    response
}

pub(super) fn method_not_allowed(allow: &'static str) -> Response<Full<Bytes>> {
    let mut response = error_response(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        &format!("this route only answers {allow}"),
    );
    response
        .headers_mut()
        .insert(header::ALLOW, HeaderValue::from_static(allow));
    response
}

/// The contract's error body: `{"error": word, "detail": sentence}`.
pub fn error_body(code: &str, detail: &str) -> String {
    json!({"error": code, "detail": detail}).to_string()
}

pub(super) fn error_response(
    status: StatusCode,
    code: &str,
    detail: &str,
) -> Response<Full<Bytes>> {
    json_text_response(status, error_body(code, detail))
}

/// `{"status":"published","events":n}`, the answer to every accepted callback, written
/// directly rather than through a JSON tree.
pub(super) fn published_response(events: usize) -> Response<Full<Bytes>> {
    let body = match events {
        // Most callbacks carry one event.
        1 => Bytes::from_static(br#"{"status":"published","events":1}"#),
        n => Bytes::from(format!(r#"{{"status":"published","events":{n}}}"#)),
    };
    json_text_response(StatusCode::OK, body)
}

pub(super) fn json_response(status: StatusCode, body: serde_json::Value) -> Response<Full<Bytes>> {
    json_text_response(status, body.to_string())
}

pub(super) fn json_text_response(
    status: StatusCode,
    body: impl Into<Bytes>,
) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(body.into()));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

pub(super) fn metrics_response(metrics: &Metrics) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(metrics.render())));
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/openmetrics-text; version=1.0.0; charset=utf-8"),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    #[test]
    fn the_success_body_is_the_contracts_json() {
        for events in [1, 3, 100] {
            let response = published_response(events);
            assert_eq!(response.status(), StatusCode::OK);
            assert_eq!(response.headers()[header::CONTENT_TYPE], "application/json");
            let body = response.into_body();
            let bytes = futures_util::FutureExt::now_or_never(body.collect())
                .expect("a full body is ready")
                .expect("infallible")
                .to_bytes();
            let value: serde_json::Value = serde_json::from_slice(&bytes).expect("JSON");
            assert_eq!(value, json!({"status": "published", "events": events}));
        }
    }
}
