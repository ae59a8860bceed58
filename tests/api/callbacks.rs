//! Valid callbacks: every fixture lands as one message per event, exactly as the contract says.

use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use hyper::{Method, StatusCode};
use serde_json::Value;

use crate::common::{Message, fixture, fixture_names, sha256_hex, spawn_app, test_settings};

/// The elements of a fixture body as raw byte ranges, found without the crate's parser.
fn raw_elements(body: &[u8]) -> Vec<Vec<u8>> {
    let text = std::str::from_utf8(body).expect("utf-8 fixture");
    let trimmed = text.trim();
    if trimmed.starts_with('{') {
        return vec![trimmed.as_bytes().to_vec()];
    }
    let values: Vec<Box<serde_json::value::RawValue>> =
        serde_json::from_str(trimmed).expect("array fixture");
    values
        .iter()
        .map(|raw| raw.get().as_bytes().to_vec())
        .collect()
}

/// The contract's dedup key, computed from a parsed copy of the event.
fn expected_key(raw: &[u8]) -> String {
    let event: Value = serde_json::from_slice(raw).expect("event json");
    match event["message"]["id"].as_str() {
        Some(id) => {
            let to = event["to"].as_str().unwrap_or("");
            sha256_hex(format!("{}\n{id}\n{to}", event["type"].as_str().expect("type")).as_bytes())
        }
        None => sha256_hex(raw),
    }
}

fn assert_message_matches(message: &Message, raw: &[u8], exchange: &str, before: u64, after: u64) {
    let event: Value = serde_json::from_slice(raw).expect("event json");
    let kind = event["type"].as_str().expect("type");
    let key = expected_key(raw);
    assert_eq!(message.body, raw, "body must be the element's exact bytes");
    assert_eq!(message.exchange, exchange);
    assert_eq!(message.routing_key, kind.replace('-', "."));
    let p = &message.properties;
    assert_eq!(*p.delivery_mode(), Some(2), "persistent");
    assert_eq!(
        p.content_type().as_ref().map(|s| s.as_str()),
        Some("application/json")
    );
    assert_eq!(message.message_id(), key);
    assert_eq!(p.kind().as_ref().map(|s| s.as_str()), Some(kind));
    assert_eq!(
        p.app_id().as_ref().map(|s| s.as_str()),
        Some("bandwidth-forwarder")
    );
    let timestamp = p.timestamp().expect("timestamp");
    assert!(
        (before..=after).contains(&timestamp),
        "{before} <= {timestamp} <= {after}"
    );
    assert_eq!(
        message.header("x-deduplication-header").as_deref(),
        Some(key.as_str())
    );
    assert_eq!(
        message.header("x-bandwidth-event-type").as_deref(),
        Some(kind)
    );
    assert_eq!(
        message.header("x-bandwidth-message-id").as_deref(),
        event["message"]["id"].as_str()
    );
    assert_eq!(
        message.header("x-bandwidth-event-time").as_deref(),
        event["time"].as_str()
    );
    let received = message.header("x-received-at").expect("x-received-at");
    let received = humantime::parse_rfc3339(&received).expect("RFC 3339");
    let received = received
        .duration_since(UNIX_EPOCH)
        .expect("after epoch")
        .as_secs();
    assert!(
        (before..=after).contains(&received),
        "x-received-at {received} outside the request"
    );
    assert!(
        message
            .header("x-received-at")
            .expect("header")
            .ends_with('Z'),
        "UTC"
    );
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_secs()
}

#[tokio::test]
async fn every_fixture_is_published_one_message_per_event_exactly_as_received() {
    let app = spawn_app(test_settings()).await;
    let names = fixture_names();
    assert!(names.len() >= 15, "fixtures missing: {names:?}");
    for name in names {
        let body = fixture(&name);
        let before = now_secs();
        let answer = app.post_callback(body.clone()).await;
        let after = now_secs();
        assert_eq!(answer.status, StatusCode::OK, "{name}: {:?}", answer.body);
        let elements = raw_elements(&body);
        assert_eq!(answer.json()["events"], elements.len(), "{name}");
        let messages = app.drain().await;
        assert_eq!(
            messages.len(),
            elements.len(),
            "{name}: one message per event"
        );
        for (message, raw) in messages.iter().zip(&elements) {
            assert_message_matches(message, raw, &app.settings.amqp.exchange, before, after);
        }
    }
    app.stop().await;
}

#[tokio::test]
async fn a_duplicate_callback_gives_two_messages_with_the_same_key() {
    let app = spawn_app(test_settings()).await;
    let body = fixture("message-delivered.json");
    assert_eq!(app.post_callback(body.clone()).await.status, StatusCode::OK);
    assert_eq!(app.post_callback(body).await.status, StatusCode::OK);
    let messages = app.drain().await;
    assert_eq!(messages.len(), 2);
    assert_eq!(messages[0].message_id(), messages[1].message_id());
    app.stop().await;
}

#[tokio::test]
async fn group_recipients_get_different_keys_and_redeliveries_the_same() {
    let app = spawn_app(test_settings()).await;
    for name in [
        "message-delivered-group-mms-recipient1.json",
        "message-delivered-group-mms-recipient2.json",
        "incoming-group-message.json",
        "incoming-group-message-owner2.json",
        "message-sending-mms.json",
        "batch-mixed.json",
    ] {
        assert_eq!(
            app.post_callback(fixture(name)).await.status,
            StatusCode::OK,
            "{name}"
        );
    }
    let keys: Vec<String> = app.drain().await.iter().map(Message::message_id).collect();
    assert_eq!(keys.len(), 10);
    assert_ne!(
        keys[0], keys[1],
        "outbound group MMS: one key per recipient"
    );
    assert_ne!(keys[2], keys[3], "inbound group: one key per owned number");
    // batch-mixed's message-sending element is the same event with other bytes.
    assert!(
        keys[5..].contains(&keys[4]),
        "redelivered message-sending keeps its key"
    );
    app.stop().await;
}

#[tokio::test]
async fn unknown_and_odd_types_are_forwarded() {
    let app = spawn_app(test_settings()).await;
    let body = r#"[{"type":"message-reaction","message":{"id":"r1"},"extra":{"a":[1,null]}},{"type":"Weird Type!"},{"type":""}]"#;
    let answer = app.post_callback(body).await;
    assert_eq!(answer.status, StatusCode::OK, "{:?}", answer.body);
    let messages = app.drain().await;
    let keys: Vec<&str> = messages.iter().map(|m| m.routing_key.as_str()).collect();
    assert_eq!(keys, ["message.reaction", "unknown", "unknown"]);
    assert_eq!(messages[1].body, br#"{"type":"Weird Type!"}"#);
    assert_eq!(
        messages[1].header("x-bandwidth-event-type").as_deref(),
        Some("Weird Type!")
    );
    assert_eq!(
        messages[1].message_id(),
        sha256_hex(br#"{"type":"Weird Type!"}"#)
    );
    app.stop().await;
}

#[tokio::test]
async fn a_type_is_copied_into_property_and_header_up_to_255_bytes_and_left_out_past_it() {
    let app = spawn_app(test_settings()).await;
    let at_bound = "x".repeat(255);
    let over = "x".repeat(256);
    for kind in [&at_bound, &over] {
        let answer = app.post_callback(format!(r#"{{"type":"{kind}"}}"#)).await;
        assert_eq!(answer.status, StatusCode::OK, "{:?}", answer.body);
    }
    let messages = app.drain().await;
    assert_eq!(messages.len(), 2);
    assert_eq!(messages[0].routing_key, "unknown");
    assert_eq!(
        messages[0].properties.kind().as_ref().map(|k| k.as_str()),
        Some(at_bound.as_str())
    );
    assert_eq!(messages[0].header("x-bandwidth-event-type"), Some(at_bound));
    assert_eq!(messages[1].routing_key, "unknown");
    assert_eq!(messages[1].properties.kind(), &None);
    assert_eq!(messages[1].header("x-bandwidth-event-type"), None);
    assert_eq!(
        messages[1].body,
        format!(r#"{{"type":"{over}"}}"#).as_bytes()
    );
    app.stop().await;
}

#[tokio::test]
async fn health_and_metrics_endpoints_answer() {
    let app = spawn_app(test_settings()).await;
    assert_eq!(app.get("/healthz").await.status, StatusCode::OK);
    assert_eq!(app.get("/readyz").await.status, StatusCode::OK);
    assert_eq!(
        app.post_callback(fixture("message-failed.json"))
            .await
            .status,
        StatusCode::OK
    );
    let metrics = app.get("/metrics").await;
    assert_eq!(metrics.status, StatusCode::OK);
    let text = String::from_utf8_lossy(&metrics.body);
    for needle in [
        "bandwidth_forwarder_http_requests_total{status=\"200\"}",
        "bandwidth_forwarder_events_published_total{type=\"message-failed\"} 1",
        "bandwidth_forwarder_publish_confirm_seconds_count 1",
        "bandwidth_forwarder_broker_connected 1",
        "bandwidth_forwarder_inflight_requests 0",
    ] {
        assert!(text.contains(needle), "missing `{needle}` in\n{text}");
    }
    app.drain().await;
    app.stop().await;
}

#[tokio::test]
async fn every_answer_carries_exactly_one_request_id_and_echoes_the_callers() {
    let app = spawn_app(test_settings()).await;
    let base = format!("http://{}", app.addr);
    let callback = app.callback_url();
    let json = ("content-type", "application/json");
    type Case<'a> = (Method, String, Vec<(&'a str, &'a str)>, &'a [u8]);
    let cases: Vec<Case> = vec![
        (Method::GET, format!("{base}/healthz"), vec![], b""),
        (Method::GET, format!("{base}/readyz"), vec![], b""),
        (Method::GET, format!("{base}/metrics"), vec![], b""),
        (Method::HEAD, format!("{base}/healthz"), vec![], b""),
        (Method::GET, format!("{base}/nowhere"), vec![], b""),
        (Method::POST, format!("{base}/healthz"), vec![], b""),
        (Method::GET, callback.clone(), vec![], b""),
        (Method::POST, callback.clone(), vec![json], b"nope"),
        (
            Method::POST,
            callback.clone(),
            vec![json],
            br#"[{"type":"message-sent"}]"#,
        ),
    ];
    for (method, url, headers, body) in cases {
        let what = format!("{method} {url}");
        let answer = app
            .request(method.clone(), &url, &headers, Bytes::from_static(body))
            .await;
        let ids: Vec<_> = answer.headers.get_all("x-request-id").iter().collect();
        assert_eq!(ids.len(), 1, "{what}: {ids:?}");
        assert!(!ids[0].is_empty(), "{what}");

        let mut with_id = headers.clone();
        with_id.push(("x-request-id", "bw-trace-42"));
        let answer = app
            .request(method, &url, &with_id, Bytes::from_static(body))
            .await;
        let ids: Vec<_> = answer.headers.get_all("x-request-id").iter().collect();
        assert_eq!(ids, ["bw-trace-42"], "{what}");
    }
    app.drain().await;
    app.stop().await;
}

#[tokio::test]
async fn head_is_answered_wherever_get_is() {
    let app = spawn_app(test_settings()).await;
    for path in ["/healthz", "/readyz", "/metrics"] {
        let url = format!("http://{}{path}", app.addr);
        let get = app.request(Method::GET, &url, &[], Bytes::new()).await;
        let head = app.request(Method::HEAD, &url, &[], Bytes::new()).await;
        assert_eq!(head.status, StatusCode::OK, "{path}");
        assert_eq!(head.status, get.status, "{path}");
        assert!(head.body.is_empty(), "{path}: HEAD has no body");
        assert_eq!(
            head.headers.get("content-type"),
            get.headers.get("content-type"),
            "{path}"
        );
    }
    let answer = app
        .request(
            Method::PUT,
            &format!("http://{}/healthz", app.addr),
            &[],
            Bytes::new(),
        )
        .await;
    assert_eq!(answer.status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(
        answer.headers.get("allow").map(|v| v.as_bytes()),
        Some(&b"GET, HEAD"[..])
    );
    app.stop().await;
}

#[tokio::test]
async fn each_message_carries_its_requests_id_as_correlation_id() {
    let app = spawn_app(test_settings()).await;
    let body = r#"[{"type":"message-sent"},{"type":"message-delivered"}]"#;
    let traced = app
        .post_callback_with(body, &[("x-request-id", "bw-trace-9")])
        .await;
    assert_eq!(traced.status, StatusCode::OK);
    let untraced = app.post_callback(body).await;
    let generated = untraced
        .headers
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .expect("a generated id")
        .to_owned();
    let ids: Vec<String> = app
        .drain()
        .await
        .iter()
        .map(|m| {
            m.properties
                .correlation_id()
                .as_ref()
                .map(|id| id.to_string())
                .expect("correlation_id")
        })
        .collect();
    assert_eq!(ids, ["bw-trace-9", "bw-trace-9", &generated, &generated]);
    app.stop().await;
}
