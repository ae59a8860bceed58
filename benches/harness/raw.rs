//! (a): lapin alone, publishing what the forwarder publishes.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Instant;

use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{BasicProperties, Confirmation, Connection};

use crate::EVENT;
use crate::cell::Cell;
use crate::load::measure_window;
use crate::system::broker_pid;

/// (a): C publishers sharing one confirm channel, each awaiting its confirm, through the same
/// topic exchange and binding the forwarder uses.
pub async fn raw(
    connection: &Connection,
    exchange: &str,
    concurrency: usize,
    seconds: u64,
    lean: bool,
) -> Cell {
    let channel = Arc::new(connection.create_channel().await.expect("channel"));
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .expect("confirms");
    let measuring = Arc::new(AtomicBool::new(false));
    let stop = Arc::new(AtomicBool::new(false));
    let counter = Arc::new(AtomicU64::new(0));
    let tasks: Vec<_> = (0..concurrency)
        .map(|_| {
            let channel = channel.clone();
            let exchange = ShortString::from(exchange);
            let (measuring, stop, counter) = (measuring.clone(), stop.clone(), counter.clone());
            tokio::spawn(async move {
                let mut latencies = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    let id = format!("raw-{}", counter.fetch_add(1, Ordering::Relaxed));
                    let body = EVENT.replace("{ID}", &id);
                    let started = Instant::now();
                    let confirm = channel
                        .basic_publish(
                            exchange.clone(),
                            "message.delivered".into(),
                            BasicPublishOptions {
                                mandatory: true,
                                ..BasicPublishOptions::default()
                            },
                            body.as_bytes(),
                            properties(&id, lean),
                        )
                        .await
                        .expect("publish");
                    let confirmation = confirm.await.expect("confirm");
                    assert!(
                        matches!(confirmation, Confirmation::Ack(None)),
                        "{confirmation:?}"
                    );
                    if measuring.load(Ordering::Relaxed) {
                        latencies.push(started.elapsed().as_micros() as u64);
                    }
                }
                latencies
            })
        })
        .collect();
    let pids = [Some("self".to_owned()), broker_pid()];
    let window = measure_window(&measuring, &stop, seconds, &pids).await;
    let mut latencies = Vec::new();
    for task in tasks {
        latencies.extend(task.await.expect("publisher"));
    }
    let _ = channel.close(200, "done".into()).await;
    latencies.sort_unstable();
    Cell {
        mode: if lean {
            "(a) raw lapin, 1 channel, lean message".into()
        } else {
            "(a) raw lapin, 1 channel".into()
        },
        concurrency,
        requests: latencies.len() as u64,
        events: latencies.len() as u64,
        seconds: window.seconds,
        latencies_us: latencies,
        peak_rss_kb: None,
        cpu_seconds: window.cpu[0],
        broker_cpu_seconds: window.cpu[1],
        load_generator_cpu_seconds: None,
        threads: None,
    }
}

/// The forwarder's AMQP properties, so (a) carries the same bytes on the wire; `lean` keeps only
/// `delivery_mode`, `content_type`, `message_id`, `type`, `correlation_id` and the dedup header.
pub fn properties(id: &str, lean: bool) -> BasicProperties {
    if lean {
        let mut headers = FieldTable::default();
        headers.insert(
            "x-deduplication-header".into(),
            AMQPValue::LongString(LongString::from("0".repeat(64))),
        );
        return BasicProperties::default()
            .with_delivery_mode(2)
            .with_content_type("application/json".into())
            .with_message_id("0".repeat(64).into())
            .with_type("message-delivered".into())
            .with_correlation_id("0123456789abcdef".into())
            .with_headers(headers);
    }
    let mut headers = FieldTable::default();
    for (name, value) in [
        ("x-deduplication-header", "0".repeat(64)),
        ("x-bandwidth-event-type", "message-delivered".into()),
        ("x-bandwidth-message-id", id.to_owned()),
        ("x-bandwidth-event-time", "2026-03-10T14:07:45.120Z".into()),
        ("x-received-at", "2026-03-10T14:07:45.121Z".into()),
    ] {
        headers.insert(name.into(), AMQPValue::LongString(LongString::from(value)));
    }
    BasicProperties::default()
        .with_delivery_mode(2)
        .with_content_type("application/json".into())
        .with_message_id("0".repeat(64).into())
        .with_type("message-delivered".into())
        .with_timestamp(0)
        .with_app_id("bandwidth-forwarder".into())
        .with_correlation_id("0123456789abcdef".into())
        .with_headers(headers)
}
