//! Connecting with failover across the configured URIs, declaring a topology on each new
//! connection, rounds apart by the backoff.

use std::time::Duration;

use lapin::tcp::OwnedTLSConfig;
use lapin::{Connection, ConnectionProperties};
use tokio_util::sync::CancellationToken;
use tracing::warn;

use super::backoff::Backoff;
use super::declare::{DeclareError, Topology};
use crate::settings::{AmqpSettings, redact_uri};

/// Longest wait for one broker to accept a connection and declare the topology on it, before
/// the next URI is tried. Independent of `amqp.publish_timeout_ms`, which bounds confirms only.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

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

/// The first URI, starting at `first`, that connects and accepts `topology`; `Ok(None)` when
/// none did this round (or `stop` fired), `Err` on a fatal declare.
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
