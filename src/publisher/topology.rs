//! Declares the exchange and the configured quorum queues, so a fresh install loses nothing.

use futures_util::future::BoxFuture;
use lapin::Connection;
use lapin::options::{QueueBindOptions, QueueDeclareOptions};
use lapin::types::{FieldTable, ShortString};

use crate::amqp::{DeclareError, Topology, declare_exchange, quorum_arguments};
use crate::settings::AmqpSettings;

/// The exchange and `amqp.queues`, as `serve` declares them.
pub(super) struct ForwarderTopology<'a>(pub &'a AmqpSettings);

impl Topology for ForwarderTopology<'_> {
    fn declare<'a>(
        &'a self,
        connection: &'a Connection,
    ) -> BoxFuture<'a, Result<(), DeclareError>> {
        // A running forwarder keeps retrying whatever the broker says: it must not exit because
        // a queue's arguments changed under it (each warning names the argument).
        Box::pin(async move {
            declare(connection, self.0)
                .await
                .map_err(DeclareError::Retry)
        })
    }
}

/// Declares everything on a short-lived channel; an error says which object failed.
pub(super) async fn declare(
    connection: &Connection,
    settings: &AmqpSettings,
) -> Result<(), String> {
    let channel = connection
        .create_channel()
        .await
        .map_err(|e| format!("opening a channel: {e}"))?;
    declare_exchange(&channel, &settings.exchange).await?;
    let quorum = quorum_arguments();
    for queue in &settings.queues {
        channel
            .queue_declare(
                ShortString::from(queue.name.as_str()),
                QueueDeclareOptions {
                    durable: true,
                    ..QueueDeclareOptions::default()
                },
                quorum.clone(),
            )
            .await
            .map_err(|e| format!("declaring quorum queue `{}`: {e}", queue.name))?;
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
