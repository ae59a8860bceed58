//! HTTP routing and the callback handler; the reasons a callback is refused are in
//! `error.rs`, the JSON answers in `response.rs`.

mod error;
mod response;

pub use error::CallbackError;
use error::error_for;
pub use response::error_body;
use response::{
    error_response, json_response, method_not_allowed, metrics_response, published_response,
    with_retry_after,
};

use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, LengthLimitError, Limited};
use hyper::body::Incoming;
use hyper::header::{self, HeaderName, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use serde_json::json;
use tracing::{info, warn};

use arc_swap::ArcSwap;

use crate::access::Access;
use crate::event::parse_callback;
use crate::metrics::{Metrics, PUBLISHED};
use crate::publisher::{Publisher, Received};
use crate::routing::RoutingTemplate;
use crate::shutdown::Lifecycle;

/// Everything a request handler reads; shared by all connections.
pub struct AppState {
    pub callback_path: String,
    pub max_body_bytes: usize,
    pub max_json_depth: usize,
    pub routing: RoutingTemplate,
    pub body_read_timeout: Duration,
    pub retry_after_secs: u64,
    /// Source allowlist and credentials; SIGHUP swaps in a new value.
    pub access: ArcSwap<Access>,
    pub publisher: Arc<Publisher>,
    pub metrics: Arc<Metrics>,
    pub lifecycle: Arc<Lifecycle>,
}

impl AppState {
    /// Ready to take callbacks: the broker can confirm now and shutdown has not begun.
    pub fn ready(&self) -> bool {
        !self.lifecycle.is_shutting_down() && self.publisher.ready()
    }
}

/// The header that carries a request's id, in and out.
const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// Routes one request; every answer carries the request's id.
pub async fn handle(
    state: Arc<AppState>,
    peer: IpAddr,
    request: Request<Incoming>,
) -> Response<Full<Bytes>> {
    let request_id = request_id(&request);
    let path = request.uri().path();
    let is_probe = matches!(path, "/healthz" | "/readyz" | "/metrics");
    let read = matches!(*request.method(), Method::GET | Method::HEAD);
    let mut response = if path == state.callback_path {
        if request.method() == Method::POST {
            callback(&state, peer, request, &request_id).await
        } else {
            method_not_allowed("POST")
        }
    } else if is_probe && !read {
        method_not_allowed("GET, HEAD")
    } else {
        match path {
            "/healthz" => json_response(StatusCode::OK, json!({"status": "ok"})),
            "/readyz" if state.ready() => json_response(StatusCode::OK, json!({"status": "ready"})),
            "/readyz" => with_retry_after(
                json_response(
                    StatusCode::SERVICE_UNAVAILABLE,
                    json!({"status": "not_ready"}),
                ),
                state.retry_after_secs,
            ),
            "/metrics" => metrics_response(&state.metrics),
            _ => error_response(StatusCode::NOT_FOUND, "not_found", "no such route"),
        }
    };
    state.metrics.request(response.status().as_u16());
    if let Ok(value) = HeaderValue::from_str(&request_id) {
        response.headers_mut().insert(REQUEST_ID, value);
    }
    response
}

/// The caller's `X-Request-Id` when it is safe to log and echo, else a new one.
fn request_id(request: &Request<Incoming>) -> String {
    request
        .headers()
        .get(&REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .filter(|v| is_safe_request_id(v))
        .map(String::from)
        .unwrap_or_else(new_request_id)
}

/// A random id for a request that brought none: 16 lowercase hex digits.
pub fn new_request_id() -> String {
    let mut digits = [0u8; 16];
    hex::encode_to_slice(fastrand::u64(..).to_be_bytes(), &mut digits)
        .expect("8 bytes are 16 hex digits");
    String::from_utf8(digits.to_vec()).expect("hex digits are ASCII")
}

/// The callback: authenticate, read, validate the whole batch, publish, answer.
async fn callback(
    state: &AppState,
    peer: IpAddr,
    request: Request<Incoming>,
    request_id: &str,
) -> Response<Full<Bytes>> {
    let started = Instant::now();
    let outcome = {
        let _in_flight = state.metrics.in_flight();
        match state.lifecycle.enter() {
            // What the channel worker logs about the request names it by `Received`'s id.
            Some(_admitted) => accept(state, peer, request, request_id).await,
            None => Err(CallbackError::ShuttingDown),
        }
    };
    let seconds = started.elapsed().as_secs_f64();
    let latency_ms = seconds * 1000.0;
    state.metrics.callback_answered(
        match &outcome {
            Ok(_) => PUBLISHED,
            Err(error) => error.code(),
        },
        seconds,
    );
    match outcome {
        Ok(events) => {
            info!(
                request_id,
                status = 200,
                events,
                latency_ms,
                "callback accepted"
            );
            published_response(events)
        }
        Err(error) => {
            let status = error.status();
            if let CallbackError::Publish(publish) = &error {
                state.metrics.publish_failed(publish.code());
                warn!(
                    request_id,
                    status = status.as_u16(),
                    error = error.code(),
                    detail = %error,
                    latency_ms,
                    "callback not published"
                );
            } else {
                info!(
                    request_id,
                    status = status.as_u16(),
                    error = error.code(),
                    latency_ms,
                    "callback rejected"
                );
            }
            error_for(&error, state.retry_after_secs)
        }
    }
}

/// Everything between admission and the publisher's answer; `Ok` is the event count.
async fn accept(
    state: &AppState,
    peer: IpAddr,
    request: Request<Incoming>,
    request_id: &str,
) -> Result<usize, CallbackError> {
    let headers = request.headers();
    let access = state.access.load();
    if access.sources.restricts() {
        let forwarded_for: Vec<&str> = headers
            .get_all("x-forwarded-for")
            .iter()
            .map(|v| v.to_str().unwrap_or("invalid"))
            .collect();
        if !access.sources.allows(peer, &forwarded_for) {
            return Err(CallbackError::Forbidden);
        }
    }
    if !access.auth.allows(
        headers
            .get(header::AUTHORIZATION)
            .map(HeaderValue::as_bytes),
    ) {
        return Err(CallbackError::Unauthorized);
    }
    drop(access);
    if !is_json(headers.get(header::CONTENT_TYPE)) {
        return Err(CallbackError::UnsupportedMediaType);
    }
    if !is_identity(headers.get(header::CONTENT_ENCODING)) {
        return Err(CallbackError::UnsupportedEncoding);
    }
    let declared_length = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared_length.is_some_and(|len| len > state.max_body_bytes as u64) {
        return Err(CallbackError::TooLarge(state.max_body_bytes));
    }
    let received = Received::now(request_id);
    let body = tokio::time::timeout(
        state.body_read_timeout,
        Limited::new(request.into_body(), state.max_body_bytes).collect(),
    )
    .await
    .map_err(|_| CallbackError::BodyTimeout)?
    .map_err(|e| {
        if e.is::<LengthLimitError>() {
            CallbackError::TooLarge(state.max_body_bytes)
        } else {
            CallbackError::BodyRead(e.to_string())
        }
    })?
    .to_bytes();
    let events = parse_callback(&body, state.max_json_depth, &state.routing)?;
    let count = events.len();
    state.publisher.publish(events, received).await?;
    Ok(count)
}

/// A caller's request id is reused (logged, echoed) only when it cannot forge a log line.
fn is_safe_request_id(id: &str) -> bool {
    (1..=128).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':'))
}

/// No `Content-Encoding`, or only `identity`: the forwarder publishes the bytes it received,
/// so a compressed body would be published compressed, or judged invalid JSON.
fn is_identity(content_encoding: Option<&HeaderValue>) -> bool {
    content_encoding.is_none_or(|value| {
        value.to_str().is_ok_and(|codings| {
            codings
                .split(',')
                .map(str::trim)
                .all(|coding| coding.is_empty() || coding.eq_ignore_ascii_case("identity"))
        })
    })
}

/// `application/json`, optionally with parameters; a charset, if given, must be UTF-8.
fn is_json(content_type: Option<&HeaderValue>) -> bool {
    let Some(value) = content_type.and_then(|v| v.to_str().ok()) else {
        return false;
    };
    // What nearly every caller sends (Bandwidth the second), without splitting it.
    if ["application/json", "application/json; charset=utf-8"]
        .iter()
        .any(|common| value.eq_ignore_ascii_case(common))
    {
        return true;
    }
    let mut parts = value.split(';');
    let media_type = parts.next().unwrap_or_default().trim();
    if !media_type.eq_ignore_ascii_case("application/json") {
        return false;
    }
    parts.all(|param| match param.split_once('=') {
        Some((name, charset)) if name.trim().eq_ignore_ascii_case("charset") => charset
            .trim()
            .trim_matches('"')
            .eq_ignore_ascii_case("utf-8"),
        _ => true,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ct(value: &str) -> bool {
        is_json(Some(&HeaderValue::from_str(value).expect("header")))
    }

    #[test]
    fn new_request_ids_are_16_hex_digits_and_differ() {
        let (one, two) = (new_request_id(), new_request_id());
        for id in [&one, &two] {
            assert_eq!(id.len(), 16, "{id}");
            assert!(
                id.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')),
                "{id}"
            );
            assert!(is_safe_request_id(id));
        }
        assert_ne!(one, two);
    }

    #[test]
    fn only_plain_request_ids_are_reused() {
        assert!(is_safe_request_id("bw-1234_abc.def:9"));
        assert!(!is_safe_request_id(""));
        assert!(!is_safe_request_id("a b"));
        assert!(!is_safe_request_id("x\" status=200"));
        assert!(!is_safe_request_id(&"a".repeat(129)));
    }

    #[test]
    fn only_identity_content_encoding_is_accepted() {
        let ce = |value: &str| is_identity(Some(&HeaderValue::from_str(value).expect("header")));
        assert!(is_identity(None));
        assert!(ce("identity"));
        assert!(ce("Identity"));
        assert!(ce(""));
        assert!(!ce("gzip"));
        assert!(!ce("identity, gzip"));
        assert!(!ce("br"));
        assert!(!is_identity(Some(
            &HeaderValue::from_bytes(b"\xffgzip").expect("header")
        )));
    }

    #[test]
    fn content_type_must_be_json() {
        assert!(ct("application/json"));
        assert!(ct("application/json; charset=utf-8"));
        assert!(ct("APPLICATION/JSON; CHARSET=UTF-8"));
        assert!(ct("application/json;charset=utf-8"));
        assert!(ct("Application/JSON;charset=\"UTF-8\""));
        assert!(!ct("application/json; charset=utf-16"));
        assert!(!ct("application/json; charset=latin1"));
        assert!(!ct("text/plain"));
        assert!(!ct("application/x-www-form-urlencoded"));
        assert!(!ct("application/jsonx"));
        assert!(!is_json(None));
    }
}
