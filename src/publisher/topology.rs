//! Declares the exchange and the configured quorum queues, so a fresh install loses nothing.

use lapin::options::{ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{Connection, ExchangeKind};

use crate::settings::AmqpSettings;

/// Declares everything on a short-lived channel; an error says which object failed.
pub(super) async fn declare(
    connection: &Connection,
    settings: &AmqpSettings,
) -> Result<(), String> {
    let channel = connection
        .create_channel()
        .await
        .map_err(|e| format!("opening a channel: {e}"))?;
    channel
        .exchange_declare(
            ShortString::from(settings.exchange.as_str()),
            ExchangeKind::Topic,
            ExchangeDeclareOptions {
                durable: true,
                ..ExchangeDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await
        .map_err(|e| format!("declaring exchange `{}`: {e}", settings.exchange))?;
    let mut quorum = FieldTable::default();
    quorum.insert(
        "x-queue-type".into(),
        AMQPValue::LongString(LongString::from("quorum")),
    );
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
