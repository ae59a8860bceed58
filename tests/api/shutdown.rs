//! Graceful shutdown: admitted callbacks finish, new ones get 503, the process exits 0.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::future::join_all;
use hyper::{Method, StatusCode};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use crate::common::{
    Forwarder, amqp_uri, broker, count_ids, forwarder_toml, http_client, read_until_closed,
    spawn_app, test_settings, try_send, unique,
};

async fn inflight(app: &crate::common::TestApp) -> String {
    let metrics = app.get("/metrics").await;
    String::from_utf8_lossy(&metrics.body)
        .lines()
        .find(|line| line.starts_with("bandwidth_forwarder_inflight_requests "))
        .unwrap_or_default()
        .to_owned()
}

#[tokio::test]
async fn an_admitted_request_finishes_while_new_ones_get_503() {
    let mut app = spawn_app(test_settings()).await;
    let body = br#"[{"type":"message-sent","message":{"id":"in-flight"}}]"#;
    let mut slow = TcpStream::connect(app.addr).await.expect("connect");
    let head = format!(
        "POST {} HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
        app.settings.http.path,
        body.len()
    );
    slow.write_all(head.as_bytes()).await.expect("head");
    slow.write_all(&body[..10]).await.expect("part of the body");
    for _ in 0..200 {
        if inflight(&app).await == "bandwidth_forwarder_inflight_requests 1" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(
        inflight(&app).await,
        "bandwidth_forwarder_inflight_requests 1"
    );

    let stopped = app.begin_stop();
    let mut ready = app.get("/readyz").await;
    for _ in 0..100 {
        if ready.status == StatusCode::SERVICE_UNAVAILABLE {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
        ready = app.get("/readyz").await;
    }
    assert_eq!(
        ready.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "readyz turns 503 at once"
    );
    let refused = app.post_callback(r#"[{"type":"message-sent"}]"#).await;
    assert_eq!(refused.status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(refused.headers.contains_key("retry-after"));
    assert_eq!(refused.error_word(), "shutting_down");
    // Refused at the door: an outcome of its own, not a failure to publish.
    let metrics = String::from_utf8_lossy(&app.get("/metrics").await.body).into_owned();
    assert!(
        metrics.contains(
            r#"bandwidth_forwarder_http_request_duration_seconds_count{outcome="shutting_down"} 1"#
        ),
        "{metrics}"
    );
    assert!(
        !metrics.contains("bandwidth_forwarder_publish_failures_total{"),
        "nothing failed to publish:\n{metrics}"
    );

    slow.write_all(&body[10..]).await.expect("rest of the body");
    let response = read_until_closed(&mut slow, Duration::from_secs(10)).await;
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    tokio::time::timeout(Duration::from_secs(15), stopped)
        .await
        .expect("stops after the drain")
        .expect("task")
        .expect("clean stop");
    let published: Vec<_> = app
        .drain()
        .await
        .iter()
        .map(|m| m.header("x-bandwidth-message-id"))
        .collect();
    assert_eq!(
        published,
        [Some("in-flight".to_string())],
        "exactly the admitted request was published"
    );
}

/// Runs the real binary, posts callbacks concurrently, sends SIGTERM in the middle.
#[tokio::test]
async fn sigterm_under_load_answers_everything_and_exits_0() {
    let exchange = unique("ex");
    let queue = unique("q");
    let _leftovers = crate::common::Leftovers::of(&[&queue], &[&exchange]);
    let forwarder = Forwarder::start(&forwarder_toml(&amqp_uri(), &exchange, &queue, 5_000));
    assert!(
        !forwarder.addr.ends_with(":0"),
        "the log names the real port: {}",
        forwarder.addr
    );
    forwarder.wait_ready().await;
    let client = http_client();

    let url = forwarder.url("/callbacks/bandwidth/messaging");
    // Each request on its own connection, so that none rides a keep-alive connection the
    // server may close between requests; each notes when it started.
    let post = move |i: usize| {
        let client = client.clone();
        let url = url.clone();
        async move {
            let body =
                format!(r#"[{{"type":"message-delivered","message":{{"id":"sigterm-{i}"}}}}]"#);
            let headers = [
                ("content-type", "application/json"),
                ("connection", "close"),
            ];
            let started = Instant::now();
            let outcome = try_send(&client, Method::POST, &url, &headers, Bytes::from(body)).await;
            (i, started, outcome)
        }
    };
    // 16 workers posting back to back, so that requests are in flight whenever the signal
    // lands; each stops once the port is closed to it, or after 40 requests.
    let load = tokio::spawn(async move {
        let workers = (0..16).map(|worker| {
            let post = post.clone();
            async move {
                let mut outcomes = Vec::new();
                for n in 0..40 {
                    let outcome = post(worker * 40 + n).await;
                    let closed = outcome.2.is_err();
                    outcomes.push(outcome);
                    if closed {
                        break;
                    }
                }
                outcomes
            }
        });
        join_all(workers)
            .await
            .into_iter()
            .flatten()
            .collect::<Vec<_>>()
    });
    // One callback admitted before the signal and finished after it: it holds the drain open
    // for half a second, so everything sent before the signal reaches a listening server.
    let held = br#"[{"type":"message-delivered","message":{"id":"held-over"}}]"#;
    let mut slow = TcpStream::connect(&forwarder.addr).await.expect("connect");
    slow.write_all(
        format!(
            "POST /callbacks/bandwidth/messaging HTTP/1.1\r\nhost: x\r\n\
             content-type: application/json\r\ncontent-length: {}\r\n\r\n",
            held.len()
        )
        .as_bytes(),
    )
    .await
    .expect("send the held callback's head");
    slow.write_all(&held[..10]).await.expect("start its body");
    tokio::time::sleep(Duration::from_millis(150)).await;
    let signalled = Instant::now();
    forwarder.signal("TERM");
    tokio::time::sleep(Duration::from_millis(500)).await;
    slow.write_all(&held[10..]).await.expect("finish its body");
    let held_answer = read_until_closed(&mut slow, Duration::from_secs(10)).await;
    assert!(
        held_answer.starts_with("HTTP/1.1 200"),
        "the callback admitted before SIGTERM is published and answered: {held_answer:?}"
    );
    let outcomes = load.await.expect("load task");
    let logs = forwarder.logs();
    assert_eq!(
        forwarder.wait_exit(Duration::from_secs(20)).await,
        Some(0),
        "exit code after SIGTERM; logs:\n{logs}"
    );

    let mut acked = HashSet::from(["held-over".to_string()]);
    for (i, started, outcome) in &outcomes {
        match outcome {
            Ok(answer) if answer.status == StatusCode::OK => {
                acked.insert(format!("sigterm-{i}"));
            }
            Ok(answer) if answer.status == StatusCode::SERVICE_UNAVAILABLE => {
                assert_eq!(answer.error_word(), "shutting_down");
            }
            Ok(answer) => panic!("request {i} got {}", answer.status),
            // Sent before the signal: admitted, or arriving while the drain still accepts
            // connections. Either way it is answered; a server that stops without draining
            // drops these.
            Err(failure) if *started < signalled => {
                panic!("request {i}, sent before SIGTERM, got no answer: {failure:?}")
            }
            // Later ones may find the port closed, or sit in the accept queue as it closes.
            Err(_) => {}
        }
    }
    assert!(
        !acked.is_empty(),
        "some requests were answered before the signal"
    );
    assert!(acked.len() < 640, "the signal landed mid-load");
    let connection = broker().await;
    let channel = connection.create_channel().await.expect("channel");
    let stored = count_ids(&channel, &queue).await;
    let lost: Vec<&String> = acked
        .iter()
        .filter(|id| !stored.contains_key(*id))
        .collect();
    assert!(
        lost.is_empty(),
        "answered 200 but not in the queue: {lost:?}"
    );
}
