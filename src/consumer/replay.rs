//! `replay`: moves a consumer's dead-lettered events back to its queue, each removed from
//! `NAME.dead` only after the broker confirmed it in `NAME`, so none can be lost in between.

use futures_util::future::BoxFuture;
use lapin::options::{
    BasicAckOptions, BasicGetOptions, BasicNackOptions, BasicPublishOptions, ConfirmSelectOptions,
    QueueDeclareOptions,
};
use lapin::types::{FieldTable, ShortString};
use lapin::{Confirmation, Connection};
use tokio_util::sync::CancellationToken;
use tracing::info;

use super::topology::dead_letter_queue;
use crate::amqp::{Backoff, DeclareError, Topology, connect};
use crate::settings::Settings;

/// Queues that must already exist; replay declares nothing.
struct Existing<'a>(&'a [String]);

impl Topology for Existing<'_> {
    fn declare<'a>(
        &'a self,
        connection: &'a Connection,
    ) -> BoxFuture<'a, Result<(), DeclareError>> {
        Box::pin(async move {
            for queue in self.0 {
                let channel = connection
                    .create_channel()
                    .await
                    .map_err(|e| DeclareError::Retry(format!("opening a channel: {e}")))?;
                let passive = QueueDeclareOptions {
                    passive: true,
                    ..QueueDeclareOptions::default()
                };
                channel
                    .queue_declare(
                        ShortString::from(queue.as_str()),
                        passive,
                        FieldTable::default(),
                    )
                    .await
                    .map_err(|e| DeclareError::Fatal(format!("queue `{queue}`: {e}")))?;
                let _ = channel.close(200, "checked".into()).await;
            }
            Ok(())
        })
    }
}

/// Moves up to `limit` events (all, without one) from `queue.dead` to `queue`; how many.
pub async fn replay(settings: &Settings, queue: &str, limit: Option<u64>) -> anyhow::Result<u64> {
    let dead = dead_letter_queue(queue);
    let queues = [queue.to_owned(), dead.clone()];
    let uris = settings.amqp.uris();
    let stop = CancellationToken::new();
    let connected = connect(
        &uris,
        0,
        &settings.amqp,
        &stop,
        &Existing(&queues),
        &mut Backoff::new(&settings.amqp),
    )
    .await
    .map_err(anyhow::Error::msg)?;
    let Some((connection, _)) = connected else {
        anyhow::bail!("no broker reachable");
    };
    let channel = connection.create_channel().await?;
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await?;
    let mut moved = 0;
    while limit.is_none_or(|limit| moved < limit) {
        let Some(got) = channel
            .basic_get(
                ShortString::from(dead.as_str()),
                BasicGetOptions { no_ack: false },
            )
            .await?
        else {
            break;
        };
        let delivery = got.delivery;
        let confirmation = channel
            .basic_publish(
                ShortString::from(""),
                ShortString::from(queue),
                BasicPublishOptions {
                    mandatory: true,
                    ..BasicPublishOptions::default()
                },
                &delivery.data,
                delivery.properties.clone(),
            )
            .await?
            .await?;
        if !matches!(confirmation, Confirmation::Ack(None)) {
            let _ = delivery
                .nack(BasicNackOptions {
                    requeue: true,
                    ..BasicNackOptions::default()
                })
                .await;
            anyhow::bail!(
                "`{queue}` did not take an event back ({confirmation:?}); it stays in `{dead}`"
            );
        }
        delivery.ack(BasicAckOptions::default()).await?;
        moved += 1;
    }
    let _ = connection.close(200, "replayed".into()).await;
    info!(queue, from = %dead, replayed = moved, "dead-lettered events returned to the queue");
    Ok(moved)
}
