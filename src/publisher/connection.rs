//! The connection supervisor: connect (with failover across URIs), declare topology, watch
//! for loss and alarms, reconnect with backoff.

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use lapin::Connection;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::state::Shared;
use super::topology;
use crate::amqp::{Backoff, connect};
use crate::settings::{AmqpSettings, redact_uri};

/// How often a live connection's status is checked besides its events.
const STATUS_POLL: Duration = Duration::from_millis(250);
/// Longest wait for the broker to acknowledge a connection close (a stuck broker must not
/// hold up shutdown).
const CLOSE_TIMEOUT: Duration = Duration::from_secs(3);

/// Keeps one connection up until `stop`, publishing it (or `None` while down) to the workers.
pub(super) async fn supervise(
    settings: AmqpSettings,
    shared: Arc<Shared>,
    connection_tx: watch::Sender<Option<Arc<Connection>>>,
    stop: CancellationToken,
) {
    let uris = settings.uris();
    let mut next_uri = 0;
    let mut backoff = Backoff::new(&settings);
    let mut connections_opened = 0u64;
    let topology = topology::ForwarderTopology(&settings);
    while !stop.is_cancelled() {
        let connected = connect(&uris, next_uri, &settings, &stop, &topology, &mut backoff).await;
        // The forwarder's topology never fails for good, so only a stop ends the attempts.
        let Ok(Some((connection, index))) = connected else {
            break;
        };
        connections_opened += 1;
        if connections_opened > 1 {
            shared.metrics.reconnects.inc();
        }
        let connection = Arc::new(connection);
        let mut events = connection.events_listener();
        shared.set_blocked(connection.status().blocked());
        shared.set_connected(true);
        connection_tx.send_replace(Some(connection.clone()));
        info!(uri = %redact_uri(&uris[index]), "connected to the broker, topology declared");

        let mut poll = tokio::time::interval(STATUS_POLL);
        let stopping = loop {
            tokio::select! {
                _ = stop.cancelled() => break true,
                _ = poll.tick() => {
                    if !connection.status().connected() {
                        break false;
                    }
                }
                _ = shared.redeclare.notified() => {
                    // A channel was closed under us (e.g. the exchange was deleted): declare
                    // the topology again, or start over on a fresh connection.
                    let declared = tokio::time::timeout(
                        crate::amqp::REDECLARE_TIMEOUT,
                        topology::declare(&connection, &settings),
                    )
                    .await;
                    if !matches!(declared, Ok(Ok(()))) {
                        warn!(?declared, "re-declaring the topology failed, reconnecting");
                        break false;
                    }
                    shared.set_connected(true);
                }
                event = events.next() => match event {
                    Some(lapin::Event::ConnectionBlocked(reason)) => {
                        warn!(%reason, "broker blocked publishing");
                        shared.set_blocked(true);
                    }
                    Some(lapin::Event::ConnectionUnblocked) => {
                        info!("broker unblocked publishing");
                        shared.set_blocked(false);
                    }
                    // Channel errors arrive here too; only a dead connection ends this loop.
                    Some(lapin::Event::Error(error)) if !connection.status().connected() => {
                        warn!(%error, "broker connection lost");
                        break false;
                    }
                    Some(_) => {}
                    None => break false,
                },
            }
        };
        shared.set_connected(false);
        shared.set_blocked(false);
        connection_tx.send_replace(None);
        if connection.status().connected() {
            let reason = if stopping {
                "shutting down"
            } else {
                "reconnecting"
            };
            let closed =
                tokio::time::timeout(CLOSE_TIMEOUT, connection.close(200, reason.into())).await;
            if !matches!(closed, Ok(Ok(()))) {
                warn!(?closed, "closing the broker connection");
            }
        }
        if stopping {
            break;
        }
        // Try the next broker first after a loss: the one we were on may be the one that died.
        next_uri = (index + 1) % uris.len();
    }
    info!("broker connection closed");
}
