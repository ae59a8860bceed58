//! `consume`: one backend's own queue, its handler run for every event, acknowledged only
//! after the handler finished; failures retried and then dead-lettered; duplicates skipped.

mod handler;
mod probes;
mod replay;
mod topology;
mod window;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use futures_util::StreamExt;
use lapin::message::Delivery;
use lapin::options::{
    BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicNackOptions, BasicQosOptions,
};
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::{Channel, Connection};
use tokio::sync::{Mutex, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

pub use handler::{Handler, compact_json};
pub use replay::replay;
pub use topology::{ConsumerTopology, dead_letter_queue};

use crate::amqp::{Backoff, connect};
use crate::settings::Settings;
use probes::{ConsumerMetrics, Outcome};
use window::Window;

/// First pause before a failed event is returned to the queue; doubles per attempt.
const RETRY_BACKOFF: Duration = Duration::from_secs(1);
/// Longest pause before a failed event is returned. Short, because with `--concurrency 1`
/// the events behind a failing one wait for it.
const RETRY_BACKOFF_MAX: Duration = Duration::from_secs(8);
/// How long running handlers get to finish after shutdown or a lost connection, beyond
/// their own timeout.
const HANDLER_GRACE: Duration = Duration::from_secs(5);
/// Longest wait for the broker to acknowledge a close.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(3);

/// What `consume` was asked to do.
pub struct ConsumeOptions {
    pub queue: String,
    pub bindings: Vec<String>,
    pub exec: Option<String>,
    pub prefetch: u16,
    pub concurrency: usize,
    pub max_attempts: u32,
    pub handler_timeout: Duration,
    /// Handled keys remembered for duplicate detection, at most.
    pub window_entries: usize,
    /// How long a handled key is remembered.
    pub window_age: Duration,
    /// Where to serve `/healthz`, `/readyz` and `/metrics`, if anywhere.
    pub listen: Option<SocketAddr>,
}

/// Shared by every handler task.
struct State {
    options: ConsumeOptions,
    handler: Handler,
    window: Mutex<Window>,
    metrics: Arc<ConsumerMetrics>,
    /// True while deliveries are being taken (what `/readyz` reports).
    consuming: Arc<AtomicBool>,
    /// The probes' address, for the `consuming` log line.
    probes: Option<SocketAddr>,
}

/// Builds a runtime and consumes until SIGTERM/SIGINT.
pub fn consume(settings: Settings, options: ConsumeOptions) -> anyhow::Result<()> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?
        .block_on(run(settings, options, crate::shutdown::signal()))
}

/// Declares the topology and consumes, reconnecting (with failover across `amqp.uri`) until
/// `shutdown` resolves. An existing queue with other arguments is an error, not a retry.
pub async fn run(
    settings: Settings,
    options: ConsumeOptions,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let stop = CancellationToken::new();
    tokio::spawn({
        let stop = stop.clone();
        async move {
            shutdown.await;
            info!("shutdown requested: finishing running handlers");
            stop.cancel();
        }
    });
    let handler = match &options.exec {
        Some(command) => Handler::Exec {
            command: command.clone(),
            timeout: options.handler_timeout,
        },
        None => Handler::stdout(),
    };
    let metrics = Arc::new(ConsumerMetrics::default());
    let consuming = Arc::new(AtomicBool::new(false));
    let probes = match options.listen {
        Some(addr) => {
            let listener = tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("binding --listen {addr}"))?;
            let bound = listener.local_addr()?;
            tokio::spawn(probes::serve(listener, consuming.clone(), metrics.clone()));
            Some(bound)
        }
        None => None,
    };
    let state = Arc::new(State {
        window: Mutex::new(Window::new(options.window_entries, options.window_age)),
        handler,
        options,
        metrics,
        consuming,
        probes,
    });
    let topology = ConsumerTopology {
        exchange: &settings.amqp.exchange,
        queue: &state.options.queue,
        bindings: &state.options.bindings,
        max_attempts: state.options.max_attempts,
    };
    let uris = settings.amqp.uris();
    let mut backoff = Backoff::new(&settings.amqp);
    let mut next_uri = 0;
    loop {
        let connected = connect(
            &uris,
            next_uri,
            &settings.amqp,
            &stop,
            &topology,
            &mut backoff,
        )
        .await
        .map_err(anyhow::Error::msg)?;
        let Some((connection, index)) = connected else {
            break;
        };
        let lost = consume_on(&connection, &state, &stop).await;
        let _ = tokio::time::timeout(CLOSE_TIMEOUT, connection.close(200, "done".into())).await;
        if !lost {
            break;
        }
        warn!("broker connection lost, reconnecting");
        next_uri = (index + 1) % uris.len();
    }
    info!("stopped");
    Ok(())
}

/// Consumes on one connection until `stop` (false) or until the connection or channel is
/// lost (true); either way running handlers finish first.
async fn consume_on(connection: &Connection, state: &Arc<State>, stop: &CancellationToken) -> bool {
    let options = &state.options;
    let channel = match open_consumer_channel(connection, options).await {
        Ok(channel) => channel,
        Err(error) => {
            warn!(%error, "starting the consumer failed");
            return true;
        }
    };
    let tag = ShortString::from(format!("bandwidth-forwarder-{:016x}", fastrand::u64(..)));
    let mut consumer = match channel
        .basic_consume(
            ShortString::from(options.queue.as_str()),
            tag.clone(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
    {
        Ok(consumer) => consumer,
        Err(error) => {
            warn!(%error, "starting the consumer failed");
            return true;
        }
    };
    state.consuming.store(true, Ordering::SeqCst);
    info!(
        queue = %options.queue,
        bindings = ?options.bindings,
        listen = state.probes.map(|addr| addr.to_string()),
        "consuming"
    );
    let permits = Arc::new(Semaphore::new(options.concurrency));
    let mut running = JoinSet::new();
    let lost = loop {
        let next = tokio::select! {
            biased;
            _ = stop.cancelled() => break false,
            next = consumer.next() => next,
        };
        let delivery = match next {
            Some(Ok(delivery)) => delivery,
            Some(Err(error)) => {
                warn!(%error, "consumer failed");
                break true;
            }
            None => break true,
        };
        let permit = tokio::select! {
            biased;
            _ = stop.cancelled() => {
                // Received but not started: back to the queue for another consumer.
                let _ = delivery.nack(BasicNackOptions { requeue: true, ..BasicNackOptions::default() }).await;
                break false;
            }
            permit = permits.clone().acquire_owned() => permit.expect("the semaphore is never closed"),
        };
        running.spawn(handle(delivery, state.clone(), permit));
        while running.try_join_next().is_some() {}
    };
    state.consuming.store(false, Ordering::SeqCst);
    if !lost {
        let _ = channel
            .basic_cancel(tag, BasicCancelOptions::default())
            .await;
    }
    let finished = tokio::time::timeout(options.handler_timeout + HANDLER_GRACE, async {
        while running.join_next().await.is_some() {}
    })
    .await;
    if finished.is_err() {
        warn!("handlers still running at the deadline; their events will be redelivered");
    }
    // Whatever was prefetched and not acknowledged goes back to the queue with the channel.
    let _ = tokio::time::timeout(CLOSE_TIMEOUT, channel.close(200, "done".into())).await;
    lost
}

async fn open_consumer_channel(
    connection: &Connection,
    options: &ConsumeOptions,
) -> lapin::Result<Channel> {
    let channel = connection.create_channel().await?;
    channel
        .basic_qos(options.prefetch, BasicQosOptions::default())
        .await?;
    Ok(channel)
}

/// Runs the handler for one delivery (unless its key was handled already) and acks it once
/// the handler finished; a failure is returned to the queue after a short backoff, and the
/// broker dead-letters it once its attempts are used up.
async fn handle(delivery: Delivery, state: Arc<State>, _permit: OwnedSemaphorePermit) {
    let started = Instant::now();
    let properties = &delivery.properties;
    let headers = properties.headers().as_ref();
    let dedup_key = short(properties.message_id().as_ref());
    let request_id = short(properties.correlation_id().as_ref());
    let kind = short(properties.kind().as_ref());
    let message_id = header_text(headers, "x-bandwidth-message-id").unwrap_or_default();
    let routing_key = delivery.routing_key.as_str();
    let attempt = header_number(headers, "x-delivery-count").map_or(1, |count| count + 1);
    let duration_ms = || started.elapsed().as_secs_f64() * 1000.0;
    // Counts and logs a delivery that ended acknowledged (never with its body).
    let settled = |outcome: Outcome, acked: bool| {
        state.metrics.delivery(outcome);
        info!(
            dedup_key,
            request_id,
            kind,
            attempt,
            outcome = outcome.word(),
            acked,
            duration_ms = duration_ms(),
            "delivery settled"
        );
    };

    if !dedup_key.is_empty()
        && state
            .window
            .lock()
            .await
            .contains(dedup_key, Instant::now())
    {
        let acked = delivery.ack(BasicAckOptions::default()).await.is_ok();
        settled(Outcome::Duplicate, acked);
        return;
    }
    let event = handler::Event {
        body: &delivery.data,
        kind,
        message_id: &message_id,
        dedup_key,
        routing_key,
        attempt,
    };
    let ran = state.handler.run(&event).await;
    state
        .metrics
        .handler_duration
        .observe(started.elapsed().as_secs_f64());
    match ran {
        Ok(()) => {
            if !dedup_key.is_empty() {
                state
                    .window
                    .lock()
                    .await
                    .remember(dedup_key, Instant::now());
            }
            let acked = delivery.ack(BasicAckOptions::default()).await.is_ok();
            settled(Outcome::Handled, acked);
        }
        Err(error) => {
            let last = attempt >= state.options.max_attempts;
            let outcome = if last {
                Outcome::DeadLettered
            } else {
                Outcome::Failed
            };
            state.metrics.delivery(outcome);
            warn!(dedup_key, request_id, kind, attempt, outcome = outcome.word(), %error, duration_ms = duration_ms(), "delivery failed");
            if !last {
                tokio::time::sleep(retry_backoff(attempt)).await;
            }
            let _ = delivery
                .nack(BasicNackOptions {
                    requeue: true,
                    ..BasicNackOptions::default()
                })
                .await;
        }
    }
}

/// The pause before attempt `attempt + 1`.
fn retry_backoff(attempt: u32) -> Duration {
    RETRY_BACKOFF
        .saturating_mul(1 << attempt.saturating_sub(1).min(16))
        .min(RETRY_BACKOFF_MAX)
}

fn short(value: Option<&ShortString>) -> &str {
    value.map(ShortString::as_str).unwrap_or_default()
}

fn header_text(headers: Option<&FieldTable>, name: &str) -> Option<String> {
    match headers?.inner().get(&ShortString::from(name))? {
        AMQPValue::LongString(text) => Some(String::from_utf8_lossy(text.as_bytes()).into_owned()),
        AMQPValue::ShortString(text) => Some(text.to_string()),
        _ => None,
    }
}

/// A numeric header (the broker picks the integer width).
fn header_number(headers: Option<&FieldTable>, name: &str) -> Option<u32> {
    let value = match headers?.inner().get(&ShortString::from(name))? {
        AMQPValue::ShortShortInt(n) => i64::from(*n),
        AMQPValue::ShortShortUInt(n) => i64::from(*n),
        AMQPValue::ShortInt(n) => i64::from(*n),
        AMQPValue::ShortUInt(n) => i64::from(*n),
        AMQPValue::LongInt(n) => i64::from(*n),
        AMQPValue::LongUInt(n) => i64::from(*n),
        AMQPValue::LongLongInt(n) => *n,
        _ => return None,
    };
    u32::try_from(value).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retries_back_off_doubling_up_to_the_cap() {
        let pauses: Vec<u64> = (1..=6).map(|a| retry_backoff(a).as_secs()).collect();
        assert_eq!(pauses, [1, 2, 4, 8, 8, 8]);
        assert_eq!(retry_backoff(u32::MAX), RETRY_BACKOFF_MAX);
    }
}
