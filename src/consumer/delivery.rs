//! One delivery: skipped as a duplicate, or handed to the handler and acknowledged once it
//! finished; a failure goes back to the queue after a pause, until the broker dead-letters it.

use std::sync::Arc;
use std::time::{Duration, Instant};

use lapin::message::Delivery;
use lapin::options::{BasicAckOptions, BasicNackOptions};
use lapin::types::{AMQPValue, FieldTable, ShortString};
use tokio::sync::OwnedSemaphorePermit;
use tracing::{info, warn};

use super::State;
use super::handler;
use super::probes::Outcome;

/// First pause before a failed event is returned to the queue; doubles per attempt.
const RETRY_BACKOFF: Duration = Duration::from_secs(1);
/// Longest pause before a failed event is returned. Short, because with `--concurrency 1`
/// the events behind a failing one wait for it.
const RETRY_BACKOFF_MAX: Duration = Duration::from_secs(8);
/// Runs the handler for one delivery (unless its key was handled already) and acks it once
/// the handler finished; a failure is returned to the queue after a short backoff, and the
/// broker dead-letters it once its attempts are used up.
pub(super) async fn handle(delivery: Delivery, state: Arc<State>, _permit: OwnedSemaphorePermit) {
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
            warn!(
                dedup_key,
                request_id,
                kind,
                attempt,
                outcome = outcome.word(),
                %error,
                duration_ms = duration_ms(),
                "delivery failed"
            );
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
