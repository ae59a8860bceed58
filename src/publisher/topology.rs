//! Declares the exchange and the configured quorum queues, so a fresh install loses nothing.

use futures_util::future::BoxFuture;
use lapin::Connection;
use lapin::options::{QueueBindOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use tracing::{info, warn};

use crate::amqp::{
    DeclareError, Topology, declare_exchange, differing_arguments, quorum_arguments,
};
use crate::settings::{AmqpSettings, QueueSettings};

/// The exchange and `amqp.queues`, as `serve` declares them.
pub(super) struct ForwarderTopology(pub AmqpSettings);

impl Topology for ForwarderTopology {
    fn declare<'a>(
        &'a self,
        connection: &'a Connection,
    ) -> BoxFuture<'a, Result<(), DeclareError>> {
        // A running forwarder keeps retrying whatever the broker says: it must not exit because
        // a queue's arguments changed under it (each warning names the argument).
        Box::pin(async move {
            declare(connection, &self.0)
                .await
                .map_err(DeclareError::Retry)
        })
    }
}

/// Declares everything on a short-lived channel; an error says which object failed. A queue
/// that exists with other arguments is used as it is, with a warning naming the argument: the
/// forwarder must neither stop nor loop because an operator's queue differs from its settings.
async fn declare(connection: &Connection, settings: &AmqpSettings) -> Result<(), String> {
    let open = || async {
        connection
            .create_channel()
            .await
            .map_err(|e| format!("opening a channel: {e}"))
    };
    let mut channel = open().await?;
    declare_exchange(&channel, &settings.exchange).await?;
    for queue in &settings.queues {
        let declared = channel
            .queue_declare(
                ShortString::from(queue.name.as_str()),
                QueueDeclareOptions {
                    durable: true,
                    ..QueueDeclareOptions::default()
                },
                queue_arguments(queue),
            )
            .await;
        if let Err(error) = declared {
            let Some(broker_says) = differing_arguments(&error) else {
                return Err(format!("declaring quorum queue `{}`: {error}", queue.name));
            };
            warn!(
                queue = %queue.name,
                broker_says,
                "the queue exists with other arguments and is used as it is; to apply amqp.queues, \
                 delete it or set the argument with a policy"
            );
            // The broker closed the channel that asked.
            channel = open().await?;
        }
        for binding in &queue.bindings {
            channel
                .queue_bind(
                    ShortString::from(queue.name.as_str()),
                    ShortString::from(settings.exchange.as_str()),
                    ShortString::from(binding.as_str()),
                    QueueBindOptions::default(),
                    FieldTable::default(),
                )
                .await
                .map_err(|e| format!("binding `{}` to `{binding}`: {e}", queue.name))?;
        }
    }
    let _ = channel.close(200, "topology declared".into()).await;
    Ok(())
}

/// A configured queue's arguments: quorum, and with `max_length` a bounded archive that drops
/// its oldest message rather than refuse a publish.
fn queue_arguments(queue: &QueueSettings) -> FieldTable {
    let mut arguments = quorum_arguments();
    if let Some(max_length) = queue.max_length {
        let max_length = i64::try_from(max_length).unwrap_or(i64::MAX);
        arguments.insert("x-max-length".into(), AMQPValue::LongLongInt(max_length));
        arguments.insert(
            "x-overflow".into(),
            AMQPValue::LongString(LongString::from("drop-head")),
        );
    }
    arguments
}

/// Says at start which queues the forwarder keeps, and what that means for events.
pub(super) fn log_policy(settings: &AmqpSettings) {
    if settings.queues.is_empty() {
        info!(
            "amqp.queues is empty: an event no backend's queue binds is answered 503 (unroutable)"
        );
    }
    for queue in &settings.queues {
        match queue.max_length {
            Some(max_length) => info!(
                queue = %queue.name,
                bindings = ?queue.bindings,
                max_length,
                "declaring a bounded archive queue: it keeps the newest events and drops the oldest"
            ),
            None => info!(
                queue = %queue.name,
                bindings = ?queue.bindings,
                "declaring an unbounded queue: it grows until something consumes it"
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bounded_queue_drops_its_oldest_and_an_unbounded_one_is_plain_quorum() {
        let mut queue = QueueSettings {
            name: "q".parse().expect("a name"),
            bindings: vec!["#".into()],
            max_length: Some(3),
        };
        let bounded = queue_arguments(&queue);
        let get = |arguments: &FieldTable, name: &str| {
            arguments.inner().get(&ShortString::from(name)).cloned()
        };
        assert_eq!(
            get(&bounded, "x-max-length"),
            Some(AMQPValue::LongLongInt(3))
        );
        assert_eq!(
            get(&bounded, "x-overflow"),
            Some(AMQPValue::LongString("drop-head".into()))
        );
        queue.max_length = None;
        assert_eq!(queue_arguments(&queue), quorum_arguments());
    }
}
