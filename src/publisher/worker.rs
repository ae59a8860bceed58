//! One confirm channel and the task that owns it: open it, publish the queued jobs as they
//! come while earlier confirms are outstanding (`inflight/` answers each at its own
//! confirms), replace the channel when it fails.
//!
//! The first channel takes every job while it can; the others take jobs only while it cannot:
//! while it has `amqp.max_batch_events` in flight (until it is down to half), or is not serving
//! (no connection, being opened or replaced, closing). A load one channel carries goes out in
//! bigger publish rounds on one channel, cheaper per event for the forwarder and for the broker
//! than split across two (docs/cost-profile.md, "One channel or two"); a heavier load, or a
//! channel being replaced, still has them all.

use std::sync::Arc;
use std::time::Duration;

use futures_util::future::join_all;
use futures_util::{FutureExt, StreamExt};
use lapin::options::BasicPublishOptions;
use lapin::options::ConfirmSelectOptions;
use lapin::types::ShortString;
use lapin::{Channel, Connection};
use tokio::sync::watch;
use tokio::time::Instant;
use tracing::{debug, warn};

use super::inflight::{InFlight, reply};
use super::job::{Job, PublishError};
use super::message::{properties, routing_key};
use super::state::Shared;
use super::watchdog::Watchdog;
use crate::amqp::CurrentConnection;
use crate::settings::AmqpSettings;

/// Pause before retrying a channel that failed to open.
const CHANNEL_RETRY: Duration = Duration::from_millis(200);
/// Longest wait for a channel to open and enter confirm mode.
const CHANNEL_OPEN_TIMEOUT: Duration = Duration::from_secs(5);
/// Room for the jobs, or confirms, a worker usually takes at once, so that the list is not
/// grown as it fills.
const TAKEN_CAPACITY: usize = 16;
/// Longest wait for a broken channel to close before it is dropped.
const CHANNEL_CLOSE_TIMEOUT: Duration = Duration::from_secs(1);

/// What a worker needs from the settings.
pub(super) struct WorkerConfig {
    pub(super) id: usize,
    pub(super) exchange: ShortString,
    pub(super) max_in_flight_events: usize,
}

impl WorkerConfig {
    pub(super) fn new(id: usize, settings: &AmqpSettings) -> Self {
        Self {
            id,
            // A `Name` fits a short string.
            exchange: ShortString::from(settings.exchange.as_str()),
            max_in_flight_events: settings.max_batch_events,
        }
    }
}

/// Runs until the job queue is closed and empty.
pub(super) async fn run(
    config: WorkerConfig,
    shared: Arc<Shared>,
    mut connection_rx: CurrentConnection,
    jobs: async_channel::Receiver<Job>,
) {
    let mut counted = Counted::new(&shared);
    loop {
        let current = connection_rx.borrow_and_update().clone();
        let Some(connection) = current else {
            counted.set(false);
            // No broker: fail whatever is queued at once rather than let it time out.
            tokio::select! {
                changed = connection_rx.changed() => if changed.is_err() {
                    fail_remaining(&jobs).await;
                    return;
                },
                job = jobs.recv() => match job {
                    Ok(job) => reply(job, Err(PublishError::Unavailable)),
                    Err(_) => return,
                },
            }
            continue;
        };
        let channel = match open_channel(&connection).await {
            Ok(channel) => channel,
            Err(error) => {
                counted.set(false);
                warn!(worker = config.id, %error, "opening a confirm channel failed");
                tokio::time::sleep(CHANNEL_RETRY).await;
                continue;
            }
        };
        counted.set(true);
        let finished = serve_channel(&config, &shared, &channel, &mut connection_rx, &jobs).await;
        if finished {
            counted.set(false);
            close_channel(channel).await;
            return;
        }
        // A stuck channel may never answer its close: its replacement does not wait for it.
        tokio::spawn(close_channel(channel));
    }
}

/// The worker whose channel takes every job while it can.
const FIRST: usize = 0;

/// When the jobs go beyond the first channel, while it serves one: it says so, the others
/// follow. When it stops serving (its `Share` is dropped), the others take every job.
enum Share<'a> {
    /// The first channel, and whether it last said it cannot take every job.
    First {
        spill: &'a watch::Sender<bool>,
        spilling: bool,
    },
    /// Another channel, told when the first cannot take every job.
    Spare(watch::Receiver<bool>),
}

impl<'a> Share<'a> {
    fn new(config: &WorkerConfig, shared: &'a Shared) -> Self {
        if config.id == FIRST {
            Self::First {
                spill: &shared.spill,
                spilling: true,
            }
        } else {
            Self::Spare(shared.spill.subscribe())
        }
    }

    /// Whether this channel may take jobs now; the first channel says whether the others may
    /// too: from when it is full (or `closing`) until it is down to half.
    fn may_take(&mut self, events: usize, max: usize, closing: bool) -> bool {
        match self {
            Self::First { spill, spilling } => {
                let spills = if *spilling {
                    closing || events > max / 2
                } else {
                    closing || events >= max
                };
                if spills != *spilling {
                    *spilling = spills;
                    spill.send_replace(spills);
                }
                true
            }
            Self::Spare(spill) => *spill.borrow_and_update(),
        }
    }

    /// Resolves when a spare channel may take jobs again; never for the first channel.
    async fn changed(&mut self) {
        match self {
            Self::First { .. } => std::future::pending().await,
            Self::Spare(spill) => {
                if spill.changed().await.is_err() {
                    // The sender lives in `Shared`, as long as the workers.
                    std::future::pending::<()>().await;
                }
            }
        }
    }
}

impl Drop for Share<'_> {
    fn drop(&mut self) {
        if let Self::First { spill, .. } = self {
            spill.send_replace(true);
        }
    }
}

/// Whether a worker counts among the open channels (readiness, the `open_channels` gauge). A
/// channel being replaced still counts: a callback that arrives between the old channel and the
/// new one waits for the new one, within its publish timeout, instead of getting 503 at once.
/// It stops counting without a connection, when a channel cannot be opened, and at the end.
struct Counted<'a> {
    shared: &'a Shared,
    counted: bool,
}

impl<'a> Counted<'a> {
    fn new(shared: &'a Shared) -> Self {
        Self {
            shared,
            counted: false,
        }
    }

    fn set(&mut self, counted: bool) {
        match (self.counted, counted) {
            (false, true) => self.shared.channel_opened(),
            (true, false) => self.shared.channel_closed(),
            _ => {}
        }
        self.counted = counted;
    }
}

/// Closes `channel` if it is open, waiting for the broker's answer for a while at most.
async fn close_channel(channel: Channel) {
    if channel.status().connected() {
        let _ = tokio::time::timeout(CHANNEL_CLOSE_TIMEOUT, channel.close(200, "replaced".into()))
            .await;
    }
}

/// Publishes on `channel` while it stays healthy, answering each job at its own confirms;
/// true when the job queue is closed and everything taken is answered.
async fn serve_channel(
    config: &WorkerConfig,
    shared: &Shared,
    channel: &Channel,
    connection_rx: &mut CurrentConnection,
    jobs: &async_channel::Receiver<Job>,
) -> bool {
    let mut in_flight = InFlight::default();
    let mut closing = false;
    let mut watchdog = Watchdog::new();
    let mut share = Share::new(config, shared);
    // The confirms of one read; kept, with the room it grew to, from read to read.
    let mut resolved = Vec::with_capacity(TAKEN_CAPACITY);
    // Why the channel is given up, and whether the topology may be gone with it.
    let (failure, topology_lost) = loop {
        if closing && in_flight.is_empty() {
            return true;
        }
        if !channel.status().connected() {
            break (
                PublishError::ChannelClosed("the channel closed".into()),
                true,
            );
        }
        let room = in_flight.events() < config.max_in_flight_events;
        let may_take = share.may_take(in_flight.events(), config.max_in_flight_events, closing);
        tokio::select! {
            biased;
            // The supervisor replaces the connection and declares the topology on it.
            _ = connection_rx.changed() => {
                break (PublishError::ChannelClosed("the connection was lost".into()), false);
            }
            Some(first) = in_flight.confirms.next() => {
                // Everything resolved by now is read together (see `inflight/mod.rs`).
                resolved.push(first);
                while let Some(Some(next)) = in_flight.confirms.next().now_or_never() {
                    resolved.push(next);
                }
                if let Err(failure) = in_flight.settle(resolved.drain(..), &shared.metrics) {
                    break (failure, true);
                }
            }
            () = watchdog.fired() => {
                if watchdog.expired(in_flight.oldest_deadline()) {
                    debug!(worker = config.id, "confirms timed out, replacing the channel");
                    break (PublishError::Timeout, false);
                }
            }
            () = share.changed(), if !may_take => {}
            job = jobs.recv(), if room && !closing && may_take => match job {
                Ok(first) => {
                    let room = config.max_in_flight_events - in_flight.events();
                    let taken = take_waiting(first, jobs, room);
                    if let Some(earliest) = taken.iter().map(|job| job.deadline).min() {
                        watchdog.cover(earliest);
                    }
                    if let Err(failure) = publish(config, channel, taken, &mut in_flight).await {
                        let topology_lost = failure != PublishError::Timeout;
                        break (failure, topology_lost);
                    }
                }
                Err(_) => closing = true,
            },
        }
    };
    in_flight.fail_all(failure);
    if topology_lost {
        shared.link.topology_lost();
    }
    false
}

/// `first` and the jobs waiting behind it, up to `room` events (at least `first`); a job past
/// its deadline, or whose requester is gone, is answered at once and not published.
fn take_waiting(first: Job, jobs: &async_channel::Receiver<Job>, room: usize) -> Vec<Job> {
    let mut taken = Vec::with_capacity(TAKEN_CAPACITY);
    let mut events = first.events.len();
    taken.push(first);
    while events < room {
        match jobs.try_recv() {
            Ok(job) => {
                events += job.events.len();
                taken.push(job);
            }
            Err(_) => break,
        }
    }
    let now = Instant::now();
    for job in taken.extract_if(.., |job| job.deadline <= now || job.reply.is_closed()) {
        reply(job, Err(PublishError::Timeout));
    }
    taken
}

/// Publishes every event of `taken` and puts the jobs in flight; `Err` when the channel
/// failed, or could not take them before their deadline, with the answer for every job.
async fn publish(
    config: &WorkerConfig,
    channel: &Channel,
    taken: Vec<Job>,
    in_flight: &mut InFlight,
) -> Result<(), PublishError> {
    let Some(deadline) = taken.iter().map(|job| job.deadline).min() else {
        return Ok(());
    };
    let published = Instant::now();
    let mut publishes = Vec::with_capacity(taken.iter().map(|job| job.events.len()).sum());
    for job in &taken {
        for event in &job.events {
            // Boxed, the large publish future is written once and then moved as a pointer
            // (callgrind: 0.4 k fewer instructions a request).
            publishes.push(Box::pin(channel.basic_publish(
                config.exchange.clone(),
                routing_key(event),
                BasicPublishOptions {
                    mandatory: true,
                    ..BasicPublishOptions::default()
                },
                &event.body,
                properties(event, &job.received),
            )));
        }
    }
    let Ok(sent) = tokio::time::timeout_at(deadline, join_all(publishes)).await else {
        for job in taken {
            reply(job, Err(PublishError::Timeout));
        }
        return Err(PublishError::Timeout);
    };
    let mut outcome = Ok(());
    let mut sent = sent.into_iter();
    for job in taken {
        let events = job.events.len();
        let id = in_flight.add(job, published);
        for confirm in sent.by_ref().take(events) {
            match confirm {
                Ok(confirm) => in_flight.watch(id, confirm),
                Err(error) => {
                    let closed = PublishError::ChannelClosed(error.to_string());
                    in_flight.confirmed(id, Some(closed.clone()));
                    outcome = Err(closed);
                }
            }
        }
    }
    outcome
}

/// A new confirm channel, or why not (a stuck broker counts as a failure after a while).
async fn open_channel(connection: &Connection) -> Result<Channel, String> {
    let open = async {
        let channel = connection.create_channel().await?;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await?;
        Ok::<_, lapin::Error>(channel)
    };
    match tokio::time::timeout(CHANNEL_OPEN_TIMEOUT, open).await {
        Ok(Ok(channel)) => Ok(channel),
        Ok(Err(error)) => Err(error.to_string()),
        Err(_) => Err("timed out".into()),
    }
}

async fn fail_remaining(jobs: &async_channel::Receiver<Job>) {
    while let Ok(job) = jobs.recv().await {
        reply(job, Err(PublishError::Unavailable));
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use super::*;
    use crate::amqp::Link;
    use crate::metrics::Metrics;

    fn shared() -> (Shared, Link) {
        let metrics = Arc::new(Metrics::new());
        let link = Link::connected_without_broker(metrics.clone());
        (Shared::new(link.state().clone(), metrics), link)
    }

    fn config(id: usize) -> WorkerConfig {
        WorkerConfig {
            id,
            exchange: ShortString::from("x"),
            max_in_flight_events: 8,
        }
    }

    #[test]
    fn the_first_channel_takes_jobs_and_lets_the_others_in_from_full_until_half() {
        let (shared, _link) = shared();
        let mut first = Share::new(&config(FIRST), &shared);
        let mut spare = Share::new(&config(1), &shared);
        // Before the first channel serves, the others take every job.
        assert!(spare.may_take(0, 8, false));
        for (events, spills) in [
            (0, false),
            (7, false),
            (8, true),
            (5, true),
            (4, false),
            (7, false),
        ] {
            assert!(first.may_take(events, 8, false), "{events}");
            assert_eq!(spare.may_take(0, 8, false), spills, "{events}");
        }
        // Closing: the others take jobs, so that they see the queue close too.
        assert!(first.may_take(0, 8, true));
        assert!(spare.may_take(0, 8, false));
    }

    #[test]
    fn when_the_first_channel_stops_serving_the_others_take_every_job() {
        let (shared, _link) = shared();
        let mut spare = Share::new(&config(1), &shared);
        let mut first = Share::new(&config(FIRST), &shared);
        assert!(first.may_take(0, 8, false));
        assert!(!spare.may_take(0, 8, false));
        drop(first);
        assert!(spare.may_take(0, 8, false));
    }

    #[tokio::test]
    async fn a_spare_channel_is_woken_when_the_first_one_spills() {
        let (shared, _link) = shared();
        let mut first = Share::new(&config(FIRST), &shared);
        let mut spare = Share::new(&config(1), &shared);
        first.may_take(0, 8, false);
        assert!(!spare.may_take(0, 8, false));
        let waiting = tokio::time::timeout(Duration::from_millis(50), spare.changed()).await;
        assert!(waiting.is_err(), "woken with nothing changed");
        first.may_take(8, 8, false);
        tokio::time::timeout(Duration::from_secs(1), spare.changed())
            .await
            .expect("woken when the first channel is full");
        assert!(spare.may_take(0, 8, false));
    }
}
