//! AMQP plumbing shared by `serve` and `consume`: connecting with failover across the
//! configured URIs, declaring a topology on each new connection, and reconnect backoff.

use std::time::Duration;

use futures_util::future::BoxFuture;
use lapin::options::ExchangeDeclareOptions;
use lapin::protocol::{AMQPErrorKind, AMQPSoftError};
use lapin::tcp::OwnedTLSConfig;
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{Channel, Connection, ConnectionProperties, ErrorKind, ExchangeKind};
use tokio_util::sync::CancellationToken;
use tracing::warn;

use crate::settings::{AmqpSettings, redact_uri};

/// Longest wait for one broker to accept a connection and declare the topology on it, before
/// the next URI is tried. Independent of `amqp.publish_timeout_ms`, which bounds confirms only.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Longest wait to declare the topology again on a live connection after a channel lost it
/// (an exchange deleted under the forwarder), before the connection is replaced.
pub const REDECLARE_TIMEOUT: Duration = Duration::from_secs(5);

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

/// Connects to the first URI, starting at `first`, that accepts `topology`, rounds apart by
/// `backoff`; `Ok(None)` once `stop` fires, `Err` when the topology can never be declared.
pub async fn connect(
    uris: &[String],
    first: usize,
    settings: &AmqpSettings,
    stop: &CancellationToken,
    topology: &impl Topology,
    backoff: &mut Backoff,
) -> Result<Option<(Connection, usize)>, String> {
    loop {
        if let Some(connected) = connect_any(uris, first, settings, stop, topology).await? {
            backoff.reset();
            return Ok(Some(connected));
        }
        let delay = backoff.next_delay();
        warn!(
            retry_in_ms = delay.as_millis() as u64,
            "no broker reachable"
        );
        tokio::select! {
            _ = stop.cancelled() => return Ok(None),
            _ = tokio::time::sleep(delay) => {}
        }
    }
}

/// The first URI, starting at `first`, that connects and accepts `topology`; `Ok(None)` when none did this round (or `stop` fired), `Err` on a fatal declare.
async fn connect_any(
    uris: &[String],
    first: usize,
    settings: &AmqpSettings,
    stop: &CancellationToken,
    topology: &impl Topology,
) -> Result<Option<(Connection, usize)>, String> {
    for offset in 0..uris.len() {
        let index = (first + offset) % uris.len();
        let uri = &uris[index];
        let attempt = async {
            let connection = open(uri, settings).await.map_err(DeclareError::Retry)?;
            if let Err(error) = topology.declare(&connection).await {
                let _ = connection.close(200, "topology failed".into()).await;
                return Err(error);
            }
            Ok(connection)
        };
        let outcome = tokio::select! {
            _ = stop.cancelled() => return Ok(None),
            outcome = tokio::time::timeout(CONNECT_TIMEOUT, attempt) => outcome,
        };
        match outcome {
            Ok(Ok(connection)) => return Ok(Some((connection, index))),
            Ok(Err(DeclareError::Fatal(error))) => return Err(error),
            Ok(Err(DeclareError::Retry(error))) => {
                warn!(uri = %redact_uri(uri), %error, "broker connection failed")
            }
            Err(_) => warn!(uri = %redact_uri(uri), "broker connection timed out"),
        }
    }
    Ok(None)
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

/// Opens a connection; `amqps://` trusts the system's CAs and those of `amqp.tls_ca_file`
/// (read at every connect, so a replaced file applies at the next reconnect). A URI never
/// falls back from TLS to plain text.
async fn open(uri: &str, settings: &AmqpSettings) -> Result<Connection, String> {
    let cert_chain = match settings.tls_ca_file.as_str() {
        "" => None,
        path => Some(
            std::fs::read_to_string(path)
                .map_err(|e| format!("reading amqp.tls_ca_file `{path}`: {e}"))?,
        ),
    };
    let tls = OwnedTLSConfig {
        identity: None,
        cert_chain,
    };
    let runtime = lapin::runtime::default_runtime().map_err(|e| e.to_string())?;
    Connection::connect_with_config(uri, properties(), tls, runtime)
        .await
        .map_err(|e| e.to_string())
}

fn properties() -> ConnectionProperties {
    ConnectionProperties::default().with_connection_name("bandwidth-forwarder".into())
}

/// Exponential backoff with full jitter between `initial` and `max`.
pub struct Backoff {
    initial: Duration,
    max: Duration,
    current: Duration,
}

impl Backoff {
    pub fn new(settings: &AmqpSettings) -> Self {
        let initial = settings.reconnect_initial;
        Self {
            initial,
            max: settings.reconnect_max,
            current: initial,
        }
    }

    pub fn reset(&mut self) {
        self.current = self.initial;
    }

    pub fn next_delay(&mut self) -> Duration {
        let ceiling = self.current;
        self.current = (self.current * 2).min(self.max);
        let jitter_ms = fastrand::u64(0..=ceiling.as_millis() as u64 / 2);
        ceiling / 2 + Duration::from_millis(jitter_ms)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_to_the_cap_and_resets() {
        let settings = AmqpSettings {
            reconnect_initial: Duration::from_millis(100),
            reconnect_max: Duration::from_millis(800),
            ..AmqpSettings::default()
        };
        let mut backoff = Backoff::new(&settings);
        let delays: Vec<Duration> = (0..6).map(|_| backoff.next_delay()).collect();
        for (delay, ceiling) in delays.iter().zip([100, 200, 400, 800, 800, 800]) {
            assert!(*delay >= Duration::from_millis(ceiling / 2), "{delays:?}");
            assert!(*delay <= Duration::from_millis(ceiling), "{delays:?}");
        }
        backoff.reset();
        assert!(backoff.next_delay() <= Duration::from_millis(100));
    }
}
