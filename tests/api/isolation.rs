//! One callback never hurts another: fields too long for a header, unbounded label values,
//! clients that never read, SIGHUP. Each hostile class on its own, then all of them beside a
//! client streaming valid callbacks.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use base64::Engine;
use bytes::Bytes;
use hyper::{Method, StatusCode};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpSocket;
use tokio::net::tcp::OwnedReadHalf;
use tokio::task::JoinHandle;

use crate::common::{
    Answer, Forwarder, HttpClient, TestApp, count_ids, forwarder_toml, http_client, metric,
    read_until_closed, send, series_count, spawn_app, test_settings, unique,
};

/// A value far over any header bound and over the broker's default 128 KiB frame: copied into
/// a header, it made RabbitMQ close the connection every request shares.
const POISON_BYTES: usize = 150_000;

const RECONNECTS: &str = "bandwidth_forwarder_broker_reconnects_total";
const PUBLISHED: &str = "bandwidth_forwarder_events_published_total";

/// Events whose `type`, `time`, `message.id` or `to` is poison-sized, one field each.
fn poison_events() -> Vec<(&'static str, String)> {
    let long = "p".repeat(POISON_BYTES);
    vec![
        ("type", format!(r#"[{{"type":"{long}"}}]"#)),
        (
            "time",
            format!(r#"[{{"type":"message-delivered","time":"{long}"}}]"#),
        ),
        (
            "message.id",
            format!(r#"[{{"type":"message-delivered","message":{{"id":"{long}"}}}}]"#),
        ),
        (
            "to",
            format!(r#"[{{"type":"message-delivered","to":"{long}","message":{{"id":"m"}}}}]"#),
        ),
    ]
}

/// Callbacks carrying `count` event types no two alike, `per_request` events each.
fn unique_type_callbacks(count: usize, per_request: usize) -> Vec<String> {
    let types: Vec<String> = (0..count)
        .map(|i| match i % 20 {
            // Some of them long, as an attacker would send.
            0 => format!(r#"{{"type":"t{i}-{}"}}"#, "x".repeat(1_000)),
            _ => format!(r#"{{"type":"made-up-{i}-{:x}"}}"#, fastrand::u64(..)),
        })
        .collect();
    types
        .chunks(per_request)
        .map(|chunk| format!("[{}]", chunk.join(",")))
        .collect()
}

async fn metrics_text(app: &TestApp) -> String {
    String::from_utf8_lossy(&app.get("/metrics").await.body).into_owned()
}

#[tokio::test]
async fn a_field_too_long_for_a_header_is_published_without_that_header_and_the_connection_stays() {
    let app = spawn_app(test_settings()).await;
    for (field, body) in poison_events() {
        let answer = app.post_callback(body.clone()).await;
        assert_eq!(answer.status, StatusCode::OK, "{field}: {:?}", answer.body);
        let published = app.drain().await;
        assert_eq!(published.len(), 1, "{field}");
        let message = &published[0];
        assert_eq!(
            message.body,
            body.as_bytes()[1..body.len() - 1],
            "{field}: the body carries the value untouched"
        );
        for header in [
            "x-bandwidth-event-type",
            "x-bandwidth-event-time",
            "x-bandwidth-message-id",
        ] {
            let value = message.header(header).unwrap_or_default();
            assert!(
                value.len() <= 255,
                "{field}: {header} is {} bytes",
                value.len()
            );
        }
        assert!(message.header("x-deduplication-header").is_some());
    }
    // A long `type` is still routed and counted, as `unknown` / `other`.
    let text = metrics_text(&app).await;
    assert_eq!(metric(&text, RECONNECTS), Some(0.0), "{text}");
    assert_eq!(
        metric(
            &text,
            "bandwidth_forwarder_events_published_total{type=\"other\"}"
        ),
        Some(1.0),
        "{text}"
    );
    app.stop().await;
}

#[tokio::test]
async fn thousands_of_unique_event_types_keep_the_metric_series_bounded() {
    let app = spawn_app(test_settings()).await;
    // One callback first, so that every per-outcome series exists before the measure.
    app.post_callback(r#"[{"type":"message-delivered"}]"#).await;
    let before = metrics_text(&app).await.len();
    for body in unique_type_callbacks(2_000, 250) {
        let answer = app.post_callback(body).await;
        assert_eq!(answer.status, StatusCode::OK, "{:?}", answer.body);
    }
    let text = metrics_text(&app).await;
    assert_eq!(series_count(&text, PUBLISHED), 2, "{text}");
    assert_eq!(
        metric(
            &text,
            "bandwidth_forwarder_events_published_total{type=\"other\"}"
        ),
        Some(2_000.0)
    );
    assert!(
        text.len() < before + 1_024,
        "/metrics grew from {before} to {} bytes",
        text.len()
    );
    assert_eq!(app.drain().await.len(), 2_001, "every event is published");
    app.stop().await;
}

/// A client that pipelines requests for `/metrics` and never reads an answer, with a small
/// receive buffer: its window fills and the forwarder's writes to it stall. The read half is
/// returned so the connection stays open; the task holds the write half until aborted.
async fn non_reading_pipeliner(addr: SocketAddr) -> (OwnedReadHalf, JoinHandle<()>) {
    let socket = TcpSocket::new_v4().expect("socket");
    socket.set_recv_buffer_size(4_096).expect("SO_RCVBUF");
    let stream = socket.connect(addr).await.expect("connect");
    let (read, mut write) = stream.into_split();
    let writer = tokio::spawn(async move {
        let requests = "GET /metrics HTTP/1.1\r\nhost: x\r\n\r\n".repeat(4_000);
        // The forwarder may close the connection mid-write (that is the point): an error here
        // is expected, and the test judges the forwarder, not this write.
        let _ = write.write_all(requests.as_bytes()).await;
        std::future::pending::<()>().await;
    });
    (read, writer)
}

/// One callback on a fresh connection; the raw answer.
async fn post_once(app: &TestApp, body: &str) -> String {
    let mut stream = tokio::net::TcpStream::connect(app.addr)
        .await
        .expect("connect");
    let request = format!(
        "POST {} HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\nconnection: close\r\n\
         content-length: {}\r\n\r\n{body}",
        app.settings.http.path,
        body.len()
    );
    stream
        .write_all(request.as_bytes())
        .await
        .expect("send the callback");
    read_until_closed(&mut stream, Duration::from_secs(10)).await
}

#[tokio::test]
async fn clients_that_never_read_lose_their_slots_to_a_well_behaved_one() {
    let mut settings = test_settings();
    settings.http.max_connections = 3;
    settings.http.write_timeout = Duration::from_millis(500);
    // Far beyond this test's deadline, so only the write timeout can free a slot.
    settings.http.header_read_timeout = Duration::from_millis(60_000);
    let app = spawn_app(settings).await;
    let mut pipeliners = Vec::new();
    for _ in 0..3 {
        pipeliners.push(non_reading_pipeliner(app.addr).await);
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    let body = r#"[{"type":"message-delivered","message":{"id":"well-behaved"}}]"#;
    let first = post_once(&app, body).await;
    assert!(
        first.contains(r#""error":"too_many_connections""#),
        "the pipeliners hold every slot: {first}"
    );
    let started = Instant::now();
    let answer = loop {
        let answer = post_once(&app, body).await;
        if answer.starts_with("HTTP/1.1 200") || started.elapsed() > Duration::from_secs(5) {
            break answer;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(
        answer.starts_with("HTTP/1.1 200"),
        "no slot was freed within {:?}: {answer}",
        started.elapsed()
    );
    let ids: Vec<_> = app
        .drain()
        .await
        .iter()
        .filter_map(|m| m.header("x-bandwidth-message-id"))
        .collect();
    assert_eq!(ids, ["well-behaved"]);
    for (_, writer) in pipeliners {
        writer.abort();
    }
    app.stop().await;
}

fn basic(user: &str, password: &str) -> String {
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"))
    )
}

/// Posts one callback with Basic credentials to the binary; its status.
async fn post_as(forwarder: &Forwarder, user: &str, password: &str) -> StatusCode {
    let authorization = basic(user, password);
    send(
        &http_client(),
        Method::POST,
        &forwarder.url("/callbacks/bandwidth/messaging"),
        &[
            ("content-type", "application/json"),
            ("authorization", &authorization),
        ],
        Bytes::from_static(br#"[{"type":"message-sent"}]"#),
    )
    .await
    .expect("an answer")
    .status
}

#[tokio::test]
async fn sighup_reloads_credentials_and_keeps_them_when_the_new_file_is_invalid() {
    let (exchange, queue) = (unique("ex"), unique("q"));
    let _leftovers = crate::common::Leftovers::of(&[&queue], &[&exchange]);
    let base = forwarder_toml(&crate::common::amqp_uri(), &exchange, &queue, 3_000);
    let with_auth = |user: &str, extra: &str| {
        format!("{base}[auth]\nusername = \"{user}\"\npassword = \"pw-{user}\"\n{extra}")
    };
    let forwarder = Forwarder::start(&with_auth("alice", ""));
    forwarder.wait_ready().await;
    assert_eq!(
        post_as(&forwarder, "alice", "pw-alice").await,
        StatusCode::OK
    );

    forwarder.rewrite_config(&with_auth("bob", ""));
    forwarder.signal("HUP");
    let deadline = Instant::now() + Duration::from_secs(5);
    while post_as(&forwarder, "bob", "pw-bob").await != StatusCode::OK {
        assert!(
            Instant::now() < deadline,
            "bob not accepted after SIGHUP; logs:\n{}",
            forwarder.logs()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        post_as(&forwarder, "alice", "pw-alice").await,
        StatusCode::UNAUTHORIZED,
        "the old credential is gone"
    );

    // A file that does not validate (a bad CIDR) keeps the running rules, and says why.
    forwarder.rewrite_config(&with_auth("carol", "allowed_sources = [\"10.0.0.0/33\"]\n"));
    forwarder.signal("HUP");
    let deadline = Instant::now() + Duration::from_secs(5);
    while !forwarder.logs().contains("settings not reloaded") {
        assert!(Instant::now() < deadline, "{}", forwarder.logs());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        forwarder.logs().contains("10.0.0.0/33"),
        "{}",
        forwarder.logs()
    );
    assert_eq!(post_as(&forwarder, "bob", "pw-bob").await, StatusCode::OK);
    assert_eq!(
        post_as(&forwarder, "carol", "pw-carol").await,
        StatusCode::UNAUTHORIZED
    );

    forwarder.signal("TERM");
    assert_eq!(forwarder.wait_exit(Duration::from_secs(20)).await, Some(0));
}

/// POSTs a JSON body; the answer, or `None` if none came.
async fn post_json(client: HttpClient, url: String, body: String) -> Option<Answer> {
    send(
        &client,
        Method::POST,
        &url,
        &[("content-type", "application/json")],
        Bytes::from(body),
    )
    .await
}

#[tokio::test]
async fn one_hostile_client_never_hurts_the_valid_callbacks_beside_it() {
    let (exchange, queue) = (unique("ex"), unique("q"));
    let _leftovers = crate::common::Leftovers::of(&[&queue], &[&exchange]);
    let toml = forwarder_toml(&crate::common::amqp_uri(), &exchange, &queue, 3_000).replacen(
        "[http]\n",
        "[http]\nwrite_timeout_ms = 1000\nheader_read_timeout_ms = 60000\n",
        1,
    );
    let forwarder = Arc::new(Forwarder::start(&toml));
    forwarder.wait_ready().await;
    let client = http_client();
    let url = forwarder.url("/callbacks/bandwidth/messaging");
    let post = |body: String| post_json(client.clone(), url.clone(), body);
    post(r#"[{"type":"message-sent"}]"#.into()).await;
    let rss_before = forwarder.rss_bytes();

    let stop = Arc::new(AtomicBool::new(false));
    let valid = {
        let (stop, client, url) = (stop.clone(), client.clone(), url.clone());
        tokio::spawn(async move {
            let mut failures = Vec::new();
            let mut sent = 0usize;
            while !stop.load(Ordering::SeqCst) {
                let body = format!(
                    r#"[{{"type":"message-delivered","message":{{"id":"valid-{sent}"}},"to":"+15550100"}}]"#
                );
                match post_json(client.clone(), url.clone(), body).await {
                    Some(answer) if answer.status == StatusCode::OK => {}
                    other => failures.push((sent, other.map(|a| a.status))),
                }
                sent += 1;
            }
            (sent, failures)
        })
    };

    let addr: SocketAddr = forwarder.addr.parse().expect("address");
    for (field, body) in poison_events() {
        for _ in 0..3 {
            let answer = post(body.clone()).await.expect("an answer");
            assert_eq!(answer.status, StatusCode::OK, "poison {field}");
        }
    }
    for body in unique_type_callbacks(10_000, 500) {
        let answer = post(body).await.expect("an answer");
        assert_eq!(answer.status, StatusCode::OK);
    }
    let (mut pipeliner, writer) = non_reading_pipeliner(addr).await;
    for _ in 0..3 {
        forwarder.signal("HUP");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    // The pipeliner is cut off once its answers stop moving for write_timeout_ms.
    let cut = tokio::time::timeout(Duration::from_secs(10), async {
        use tokio::io::AsyncReadExt;
        let mut sink = vec![0u8; 65_536];
        while let Ok(n) = pipeliner.read(&mut sink).await {
            if n == 0 {
                break;
            }
            // Reading now and then, slowly, keeps nothing moving for the forwarder.
            tokio::time::sleep(Duration::from_millis(1_500)).await;
        }
    })
    .await;
    writer.abort();
    assert!(cut.is_ok(), "the non-reading client was never cut off");
    stop.store(true, Ordering::SeqCst);
    let (sent, failures) = valid.await.expect("valid client");

    assert!(sent > 50, "the valid client kept posting: {sent}");
    assert!(
        failures.is_empty(),
        "valid callbacks not answered 200: {failures:?}"
    );
    let text = String::from_utf8_lossy(
        &send(
            &client,
            Method::GET,
            &forwarder.url("/metrics"),
            &[],
            Bytes::new(),
        )
        .await
        .expect("metrics")
        .body,
    )
    .into_owned();
    assert_eq!(metric(&text, RECONNECTS), Some(0.0), "{text}");
    assert!(series_count(&text, PUBLISHED) <= 9, "{text}");
    let grown = forwarder.rss_bytes().saturating_sub(rss_before);
    assert!(
        grown < 32 * 1024 * 1024,
        "memory grew by {} MiB",
        grown / (1024 * 1024)
    );

    let channel = crate::common::broker()
        .await
        .create_channel()
        .await
        .expect("channel");
    let ids = count_ids(&channel, &queue).await;
    for i in 0..sent {
        assert!(
            ids.contains_key(&format!("valid-{i}")),
            "valid-{i} answered 200 but not in the queue"
        );
    }
    forwarder.signal("TERM");
    let forwarder = Arc::into_inner(forwarder).expect("one owner");
    assert_eq!(forwarder.wait_exit(Duration::from_secs(20)).await, Some(0));
}
