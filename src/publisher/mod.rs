//! Publishing events to RabbitMQ: a pool of confirm channels on the supervised connection
//! (`amqp::Link`), and the handle the HTTP layer awaits.
//!
//! A request becomes a [`Job`] on a shared queue. Each confirm channel is owned by one worker
//! task that takes the queued jobs and publishes their events while earlier confirms are still
//! outstanding, and answers each job at its own confirms; a `basic.return` is matched to its
//! request by `message_id`, not by which confirm lapin attached it to (`inflight/mod.rs` says why
//! that is exact).

mod inflight;
mod job;
pub mod message;
mod state;
mod topology;
mod watchdog;
mod worker;

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::amqp::Link;
use crate::event::Event;
use crate::metrics::Metrics;
use crate::settings::AmqpSettings;
use job::Job;
pub use job::{PublishError, Received};
use state::Shared;

/// Requests waiting for a channel, at most; past it callbacks get 503.
const JOB_QUEUE_CAPACITY: usize = 4096;

/// The handle requests publish through; cheap to share behind an `Arc`.
pub struct Publisher {
    jobs: async_channel::Sender<Job>,
    shared: Arc<Shared>,
    publish_timeout: Duration,
    workers: std::sync::Mutex<Vec<JoinHandle<()>>>,
    link: Link,
}

impl Publisher {
    /// Starts the supervised connection and the channel workers; returns at once.
    pub fn start(settings: &AmqpSettings, metrics: Arc<Metrics>) -> Self {
        topology::log_policy(settings);
        let topology = topology::ForwarderTopology(settings.clone());
        let link = Link::start(settings, topology, metrics.clone());
        let shared = Arc::new(Shared::new(link.state().clone(), metrics));
        let (jobs_tx, jobs_rx) = async_channel::bounded(JOB_QUEUE_CAPACITY);
        let workers = (0..settings.channels)
            .map(|id| {
                tokio::spawn(worker::run(
                    worker::WorkerConfig::new(id, settings),
                    shared.clone(),
                    link.connection(),
                    jobs_rx.clone(),
                ))
            })
            .collect();
        Self {
            jobs: jobs_tx,
            shared,
            publish_timeout: settings.publish_timeout,
            workers: std::sync::Mutex::new(workers),
            link,
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
        } else if !self.shared.link.connected() || self.shared.open_channels() == 0 {
            Some(PublishError::Unavailable)
        } else if self.shared.link.blocked() {
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
        self.link.stop().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A publisher that looks connected but has no worker: its job queue only fills.
    fn without_workers(capacity: usize) -> (Arc<Publisher>, async_channel::Receiver<Job>) {
        let metrics = Arc::new(Metrics::new());
        let link = Link::connected_without_broker(metrics.clone());
        let shared = Arc::new(Shared::new(link.state().clone(), metrics));
        shared.channel_opened();
        let (jobs, queued) = async_channel::bounded(capacity);
        let publisher = Publisher {
            jobs,
            shared,
            publish_timeout: Duration::from_secs(5),
            workers: std::sync::Mutex::new(Vec::new()),
            link,
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
