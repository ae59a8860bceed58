//! A supervised connection: kept up until stopped (failover across URIs, backoff, the topology
//! declared on every new connection and again on request), with its state readable by anyone
//! above: connected, blocked by an alarm, and the live connection to open channels on.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use futures_util::StreamExt;
use lapin::Connection;
use tokio::sync::{Notify, watch};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::backoff::Backoff;
use super::connect::connect;
use super::declare::Topology;
use crate::metrics::Metrics;
use crate::settings::{AmqpSettings, redact_uri};

/// Longest wait to declare the topology again on a live connection after a channel lost it
/// (an exchange deleted under the forwarder), before the connection is replaced.
pub const REDECLARE_TIMEOUT: Duration = Duration::from_secs(5);
/// How often a live connection's status is checked besides its events.
const STATUS_POLL: Duration = Duration::from_millis(250);
/// Longest wait for the broker to acknowledge a connection close (a stuck broker must not
/// hold up shutdown).
const CLOSE_TIMEOUT: Duration = Duration::from_secs(3);

/// The live connection, or `None` while there is none.
pub type CurrentConnection = watch::Receiver<Option<Arc<Connection>>>;

/// The connection's state; only the supervisor writes it, except [`LinkState::topology_lost`].
pub struct LinkState {
    connected: AtomicBool,
    blocked: AtomicBool,
    /// Raised by a user whose channel the broker closed: the topology may be gone.
    redeclare: Notify,
    metrics: Arc<Metrics>,
}

impl LinkState {
    fn new(metrics: Arc<Metrics>) -> Self {
        Self {
            connected: AtomicBool::new(false),
            blocked: AtomicBool::new(false),
            redeclare: Notify::new(),
            metrics,
        }
    }

    /// Connected with the topology declared.
    pub fn connected(&self) -> bool {
        self.connected.load(Ordering::SeqCst)
    }

    /// The broker blocks publishing (a memory or disk alarm).
    pub fn blocked(&self) -> bool {
        self.blocked.load(Ordering::SeqCst)
    }

    /// A channel was closed under its user (the exchange may be gone): not connected, until
    /// the supervisor has declared the topology again.
    pub fn topology_lost(&self) {
        self.set_connected(false);
        self.redeclare.notify_one();
    }

    fn set_connected(&self, connected: bool) {
        self.connected.store(connected, Ordering::SeqCst);
        self.metrics.broker_connected.set(i64::from(connected));
    }

    fn set_blocked(&self, blocked: bool) {
        self.blocked.store(blocked, Ordering::SeqCst);
        self.metrics.broker_blocked.set(i64::from(blocked));
    }
}

/// The handle: the state, the connection to open channels on, and the supervisor to stop.
pub struct Link {
    state: Arc<LinkState>,
    connection: CurrentConnection,
    supervisor: std::sync::Mutex<Option<JoinHandle<()>>>,
    stop: CancellationToken,
}

impl Link {
    /// Starts supervising a connection that declares `topology`; returns at once.
    pub fn start(
        settings: &AmqpSettings,
        topology: impl Topology + Send + 'static,
        metrics: Arc<Metrics>,
    ) -> Self {
        let state = Arc::new(LinkState::new(metrics));
        let (connection_tx, connection) = watch::channel(None);
        let stop = CancellationToken::new();
        let supervisor = tokio::spawn(supervise(
            settings.clone(),
            topology,
            state.clone(),
            connection_tx,
            stop.clone(),
        ));
        Self {
            state,
            connection,
            supervisor: std::sync::Mutex::new(Some(supervisor)),
            stop,
        }
    }

    /// A link with no supervisor that reports itself connected: for tests of what sits above.
    #[cfg(test)]
    pub(crate) fn connected_without_broker(metrics: Arc<Metrics>) -> Self {
        let state = Arc::new(LinkState::new(metrics));
        state.set_connected(true);
        Self {
            state,
            connection: watch::channel(None).1,
            supervisor: std::sync::Mutex::new(None),
            stop: CancellationToken::new(),
        }
    }

    pub fn state(&self) -> &Arc<LinkState> {
        &self.state
    }

    /// The live connection, to open channels on; it changes on every reconnect.
    pub fn connection(&self) -> CurrentConnection {
        self.connection.clone()
    }

    /// Closes the connection and waits for the supervisor to end.
    pub async fn stop(&self) {
        self.stop.cancel();
        let supervisor = self
            .supervisor
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        if let Some(supervisor) = supervisor {
            let _ = supervisor.await;
        }
    }
}

/// Keeps one connection up until `stop`, publishing it (or `None` while down).
async fn supervise(
    settings: AmqpSettings,
    topology: impl Topology,
    state: Arc<LinkState>,
    connection_tx: watch::Sender<Option<Arc<Connection>>>,
    stop: CancellationToken,
) {
    let uris = settings.uris();
    let mut next_uri = 0;
    let mut backoff = Backoff::new(&settings);
    let mut connections_opened = 0u64;
    while !stop.is_cancelled() {
        let connected = connect(&uris, next_uri, &settings, &stop, &topology, &mut backoff).await;
        let (connection, index) = match connected {
            Ok(Some(connected)) => connected,
            Ok(None) => break,
            Err(error) => {
                warn!(%error, "the topology can never be declared; not connecting again");
                break;
            }
        };
        connections_opened += 1;
        if connections_opened > 1 {
            state.metrics.reconnects.inc();
        }
        let connection = Arc::new(connection);
        let mut events = connection.events_listener();
        state.set_blocked(connection.status().blocked());
        state.set_connected(true);
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
                _ = state.redeclare.notified() => {
                    // A channel was closed under its user (e.g. the exchange was deleted):
                    // declare the topology again, or start over on a fresh connection.
                    let declared =
                        tokio::time::timeout(REDECLARE_TIMEOUT, topology.declare(&connection)).await;
                    if !matches!(declared, Ok(Ok(()))) {
                        warn!(?declared, "re-declaring the topology failed, reconnecting");
                        break false;
                    }
                    state.set_connected(true);
                }
                event = events.next() => match event {
                    Some(lapin::Event::ConnectionBlocked(reason)) => {
                        warn!(%reason, "broker blocked publishing");
                        state.set_blocked(true);
                    }
                    Some(lapin::Event::ConnectionUnblocked) => {
                        info!("broker unblocked publishing");
                        state.set_blocked(false);
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
        state.set_connected(false);
        state.set_blocked(false);
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
