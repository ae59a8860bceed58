//! `deploy/haproxy/haproxy.cfg` for real: two forwarder processes behind haproxy running the
//! shipped file (only addresses rewritten). Callbacks spread over both; a replica that is
//! SIGTERMed leaves rotation through `/readyz` while every callback still gets 2xx; restarted,
//! it is used again.

use std::process::Command;
use std::time::{Duration, Instant};

use bytes::Bytes;
use hyper::{Method, StatusCode};
use tokio::io::AsyncWriteExt;

use crate::common::{
    Forwarder, Haproxy, HttpClient, READY_WITHIN, amqp_uri, broker, count_ids, forwarder_toml,
    free_port, http_client, metric, ready_within, send, unique,
};

const DELIVERED: &str = "bandwidth_forwarder_events_published_total{type=\"message-delivered\"}";

/// Events this replica has published, from its own `/metrics`.
async fn published_by(client: &HttpClient, replica: &Forwarder) -> f64 {
    let answer = send(
        client,
        Method::GET,
        &replica.url("/metrics"),
        &[],
        Bytes::new(),
    )
    .await
    .expect("metrics");
    metric(&String::from_utf8_lossy(&answer.body), DELIVERED).unwrap_or(0.0)
}

/// Posts the callback `id` through the balancer; its status, `None` when nothing answered.
async fn post(client: &HttpClient, balancer: &Haproxy, id: &str) -> Option<StatusCode> {
    let body = format!(r#"[{{"type":"message-delivered","message":{{"id":"{id}"}}}}]"#);
    send(
        client,
        Method::POST,
        &format!("{}/callbacks/bandwidth/messaging", balancer.url),
        &[("content-type", "application/json")],
        Bytes::from(body),
    )
    .await
    .map(|answer| answer.status)
}

#[test]
fn the_shipped_haproxy_config_is_valid() {
    let output = Command::new("haproxy")
        .args([
            "-c",
            "-f",
            concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/haproxy/haproxy.cfg"),
        ])
        .output()
        .expect("haproxy (apt-get install haproxy; scripts/test installs it)");
    assert!(
        output.status.success(),
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

#[tokio::test]
async fn replicas_behind_the_shipped_balancer_share_callbacks_drain_out_of_rotation_and_return() {
    let (exchange, queue) = (unique("ex"), unique("q"));
    let _leftovers = crate::common::Leftovers::of(&[&queue], &[&exchange]);
    let ports = [free_port(), free_port()];
    // A body that never arrives is cut after 3 s: the length of the drain below.
    let toml = |port: u16| {
        forwarder_toml(&amqp_uri(), &exchange, &queue, 3_000).replace(
            "listen = \"127.0.0.1:0\"",
            &format!("listen = \"127.0.0.1:{port}\"\nbody_read_timeout_ms = 3000"),
        )
    };
    let first = Forwarder::start(&toml(ports[0]));
    let second = Forwarder::start(&toml(ports[1]));
    first.wait_ready().await;
    second.wait_ready().await;
    let backends: Vec<String> = ports.iter().map(|p| format!("127.0.0.1:{p}")).collect();
    let balancer = Haproxy::start(&[&backends[0], &backends[1]]);
    let client = http_client();
    // haproxy listens, and passes /readyz to a replica it has checked.
    assert!(
        ready_within(&client, &format!("{}/readyz", balancer.url), READY_WITHIN).await,
        "haproxy never passed a request to a ready replica"
    );
    let mut answered = Vec::new();
    let mut next = 0;
    let mut send_one = async |answered: &mut Vec<(String, Option<StatusCode>)>| {
        let id = format!("lb-{next}");
        next += 1;
        let status = post(&client, &balancer, &id).await;
        answered.push((id, status));
    };

    // Both replicas take callbacks once haproxy's checks pass.
    let deadline = Instant::now() + Duration::from_secs(10);
    while published_by(&client, &first).await == 0.0 || published_by(&client, &second).await == 0.0
    {
        assert!(
            Instant::now() < deadline,
            "callbacks never reached both: {answered:?}"
        );
        send_one(&mut answered).await;
    }
    for _ in 0..20 {
        send_one(&mut answered).await;
    }
    let (a, b) = (
        published_by(&client, &first).await,
        published_by(&client, &second).await,
    );
    assert!(a >= 5.0 && b >= 5.0, "round robin spreads them: {a} / {b}");

    // SIGTERM one while it handles a callback whose body is still coming: it drains for 3 s,
    // answering readyz and new callbacks 503. haproxy sends those 503s to the other replica and
    // takes the draining one out of rotation at its next check.
    let mut slow = tokio::net::TcpStream::connect(&backends[0])
        .await
        .expect("connect to the first replica");
    slow.write_all(
        b"POST /callbacks/bandwidth/messaging HTTP/1.1\r\nhost: x\r\n\
          content-type: application/json\r\ncontent-length: 100\r\n\r\n[{",
    )
    .await
    .expect("start a slow callback");
    tokio::time::sleep(Duration::from_millis(200)).await;
    first.signal("TERM");
    let draining = Instant::now();
    let before = answered.len();
    while draining.elapsed() < Duration::from_millis(2_500) {
        send_one(&mut answered).await;
    }
    let during_drain = answered.len() - before;
    let refused_while_draining = first.logs().matches(r#""error":"shutting_down""#).count();
    assert!(
        refused_while_draining * 4 < during_drain,
        "the draining replica kept getting callbacks: {refused_while_draining} of {during_drain}"
    );
    assert_eq!(first.wait_exit(Duration::from_secs(20)).await, Some(0));
    drop(slow);
    for _ in 0..20 {
        send_one(&mut answered).await;
    }

    // Restarted on its address, it is health-checked back into rotation.
    let first = Forwarder::start(&toml(ports[0]));
    let deadline = Instant::now() + Duration::from_secs(10);
    while published_by(&client, &first).await == 0.0 {
        assert!(
            Instant::now() < deadline,
            "the restarted replica was never used again"
        );
        send_one(&mut answered).await;
    }

    let failed: Vec<_> = answered
        .iter()
        .filter(|(_, status)| *status != Some(StatusCode::OK))
        .collect();
    assert!(
        failed.is_empty(),
        "{} of {} not 2xx: {failed:?}",
        failed.len(),
        answered.len()
    );
    let channel = broker().await.create_channel().await.expect("channel");
    let stored = count_ids(&channel, &queue).await;
    for (id, _) in &answered {
        assert!(
            stored.contains_key(id),
            "{id} answered 200 but not in the queue"
        );
    }
    drop((first, second, balancer));
}
