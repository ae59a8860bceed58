//! The application: bind, serve connections, drain and stop.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use arc_swap::ArcSwap;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::Semaphore;
use tokio_io_timeout::TimeoutStream;
use tracing::{debug, info, warn};

use crate::access::Access;
use crate::http::{AppState, error_body, handle, new_request_id};
use crate::metrics::Metrics;
use crate::publisher::Publisher;
use crate::settings::Settings;
use crate::shutdown::Lifecycle;

/// How long open connections get to finish after the drain, before they are dropped.
const CONNECTION_CLOSE_GRACE: Duration = Duration::from_secs(2);
/// Longest time spent telling a connection over `http.max_connections` to go away.
const REFUSAL_WRITE_TIMEOUT: Duration = Duration::from_secs(1);

/// Binds the HTTP listener with an accept queue of `backlog` connections (the kernel caps it at
/// `net.core.somaxconn`). The usual 128 is too short for a burst of new connections: once it
/// is full the kernel drops their SYNs, and each drop costs a client a second or more.
fn bind_listener(addr: SocketAddr, backlog: u32) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(backlog)
}

/// Answers a connection over the cap with a 503 and closes it, without reading the request.
async fn refuse_connection(mut stream: TcpStream, retry_after_secs: u64) {
    let body = error_body(
        "too_many_connections",
        "the server is at its connection limit",
    );
    let response = format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\nretry-after: {retry_after_secs}\r\n\
         x-request-id: {}\r\nconnection: close\r\ncontent-length: {}\r\n\r\n{body}",
        new_request_id(),
        body.len()
    );
    let _ = tokio::time::timeout(REFUSAL_WRITE_TIMEOUT, async {
        stream.write_all(response.as_bytes()).await?;
        stream.shutdown().await
    })
    .await;
}

/// Builds the runtime `runtime.worker_threads` asks for and serves until SIGTERM/SIGINT;
/// SIGHUP re-reads the settings from `config` (as at start) and applies the `[auth]` section.
pub fn serve(settings: Settings, config: Option<PathBuf>) -> anyhow::Result<()> {
    let runtime = match settings.runtime.worker_threads {
        1 => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build(),
        n => tokio::runtime::Builder::new_multi_thread()
            .worker_threads(n)
            .enable_all()
            .build(),
    }
    .context("starting the async runtime")?;
    runtime.block_on(async {
        let hangups = crate::reload::hangups().context("installing the SIGHUP handler")?;
        let application = Application::build(settings).await?;
        tokio::spawn(crate::reload::on_hangup(
            hangups,
            config,
            application.access_handle(),
        ));
        application
            .run_until_stopped(crate::shutdown::signal())
            .await
    })
}

/// Replaces the access rules (credentials, source allowlist) of a running application.
#[derive(Clone)]
pub struct AccessHandle(Arc<AppState>);

impl AccessHandle {
    /// Requests admitted from now on are judged by `access`.
    pub fn replace(&self, access: Access) {
        self.0.access.store(Arc::new(access));
    }
}

/// A bound, running service.
pub struct Application {
    listener: TcpListener,
    state: Arc<AppState>,
    header_read_timeout: Duration,
    write_timeout: Duration,
    drain_timeout: Duration,
    max_header_bytes: usize,
    connections: Arc<Semaphore>,
}

impl Application {
    /// Binds the listener and starts connecting to the broker in the background.
    /// Settings built in code (not loaded) get the same checks as loaded ones here: nothing
    /// below runs on a value `Settings::validate` rejects.
    pub async fn build(settings: Settings) -> anyhow::Result<Self> {
        settings.validate()?;
        let backlog = u32::try_from(settings.http.max_connections).unwrap_or(u32::MAX);
        let listener = bind_listener(settings.http.listen, backlog)
            .with_context(|| format!("binding http.listen = {}", settings.http.listen))?;
        if !settings.auth.enabled() {
            warn!(
                "auth.username and auth.password are empty: callbacks are accepted without credentials"
            );
        }
        let access = Access::new(&settings.auth);
        let metrics = Arc::new(Metrics::new());
        let publisher = Arc::new(Publisher::start(&settings.amqp, metrics.clone()));
        let state = Arc::new(AppState {
            callback_path: settings.http.path.clone(),
            max_body_bytes: settings.http.max_body_bytes,
            max_json_depth: settings.http.max_json_depth,
            routing: settings
                .amqp
                .routing_key
                .parse()
                .map_err(|reason| anyhow::anyhow!("amqp.routing_key: {reason}"))?,
            body_read_timeout: settings.http.body_read_timeout,
            retry_after_secs: settings.http.retry_after_secs,
            access: ArcSwap::from_pointee(access),
            publisher,
            metrics,
            lifecycle: Arc::new(Lifecycle::default()),
        });
        Ok(Self {
            listener,
            state,
            header_read_timeout: settings.http.header_read_timeout,
            write_timeout: settings.http.write_timeout,
            drain_timeout: settings.http.drain_timeout,
            max_header_bytes: settings.http.max_header_bytes,
            connections: Arc::new(Semaphore::new(settings.http.max_connections)),
        })
    }

    /// A handle that swaps the access rules while the application runs.
    pub fn access_handle(&self) -> AccessHandle {
        AccessHandle(self.state.clone())
    }

    /// The address actually bound (useful with port 0).
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Serves until `shutdown` resolves, then drains: new callbacks get 503, admitted ones
    /// finish, connections close, the broker connection closes.
    pub async fn run_until_stopped(self, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
        let Self {
            listener,
            state,
            header_read_timeout,
            write_timeout,
            drain_timeout,
            max_header_bytes,
            connections,
        } = self;
        info!(listen = %listener.local_addr()?, path = %state.callback_path, "listening");
        let mut http = http1::Builder::new();
        // Half-close: a client that shuts its write side after the request still gets the
        // answer, and a callback being handled is never cancelled by its client leaving (its
        // events are published; a retry carries the same dedup key). It also spares hyper's
        // probe for EOF while a callback is handled, which would allocate a new read buffer
        // per request: the old one is shared with the body until the events are confirmed.
        http.timer(TokioTimer::new())
            .header_read_timeout(header_read_timeout)
            .max_header_size(max_header_bytes)
            .half_close(true);
        let graceful = GracefulShutdown::new();
        let take_connection = |stream: TcpStream, peer: SocketAddr| {
            let Ok(permit) = connections.clone().try_acquire_owned() else {
                tokio::spawn(refuse_connection(stream, state.retry_after_secs));
                return;
            };
            let state = state.clone();
            let service = service_fn(move |request| {
                let state = state.clone();
                async move { Ok::<_, Infallible>(handle(state, peer.ip(), request).await) }
            });
            // An answer the client does not read (its window full) fails the connection after
            // `write_timeout` without progress, freeing the slot.
            let mut stream = TimeoutStream::new(stream);
            stream.set_write_timeout(Some(write_timeout));
            let io = TokioIo::new(Box::pin(stream));
            let connection = graceful.watch(http.serve_connection(io, service));
            tokio::spawn(async move {
                if let Err(error) = connection.await {
                    debug!(%error, "connection ended with an error");
                }
                drop(permit);
            });
        };

        // Resolves once shutdown was requested and the admitted callbacks are done (or the
        // drain deadline passed); until then connections keep being accepted, so callbacks
        // that arrive meanwhile get a 503 rather than a refused connection.
        let drained = async {
            shutdown.await;
            info!("shutdown requested: refusing new callbacks, finishing admitted ones");
            state.lifecycle.begin_shutdown();
            tokio::time::timeout(drain_timeout, state.lifecycle.wait_idle()).await
        };
        tokio::pin!(drained);
        loop {
            tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok((stream, peer)) => take_connection(stream, peer),
                    Err(error) => warn!(%error, "accept failed"),
                },
                outcome = &mut drained => {
                    if outcome.is_err() {
                        warn!("drain deadline passed with callbacks still in flight");
                    }
                    break;
                }
            }
        }
        drop(listener);
        if tokio::time::timeout(CONNECTION_CLOSE_GRACE, graceful.shutdown())
            .await
            .is_err()
        {
            debug!("some connections were still open at exit");
        }
        state.publisher.shutdown().await;
        info!("stopped");
        Ok(())
    }
}
