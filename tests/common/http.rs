//! Talking HTTP to a forwarder: the one client and `send`, answers, readiness, raw sockets,
//! reading `/metrics`.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{HeaderMap, Method, Request, StatusCode};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

/// The HTTP client the tests post with.
pub type HttpClient = Client<HttpConnector, Full<Bytes>>;

pub fn http_client() -> HttpClient {
    Client::builder(TokioExecutor::new()).build_http()
}

/// An answered HTTP request.
pub struct Answer {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Answer {
    /// The body as JSON (every answer of the forwarder is JSON but /metrics).
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "body is not JSON ({e}): {:?}",
                String::from_utf8_lossy(&self.body)
            )
        })
    }

    /// Asserts the contract's error body and returns its `error` word.
    pub fn error_word(&self) -> String {
        let json = self.json();
        assert!(json["detail"].is_string(), "no detail in {json}");
        json["error"]
            .as_str()
            .unwrap_or_else(|| panic!("no error word in {json}"))
            .to_owned()
    }
}

/// How a request ended without an answer.
#[derive(Debug)]
pub enum NoAnswer {
    /// No connection was made (nothing listening).
    Refused,
    /// Connected, then the connection closed or reset before a whole answer came.
    Dropped(String),
}

/// Sends one request and reads the whole answer, or says how it failed.
pub async fn try_send(
    client: &HttpClient,
    method: Method,
    url: &str,
    headers: &[(&str, &str)],
    body: Bytes,
) -> Result<Answer, NoAnswer> {
    let mut builder = Request::builder().method(method).uri(url);
    for (name, value) in headers {
        builder = builder.header(*name, *value);
    }
    let request = builder.body(Full::new(body)).expect("request");
    let response = client.request(request).await.map_err(|e| {
        if e.is_connect() {
            NoAnswer::Refused
        } else {
            NoAnswer::Dropped(e.to_string())
        }
    })?;
    let status = response.status();
    let headers = response.headers().clone();
    // The forwarder never repeats a header: two `x-request-id`s, say, are a defect.
    for name in headers.keys() {
        assert_eq!(
            headers.get_all(name).iter().count(),
            1,
            "header `{name}` repeated in the answer to {url}: {headers:?}"
        );
    }
    let body = response
        .into_body()
        .collect()
        .await
        .map_err(|e| NoAnswer::Dropped(e.to_string()))?
        .to_bytes();
    Ok(Answer {
        status,
        headers,
        body,
    })
}

/// Sends one request and reads the whole answer; `None` when no answer came (connection
/// refused or reset, as while a forwarder stops).
pub async fn send(
    client: &HttpClient,
    method: Method,
    url: &str,
    headers: &[(&str, &str)],
    body: Bytes,
) -> Option<Answer> {
    try_send(client, method, url, headers, body).await.ok()
}

/// The value of one series in a Prometheus text exposition, matched by its whole name and
/// labels (`bandwidth_forwarder_broker_reconnects_total`, `x_total{type="a"}`); `None` when absent.
pub fn metric(exposition: &str, series: &str) -> Option<f64> {
    exposition.lines().find_map(|line| {
        let (name, value) = line.rsplit_once(' ')?;
        (name == series).then(|| value.parse().expect("a number"))
    })
}

/// How many series of metric family `name` an exposition holds.
pub fn series_count(exposition: &str, name: &str) -> usize {
    exposition
        .lines()
        .filter(|line| line.starts_with(name) && line[name.len()..].starts_with('{'))
        .count()
}

/// How long a forwarder may take to become ready in a test.
pub const READY_WITHIN: Duration = Duration::from_secs(15);

/// Polls `readyz` until it answers 200; false if it has not within `within`.
pub async fn ready_within(client: &HttpClient, readyz: &str, within: Duration) -> bool {
    let deadline = tokio::time::Instant::now() + within;
    while tokio::time::Instant::now() < deadline {
        let answer = send(client, Method::GET, readyz, &[], Bytes::new()).await;
        if answer.is_some_and(|answer| answer.status == StatusCode::OK) {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    false
}

/// Reads a raw connection until the server closes it; fails the test if that takes longer
/// than `within`.
pub async fn read_until_closed(stream: &mut TcpStream, within: Duration) -> String {
    read_raw(stream, within, |_| false)
        .await
        .unwrap_or_else(|partial| {
            panic!("the server did not close within {within:?}; read: {partial:?}")
        })
}

/// Reads a raw connection until the server closes it (`Ok`) or what arrived so far satisfies
/// `enough` (`Ok`), or `within` passes or reading fails (`Err`, with what arrived).
pub async fn read_raw(
    stream: &mut TcpStream,
    within: Duration,
    enough: impl Fn(&str) -> bool,
) -> Result<String, String> {
    let deadline = tokio::time::Instant::now() + within;
    let mut read = Vec::new();
    let mut buffer = [0u8; 4096];
    loop {
        let text = String::from_utf8_lossy(&read).into_owned();
        if enough(&text) {
            return Ok(text);
        }
        match tokio::time::timeout_at(deadline, stream.read(&mut buffer)).await {
            Ok(Ok(0)) => return Ok(text),
            Ok(Ok(n)) => read.extend_from_slice(&buffer[..n]),
            Ok(Err(_)) | Err(_) => return Err(text),
        }
    }
}
