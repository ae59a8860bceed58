//! What `consume` declares: the exchange, its quorum queue bound with each key, and behind it
//! a quorum dead-letter queue reached by at-least-once dead-lettering.

use futures_util::future::BoxFuture;
use lapin::options::{QueueBindOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{Channel, Connection};

use crate::amqp::{
    DeclareError, Topology, declare_exchange, differing_arguments, quorum_arguments,
};

/// A consumer's queue, its bindings and its delivery limit.
pub struct ConsumerTopology<'a> {
    pub exchange: &'a str,
    pub queue: &'a str,
    pub bindings: &'a [String],
    pub max_attempts: u32,
}

/// The dead-letter queue of `queue`.
pub fn dead_letter_queue(queue: &str) -> String {
    format!("{queue}.dead")
}

impl ConsumerTopology<'_> {
    /// The main queue's arguments. A quorum queue dead-letters a message once it has been
    /// returned more than `x-delivery-limit` times, so the limit is `max_attempts - 1`.
    /// At-least-once dead-lettering keeps the message in this queue until the dead-letter
    /// queue has confirmed it; it requires `reject-publish` overflow.
    pub fn queue_arguments(&self) -> FieldTable {
        let mut arguments = quorum_arguments();
        let text = |value: &str| AMQPValue::LongString(LongString::from(value));
        arguments.insert(
            "x-delivery-limit".into(),
            AMQPValue::LongLongInt(i64::from(self.max_attempts.saturating_sub(1))),
        );
        arguments.insert("x-dead-letter-exchange".into(), text(""));
        arguments.insert(
            "x-dead-letter-routing-key".into(),
            text(&dead_letter_queue(self.queue)),
        );
        arguments.insert("x-dead-letter-strategy".into(), text("at-least-once"));
        arguments.insert("x-overflow".into(), text("reject-publish"));
        arguments
    }

    async fn declare_all(&self, connection: &Connection) -> Result<(), DeclareError> {
        let channel = connection
            .create_channel()
            .await
            .map_err(|e| DeclareError::Retry(format!("opening a channel: {e}")))?;
        declare_exchange(&channel, self.exchange)
            .await
            .map_err(DeclareError::Retry)?;
        let dead = dead_letter_queue(self.queue);
        declare_queue(&channel, &dead, quorum_arguments()).await?;
        declare_queue(&channel, self.queue, self.queue_arguments()).await?;
        for key in self.bindings {
            channel
                .queue_bind(
                    ShortString::from(self.queue),
                    ShortString::from(self.exchange),
                    ShortString::from(key.as_str()),
                    QueueBindOptions::default(),
                    FieldTable::default(),
                )
                .await
                .map_err(|e| {
                    DeclareError::Retry(format!("binding `{}` to `{key}`: {e}", self.queue))
                })?;
        }
        let _ = channel.close(200, "topology declared".into()).await;
        Ok(())
    }
}

impl Topology for ConsumerTopology<'_> {
    fn declare<'a>(
        &'a self,
        connection: &'a Connection,
    ) -> BoxFuture<'a, Result<(), DeclareError>> {
        Box::pin(self.declare_all(connection))
    }
}

/// Declares a durable queue; one that exists with other arguments is fatal, and the error
/// carries the broker's sentence, which names the argument that differs.
async fn declare_queue(
    channel: &Channel,
    name: &str,
    arguments: FieldTable,
) -> Result<(), DeclareError> {
    let declared = channel
        .queue_declare(
            ShortString::from(name),
            QueueDeclareOptions {
                durable: true,
                ..QueueDeclareOptions::default()
            },
            arguments,
        )
        .await;
    match declared {
        Ok(_) => Ok(()),
        Err(error) => match differing_arguments(&error) {
            Some(broker_says) => Err(DeclareError::Fatal(format!(
                "queue `{name}` already exists with other arguments ({broker_says}); delete it or \
                 consume with the arguments it has"
            ))),
            None => Err(DeclareError::Retry(format!(
                "declaring quorum queue `{name}`: {error}"
            ))),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_queue_dead_letters_into_its_dead_queue_after_max_attempts() {
        let bindings = ["message.*".to_string()];
        let topology = ConsumerTopology {
            exchange: "ex",
            queue: "receipts",
            bindings: &bindings,
            max_attempts: 5,
        };
        let arguments = topology.queue_arguments();
        let get = |name: &str| {
            arguments
                .inner()
                .get(&ShortString::from(name))
                .cloned()
                .unwrap_or_else(|| panic!("{name} missing"))
        };
        assert_eq!(get("x-delivery-limit"), AMQPValue::LongLongInt(4));
        assert_eq!(
            get("x-dead-letter-routing-key"),
            AMQPValue::LongString("receipts.dead".into())
        );
        assert_eq!(
            get("x-dead-letter-strategy"),
            AMQPValue::LongString("at-least-once".into())
        );
        assert_eq!(
            get("x-overflow"),
            AMQPValue::LongString("reject-publish".into())
        );
        assert_eq!(get("x-queue-type"), AMQPValue::LongString("quorum".into()));
    }
}
