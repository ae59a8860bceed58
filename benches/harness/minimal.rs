//! (m): the least a forwarder can be with these libraries. The (w) server, in a process of its
//! own, publishing each event of a callback from the request's own task on one confirm channel,
//! as (a) publishes, and answering 200 at its confirms. No channel workers, metrics,
//! admission, timeouts or error paths. Its overhead, (m) ÷ (a + h), is what that work costs in
//! one process here, before anything else a forwarder must do.

use std::sync::Arc;
use std::time::Instant;

use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::{Request, Response, StatusCode};
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::types::ShortString;
use lapin::{Channel, Confirmation, Connection, ConnectionProperties};
use tracing_subscriber::EnvFilter;

use crate::bare::ForwardersWork;
use crate::raw::properties;

/// Serves `listen` until SIGTERM, publishing to `exchange` at `uri`; the bench runs it as
/// `--minimal-forwarder LISTEN --uri URI --minimal-exchange EXCHANGE`.
pub fn serve(listen: &str, uri: &str, exchange: &str) {
    // The forwarder's JSON access line, to stdout (the bench sends it to /dev/null).
    let log = bandwidth_forwarder::telemetry::json(EnvFilter::new("info"), std::io::stdout);
    tracing::subscriber::set_global_default(log).expect("the only subscriber");
    // Two runtime threads: cheaper for it than one (47-58 against 52-60 µs per event in three
    // interleaved pairs at C = 64), unlike the forwarder with its channel workers.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let connection = Connection::connect(uri, ConnectionProperties::default())
            .await
            .expect("RabbitMQ");
        let channel = connection.create_channel().await.expect("channel");
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .expect("confirms");
        let exchange = ShortString::from(exchange);
        let work = Arc::new(ForwardersWork::default());
        let listener = tokio::net::TcpListener::bind(listen).await.expect("listen");
        let mut terminate =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                .expect("SIGTERM handler");
        let accept = async {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let _ = stream.set_nodelay(true);
                let (channel, exchange) = (channel.clone(), exchange.clone());
                let work = work.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |request| {
                        answer(request, work.clone(), channel.clone(), exchange.clone())
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                        .await;
                });
            }
        };
        tokio::select! {
            _ = accept => {}
            _ = terminate.recv() => {}
        }
    });
}

/// `GET /readyz` 200; a callback parsed, published, confirmed, logged and answered.
async fn answer(
    request: Request<Incoming>,
    work: Arc<ForwardersWork>,
    channel: Channel,
    exchange: ShortString,
) -> Result<Response<Full<Bytes>>, hyper::Error> {
    if request.method() == hyper::Method::GET {
        return Ok(Response::new(Full::new(Bytes::new())));
    }
    let started = Instant::now();
    let body = request.into_body().collect().await?.to_bytes();
    let events = work.parse(&body);
    let mut confirms = Vec::with_capacity(events.len());
    for event in &events {
        let id = event.message_id.as_deref().unwrap_or_default();
        let confirm = channel
            .basic_publish(
                exchange.clone(),
                event.routing_key.as_str().into(),
                BasicPublishOptions {
                    mandatory: true,
                    ..BasicPublishOptions::default()
                },
                &event.body,
                properties(id, false),
            )
            .await
            .expect("publish");
        confirms.push(confirm);
    }
    for confirm in confirms {
        let confirmation = confirm.await.expect("confirm");
        assert!(
            matches!(confirmation, Confirmation::Ack(None)),
            "{confirmation:?}"
        );
    }
    ForwardersWork::access_line(events.len(), started);
    let mut response = Response::new(Full::new(Bytes::from(format!(
        r#"{{"status":"published","events":{}}}"#,
        events.len()
    ))));
    *response.status_mut() = StatusCode::OK;
    Ok(response)
}
