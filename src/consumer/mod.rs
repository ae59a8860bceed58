//! `consume`: one backend's own queue, its handler run for every event, acknowledged only
//! after the handler finished; failures retried and then dead-lettered; duplicates skipped.

mod delivery;
mod handler;
mod probes;
mod replay;
mod topology;
mod window;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::Context;
use futures_util::StreamExt;
use lapin::options::{BasicCancelOptions, BasicConsumeOptions, BasicNackOptions, BasicQosOptions};
use lapin::types::{FieldTable, ShortString};
use lapin::{Channel, Connection};
use tokio::sync::{Mutex, Semaphore};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

pub use handler::{Handler, compact_json};
pub use replay::replay;
pub use topology::{ConsumerTopology, dead_letter_queue};

use crate::amqp::{Backoff, connect};
use crate::settings::Settings;
use probes::ConsumerMetrics;
use window::Window;

/// How long running handlers get to finish after shutdown or a lost connection, beyond
/// their own timeout.
const HANDLER_GRACE: Duration = Duration::from_secs(5);
/// Longest wait for the broker to acknowledge a close.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(3);

/// What `consume` was asked to do.
pub struct ConsumeOptions {
    pub queue: String,
    pub bindings: Vec<String>,
    pub exec: Option<String>,
    pub prefetch: u16,
    pub concurrency: usize,
    pub max_attempts: u32,
    pub handler_timeout: Duration,
    /// Handled keys remembered for duplicate detection, at most.
    pub window_entries: usize,
    /// How long a handled key is remembered.
    pub window_age: Duration,
    /// Where to serve `/healthz`, `/readyz` and `/metrics`, if anywhere.
    pub listen: Option<SocketAddr>,
}

/// Shared by every handler task.
struct State {
    options: ConsumeOptions,
    handler: Handler,
    window: Mutex<Window>,
    metrics: Arc<ConsumerMetrics>,
    /// True while deliveries are being taken (what `/readyz` reports).
    consuming: Arc<AtomicBool>,
    /// The probes' address, for the `consuming` log line.
    probes: Option<SocketAddr>,
}

/// Builds a runtime and consumes until SIGTERM/SIGINT.
pub fn consume(settings: Settings, options: ConsumeOptions) -> anyhow::Result<()> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?
        .block_on(run(settings, options, crate::shutdown::signal()))
}

/// Declares the topology and consumes, reconnecting (with failover across `amqp.uri`) until
/// `shutdown` resolves. An existing queue with other arguments is an error, not a retry.
pub async fn run(
    settings: Settings,
    options: ConsumeOptions,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let stop = CancellationToken::new();
    tokio::spawn({
        let stop = stop.clone();
        async move {
            shutdown.await;
            info!("shutdown requested: finishing running handlers");
            stop.cancel();
        }
    });
    let handler = match &options.exec {
        Some(command) => Handler::Exec {
            command: command.clone(),
            timeout: options.handler_timeout,
        },
        None => Handler::stdout(),
    };
    let metrics = Arc::new(ConsumerMetrics::default());
    let consuming = Arc::new(AtomicBool::new(false));
    let probes = match options.listen {
        Some(addr) => {
            let listener = tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("binding --listen {addr}"))?;
            let bound = listener.local_addr()?;
            tokio::spawn(probes::serve(listener, consuming.clone(), metrics.clone()));
            Some(bound)
        }
        None => None,
    };
    let state = Arc::new(State {
        window: Mutex::new(Window::new(options.window_entries, options.window_age)),
        handler,
        options,
        metrics,
        consuming,
        probes,
    });
    let topology = ConsumerTopology {
        exchange: &settings.amqp.exchange,
        queue: &state.options.queue,
        bindings: &state.options.bindings,
        max_attempts: state.options.max_attempts,
    };
    let uris = settings.amqp.uris();
    let mut backoff = Backoff::new(&settings.amqp);
    let mut next_uri = 0;
    loop {
        let connected = connect(
            &uris,
            next_uri,
            &settings.amqp,
            &stop,
            &topology,
            &mut backoff,
        )
        .await
        .map_err(anyhow::Error::msg)?;
        let Some((connection, index)) = connected else {
            break;
        };
        let lost = consume_on(&connection, &state, &stop).await;
        let _ = tokio::time::timeout(CLOSE_TIMEOUT, connection.close(200, "done".into())).await;
        if !lost {
            break;
        }
        warn!("broker connection lost, reconnecting");
        next_uri = (index + 1) % uris.len();
    }
    info!("stopped");
    Ok(())
}

/// Consumes on one connection until `stop` (false) or until the connection or channel is
/// lost (true); either way running handlers finish first.
async fn consume_on(connection: &Connection, state: &Arc<State>, stop: &CancellationToken) -> bool {
    let options = &state.options;
    let channel = match open_consumer_channel(connection, options).await {
        Ok(channel) => channel,
        Err(error) => {
            warn!(%error, "starting the consumer failed");
            return true;
        }
    };
    let tag = ShortString::from(format!("bandwidth-forwarder-{:016x}", fastrand::u64(..)));
    let mut consumer = match channel
        .basic_consume(
            ShortString::from(options.queue.as_str()),
            tag.clone(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
    {
        Ok(consumer) => consumer,
        Err(error) => {
            warn!(%error, "starting the consumer failed");
            return true;
        }
    };
    state.consuming.store(true, Ordering::SeqCst);
    info!(
        queue = %options.queue,
        bindings = ?options.bindings,
        listen = state.probes.map(|addr| addr.to_string()),
        "consuming"
    );
    let permits = Arc::new(Semaphore::new(options.concurrency));
    let mut running = JoinSet::new();
    let lost = loop {
        let next = tokio::select! {
            biased;
            _ = stop.cancelled() => break false,
            next = consumer.next() => next,
        };
        let delivery = match next {
            Some(Ok(delivery)) => delivery,
            Some(Err(error)) => {
                warn!(%error, "consumer failed");
                break true;
            }
            None => break true,
        };
        let permit = tokio::select! {
            biased;
            _ = stop.cancelled() => {
                // Received but not started: back to the queue for another consumer.
                let requeue = BasicNackOptions {
                    requeue: true,
                    ..BasicNackOptions::default()
                };
                let _ = delivery.nack(requeue).await;
                break false;
            }
            permit = permits.clone().acquire_owned() => permit.expect("the semaphore is never closed"),
        };
        running.spawn(delivery::handle(delivery, state.clone(), permit));
        while running.try_join_next().is_some() {}
    };
    state.consuming.store(false, Ordering::SeqCst);
    if !lost {
        let _ = channel
            .basic_cancel(tag, BasicCancelOptions::default())
            .await;
    }
    let finished = tokio::time::timeout(options.handler_timeout + HANDLER_GRACE, async {
        while running.join_next().await.is_some() {}
    })
    .await;
    if finished.is_err() {
        warn!("handlers still running at the deadline; their events will be redelivered");
    }
    // Whatever was prefetched and not acknowledged goes back to the queue with the channel.
    let _ = tokio::time::timeout(CLOSE_TIMEOUT, channel.close(200, "done".into())).await;
    lost
}

async fn open_consumer_channel(
    connection: &Connection,
    options: &ConsumeOptions,
) -> lapin::Result<Channel> {
    let channel = connection.create_channel().await?;
    channel
        .basic_qos(options.prefetch, BasicQosOptions::default())
        .await?;
    Ok(channel)
}
