//! One batch on one confirm channel (group commit): publish every event of the queued jobs,
//! await every confirm, attribute each `basic.return` to its job by `message_id`, answer each
//! job. A channel carries one batch at a time, so every return it receives belongs to this batch.

use std::collections::HashSet;

use futures_util::future::join_all;
use lapin::options::BasicPublishOptions;
use lapin::{Channel, Confirmation};
use tokio::time::Instant;
use tracing::{debug, warn};

use super::job::{Job, PublishError};
use super::message::{properties, routing_key};
use super::state::Shared;
use super::worker::WorkerConfig;

/// Publishes every event of `batch`, awaits all confirms and answers every job.
/// Returns false when the channel must be replaced.
pub(super) async fn publish_batch(
    config: &WorkerConfig,
    shared: &Shared,
    channel: &Channel,
    batch: Vec<Job>,
) -> bool {
    let now = Instant::now();
    let (live, expired): (Vec<Job>, Vec<Job>) = batch
        .into_iter()
        .partition(|job| job.deadline > now && !job.reply.is_closed());
    for job in expired {
        reply(job, Err(PublishError::Timeout));
    }
    let Some(deadline) = live.iter().map(|job| job.deadline).min() else {
        return true;
    };
    let started = Instant::now();
    let mut publishes = Vec::with_capacity(live.iter().map(|job| job.events.len()).sum());
    for job in &live {
        for event in &job.events {
            publishes.push(channel.basic_publish(
                config.exchange.clone(),
                routing_key(event),
                BasicPublishOptions {
                    mandatory: true,
                    ..BasicPublishOptions::default()
                },
                &event.body,
                properties(event, &job.received),
            ));
        }
    }
    let confirmations = tokio::time::timeout_at(deadline, async {
        let sent = join_all(publishes).await;
        join_all(sent.into_iter().map(|confirm| async move {
            match confirm {
                Ok(confirm) => confirm.await,
                Err(error) => Err(error),
            }
        }))
        .await
    })
    .await;
    let Ok(confirmations) = confirmations else {
        debug!(
            worker = config.id,
            "confirms timed out, replacing the channel"
        );
        for job in live {
            reply(job, Err(PublishError::Timeout));
        }
        return false;
    };
    let elapsed = started.elapsed().as_secs_f64();
    let outcome = attribute(&live, confirmations);
    if !outcome.channel_healthy {
        // Once per request of the batch, in its span: the warning carries its request id.
        for job in &live {
            job.span.in_scope(|| {
                warn!(
                    worker = config.id,
                    "channel failed during a batch, replacing it"
                )
            });
        }
    }
    for (kind, count) in confirmed_by_type(&live, &outcome.results) {
        shared.metrics.published(kind, count);
    }
    for (job, result) in live.into_iter().zip(outcome.results) {
        if result.is_ok() {
            shared.metrics.confirm_latency.observe(elapsed);
        }
        reply(job, result);
    }
    if !outcome.channel_healthy {
        shared.link.topology_lost();
    }
    outcome.channel_healthy && channel.status().connected()
}

/// Each job's result, and whether the channel can carry another batch.
struct Outcome {
    results: Vec<Result<(), PublishError>>,
    channel_healthy: bool,
}

/// Turns the batch's confirms (in publish order) into one result per job. A returned message
/// fails every job that holds its `message_id`, whichever confirm lapin attached it to.
fn attribute(jobs: &[Job], confirmations: Vec<lapin::Result<Confirmation>>) -> Outcome {
    let mut results: Vec<Result<(), PublishError>> = vec![Ok(()); jobs.len()];
    let mut returned: HashSet<String> = HashSet::new();
    let mut channel_healthy = true;
    let owners = jobs
        .iter()
        .enumerate()
        .flat_map(|(index, job)| std::iter::repeat_n(index, job.events.len()));
    for (owner, confirmation) in owners.zip(confirmations) {
        let failure = match confirmation {
            Ok(Confirmation::Ack(None)) => None,
            Ok(Confirmation::Ack(Some(message))) => {
                returned.insert(returned_id(&message));
                None
            }
            Ok(Confirmation::Nack(message)) => {
                if let Some(message) = message {
                    returned.insert(returned_id(&message));
                }
                Some(PublishError::Nacked)
            }
            Ok(Confirmation::NotRequested) => {
                channel_healthy = false;
                Some(PublishError::ChannelClosed(
                    "confirms are not enabled".into(),
                ))
            }
            Err(error) => {
                channel_healthy = false;
                Some(PublishError::ChannelClosed(error.to_string()))
            }
        };
        if let (Some(failure), Ok(())) = (failure, &results[owner]) {
            results[owner] = Err(failure);
        }
    }
    for id in &returned {
        let mut owned = false;
        for (index, job) in jobs.iter().enumerate() {
            if job.events.iter().any(|event| &event.dedup_key == id) {
                owned = true;
                results[index] = Err(PublishError::Unroutable);
            }
        }
        if !owned {
            // A return that belongs to no job of this batch: attribution can no longer be
            // trusted, so nothing in the batch is acknowledged.
            warn!(message_id = %id, "returned message matches no event of the batch");
            channel_healthy = false;
            results
                .iter_mut()
                .for_each(|r| *r = Err(PublishError::Unroutable));
        }
    }
    Outcome {
        results,
        channel_healthy,
    }
}

/// How many events of each type the batch's successful jobs hold (a batch has few types).
fn confirmed_by_type<'a>(
    jobs: &'a [Job],
    results: &[Result<(), PublishError>],
) -> Vec<(&'a str, u64)> {
    let mut counts: Vec<(&str, u64)> = Vec::new();
    let confirmed = jobs
        .iter()
        .zip(results)
        .filter(|(_, result)| result.is_ok());
    for event in confirmed.flat_map(|(job, _)| &job.events) {
        match counts.iter_mut().find(|(kind, _)| *kind == event.kind) {
            Some((_, count)) => *count += 1,
            None => counts.push((&event.kind, 1)),
        }
    }
    counts
}

fn returned_id(message: &lapin::message::BasicReturnMessage) -> String {
    message
        .properties
        .message_id()
        .as_ref()
        .map(|id| id.as_str().to_owned())
        .unwrap_or_default()
}

pub(super) fn reply(job: Job, result: Result<(), PublishError>) {
    // The requester may have timed out and gone; its answer was already a 503.
    let _ = job.reply.send(result);
}

#[cfg(test)]
mod tests {
    use super::super::job::Received;
    use super::*;
    use crate::event::Event;
    use lapin::BasicProperties;
    use lapin::message::{BasicReturnMessage, Delivery};

    fn job(keys: &[&str]) -> Job {
        let events = keys
            .iter()
            .map(|key| Event {
                body: bytes::Bytes::from_static(b"{}"),
                kind: "t".into(),
                routing_key: "t".into(),
                dedup_key: (*key).into(),
                message_id: None,
                time: None,
            })
            .collect();
        Job {
            events,
            received: Received::now("test"),
            deadline: Instant::now(),
            span: tracing::Span::none(),
            reply: tokio::sync::oneshot::channel().0,
        }
    }

    fn returned(key: &str) -> BasicReturnMessage {
        let mut delivery = Delivery::mock(0, "ex".into(), "t".into(), false, Vec::new());
        delivery.properties = BasicProperties::default().with_message_id(key.into());
        BasicReturnMessage {
            delivery,
            reply_code: 312,
            reply_text: "NO_ROUTE".into(),
        }
    }

    #[test]
    fn a_return_attached_to_another_jobs_confirm_fails_its_own_job() {
        let jobs = [job(&["a1", "a2"]), job(&["b1"])];
        // lapin handed b1's return to a1's confirm: a must still succeed, b must fail.
        let confirmations = vec![
            Ok(Confirmation::Ack(Some(returned("b1")))),
            Ok(Confirmation::Ack(None)),
            Ok(Confirmation::Ack(None)),
        ];
        let outcome = attribute(&jobs, confirmations);
        assert_eq!(outcome.results, vec![Ok(()), Err(PublishError::Unroutable)]);
        assert!(outcome.channel_healthy);
    }

    #[test]
    fn a_return_of_no_job_in_the_batch_fails_the_whole_batch() {
        let jobs = [job(&["a"]), job(&["b"])];
        let confirmations = vec![
            Ok(Confirmation::Ack(Some(returned("stranger")))),
            Ok(Confirmation::Ack(None)),
        ];
        let outcome = attribute(&jobs, confirmations);
        assert!(outcome.results.iter().all(Result::is_err));
        assert!(!outcome.channel_healthy);
    }

    #[test]
    fn nacks_and_channel_errors_fail_only_their_job() {
        let jobs = [job(&["a"]), job(&["b"]), job(&["c"])];
        let confirmations = vec![
            Ok(Confirmation::Nack(None)),
            Ok(Confirmation::Ack(None)),
            Err(lapin::ErrorKind::InvalidConnectionState(lapin::ConnectionState::Closed).into()),
        ];
        let outcome = attribute(&jobs, confirmations);
        assert_eq!(outcome.results[0], Err(PublishError::Nacked));
        assert_eq!(outcome.results[1], Ok(()));
        assert!(matches!(
            outcome.results[2],
            Err(PublishError::ChannelClosed(_))
        ));
        assert!(!outcome.channel_healthy);
    }

    #[test]
    fn only_confirmed_jobs_count_towards_published_events() {
        let mut jobs = [job(&["a1", "a2"]), job(&["b1"]), job(&["c1"])];
        jobs[1].events[0].kind = "u".into();
        let results = [Ok(()), Ok(()), Err(PublishError::Nacked)];
        assert_eq!(confirmed_by_type(&jobs, &results), vec![("t", 2), ("u", 1)]);
    }

    #[test]
    fn duplicate_keys_across_jobs_fail_every_holder_of_a_returned_key() {
        let jobs = [job(&["k"]), job(&["k"]), job(&["other"])];
        let confirmations = vec![
            Ok(Confirmation::Ack(None)),
            Ok(Confirmation::Ack(Some(returned("k")))),
            Ok(Confirmation::Ack(None)),
        ];
        let outcome = attribute(&jobs, confirmations);
        assert_eq!(
            outcome.results,
            vec![
                Err(PublishError::Unroutable),
                Err(PublishError::Unroutable),
                Ok(())
            ]
        );
    }
}
