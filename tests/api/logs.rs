//! Logs: one line per request with its facts, never credentials or message text.

use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use bytes::Bytes;
use hyper::{Method, StatusCode};
use lapin::options::ExchangeDeleteOptions;

use crate::common::{Forwarder, amqp_uri, broker, count_ids, http_client, send, unique};

const PASSWORD: &str = "pw-never-logged-7f3a";
const TEXT: &str = "message-text-never-logged-91c2";

async fn post(url: &str, authorization: &str, body: String) -> (StatusCode, String) {
    let headers = [
        ("content-type", "application/json"),
        ("authorization", authorization),
        ("x-request-id", "req-logs-1"),
    ];
    let answer = send(
        &http_client(),
        Method::POST,
        url,
        &headers,
        Bytes::from(body),
    )
    .await
    .expect("answer");
    (
        answer.status,
        String::from_utf8_lossy(&answer.body).into_owned(),
    )
}

/// Runs the binary with auth and two worker threads, posts a callback carrying message text,
/// and reads its JSON log.
#[tokio::test]
async fn request_lines_carry_facts_but_no_secrets_or_text() {
    let (exchange, queue) = (unique("ex"), unique("q"));
    let _leftovers = crate::common::Leftovers::of(&[&queue], &[&exchange]);
    let forwarder = Forwarder::start(&format!(
        "[http]\nlisten = \"127.0.0.1:0\"\n[auth]\nusername = \"bw\"\npassword = \"{PASSWORD}\"\n\
         [amqp]\nuri = \"{}\"\nexchange = \"{exchange}\"\n[[amqp.queues]]\nname = \"{queue}\"\n\
         bindings = [\"#\"]\n[runtime]\nworker_threads = 2\n",
        amqp_uri()
    ));
    let url = forwarder.url("/callbacks/bandwidth/messaging");
    let body =
        format!(r#"[{{"type":"message-received","message":{{"id":"logs-1","text":"{TEXT}"}}}}]"#);
    let good = format!("Basic {}", STANDARD.encode(format!("bw:{PASSWORD}")));
    forwarder.wait_ready().await;
    let answered = post(&url, &good, body.clone()).await;
    assert_eq!(answered.0, StatusCode::OK, "{}", answered.1);
    let bad = format!("Basic {}", STANDARD.encode(format!("bw:{PASSWORD}-wrong")));
    assert_eq!(post(&url, &bad, body).await.0, StatusCode::UNAUTHORIZED);
    // Every line the process ever writes, to its exit: a leak logged late is seen too.
    let (code, logs) = forwarder.stop().await;
    assert_eq!(code, Some(0), "{logs}");
    for secret in [PASSWORD, TEXT, good.as_str(), bad.as_str()] {
        assert!(
            !logs.contains(secret),
            "`{secret}` leaked into the log:\n{logs}"
        );
    }
    let lines: Vec<serde_json::Value> = logs
        .lines()
        .filter_map(|line| serde_json::from_str(line).ok())
        .collect();
    let accepted = lines
        .iter()
        .find(|l| l["message"] == "callback accepted")
        .unwrap_or_else(|| panic!("no request line in\n{logs}"));
    assert_eq!(accepted["status"], 200);
    assert_eq!(accepted["events"], 1);
    assert!(accepted["latency_ms"].is_number());
    assert_eq!(accepted["request_id"], "req-logs-1", "{accepted}");
    assert!(
        lines
            .iter()
            .any(|l| l["message"] == "callback rejected" && l["status"] == 401),
        "{logs}"
    );

    let connection = broker().await;
    let channel = connection.create_channel().await.expect("channel");
    assert_eq!(count_ids(&channel, &queue).await.len(), 1);
}

/// An unroutable event comes back from the broker whole; neither its text nor its bytes may
/// reach the log, and the 503 line names the failure once.
#[tokio::test]
async fn unroutable_events_are_logged_without_their_body() {
    let exchange = unique("ex");
    let _leftovers = crate::common::Leftovers::of(&[], &[&exchange]);
    let forwarder = Forwarder::start(&format!(
        "[http]\nlisten = \"127.0.0.1:0\"\n[amqp]\nuri = \"{}\"\nexchange = \"{exchange}\"\n\
         queues = []\n",
        amqp_uri()
    ));
    forwarder.wait_ready().await;
    let body =
        format!(r#"[{{"type":"message-received","message":{{"id":"logs-2","text":"{TEXT}"}}}}]"#);
    let (status, answer) = post(&forwarder.url("/callbacks/bandwidth/messaging"), "", body).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{answer}");
    assert!(answer.contains("unroutable"), "{answer}");
    tokio::time::sleep(Duration::from_millis(200)).await;

    let logs = forwarder.logs();
    let text_as_bytes = TEXT
        .bytes()
        .map(|byte| byte.to_string())
        .collect::<Vec<_>>()
        .join(", ");
    for leak in [TEXT, text_as_bytes.as_str()] {
        assert!(
            !logs.contains(leak),
            "`{leak}` leaked into the log:\n{logs}"
        );
    }
    let failed = logs
        .lines()
        .find(|line| line.contains("callback not published"))
        .unwrap_or_else(|| panic!("no request line in\n{logs}"));
    assert_eq!(failed.matches(r#""error":"#).count(), 1, "{failed}");
    // With no queue of its own, the forwarder says at start what that means for events.
    assert!(
        logs.contains("amqp.queues is empty: an event no backend's queue binds is answered 503"),
        "{logs}"
    );
    let failed: serde_json::Value = serde_json::from_str(failed).expect("a JSON line");
    assert_eq!(failed["status"], 503);
    assert_eq!(failed["error"], "unroutable");
    assert!(failed["detail"].is_string(), "{failed}");
}

/// What a channel worker logs about a request names it: its warning when the broker closes the
/// channel under a batch (here, the exchange deleted) carries the request id.
#[tokio::test]
async fn a_workers_warning_carries_the_request_id_of_the_callback_it_concerns() {
    let (exchange, queue) = (unique("ex"), unique("q"));
    let _leftovers = crate::common::Leftovers::of(&[&queue], &[&exchange]);
    let forwarder = Forwarder::start(&crate::common::forwarder_toml(
        &amqp_uri(),
        &exchange,
        &queue,
        3_000,
    ));
    forwarder.wait_ready().await;
    let connection = broker().await;
    let channel = connection.create_channel().await.expect("channel");
    channel
        .exchange_delete(exchange.as_str().into(), ExchangeDeleteOptions::default())
        .await
        .expect("delete the exchange under the forwarder");
    let body = r#"[{"type":"message-sent","message":{"id":"logs-3"}}]"#.to_owned();
    let (status, answer) = post(&forwarder.url("/callbacks/bandwidth/messaging"), "", body).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{answer}");
    let (_, logs) = forwarder.stop().await;
    let warning: serde_json::Value = logs
        .lines()
        .filter_map(|line| serde_json::from_str(line).ok())
        .find(|line: &serde_json::Value| {
            line["message"] == "channel failed with this request in flight, replacing it"
        })
        .unwrap_or_else(|| panic!("no worker warning in\n{logs}"));
    assert_eq!(warning["request_id"], "req-logs-1", "{warning}");
}
