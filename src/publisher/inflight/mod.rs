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

use std::collections::VecDeque;
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
    jobs: Jobs,
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
        self.jobs.iter().map(|pending| pending.job.deadline).min()
    }

    /// Takes `job`, whose events were first published at `published`, in, awaiting one confirm
    /// per event; its id, for [`InFlight::watch`].
    pub(super) fn add(&mut self, job: Job, published: Instant) -> u64 {
        self.events += job.events.len();
        let outstanding = job.events.len();
        let id = self.jobs.push(Pending {
            job,
            outstanding,
            failure: None,
            published,
        });
        if outstanding == 0 {
            self.finished.push(id);
        }
        id
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
        resolved: impl IntoIterator<Item = Resolved>,
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
        let Some(pending) = self.jobs.get_mut(id) else {
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
        for pending in self.jobs.iter_mut() {
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
        // Taken and put back, so that the list keeps its room.
        let mut finished = std::mem::take(&mut self.finished);
        for id in finished.drain(..) {
            let Some(pending) = self.jobs.remove(id) else {
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
                    warn_of_failure(&pending.job, &failure);
                    Err(failure)
                }
            };
            reply(pending.job, result);
        }
        self.finished = finished;
    }

    /// Answers every job in flight with `error` (the channel is being replaced).
    pub(super) fn fail_all(&mut self, error: PublishError) {
        for pending in self.jobs.take_all() {
            warn_of_failure(&pending.job, &error);
            reply(pending.job, Err(error.clone()));
        }
        self.events = 0;
        self.finished.clear();
        self.confirms = FuturesUnordered::new();
    }
}

/// A channel that failed under a job is worth a warning that names the job's request.
fn warn_of_failure(job: &Job, failure: &PublishError) {
    if let PublishError::ChannelClosed(cause) = failure {
        warn!(
            request_id = job.received.request_id,
            %cause,
            "channel failed with this request in flight, replacing it"
        );
    }
}

/// Counts a confirmed job's events by type, one increment per run of one type (a callback's
/// events are mostly of one type).
fn count_published(job: &Job, metrics: &Metrics) {
    for run in job.events.chunk_by(|a, b| a.kind == b.kind) {
        metrics.published(&run[0].kind, run.len() as u64);
    }
}

pub(super) fn reply(job: Job, result: Result<(), PublishError>) {
    // The requester may have timed out and gone; its answer was already a 503.
    let _ = job.reply.send(result);
}

/// Jobs by id, ids given in the order the jobs are added: a ring from the oldest unanswered job
/// on, with a gap where a later job was answered first.
#[derive(Default)]
struct Jobs {
    /// The id of the ring's first slot.
    first: u64,
    slots: VecDeque<Option<Pending>>,
}

impl Jobs {
    fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    /// Adds `pending` after every job added before; its id.
    fn push(&mut self, pending: Pending) -> u64 {
        self.slots.push_back(Some(pending));
        self.first + self.slots.len() as u64 - 1
    }

    fn get_mut(&mut self, id: u64) -> Option<&mut Pending> {
        let index = usize::try_from(id.checked_sub(self.first)?).ok()?;
        self.slots.get_mut(index)?.as_mut()
    }

    /// Takes job `id` out; the ring then starts at its oldest job still in.
    fn remove(&mut self, id: u64) -> Option<Pending> {
        let index = usize::try_from(id.checked_sub(self.first)?).ok()?;
        let pending = self.slots.get_mut(index)?.take();
        while let Some(None) = self.slots.front() {
            self.slots.pop_front();
            self.first += 1;
        }
        pending
    }

    fn iter(&self) -> impl Iterator<Item = &Pending> {
        self.slots.iter().flatten()
    }

    fn iter_mut(&mut self) -> impl Iterator<Item = &mut Pending> {
        self.slots.iter_mut().flatten()
    }

    /// Every job, oldest first; the ring is left empty, and ids go on from where they were.
    fn take_all(&mut self) -> impl Iterator<Item = Pending> {
        self.first += self.slots.len() as u64;
        std::mem::take(&mut self.slots).into_iter().flatten()
    }
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
mod tests;
