//! Publishing events to RabbitMQ: a connection supervisor, a pool of confirm channels, and
//! the handle the HTTP layer awaits.
//!
//! A request becomes a [`Job`] on a shared queue. Each confirm channel is owned by one worker
//! task that takes every queued job (up to a limit), publishes all their events, awaits all
//! their confirms and only then answers them (group commit). Because a channel carries one
//! batch at a time, every `basic.return` the broker sends belongs to that batch, and is
//! matched to its request by `message_id` rather than by which confirm lapin attached it to.

mod connection;
pub mod message;
mod topology;
mod worker;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::event::Event;
use crate::metrics::Metrics;
use crate::settings::AmqpSettings;

/// Requests waiting for a channel, at most; past it callbacks get 503.
const JOB_QUEUE_CAPACITY: usize = 4096;

/// Why a request's events are not all confirmed; every variant is a 503.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PublishError {
    #[error("not connected to the broker")]
    Unavailable,
    #[error("the broker is blocking publishers (memory or disk alarm)")]
    Blocked,
    #[error("the service is shutting down")]
    ShuttingDown,
    #[error("too many requests are waiting for the broker")]
    Overloaded,
    #[error("the broker rejected an event (nack)")]
    Nacked,
    #[error("an event matched no queue (returned as unroutable)")]
    Unroutable,
    #[error("the channel or connection closed before every confirm arrived: {0}")]
    ChannelClosed(String),
    #[error("no confirm within the publish timeout")]
    Timeout,
}

impl PublishError {
    /// The short machine word for the JSON error body and the failure metric.
    pub fn code(&self) -> &'static str {
        match self {
            Self::Unavailable => "broker_unavailable",
            Self::Blocked => "broker_blocked",
            Self::ShuttingDown => "shutting_down",
            Self::Overloaded => "overloaded",
            Self::Nacked => "nack",
            Self::Unroutable => "unroutable",
            Self::ChannelClosed(_) => "channel_closed",
            Self::Timeout => "confirm_timeout",
        }
    }

    /// A fixed sentence per error word, for the caller; the cause stays in the log line.
    pub fn summary(&self) -> &'static str {
        match self {
            Self::Unavailable => "the broker is not reachable; retry later",
            Self::Blocked => "the broker is not accepting messages now; retry later",
            Self::ShuttingDown => "this instance is shutting down; retry",
            Self::Overloaded => "too many callbacks are waiting for the broker; retry later",
            Self::Nacked => "the broker did not accept an event; retry",
            Self::Unroutable => "an event matched no queue; retry once a queue is bound",
            Self::ChannelClosed(_) => "the broker channel closed before every confirm; retry",
            Self::Timeout => "the broker did not confirm in time; retry",
        }
    }
}

/// When a request was received, in the two forms the message carries, and its id.
#[derive(Debug, Clone)]
pub struct Received {
    /// Unix seconds, for the `timestamp` property.
    pub unix_secs: u64,
    /// RFC 3339 UTC, for the `x-received-at` header.
    pub rfc3339: String,
    /// The request's id (`X-Request-Id`), for the `correlation_id` property.
    pub request_id: String,
}

impl Received {
    /// Now, for the request `request_id`.
    pub fn now(request_id: &str) -> Self {
        let now = SystemTime::now();
        Self {
            unix_secs: now
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0),
            rfc3339: humantime::format_rfc3339_millis(now).to_string(),
            request_id: request_id.to_owned(),
        }
    }
}

/// One request's events and where to send the outcome.
struct Job {
    events: Vec<Event>,
    received: Received,
    deadline: Instant,
    reply: oneshot::Sender<Result<(), PublishError>>,
}

/// Broker state shared by the supervisor, the workers and the HTTP layer.
struct Shared {
    connected: AtomicBool,
    blocked: AtomicBool,
    open_channels: AtomicUsize,
    /// Raised by a worker whose channel the broker closed: the topology may be gone.
    redeclare: tokio::sync::Notify,
    metrics: Arc<Metrics>,
}

impl Shared {
    fn new(metrics: Arc<Metrics>) -> Self {
        Self {
            connected: AtomicBool::new(false),
            blocked: AtomicBool::new(false),
            open_channels: AtomicUsize::new(0),
            redeclare: tokio::sync::Notify::new(),
            metrics,
        }
    }

    fn set_connected(&self, connected: bool) {
        self.connected.store(connected, Ordering::SeqCst);
        self.metrics.broker_connected.set(i64::from(connected));
    }

    /// A channel was closed under a batch (the exchange may be gone): not ready, and no
    /// publish is attempted, until the supervisor has declared the topology again.
    fn topology_lost(&self) {
        self.set_connected(false);
        self.redeclare.notify_one();
    }

    fn set_blocked(&self, blocked: bool) {
        self.blocked.store(blocked, Ordering::SeqCst);
        self.metrics.broker_blocked.set(i64::from(blocked));
    }

    fn channel_opened(&self) {
        self.open_channels.fetch_add(1, Ordering::SeqCst);
        self.metrics.open_channels.inc();
    }

    fn channel_closed(&self) {
        self.open_channels.fetch_sub(1, Ordering::SeqCst);
        self.metrics.open_channels.dec();
    }
}

/// The handle requests publish through; cheap to share behind an `Arc`.
pub struct Publisher {
    jobs: async_channel::Sender<Job>,
    shared: Arc<Shared>,
    publish_timeout: Duration,
    workers: std::sync::Mutex<Vec<JoinHandle<()>>>,
    supervisor: std::sync::Mutex<Option<JoinHandle<()>>>,
    stop_supervisor: CancellationToken,
}

impl Publisher {
    /// Starts the connection supervisor and the channel workers; returns at once.
    pub fn start(settings: &AmqpSettings, metrics: Arc<Metrics>) -> Self {
        topology::log_policy(settings);
        let shared = Arc::new(Shared::new(metrics));
        let (connection_tx, connection_rx) = watch::channel(None);
        let (jobs_tx, jobs_rx) = async_channel::bounded(JOB_QUEUE_CAPACITY);
        let stop_supervisor = CancellationToken::new();
        let supervisor = tokio::spawn(connection::supervise(
            settings.clone(),
            shared.clone(),
            connection_tx,
            stop_supervisor.clone(),
        ));
        let workers = (0..settings.channels)
            .map(|id| {
                tokio::spawn(worker::run(
                    worker::WorkerConfig::new(id, settings),
                    shared.clone(),
                    connection_rx.clone(),
                    jobs_rx.clone(),
                ))
            })
            .collect();
        Self {
            jobs: jobs_tx,
            shared,
            publish_timeout: settings.publish_timeout(),
            workers: std::sync::Mutex::new(workers),
            supervisor: std::sync::Mutex::new(Some(supervisor)),
            stop_supervisor,
        }
    }

    /// True when a publish could succeed now: connected, topology declared, a confirm
    /// channel open, not blocked, not shut down.
    pub fn ready(&self) -> bool {
        self.unavailable_reason().is_none()
    }

    fn unavailable_reason(&self) -> Option<PublishError> {
        if self.jobs.is_closed() {
            Some(PublishError::ShuttingDown)
        } else if !self.shared.connected.load(Ordering::SeqCst)
            || self.shared.open_channels.load(Ordering::SeqCst) == 0
        {
            Some(PublishError::Unavailable)
        } else if self.shared.blocked.load(Ordering::SeqCst) {
            Some(PublishError::Blocked)
        } else {
            None
        }
    }

    /// Publishes every event and resolves `Ok` only when the broker confirmed and routed all.
    pub async fn publish(
        &self,
        events: Vec<Event>,
        received: Received,
    ) -> Result<(), PublishError> {
        if let Some(reason) = self.unavailable_reason() {
            return Err(reason);
        }
        let deadline = Instant::now() + self.publish_timeout;
        let (reply, outcome) = oneshot::channel();
        let job = Job {
            events,
            received,
            deadline,
            reply,
        };
        self.jobs.try_send(job).map_err(|e| match e {
            async_channel::TrySendError::Full(_) => PublishError::Overloaded,
            async_channel::TrySendError::Closed(_) => PublishError::ShuttingDown,
        })?;
        match tokio::time::timeout_at(deadline, outcome).await {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => Err(PublishError::ChannelClosed("publisher stopped".into())),
            Err(_) => Err(PublishError::Timeout),
        }
    }

    /// Stops taking jobs, lets the workers finish the ones queued, then closes the connection.
    pub async fn shutdown(&self) {
        self.jobs.close();
        let workers = std::mem::take(&mut *self.workers.lock().unwrap_or_else(|e| e.into_inner()));
        for worker in workers {
            let _ = worker.await;
        }
        self.stop_supervisor.cancel();
        let supervisor = self
            .supervisor
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        if let Some(supervisor) = supervisor {
            let _ = supervisor.await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A publisher that looks connected but has no worker: its job queue only fills.
    fn without_workers(capacity: usize) -> (Arc<Publisher>, async_channel::Receiver<Job>) {
        let shared = Arc::new(Shared::new(Arc::new(Metrics::new())));
        shared.set_connected(true);
        shared.channel_opened();
        let (jobs, queued) = async_channel::bounded(capacity);
        let publisher = Publisher {
            jobs,
            shared,
            publish_timeout: Duration::from_secs(5),
            workers: std::sync::Mutex::new(Vec::new()),
            supervisor: std::sync::Mutex::new(None),
            stop_supervisor: CancellationToken::new(),
        };
        (Arc::new(publisher), queued)
    }

    #[tokio::test]
    async fn a_full_job_queue_answers_overloaded_at_once_and_keeps_the_queued_job() {
        let (publisher, queued) = without_workers(1);
        let first = tokio::spawn({
            let publisher = publisher.clone();
            async move { publisher.publish(Vec::new(), Received::now("test")).await }
        });
        while queued.is_empty() {
            tokio::task::yield_now().await;
        }

        let started = Instant::now();
        let second = publisher.publish(Vec::new(), Received::now("test")).await;
        assert_eq!(second, Err(PublishError::Overloaded));
        assert_eq!(second.unwrap_err().code(), "overloaded");
        assert!(started.elapsed() < Duration::from_millis(100));

        let job = queued.recv().await.expect("the first job stays queued");
        job.reply.send(Ok(())).expect("its requester still waits");
        assert_eq!(first.await.expect("task"), Ok(()));
    }
}
