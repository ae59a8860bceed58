//! (h): a bare hyper server answering the same requests, publishing nothing; (w): the same
//! server also doing the forwarder's own work per request.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bandwidth_forwarder::event::{Event, parse_callback};
use bandwidth_forwarder::routing::RoutingTemplate;
use bandwidth_forwarder::settings::HttpSettings;
use tracing_subscriber::EnvFilter;

use crate::cell::Cell;
use crate::load::post_load;

/// (h): the same clients against a bare hyper server in this process, on a single-threaded
/// runtime of its own, that reads each single-event callback and answers as the forwarder does
/// after `confirm_time` (raw lapin's median at this concurrency) but publishes nothing: what the
/// HTTP exchange alone costs on this machine at about the rate the broker allows.
///
/// With `work` (the (w) cell) the server also does what the forwarder must do for each
/// callback besides HTTP and publishing: parse and validate the body and derive its keys with
/// the forwarder's own parser, and write the forwarder's JSON access line (to `/dev/null`, where
/// the harness sends the forwarder's log).
pub async fn http_floor(
    concurrency: usize,
    seconds: u64,
    confirm_time: Duration,
    work: bool,
) -> Cell {
    // The forwarder's accept queue is `http.max_connections` (1024) long; so is this one.
    let listener = tokio::net::TcpSocket::new_v4().expect("socket");
    listener
        .bind("127.0.0.1:0".parse().expect("address"))
        .expect("bind");
    let addr = listener.local_addr().expect("address").to_string();
    let (stop_server, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = std::thread::Builder::new()
        .name("http-floor".into())
        .spawn(move || bare_server(listener, confirm_time, work, stopped))
        .expect("server thread");
    let server_task = (0..1000)
        .find_map(|_| {
            let tid = thread_id("http-floor");
            if tid.is_none() {
                std::thread::sleep(Duration::from_millis(1));
            }
            tid
        })
        .map(|tid| format!("self/task/{tid}"))
        .expect("the bare server's thread started");
    let pids = [Some(server_task), None, Some("self".to_owned())];
    let load = post_load(&addr, concurrency, 1, seconds, &pids).await;
    let _ = stop_server.send(());
    server.join().expect("server thread");
    Cell {
        mode: if work {
            "(w) (h) + parse and log line".into()
        } else {
            "(h) bare hyper server, no broker".into()
        },
        concurrency,
        requests: load.latencies_us.len() as u64,
        events: load.latencies_us.len() as u64,
        seconds: load.window.seconds,
        latencies_us: load.latencies_us,
        peak_rss_kb: None,
        cpu_seconds: load.window.cpu[0],
        broker_cpu_seconds: None,
        // This process minus the server thread: the clients alone.
        load_generator_cpu_seconds: load.window.cpu[2]
            .zip(load.window.cpu[0])
            .map(|(all, server)| all - server),
        threads: None,
    }
}

pub fn bare_server(
    listener: tokio::net::TcpSocket,
    confirm_time: Duration,
    work: bool,
    stopped: tokio::sync::oneshot::Receiver<()>,
) {
    use http_body_util::{BodyExt, Full};
    use hyper::body::{Bytes, Incoming};
    use hyper::{Request, Response};

    // Only (w) logs, parses and shares the parser's settings: (h) stays the bare exchange.
    let _log = work.then(|| {
        let null = Arc::new(std::fs::File::create("/dev/null").expect("/dev/null"));
        let json = bandwidth_forwarder::telemetry::json(EnvFilter::new("info"), null);
        tracing::subscriber::set_default(json)
    });
    let work = work.then(|| Arc::new(ForwardersWork::default()));
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async move {
        let listener = listener.listen(1024).expect("listen");
        let accept = async {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let _ = stream.set_nodelay(true);
                let work = work.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |request: Request<Incoming>| {
                        let work = work.clone();
                        async move {
                            let started = Instant::now();
                            let body = request.into_body().collect().await?.to_bytes();
                            if let Some(work) = work {
                                work.on(&body, started);
                            }
                            tokio::time::sleep(confirm_time).await;
                            let answer =
                                Bytes::from_static(br#"{"status":"published","events":1}"#);
                            Ok::<_, hyper::Error>(Response::new(Full::new(answer)))
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                        .await;
                });
            }
        };
        tokio::select! {
            _ = accept => {}
            _ = stopped => {}
        }
    });
}

/// The forwarder's own part of a callback, with the defaults of `http.max_json_depth` and
/// `amqp.routing_key`.
pub struct ForwardersWork {
    max_depth: usize,
    routing: RoutingTemplate,
}

impl Default for ForwardersWork {
    fn default() -> Self {
        Self {
            max_depth: HttpSettings::default().max_json_depth,
            routing: RoutingTemplate::default(),
        }
    }
}

impl ForwardersWork {
    /// Parses, validates and keys `body`, then writes its access line, fields as the forwarder's.
    fn on(&self, body: &bytes::Bytes, started: Instant) {
        let events = self.parse(body);
        Self::access_line(events.len(), started);
    }

    /// `body`'s events, parsed, validated and keyed by the forwarder's parser.
    pub fn parse(&self, body: &bytes::Bytes) -> Vec<Event> {
        parse_callback(body, self.max_depth, &self.routing).expect("a valid callback")
    }

    /// The forwarder's access line for a callback of `events` received at `started`.
    pub fn access_line(events: usize, started: Instant) {
        let request_id = bandwidth_forwarder::http::new_request_id();
        let latency_ms = started.elapsed().as_secs_f64() * 1000.0;
        tracing::info!(
            request_id,
            status = 200,
            events,
            latency_ms,
            "callback accepted"
        );
    }
}

/// The id of this process's thread called `name`.
pub fn thread_id(name: &str) -> Option<String> {
    std::fs::read_dir("/proc/self/task")
        .ok()?
        .flatten()
        .map(|entry| entry.file_name().to_string_lossy().into_owned())
        .find(|tid| {
            std::fs::read_to_string(format!("/proc/self/task/{tid}/comm"))
                .is_ok_and(|comm| comm.trim() == name)
        })
}
