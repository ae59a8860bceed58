//! What a half of the product declares on a connection, and the pieces both halves use: the
//! exchange, quorum queue arguments, and reading the broker's "exists with other arguments".

use futures_util::future::BoxFuture;
use lapin::options::ExchangeDeclareOptions;
use lapin::protocol::{AMQPErrorKind, AMQPSoftError};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{Channel, Connection, ErrorKind, ExchangeKind};

/// Why a topology could not be declared on a fresh connection.
#[derive(Debug)]
pub enum DeclareError {
    /// Worth another try (broker restarting, a channel error).
    Retry(String),
    /// No retry can fix it (an existing queue with other arguments): stop and say so.
    Fatal(String),
}

/// What a half of the product declares on every new connection before using it.
pub trait Topology: Sync {
    /// Declares everything (idempotently); an error says which object failed.
    fn declare<'a>(&'a self, connection: &'a Connection)
    -> BoxFuture<'a, Result<(), DeclareError>>;
}

/// Declares the durable topic exchange every event is published to.
pub async fn declare_exchange(channel: &Channel, exchange: &str) -> Result<(), String> {
    channel
        .exchange_declare(
            ShortString::from(exchange),
            ExchangeKind::Topic,
            ExchangeDeclareOptions {
                durable: true,
                ..ExchangeDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await
        .map_err(|e| format!("declaring exchange `{exchange}`: {e}"))
}

/// The broker's sentence when it refused a declaration because the object exists with other
/// arguments (`PRECONDITION_FAILED`); it names the argument that differs.
pub fn differing_arguments(error: &lapin::Error) -> Option<String> {
    match error.kind() {
        ErrorKind::ProtocolError(amqp)
            if matches!(
                amqp.kind(),
                AMQPErrorKind::Soft(AMQPSoftError::PRECONDITIONFAILED)
            ) =>
        {
            Some(amqp.get_message().to_string())
        }
        _ => None,
    }
}

/// The arguments of a quorum queue.
pub fn quorum_arguments() -> FieldTable {
    let mut arguments = FieldTable::default();
    arguments.insert(
        "x-queue-type".into(),
        AMQPValue::LongString(LongString::from("quorum")),
    );
    arguments
}
