//! One confirm channel and the task that owns it: open it, take the queued jobs as one batch
//! (`batch.rs` publishes it), replace the channel when it fails.

use std::sync::Arc;
use std::time::Duration;

use lapin::options::ConfirmSelectOptions;
use lapin::types::ShortString;
use lapin::{Channel, Connection};
use tracing::warn;

use super::batch::{publish_batch, reply};
use super::job::{Job, PublishError};
use super::state::Shared;
use crate::amqp::CurrentConnection;
use crate::settings::AmqpSettings;

/// Pause before retrying a channel that failed to open.
const CHANNEL_RETRY: Duration = Duration::from_millis(200);
/// Longest wait for a channel to open and enter confirm mode.
const CHANNEL_OPEN_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest wait for a broken channel to close before it is dropped.
const CHANNEL_CLOSE_TIMEOUT: Duration = Duration::from_secs(1);

/// What a worker needs from the settings.
pub(super) struct WorkerConfig {
    pub(super) id: usize,
    pub(super) exchange: ShortString,
    pub(super) max_batch_events: usize,
}

impl WorkerConfig {
    pub(super) fn new(id: usize, settings: &AmqpSettings) -> Self {
        Self {
            id,
            // A `Name` fits a short string.
            exchange: ShortString::from(settings.exchange.as_str()),
            max_batch_events: settings.max_batch_events,
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
    loop {
        let current = connection_rx.borrow_and_update().clone();
        let Some(connection) = current else {
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
                warn!(worker = config.id, %error, "opening a confirm channel failed");
                tokio::time::sleep(CHANNEL_RETRY).await;
                continue;
            }
        };
        shared.channel_opened();
        let finished = serve_channel(&config, &shared, &channel, &mut connection_rx, &jobs).await;
        shared.channel_closed();
        if channel.status().connected() {
            let _ =
                tokio::time::timeout(CHANNEL_CLOSE_TIMEOUT, channel.close(200, "replaced".into()))
                    .await;
        }
        if finished {
            return;
        }
    }
}

/// Publishes batches on `channel` while it stays healthy; true when the queue is closed.
async fn serve_channel(
    config: &WorkerConfig,
    shared: &Shared,
    channel: &Channel,
    connection_rx: &mut CurrentConnection,
    jobs: &async_channel::Receiver<Job>,
) -> bool {
    loop {
        if !channel.status().connected() {
            return false;
        }
        let first = tokio::select! {
            biased;
            _ = connection_rx.changed() => return false,
            job = jobs.recv() => match job {
                Ok(job) => job,
                Err(_) => return true,
            },
        };
        let mut batch = vec![first];
        let mut events = batch[0].events.len();
        while events < config.max_batch_events {
            match jobs.try_recv() {
                Ok(job) => {
                    events += job.events.len();
                    batch.push(job);
                }
                Err(_) => break,
            }
        }
        if !publish_batch(config, shared, channel, batch).await {
            return false;
        }
    }
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
