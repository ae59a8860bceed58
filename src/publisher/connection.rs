//! The connection supervisor: connect (with failover across URIs), declare topology, watch
//! for loss and alarms, reconnect with backoff.

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use lapin::{Connection, ConnectionProperties};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::{Shared, topology};
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
    while !stop.is_cancelled() {
        let Some((connection, index)) = connect_any(&uris, next_uri, &settings, &stop).await else {
            let delay = backoff.next_delay();
            warn!(
                retry_in_ms = delay.as_millis() as u64,
                "no broker reachable"
            );
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = tokio::time::sleep(delay) => continue,
            }
        };
        backoff.reset();
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
                        settings.publish_timeout(),
                        topology::declare(&connection, &settings),
                    )
                    .await;
                    if !matches!(declared, Ok(Ok(()))) {
                        warn!(?declared, "re-declaring the topology failed, reconnecting");
                        break false;
                    }
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

/// The first URI, starting at `first`, that connects and accepts the topology.
async fn connect_any(
    uris: &[String],
    first: usize,
    settings: &AmqpSettings,
    stop: &CancellationToken,
) -> Option<(Connection, usize)> {
    for offset in 0..uris.len() {
        let index = (first + offset) % uris.len();
        let uri = &uris[index];
        let attempt = async {
            let connection = Connection::connect(uri, properties())
                .await
                .map_err(|e| e.to_string())?;
            if let Err(error) = topology::declare(&connection, settings).await {
                let _ = connection.close(200, "topology failed".into()).await;
                return Err(error);
            }
            Ok(connection)
        };
        let outcome = tokio::select! {
            _ = stop.cancelled() => return None,
            outcome = tokio::time::timeout(settings.publish_timeout().max(Duration::from_secs(2)), attempt) => outcome,
        };
        match outcome {
            Ok(Ok(connection)) => return Some((connection, index)),
            Ok(Err(error)) => warn!(uri = %redact_uri(uri), %error, "broker connection failed"),
            Err(_) => warn!(uri = %redact_uri(uri), "broker connection timed out"),
        }
    }
    None
}

fn properties() -> ConnectionProperties {
    ConnectionProperties::default().with_connection_name("bandwidth-forwarder".into())
}

/// Exponential backoff with full jitter between `initial` and `max`.
struct Backoff {
    initial: Duration,
    max: Duration,
    current: Duration,
}

impl Backoff {
    fn new(settings: &AmqpSettings) -> Self {
        let initial = Duration::from_millis(settings.reconnect_initial_ms);
        Self {
            initial,
            max: Duration::from_millis(settings.reconnect_max_ms),
            current: initial,
        }
    }

    fn reset(&mut self) {
        self.current = self.initial;
    }

    fn next_delay(&mut self) -> Duration {
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
            reconnect_initial_ms: 100,
            reconnect_max_ms: 800,
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
