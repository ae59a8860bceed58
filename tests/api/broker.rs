//! Broker outcomes: only a confirmed, routed event is ever answered 2xx.

use std::time::{Duration, Instant};

use bandwidth_forwarder::settings::{QueueSettings, Secret};
use bytes::Bytes;
use futures_util::future::join_all;
use hyper::{Method, StatusCode};
use lapin::options::{QueueBindOptions, QueueDeclareOptions, QueueDeleteOptions};
use lapin::types::{AMQPValue, FieldTable, LongString};

use crate::common::{
    Answer, Forwarder, amqp_uri, broker, declare_plain_quorum_queue, drain_queue, forwarder_toml,
    http_client, send, spawn_app, spawn_app_unready, test_settings, unique,
};

fn assert_503_with_retry_after(answer: &Answer, word: &str) {
    assert_eq!(
        answer.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "{:?}",
        answer.body
    );
    assert!(
        answer.headers.contains_key("retry-after"),
        "503 without Retry-After"
    );
    assert_eq!(answer.error_word(), word);
}

/// A queue bound only to `message.#`: other types have no route.
fn settings_routing_only_message_types() -> bandwidth_forwarder::settings::Settings {
    let mut settings = test_settings();
    settings.amqp.queues = vec![QueueSettings {
        name: unique("q").parse().expect("a name"),
        bindings: vec!["message.#".into()],
        max_length: None,
    }];
    settings
}

#[tokio::test]
async fn an_unroutable_event_gets_503_and_the_next_routable_one_2xx() {
    let app = spawn_app(settings_routing_only_message_types()).await;
    let answer = app
        .post_callback(
            r#"[{"type":"message-sent","message":{"id":"ok-1"}},{"type":"nobody-listens"}]"#,
        )
        .await;
    assert_503_with_retry_after(&answer, "unroutable");
    // The routable half may have landed; a retry would carry the same key.
    app.drain().await;
    let answer = app
        .post_callback(r#"[{"type":"message-sent","message":{"id":"ok-2"}}]"#)
        .await;
    assert_eq!(answer.status, StatusCode::OK, "{:?}", answer.body);
    assert_eq!(app.drain().await.len(), 1);
    app.stop().await;
}

/// Waves of concurrent callbacks, a third of them unroutable, some with several events, on
/// `channels` confirm channels of 16 events in flight each: each answer matches its own events' routability exactly (a
/// channel publishes while earlier confirms are out, and the broker acknowledges in bulk), and
/// the queue holds exactly the events of the callbacks answered 200.
async fn unroutable_events_under_load_are_never_answered_2xx(channels: usize) {
    let mut settings = settings_routing_only_message_types();
    settings.amqp.channels = channels;
    // Room for a few callbacks per channel: the first channel fills, and the others take the
    // rest (they take jobs only while the first is full).
    settings.amqp.max_batch_events = 16;
    let app = spawn_app(settings).await;
    let mut expected: Vec<String> = Vec::new();
    for wave in 0..5 {
        let requests = (0..300).map(|i| {
            let id = format!("{wave}-{i}");
            let routable = |n: usize| {
                format!(r#"{{"type":"message-delivered","to":"+1555","message":{{"id":"routable-{id}-{n}"}}}}"#)
            };
            let unroutable = format!(r#"{{"type":"lost-{id}","message":{{"id":"unroutable-{id}"}}}}"#);
            let (events, is_routable) = match i % 6 {
                0 | 3 => (vec![unroutable], false),
                1 => (vec![routable(0), routable(1), routable(2)], true),
                4 => (vec![routable(0), unroutable, routable(1)], false),
                _ => (vec![routable(0)], true),
            };
            let body = format!("[{}]", events.join(","));
            let app = &app;
            async move { (id, events.len(), is_routable, app.post_callback(body).await) }
        });
        for (id, events, is_routable, answer) in join_all(requests).await {
            if is_routable {
                assert_eq!(answer.status, StatusCode::OK, "{id}: {:?}", answer.body);
                expected.extend((0..events).map(|n| format!("routable-{id}-{n}")));
            } else {
                assert_503_with_retry_after(&answer, "unroutable");
            }
        }
    }
    // Each event of a 200 exactly once, in a list (a set would hide a second publish); the
    // routable events of a refused callback may be there too (its retry repeats them).
    let mut ids: Vec<String> = app
        .drain()
        .await
        .iter()
        .map(|m| m.header("x-bandwidth-message-id").expect("id"))
        .filter(|id| !is_from_a_refused_callback(id))
        .collect();
    ids.sort();
    expected.sort();
    assert_eq!(ids, expected);
    app.stop().await;
}

/// Whether a routable event's id belongs to a callback that also held an unroutable event.
fn is_from_a_refused_callback(id: &str) -> bool {
    let index: usize = id
        .trim_start_matches("routable-")
        .split('-')
        .nth(1)
        .and_then(|i| i.parse().ok())
        .expect("an id routable-WAVE-I-N");
    index % 6 == 4
}

#[tokio::test]
async fn unroutable_events_under_load_on_one_channel_are_never_answered_2xx() {
    unroutable_events_under_load_are_never_answered_2xx(1).await;
}

#[tokio::test]
async fn unroutable_events_under_load_on_two_channels_are_never_answered_2xx() {
    unroutable_events_under_load_are_never_answered_2xx(2).await;
}

#[tokio::test]
async fn a_nack_from_the_broker_gets_503() {
    let mut settings = test_settings();
    let queue = unique("bounded");
    settings.amqp.queues = vec![];
    let app = spawn_app(settings).await;
    // A queue that refuses a second message: the broker nacks the publish.
    let mut args = FieldTable::default();
    args.insert("x-max-length".into(), AMQPValue::LongLongInt(1));
    args.insert(
        "x-overflow".into(),
        AMQPValue::LongString(LongString::from("reject-publish")),
    );
    app.channel
        .queue_declare(
            queue.as_str().into(),
            QueueDeclareOptions {
                durable: true,
                ..Default::default()
            },
            args,
        )
        .await
        .expect("declare bounded queue");
    app.channel
        .queue_bind(
            queue.as_str().into(),
            app.settings.amqp.exchange.as_str().into(),
            "#".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect("bind");
    let first = app
        .post_callback(r#"{"type":"message-sent","message":{"id":"1"}}"#)
        .await;
    assert_eq!(first.status, StatusCode::OK, "{:?}", first.body);
    let second = app
        .post_callback(r#"{"type":"message-sent","message":{"id":"2"}}"#)
        .await;
    assert_503_with_retry_after(&second, "nack");
    app.channel
        .queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
        .await
        .expect("delete bounded queue");
    app.stop().await;
}

#[tokio::test]
async fn an_unreachable_broker_means_503_not_2xx_and_the_service_stays_up() {
    let mut settings = test_settings();
    settings.amqp.uri = Secret::new("amqp://guest:guest@127.0.0.1:1/%2f");
    let app = spawn_app_unready(settings).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(app.get("/healthz").await.status, StatusCode::OK);
    let ready = app.get("/readyz").await;
    assert_eq!(ready.status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(ready.headers.contains_key("retry-after"));
    let started = Instant::now();
    let answer = app.post_callback(r#"[{"type":"message-sent"}]"#).await;
    assert!(started.elapsed() < app.settings.amqp.publish_timeout);
    assert_503_with_retry_after(&answer, "broker_unavailable");
    let metrics = app.get("/metrics").await;
    let metrics = String::from_utf8_lossy(&metrics.body);
    assert!(
        metrics.contains("bandwidth_forwarder_broker_connected 0"),
        "{metrics}"
    );
    assert!(
        metrics.contains(
            "bandwidth_forwarder_publish_failures_total{reason=\"broker_unavailable\"} 1"
        ),
        "{metrics}"
    );
    app.stop().await;
}

#[tokio::test]
async fn it_fails_over_to_the_next_uri_that_answers() {
    let mut settings = test_settings();
    settings.amqp.uri = Secret::new(format!(
        "amqp://guest:guest@127.0.0.1:1/%2f, {}",
        amqp_uri()
    ));
    let app = spawn_app(settings).await;
    let answer = app.post_callback(r#"[{"type":"message-sent"}]"#).await;
    assert_eq!(answer.status, StatusCode::OK, "{:?}", answer.body);
    assert_eq!(app.drain().await.len(), 1);
    app.stop().await;
}

#[tokio::test]
async fn a_deleted_exchange_is_declared_again_after_one_503() {
    let app = spawn_app(test_settings()).await;
    app.channel
        .exchange_delete(
            app.settings.amqp.exchange.as_str().into(),
            Default::default(),
        )
        .await
        .expect("delete the exchange under the forwarder");
    let answer = app.post_callback(r#"[{"type":"message-sent"}]"#).await;
    assert_503_with_retry_after(&answer, "channel_closed");
    // The broker's words (`NOT_FOUND - no exchange …`) are for the log, not the caller.
    assert_eq!(
        answer.json()["detail"],
        "the broker channel closed before every confirm; retry",
        "{:?}",
        answer.body
    );
    // The exchange and binding are declared again without further callbacks: once /readyz
    // says so, the very next callback is published.
    let recovered = crate::common::ready_within(
        &http_client(),
        &format!("http://{}/readyz", app.addr),
        Duration::from_secs(5),
    )
    .await;
    assert!(recovered, "exchange and binding declared again");
    let answer = app.post_callback(r#"[{"type":"message-sent"}]"#).await;
    assert_eq!(answer.status, StatusCode::OK, "{:?}", answer.body);
    assert_eq!(app.drain().await.len(), 1);
    app.stop().await;
}

#[tokio::test]
async fn a_bounded_archive_queue_keeps_the_newest_events_and_never_refuses_a_publish() {
    let mut settings = test_settings();
    settings.amqp.queues[0].max_length = Some(3);
    let app = spawn_app(settings).await;
    for i in 0..5 {
        let answer = app
            .post_callback(format!(
                r#"[{{"type":"message-sent","message":{{"id":"archive-{i}"}}}}]"#
            ))
            .await;
        assert_eq!(answer.status, StatusCode::OK, "{:?}", answer.body);
    }
    let kept: Vec<_> = app
        .drain()
        .await
        .iter()
        .filter_map(|m| m.header("x-bandwidth-message-id"))
        .collect();
    assert_eq!(kept, ["archive-2", "archive-3", "archive-4"]);
    app.stop().await;
}

#[tokio::test]
async fn a_queue_that_exists_with_other_arguments_is_named_in_a_warning_and_publishing_goes_on() {
    let (exchange, queue) = (unique("ex"), unique("q"));
    let _leftovers = crate::common::Leftovers::of(&[&queue], &[&exchange]);
    let channel = broker().await.create_channel().await.expect("channel");
    // As an older version declared it: unbounded.
    declare_plain_quorum_queue(&channel, &queue).await;
    let toml = forwarder_toml(&amqp_uri(), &exchange, &queue, 3_000);
    let forwarder = Forwarder::start(&format!("{toml}max_length = 3\n"));
    forwarder.wait_ready().await;
    let answer = send(
        &http_client(),
        Method::POST,
        &forwarder.url("/callbacks/bandwidth/messaging"),
        &[("content-type", "application/json")],
        Bytes::from_static(br#"[{"type":"message-sent"}]"#),
    )
    .await
    .expect("an answer");
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(drain_queue(&channel, &queue).await.len(), 1);
    let logs = forwarder.logs();
    assert!(
        logs.contains("inequivalent arg 'x-max-length'"),
        "the warning names the argument:\n{logs}"
    );
    assert!(logs.contains("is used as it is"), "{logs}");
    assert!(logs.contains("declaring a bounded archive queue"), "{logs}");
    forwarder.signal("TERM");
    assert_eq!(forwarder.wait_exit(Duration::from_secs(20)).await, Some(0));
}
