//! What one confirm channel has published and not yet answered, answered job by job as the
//! confirms arrive (a channel keeps publishing while earlier confirms are outstanding).
//!
//! Attribution of `basic.return` stays exact without waiting for a whole batch. The broker sends
//! a message's return before the ack that covers it; lapin, reading frames in order on one
//! thread, hands a return to the first confirm it resolves after the return arrived (for a
//! multiple-ack, in no particular tag order). So the confirm that carries a message's return is
//! resolved no later than the message's own confirm. Resolved confirms are read in the order
//! they woke the worker, and a read continues while more are ready ([`InFlight::settle`] takes
//! them together), so a return is always read before, or in the same read as, its message's own
//! confirm. A return is matched to every job holding its `message_id` at once, and a job is
//! answered only after a read in which its last confirm was seen: by then every return of its
//! events has been read.

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use futures_util::stream::FuturesUnordered;
use lapin::Confirmation;
use lapin::PublisherConfirm;
use lapin::message::BasicReturnMessage;
use tokio::time::Instant;
use tracing::warn;

use super::job::{Job, PublishError};
use crate::metrics::Metrics;

/// One resolved confirm: the job its message belongs to, and the broker's answer.
pub(super) type Resolved = (u64, lapin::Result<Confirmation>);

/// A job published on the channel and not yet answered.
struct Pending {
    job: Job,
    /// Confirms not yet read.
    outstanding: usize,
    failure: Option<PublishError>,
    published: Instant,
}

/// The channel's unanswered jobs, by the order they were published in, and their confirms.
#[derive(Default)]
pub(super) struct InFlight {
    jobs: BTreeMap<u64, Pending>,
    next_id: u64,
    events: usize,
    /// Jobs whose every confirm has been read, to answer once the current read ends.
    finished: Vec<u64>,
    pub(super) confirms: FuturesUnordered<Tagged>,
}

impl InFlight {
    pub(super) fn is_empty(&self) -> bool {
        self.jobs.is_empty()
    }

    /// Events published and not yet answered.
    pub(super) fn events(&self) -> usize {
        self.events
    }

    /// The earliest deadline of a job in flight: past it the channel is stuck.
    pub(super) fn oldest_deadline(&self) -> Option<Instant> {
        self.jobs.values().map(|pending| pending.job.deadline).min()
    }

    /// Takes `job` in, awaiting one confirm per event; its id, for [`InFlight::watch`].
    pub(super) fn add(&mut self, job: Job) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        self.events += job.events.len();
        let outstanding = job.events.len();
        self.jobs.insert(
            id,
            Pending {
                job,
                outstanding,
                failure: None,
                published: Instant::now(),
            },
        );
        if outstanding == 0 {
            self.finished.push(id);
        }
        id
    }

    /// How many events job `id` holds (0 once answered).
    pub(super) fn events_of(&self, id: u64) -> usize {
        self.jobs
            .get(&id)
            .map_or(0, |pending| pending.job.events.len())
    }

    /// Awaits `confirm`, which belongs to job `id`.
    pub(super) fn watch(&mut self, id: u64, confirm: PublisherConfirm) {
        self.confirms.push(Tagged { id, confirm });
    }

    /// Reads resolved confirms (all that were ready together) and answers every job whose
    /// confirms are all read. `Err` when the channel must be replaced, with the answer for the
    /// jobs still in flight (`fail_all`): a channel error fails the jobs it touched and leaves
    /// finished ones answered; a return matching no job in flight answers nothing, since
    /// attribution can no longer be trusted.
    pub(super) fn settle(
        &mut self,
        resolved: Vec<Resolved>,
        metrics: &Metrics,
    ) -> Result<(), PublishError> {
        let mut outcome = Ok(());
        for (id, confirmation) in resolved {
            let failure = match confirmation {
                Ok(Confirmation::Ack(returned)) => {
                    self.returned(returned)?;
                    None
                }
                Ok(Confirmation::Nack(returned)) => {
                    self.returned(returned)?;
                    Some(PublishError::Nacked)
                }
                Ok(Confirmation::NotRequested) => Some(PublishError::ChannelClosed(
                    "confirms are not enabled".into(),
                )),
                Err(error) => Some(PublishError::ChannelClosed(error.to_string())),
            };
            if let Some(closed @ PublishError::ChannelClosed(_)) = &failure {
                outcome = Err(closed.clone());
            }
            self.confirmed(id, failure);
        }
        self.answer_finished(metrics);
        outcome
    }

    /// Counts one confirm of job `id` as read, with what went wrong, if anything.
    pub(super) fn confirmed(&mut self, id: u64, failure: Option<PublishError>) {
        let Some(pending) = self.jobs.get_mut(&id) else {
            return;
        };
        pending.outstanding = pending.outstanding.saturating_sub(1);
        if pending.failure.is_none() {
            pending.failure = failure;
        }
        if pending.outstanding == 0 {
            self.finished.push(id);
        }
    }

    /// Fails every job holding a returned message's `message_id`, whichever confirm carried
    /// it; `Err` when no job in flight holds it (attribution can no longer be trusted).
    fn returned(&mut self, message: Option<BasicReturnMessage>) -> Result<(), PublishError> {
        let Some(message) = message else {
            return Ok(());
        };
        let id = message
            .properties
            .message_id()
            .as_ref()
            .map(|id| id.as_str())
            .unwrap_or_default();
        let mut owned = false;
        for pending in self.jobs.values_mut() {
            if pending.job.events.iter().any(|event| event.dedup_key == id) {
                owned = true;
                pending.failure = Some(PublishError::Unroutable);
            }
        }
        if owned {
            Ok(())
        } else {
            warn!(message_id = %id, "returned message matches no event in flight");
            Err(PublishError::Unroutable)
        }
    }

    /// Answers the jobs whose confirms are all read.
    fn answer_finished(&mut self, metrics: &Metrics) {
        for id in std::mem::take(&mut self.finished) {
            let Some(pending) = self.jobs.remove(&id) else {
                continue;
            };
            self.events -= pending.job.events.len();
            let result = match pending.failure {
                None => {
                    metrics
                        .confirm_latency
                        .observe(pending.published.elapsed().as_secs_f64());
                    count_published(&pending.job, metrics);
                    Ok(())
                }
                Some(failure) => {
                    warn_in_span(&pending.job, &failure);
                    Err(failure)
                }
            };
            reply(pending.job, result);
        }
    }

    /// Answers every job in flight with `error` (the channel is being replaced).
    pub(super) fn fail_all(&mut self, error: PublishError) {
        for (_, pending) in std::mem::take(&mut self.jobs) {
            warn_in_span(&pending.job, &error);
            reply(pending.job, Err(error.clone()));
        }
        self.events = 0;
        self.finished.clear();
        self.confirms = FuturesUnordered::new();
    }
}

/// A channel that failed under a job is worth a warning, in the job's request span.
fn warn_in_span(job: &Job, failure: &PublishError) {
    if let PublishError::ChannelClosed(cause) = failure {
        job.span
            .in_scope(|| warn!(%cause, "channel failed with this request in flight, replacing it"));
    }
}

/// Counts a confirmed job's events by type, one increment per type.
fn count_published(job: &Job, metrics: &Metrics) {
    let mut counted: Vec<(&str, u64)> = Vec::new();
    for event in &job.events {
        match counted.iter_mut().find(|(kind, _)| *kind == event.kind) {
            Some((_, count)) => *count += 1,
            None => counted.push((&event.kind, 1)),
        }
    }
    for (kind, count) in counted {
        metrics.published(kind, count);
    }
}

pub(super) fn reply(job: Job, result: Result<(), PublishError>) {
    // The requester may have timed out and gone; its answer was already a 503.
    let _ = job.reply.send(result);
}

/// A confirm with the id of the job it belongs to.
pub(super) struct Tagged {
    id: u64,
    confirm: PublisherConfirm,
}

impl Future for Tagged {
    type Output = Resolved;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Resolved> {
        let id = self.id;
        Pin::new(&mut self.confirm)
            .poll(cx)
            .map(|confirmation| (id, confirmation))
    }
}

#[cfg(test)]
mod tests {
    use super::super::job::Received;
    use super::*;
    use crate::event::Event;
    use lapin::BasicProperties;
    use lapin::message::Delivery;
    use tokio::sync::oneshot;

    type Answer = oneshot::Receiver<Result<(), PublishError>>;

    fn job(keys: &[&str]) -> (Job, Answer) {
        let events = keys
            .iter()
            .map(|key| Event {
                body: bytes::Bytes::from_static(b"{}"),
                kind: "message-delivered".into(),
                routing_key: "message-delivered".into(),
                dedup_key: (*key).into(),
                message_id: None,
                time: None,
            })
            .collect();
        let (reply, answer) = oneshot::channel();
        let job = Job {
            events,
            received: Received::now("test"),
            deadline: Instant::now(),
            span: tracing::Span::none(),
            reply,
        };
        (job, answer)
    }

    fn returned(key: &str) -> Option<BasicReturnMessage> {
        let mut delivery = Delivery::mock(0, "ex".into(), "t".into(), false, Vec::new());
        delivery.properties = BasicProperties::default().with_message_id(key.into());
        Some(BasicReturnMessage {
            delivery,
            reply_code: 312,
            reply_text: "NO_ROUTE".into(),
        })
    }

    fn ack(id: u64, returned: Option<BasicReturnMessage>) -> Resolved {
        (id, Ok(Confirmation::Ack(returned)))
    }

    /// An `InFlight` holding one job per key list, in order: their ids and answers.
    fn in_flight(jobs: &[&[&str]]) -> (InFlight, Vec<u64>, Vec<Answer>) {
        let mut in_flight = InFlight::default();
        let (mut ids, mut answers) = (Vec::new(), Vec::new());
        for keys in jobs {
            let (job, answer) = job(keys);
            ids.push(in_flight.add(job));
            answers.push(answer);
        }
        (in_flight, ids, answers)
    }

    fn answer(receiver: &mut Answer) -> Option<Result<(), PublishError>> {
        receiver.try_recv().ok()
    }

    #[test]
    fn a_return_carried_by_a_later_jobs_confirm_fails_its_own_job() {
        let (mut in_flight, ids, mut answers) = in_flight(&[&["a"], &["b"]]);
        // One multiple-ack: lapin resolved a's confirm without its return and handed the return
        // to b's; both are read together.
        let round = vec![ack(ids[0], None), ack(ids[1], returned("a"))];
        assert_eq!(in_flight.settle(round, &Metrics::new()), Ok(()));
        assert_eq!(answer(&mut answers[0]), Some(Err(PublishError::Unroutable)));
        assert_eq!(answer(&mut answers[1]), Some(Ok(())));
        assert!(in_flight.is_empty());
    }

    #[test]
    fn a_return_read_before_its_own_confirm_waits_for_it() {
        let metrics = Metrics::new();
        let (mut in_flight, ids, mut answers) = in_flight(&[&["a1", "a2"], &["b"]]);
        let settled = in_flight.settle(vec![ack(ids[1], returned("a2"))], &metrics);
        assert_eq!(settled, Ok(()));
        assert_eq!(answer(&mut answers[1]), Some(Ok(())));
        assert_eq!(answer(&mut answers[0]), None, "a still has confirms out");
        assert_eq!(in_flight.events(), 2);
        let settled = in_flight.settle(vec![ack(ids[0], None), ack(ids[0], None)], &metrics);
        assert_eq!(settled, Ok(()));
        assert_eq!(answer(&mut answers[0]), Some(Err(PublishError::Unroutable)));
        assert_eq!(in_flight.events(), 0);
    }

    #[test]
    fn a_return_of_no_job_in_flight_answers_nothing_and_distrusts_the_channel() {
        let (mut in_flight, ids, mut answers) = in_flight(&[&["a"], &["b"]]);
        let round = vec![ack(ids[0], None), ack(ids[1], returned("stranger"))];
        assert_eq!(
            in_flight.settle(round, &Metrics::new()),
            Err(PublishError::Unroutable)
        );
        assert_eq!(answer(&mut answers[0]), None, "nothing answered 200");
        in_flight.fail_all(PublishError::Unroutable);
        for answer_ in &mut answers {
            assert_eq!(answer(answer_), Some(Err(PublishError::Unroutable)));
        }
        assert!(in_flight.is_empty());
        assert_eq!(in_flight.events(), 0);
    }

    #[test]
    fn nacks_fail_their_job_and_a_channel_error_fails_its_job_and_the_channel() {
        let (mut in_flight, ids, mut answers) = in_flight(&[&["a"], &["b"], &["c"]]);
        let closed = lapin::ErrorKind::InvalidConnectionState(lapin::ConnectionState::Closed);
        let round = vec![
            (ids[0], Ok(Confirmation::Nack(None))),
            (ids[1], Err(closed.into())),
            ack(ids[2], None),
        ];
        let settled = in_flight.settle(round, &Metrics::new());
        assert!(matches!(settled, Err(PublishError::ChannelClosed(_))));
        assert_eq!(answer(&mut answers[0]), Some(Err(PublishError::Nacked)));
        assert!(matches!(
            answer(&mut answers[1]),
            Some(Err(PublishError::ChannelClosed(_)))
        ));
        assert_eq!(answer(&mut answers[2]), Some(Ok(())), "its confirm came");
    }

    #[test]
    fn duplicate_keys_in_flight_fail_every_holder_of_a_returned_key() {
        let (mut in_flight, ids, mut answers) = in_flight(&[&["k"], &["k"], &["other"]]);
        let round = vec![
            ack(ids[0], None),
            ack(ids[1], returned("k")),
            ack(ids[2], None),
        ];
        assert_eq!(in_flight.settle(round, &Metrics::new()), Ok(()));
        assert_eq!(answer(&mut answers[0]), Some(Err(PublishError::Unroutable)));
        assert_eq!(answer(&mut answers[1]), Some(Err(PublishError::Unroutable)));
        assert_eq!(answer(&mut answers[2]), Some(Ok(())));
    }

    #[test]
    fn only_confirmed_jobs_count_towards_published_events() {
        let metrics = Metrics::new();
        let mut in_flight = InFlight::default();
        let (mut a, _a) = job(&["a1", "a2"]);
        a.events[1].kind = "message-failed".into();
        let (b, _b) = job(&["b"]);
        let (a, b) = (in_flight.add(a), in_flight.add(b));
        let round = vec![
            ack(a, None),
            ack(a, None),
            (b, Ok(Confirmation::Nack(None))),
        ];
        assert_eq!(in_flight.settle(round, &metrics), Ok(()));
        let exposition = metrics.render();
        // b was nacked: one delivered (a1) and one failed (a2), nothing of b.
        for kind in ["message-delivered", "message-failed"] {
            let series = format!("bandwidth_forwarder_events_published_total{{type=\"{kind}\"}} 1");
            assert!(exposition.contains(&series), "{series} in {exposition}");
        }
    }
}
