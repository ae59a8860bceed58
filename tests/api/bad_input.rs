//! Bad input: the right 4xx, a JSON error, and nothing published — ever.

use std::time::Duration;

use bytes::Bytes;
use hyper::{Method, StatusCode};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use crate::common::{TestApp, read_raw, spawn_app, test_settings};

async fn assert_rejected(
    app: &TestApp,
    answer: crate::common::Answer,
    status: StatusCode,
    word: &str,
) {
    assert_eq!(
        answer.status,
        status,
        "{:?}",
        String::from_utf8_lossy(&answer.body)
    );
    assert_eq!(
        answer
            .headers
            .get("content-type")
            .and_then(|v| v.to_str().ok()),
        Some("application/json")
    );
    assert_eq!(answer.error_word(), word);
    assert!(
        app.drain().await.is_empty(),
        "a rejected request published something"
    );
}

#[tokio::test]
async fn invalid_bodies_get_400_and_publish_nothing() {
    let app = spawn_app(test_settings()).await;
    let valid = r#"{"type":"message-delivered","message":{"id":"m"}}"#;
    let cases: Vec<(String, &str)> = vec![
        ("not json".into(), "invalid_json"),
        (String::new(), "invalid_json"),
        ("[{\"type\":\"a\"}".into(), "invalid_json"),
        ("\u{feff}[{\"type\":\"a\"}]".into(), "invalid_json"),
        ("\"a string\"".into(), "not_array_or_object"),
        ("42".into(), "not_array_or_object"),
        ("null".into(), "not_array_or_object"),
        ("[]".into(), "empty_array"),
        (format!("[{valid}, 3]"), "event_not_object"),
        (format!("[{valid}, [\"nested\"]]"), "event_not_object"),
        (format!("[{valid}, {{}}]"), "missing_type"),
        (format!("[{valid}, {{\"type\": 5}}]"), "missing_type"),
        (format!("[{valid}, {{\"type\": null}}]"), "missing_type"),
        (
            format!("[{valid}, {{\"type\": \"a\", \"type\": \"b\"}}]"),
            "malformed_event",
        ),
    ];
    for (body, word) in cases {
        let answer = app.post_callback(body.clone()).await;
        assert_rejected(&app, answer, StatusCode::BAD_REQUEST, word).await;
    }
    let invalid_utf8 = Bytes::from_static(b"[{\"type\":\"a\",\"x\":\"\xff\"}]");
    assert_rejected(
        &app,
        app.post_callback(invalid_utf8).await,
        StatusCode::BAD_REQUEST,
        "invalid_json",
    )
    .await;
    app.stop().await;
}

#[tokio::test]
async fn wrong_content_type_gets_415() {
    let app = spawn_app(test_settings()).await;
    let body = Bytes::from_static(br#"[{"type":"message-sent"}]"#);
    for content_type in [
        Some("text/plain"),
        Some("application/x-www-form-urlencoded"),
        Some("application/json; charset=latin1"),
        None,
    ] {
        let headers: Vec<(&str, &str)> = content_type
            .iter()
            .map(|ct| ("content-type", *ct))
            .collect();
        let answer = app
            .request(Method::POST, &app.callback_url(), &headers, body.clone())
            .await;
        assert_rejected(
            &app,
            answer,
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
        )
        .await;
    }
    app.stop().await;
}

#[tokio::test]
async fn a_content_encoding_other_than_identity_gets_415() {
    let app = spawn_app(test_settings()).await;
    let body = Bytes::from_static(br#"[{"type":"message-sent"}]"#);
    // A plain body labelled gzip would be published as if it were compressed, and a compressed
    // one would be judged invalid JSON: neither is read.
    for encoding in ["gzip", "br", "identity, gzip", "deflate"] {
        let headers = [
            ("content-type", "application/json"),
            ("content-encoding", encoding),
        ];
        let answer = app
            .request(Method::POST, &app.callback_url(), &headers, body.clone())
            .await;
        assert_eq!(
            answer.headers.get("accept-encoding").map(|v| v.as_bytes()),
            Some(&b"identity"[..]),
            "{encoding}"
        );
        assert_rejected(
            &app,
            answer,
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_encoding",
        )
        .await;
    }
    let identity = [
        ("content-type", "application/json"),
        ("content-encoding", "identity"),
    ];
    let answer = app
        .request(Method::POST, &app.callback_url(), &identity, body)
        .await;
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(app.drain().await.len(), 1);
    app.stop().await;
}

#[tokio::test]
async fn other_methods_and_paths_get_405_and_404() {
    let app = spawn_app(test_settings()).await;
    let body = Bytes::from_static(br#"[{"type":"message-sent"}]"#);
    let json = [("content-type", "application/json")];
    for method in [Method::GET, Method::PUT, Method::DELETE, Method::PATCH] {
        let answer = app
            .request(method.clone(), &app.callback_url(), &json, body.clone())
            .await;
        assert_eq!(
            answer.headers.get("allow").map(|v| v.as_bytes()),
            Some(&b"POST"[..])
        );
        assert_rejected(
            &app,
            answer,
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
        )
        .await;
    }
    let elsewhere = format!("http://{}/callbacks/other", app.addr);
    let answer = app
        .request(Method::POST, &elsewhere, &json, body.clone())
        .await;
    assert_rejected(&app, answer, StatusCode::NOT_FOUND, "not_found").await;
    let answer = app
        .request(
            Method::POST,
            &format!("http://{}/healthz", app.addr),
            &json,
            body,
        )
        .await;
    assert_eq!(answer.status, StatusCode::METHOD_NOT_ALLOWED);
    app.stop().await;
}

/// Reads one answer's head and body (as far as 3 s allow) while the request is unfinished.
async fn read_answer(stream: &mut TcpStream) -> String {
    let read = read_raw(stream, Duration::from_secs(3), |text| text.contains('}')).await;
    read.unwrap_or_else(|partial| partial)
}

#[tokio::test]
async fn bodies_over_the_limit_get_413() {
    let mut settings = test_settings();
    settings.http.max_body_bytes = 1024;
    let app = spawn_app(settings).await;
    let big = format!(
        r#"[{{"type":"message-sent","pad":"{}"}}]"#,
        "x".repeat(2000)
    );
    assert_rejected(
        &app,
        app.post_callback(big.clone()).await,
        StatusCode::PAYLOAD_TOO_LARGE,
        "body_too_large",
    )
    .await;

    // A Content-Length over the limit is answered before any of the body is sent: the server
    // neither waits for nor buffers it.
    let mut stream = TcpStream::connect(app.addr).await.expect("connect");
    let head = format!(
        "POST {} HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
        app.settings.http.path,
        big.len()
    );
    stream.write_all(head.as_bytes()).await.expect("write head");
    let answer = read_answer(&mut stream).await;
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    assert!(answer.contains("\"error\":\"body_too_large\""), "{answer}");

    // Chunked, no Content-Length: the answer comes as soon as the chunks pass the limit,
    // before the body ends (no terminating chunk is ever sent).
    let mut stream = TcpStream::connect(app.addr).await.expect("connect");
    let head = format!(
        "POST {} HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\n\r\n",
        app.settings.http.path
    );
    stream.write_all(head.as_bytes()).await.expect("write head");
    for chunk in big.as_bytes()[..1200].chunks(300) {
        let framed = format!(
            "{:x}\r\n{}\r\n",
            chunk.len(),
            String::from_utf8_lossy(chunk)
        );
        stream
            .write_all(framed.as_bytes())
            .await
            .expect("write a chunk");
    }
    let answer = read_answer(&mut stream).await;
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    assert!(answer.contains("\"error\":\"body_too_large\""), "{answer}");
    assert!(app.drain().await.is_empty());

    // Exactly at the limit is fine.
    let at_limit = format!(
        r#"[{{"type":"message-sent","pad":"{}"}}]"#,
        "x".repeat(1024 - 34)
    );
    assert_eq!(at_limit.len(), 1024);
    assert_eq!(app.post_callback(at_limit).await.status, StatusCode::OK);
    assert_eq!(app.drain().await.len(), 1);
    app.stop().await;
}
