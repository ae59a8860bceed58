//! Benchmark harness: in one run, on one broker and one quorum queue, measures
//! (a) the raw limit — lapin publishing with confirms, persistent, mandatory — and
//! (b) the forwarder end to end with single-event callbacks, and (c) with 10- and 100-event
//! callbacks, at each concurrency, and prints a table with the ratios to (a). An (h) cell
//! measures the HTTP exchange alone (a bare hyper server, no broker), from which the table's
//! last lines estimate the best any forwarder could reach beside the same broker and clients.
//!
//! `cargo bench --bench harness -- [--seconds N] [--rounds N] [--concurrency 1,16,64,256]
//! [--batches 1,10,100] [--pin] [--log-level LEVEL] [--forwarder PATH] [--uri URI]`

use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use clap::Parser;
use lapin::options::{
    BasicPublishOptions, ConfirmSelectOptions, QueueDeclareOptions, QueueDeleteOptions,
    QueuePurgeOptions,
};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{BasicProperties, Confirmation, Connection, ConnectionProperties};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A delivery receipt as Bandwidth sends it; `{ID}` is replaced per event.
const EVENT: &str = r#"{"time":"2026-03-10T14:07:45.120Z","type":"message-delivered","to":"+15554440101","description":"ok","message":{"id":"{ID}","owner":"+15553330101","applicationId":"5b1e2c4a-7d3f-4e8a-9c61-0f2d8b7a3e15","time":"2026-03-10T14:07:41.002Z","segmentCount":2,"direction":"out","to":["+15554440101"],"from":"+15553330101","text":"","tag":"campaign-42","priority":"default"}}"#;

/// Queue bound for the run: quorum, capped so it never grows without bound.
const QUEUE_MAX_LENGTH: i64 = 200_000;

#[derive(Parser)]
struct Args {
    /// Measured seconds per cell (after a 1 s warm-up).
    #[arg(long, default_value_t = 5)]
    seconds: u64,
    /// Concurrency levels to sweep.
    #[arg(long, value_delimiter = ',', default_value = "1,16,64,256")]
    concurrency: Vec<usize>,
    /// Events per callback in the forwarder cells (1 is (b), larger ones are (c)).
    #[arg(long, value_delimiter = ',', default_value = "1,10,100")]
    batches: Vec<usize>,
    /// Broker.
    #[arg(long, default_value = "amqp://guest:guest@127.0.0.1:5672/%2f")]
    uri: String,
    /// The forwarder's `log.level` (its default, `info`, logs a line per request).
    #[arg(long, default_value = "info")]
    log_level: String,
    /// Repeat the whole sweep this many times and print medians (machines are noisy).
    #[arg(long, default_value_t = 1)]
    rounds: usize,
    /// Pin the broker to CPU 0 and the bench and forwarder to CPU 1 (restored at the end), so
    /// the broker has the same one core in every cell.
    #[arg(long)]
    pin: bool,
    /// The forwarder binary to measure (default: the one this build made), e.g. another
    /// build kept aside, to compare two versions against the same broker in one session.
    #[arg(long)]
    forwarder: Option<std::path::PathBuf>,
    /// Ignored: cargo bench passes it.
    #[arg(long, hide = true)]
    bench: bool,
}

/// One measured cell.
struct Cell {
    mode: String,
    concurrency: usize,
    requests: u64,
    events: u64,
    seconds: f64,
    latencies_us: Vec<u64>,
    peak_rss_kb: Option<u64>,
    cpu_seconds: Option<f64>,
    broker_cpu_seconds: Option<f64>,
    load_generator_cpu_seconds: Option<f64>,
}

impl Cell {
    fn events_per_sec(&self) -> f64 {
        self.events as f64 / self.seconds
    }

    fn percentile_ms(&self, p: f64) -> f64 {
        if self.latencies_us.is_empty() {
            return f64::NAN;
        }
        self.percentile_us(p) as f64 / 1000.0
    }

    fn percentile_us(&self, p: f64) -> u64 {
        if self.latencies_us.is_empty() {
            return 0;
        }
        let index = ((self.latencies_us.len() as f64 * p).ceil() as usize)
            .clamp(1, self.latencies_us.len())
            - 1;
        self.latencies_us[index]
    }
}

#[tokio::main]
async fn main() {
    let args = Args::parse();
    let _pinned = args.pin.then(Pinning::apply);
    let exchange = format!("bench.{:08x}", fastrand::u32(..));
    let queue = format!("{exchange}.q");
    let connection = Connection::connect(&args.uri, ConnectionProperties::default())
        .await
        .unwrap_or_else(|e| {
            panic!(
                "RabbitMQ at {}: {e} (scripts/ensure-rabbitmq starts one)",
                args.uri
            )
        });
    let admin = connection.create_channel().await.expect("channel");
    let mut queue_args = FieldTable::default();
    queue_args.insert(
        "x-queue-type".into(),
        AMQPValue::LongString(LongString::from("quorum")),
    );
    // A run that is killed leaves no queue behind for long.
    queue_args.insert("x-expires".into(), AMQPValue::LongLongInt(600_000));
    queue_args.insert(
        "x-max-length".into(),
        AMQPValue::LongLongInt(QUEUE_MAX_LENGTH),
    );
    admin
        .queue_declare(
            queue.as_str().into(),
            QueueDeclareOptions {
                durable: true,
                ..QueueDeclareOptions::default()
            },
            queue_args,
        )
        .await
        .expect("declare bench queue");
    admin
        .exchange_declare(
            exchange.as_str().into(),
            lapin::ExchangeKind::Topic,
            lapin::options::ExchangeDeclareOptions {
                durable: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .expect("declare bench exchange");
    admin
        .queue_bind(
            queue.as_str().into(),
            exchange.as_str().into(),
            "#".into(),
            Default::default(),
            FieldTable::default(),
        )
        .await
        .expect("bind bench queue");

    let mut rounds: Vec<Vec<Cell>> = Vec::new();
    // Every cell starts from an empty queue, so none pays for dropping at the length cap.
    let purge = || async {
        admin
            .queue_purge(queue.as_str().into(), QueuePurgeOptions::default())
            .await
            .expect("purge bench queue");
    };
    for round in 1..=args.rounds {
        let mut cells = Vec::new();
        for &concurrency in &args.concurrency {
            eprintln!("round {round}, concurrency {concurrency}: raw lapin");
            purge().await;
            cells.push(raw(&connection, &exchange, concurrency, args.seconds).await);
            eprintln!("round {round}, concurrency {concurrency}: HTTP only");
            let confirm_time = Duration::from_micros(cells[cells.len() - 1].percentile_us(0.5));
            cells.push(http_floor(concurrency, args.seconds, confirm_time).await);
            for &batch in &args.batches {
                eprintln!(
                    "round {round}, concurrency {concurrency}: forwarder, {batch}-event callbacks"
                );
                purge().await;
                cells.push(forwarder(&args, &exchange, concurrency, batch).await);
            }
        }
        rounds.push(cells);
    }
    let _ = admin
        .queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
        .await;
    let _ = admin
        .exchange_delete(exchange.as_str().into(), Default::default())
        .await;
    print_table(&rounds, &args);
}

/// (a): C publishers sharing one confirm channel, each awaiting its confirm, through the same
/// topic exchange and binding the forwarder uses.
async fn raw(connection: &Connection, exchange: &str, concurrency: usize, seconds: u64) -> Cell {
    let channel = Arc::new(connection.create_channel().await.expect("channel"));
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .expect("confirms");
    let measuring = Arc::new(AtomicBool::new(false));
    let stop = Arc::new(AtomicBool::new(false));
    let counter = Arc::new(AtomicU64::new(0));
    let tasks: Vec<_> = (0..concurrency)
        .map(|_| {
            let channel = channel.clone();
            let exchange = ShortString::from(exchange);
            let (measuring, stop, counter) = (measuring.clone(), stop.clone(), counter.clone());
            tokio::spawn(async move {
                let mut latencies = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    let id = format!("raw-{}", counter.fetch_add(1, Ordering::Relaxed));
                    let body = EVENT.replace("{ID}", &id);
                    let started = Instant::now();
                    let confirm = channel
                        .basic_publish(
                            exchange.clone(),
                            "message.delivered".into(),
                            BasicPublishOptions {
                                mandatory: true,
                                ..BasicPublishOptions::default()
                            },
                            body.as_bytes(),
                            properties(&id),
                        )
                        .await
                        .expect("publish");
                    let confirmation = confirm.await.expect("confirm");
                    assert!(
                        matches!(confirmation, Confirmation::Ack(None)),
                        "{confirmation:?}"
                    );
                    if measuring.load(Ordering::Relaxed) {
                        latencies.push(started.elapsed().as_micros() as u64);
                    }
                }
                latencies
            })
        })
        .collect();
    let pids = [Some("self".to_owned()), broker_pid()];
    let (seconds, cpu) = measure_window(&measuring, &stop, seconds, &pids).await;
    let mut latencies = Vec::new();
    for task in tasks {
        latencies.extend(task.await.expect("publisher"));
    }
    let _ = channel.close(200, "done".into()).await;
    latencies.sort_unstable();
    Cell {
        mode: "(a) raw lapin, 1 channel".into(),
        concurrency,
        requests: latencies.len() as u64,
        events: latencies.len() as u64,
        seconds,
        latencies_us: latencies,
        peak_rss_kb: None,
        cpu_seconds: cpu[0],
        broker_cpu_seconds: cpu[1],
        load_generator_cpu_seconds: None,
    }
}

/// The forwarder's AMQP properties, so (a) carries the same bytes on the wire.
fn properties(id: &str) -> BasicProperties {
    let mut headers = FieldTable::default();
    for (name, value) in [
        ("x-deduplication-header", "0".repeat(64)),
        ("x-bandwidth-event-type", "message-delivered".into()),
        ("x-bandwidth-message-id", id.to_owned()),
        ("x-bandwidth-event-time", "2026-03-10T14:07:45.120Z".into()),
        ("x-received-at", "2026-03-10T14:07:45.121Z".into()),
    ] {
        headers.insert(name.into(), AMQPValue::LongString(LongString::from(value)));
    }
    BasicProperties::default()
        .with_delivery_mode(2)
        .with_content_type("application/json".into())
        .with_message_id("0".repeat(64).into())
        .with_type("message-delivered".into())
        .with_timestamp(0)
        .with_app_id("bandwidth-forwarder".into())
        .with_headers(headers)
}

/// Warm up for a second, then measure for `seconds`. Returns the measured duration and the
/// CPU seconds each process in `pids` spent in the measured window.
async fn measure_window(
    measuring: &AtomicBool,
    stop: &AtomicBool,
    seconds: u64,
    pids: &[Option<String>],
) -> (f64, Vec<Option<f64>>) {
    let sample = || -> Vec<Option<f64>> {
        pids.iter()
            .map(|pid| pid.as_deref().and_then(cpu_seconds))
            .collect()
    };
    tokio::time::sleep(Duration::from_secs(1)).await;
    let before = sample();
    measuring.store(true, Ordering::Relaxed);
    let started = Instant::now();
    tokio::time::sleep(Duration::from_secs(seconds)).await;
    measuring.store(false, Ordering::Relaxed);
    let measured = started.elapsed().as_secs_f64();
    let after = sample();
    stop.store(true, Ordering::Relaxed);
    let spent = after
        .into_iter()
        .zip(before)
        .map(|(a, b)| a.zip(b).map(|(a, b)| a - b))
        .collect();
    (measured, spent)
}

/// CPU affinity for `--pin`: broker on CPU 0, this process and its children on CPU 1.
struct Pinning {
    broker: Option<String>,
}

impl Pinning {
    fn apply() -> Self {
        let broker = broker_pid();
        if let Some(pid) = &broker {
            taskset("0", pid);
        }
        taskset("1", &std::process::id().to_string());
        Self { broker }
    }
}

impl Drop for Pinning {
    fn drop(&mut self) {
        if let Some(pid) = &self.broker {
            taskset("0-1023", pid);
        }
    }
}

/// Sets the CPU list of every thread of `pid` (children inherit it).
fn taskset(cpus: &str, pid: &str) {
    let status = Command::new("taskset")
        .args(["-a", "-pc", cpus, pid])
        .output();
    if !status.is_ok_and(|o| o.status.success()) {
        eprintln!("taskset -a -pc {cpus} {pid} failed; running unpinned");
    }
}

/// The release binary, started fresh per cell so its peak RSS belongs to that cell.
struct Subject {
    child: Child,
    addr: String,
    config: std::path::PathBuf,
}

impl Subject {
    fn start(args: &Args, exchange: &str) -> Self {
        let (uri, log_level) = (&args.uri, &args.log_level);
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|listener| listener.local_addr())
            .expect("free port")
            .port();
        let addr = format!("127.0.0.1:{port}");
        let config = std::env::temp_dir().join(format!("{exchange}.{port}.toml"));
        std::fs::write(
            &config,
            format!(
                "[http]\nlisten = \"{addr}\"\n[amqp]\nuri = \"{uri}\"\nexchange = \"{exchange}\"\n\
                 queues = []\n[log]\nformat = \"json\"\nlevel = \"{log_level}\"\n"
            ),
        )
        .expect("config");
        let binary = args
            .forwarder
            .clone()
            .unwrap_or_else(|| env!("CARGO_BIN_EXE_bandwidth-forwarder").into());
        let child = Command::new(binary)
            .args(["serve", "--config"])
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("forwarder binary");
        Self {
            child,
            addr,
            config,
        }
    }

    /// Peak resident set (VmHWM) in kB.
    fn peak_rss_kb(&self) -> Option<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).ok()?;
        let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
        line.split_whitespace().nth(1)?.parse().ok()
    }
}

/// User + system CPU seconds of a process (`self` for this one).
fn cpu_seconds(pid: &str) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let fields: Vec<&str> = stat.rsplit_once(") ")?.1.split_whitespace().collect();
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    Some(ticks as f64 / 100.0)
}

/// The local broker's Erlang VM, to report its CPU beside ours.
fn broker_pid() -> Option<String> {
    std::fs::read_dir("/proc")
        .ok()?
        .flatten()
        .find_map(|entry| {
            let pid = entry.file_name().into_string().ok()?;
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
            let cmdline = String::from_utf8_lossy(&cmdline);
            let cmdline = cmdline.replace('\0', " ");
            (cmdline.contains("beam.smp") && cmdline.contains("-s rabbit boot")).then_some(pid)
        })
}

impl Drop for Subject {
    fn drop(&mut self) {
        // SIGTERM first, so a forwarder run under a profiler (`--forwarder` pointing at a
        // wrapper script) exits cleanly and writes its profile; SIGKILL if it takes too long.
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        for _ in 0..100 {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.config);
    }
}

/// (b)/(c): C clients posting callbacks of `batch` unique events, counting only 2xx.
async fn forwarder(args: &Args, exchange: &str, concurrency: usize, batch: usize) -> Cell {
    let subject = Subject::start(args, exchange);
    for _ in 0..500 {
        let ready = match Poster::connect(&subject.addr).await {
            Ok(mut poster) => poster.request("GET", "/readyz", b"").await.unwrap_or(0),
            Err(_) => 0,
        };
        if ready == 200 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let pids = [
        Some(subject.child.id().to_string()),
        broker_pid(),
        Some("self".to_owned()),
    ];
    let load = post_load(&subject.addr, concurrency, batch, args.seconds, &pids).await;
    Cell {
        mode: format!(
            "({}) forwarder, {batch}-event callbacks",
            if batch == 1 { 'b' } else { 'c' }
        ),
        concurrency,
        requests: load.latencies_us.len() as u64,
        events: load.latencies_us.len() as u64 * batch as u64,
        seconds: load.seconds,
        latencies_us: load.latencies_us,
        peak_rss_kb: subject.peak_rss_kb(),
        cpu_seconds: load.cpu[0],
        broker_cpu_seconds: load.cpu[1],
        load_generator_cpu_seconds: load.cpu[2],
    }
}

/// (h): the same clients against a bare hyper server in this process, on a single-threaded
/// runtime of its own, that reads each single-event callback and answers as the forwarder does
/// after `confirm_time` (raw lapin's median at this concurrency) but publishes nothing: what the
/// HTTP exchange alone costs on this machine at about the rate the broker allows.
async fn http_floor(concurrency: usize, seconds: u64, confirm_time: Duration) -> Cell {
    // The forwarder's accept queue is `http.max_connections` (1024) long; so is this one.
    let listener = tokio::net::TcpSocket::new_v4().expect("socket");
    listener
        .bind("127.0.0.1:0".parse().expect("address"))
        .expect("bind");
    let addr = listener.local_addr().expect("address").to_string();
    let (stop_server, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = std::thread::Builder::new()
        .name("http-floor".into())
        .spawn(move || bare_server(listener, confirm_time, stopped))
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
        mode: "(h) HTTP only: bare hyper server, no broker".into(),
        concurrency,
        requests: load.latencies_us.len() as u64,
        events: load.latencies_us.len() as u64,
        seconds: load.seconds,
        latencies_us: load.latencies_us,
        peak_rss_kb: None,
        cpu_seconds: load.cpu[0],
        broker_cpu_seconds: None,
        // This process minus the server thread: the clients alone.
        load_generator_cpu_seconds: load.cpu[2]
            .zip(load.cpu[0])
            .map(|(all, server)| all - server),
    }
}

fn bare_server(
    listener: tokio::net::TcpSocket,
    confirm_time: Duration,
    stopped: tokio::sync::oneshot::Receiver<()>,
) {
    use http_body_util::{BodyExt, Full};
    use hyper::body::{Bytes, Incoming};
    use hyper::{Request, Response};

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
                tokio::spawn(async move {
                    let service =
                        hyper::service::service_fn(move |request: Request<Incoming>| async move {
                            request.into_body().collect().await?;
                            tokio::time::sleep(confirm_time).await;
                            let answer =
                                Bytes::from_static(br#"{"status":"published","events":1}"#);
                            Ok::<_, hyper::Error>(Response::new(Full::new(answer)))
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

/// The id of this process's thread called `name`.
fn thread_id(name: &str) -> Option<String> {
    std::fs::read_dir("/proc/self/task")
        .ok()?
        .flatten()
        .map(|entry| entry.file_name().to_string_lossy().into_owned())
        .find(|tid| {
            std::fs::read_to_string(format!("/proc/self/task/{tid}/comm"))
                .is_ok_and(|comm| comm.trim() == name)
        })
}

/// What C clients measured: 2xx latencies, the window, and the CPU of `pids` in it.
struct Load {
    latencies_us: Vec<u64>,
    seconds: f64,
    cpu: Vec<Option<f64>>,
}

/// C keep-alive clients posting callbacks of `batch` unique events to `addr` for a warm-up
/// second and `seconds` more; only 2xx answers count.
async fn post_load(
    addr: &str,
    concurrency: usize,
    batch: usize,
    seconds: u64,
    pids: &[Option<String>],
) -> Load {
    let path = "/callbacks/bandwidth/messaging";
    let measuring = Arc::new(AtomicBool::new(false));
    let stop = Arc::new(AtomicBool::new(false));
    let counter = Arc::new(AtomicU64::new(0));
    let failures = Arc::new(AtomicU64::new(0));
    let tasks: Vec<_> = (0..concurrency)
        .map(|_| {
            let addr = addr.to_owned();
            let (measuring, stop, counter, failures) = (
                measuring.clone(),
                stop.clone(),
                counter.clone(),
                failures.clone(),
            );
            tokio::spawn(async move {
                let mut latencies = Vec::new();
                let mut poster = None;
                while !stop.load(Ordering::Relaxed) {
                    if poster.is_none() {
                        poster = Poster::connect(&addr).await.ok();
                    }
                    // A keep-alive client's latency: connecting is not part of a request.
                    let body = callback_body(&counter, batch);
                    let started = Instant::now();
                    let status = match poster.as_mut() {
                        Some(p) => p.request("POST", path, body.as_bytes()).await.unwrap_or(0),
                        None => 0,
                    };
                    if status == 0 {
                        poster = None;
                    }
                    if !measuring.load(Ordering::Relaxed) {
                        continue;
                    }
                    if (200..300).contains(&status) {
                        latencies.push(started.elapsed().as_micros() as u64);
                    } else {
                        failures.fetch_add(1, Ordering::Relaxed);
                    }
                }
                latencies
            })
        })
        .collect();
    let (seconds, cpu) = measure_window(&measuring, &stop, seconds, pids).await;
    let mut latencies = Vec::new();
    for task in tasks {
        latencies.extend(task.await.expect("poster"));
    }
    latencies.sort_unstable();
    let failed = failures.load(Ordering::Relaxed);
    if failed > 0 {
        eprintln!("  {failed} non-2xx answers (not counted)");
    }
    Load {
        latencies_us: latencies,
        seconds,
        cpu,
    }
}

/// A lean HTTP/1.1 keep-alive client (like wrk): one connection, one request at a time, so
/// the load generator takes as little of the shared CPU as it can.
struct Poster {
    stream: TcpStream,
    buffer: Vec<u8>,
}

impl Poster {
    async fn connect(addr: &str) -> std::io::Result<Self> {
        let stream = TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        Ok(Self {
            stream,
            buffer: Vec::with_capacity(4096),
        })
    }

    /// Sends one request and reads the whole response; returns its status.
    async fn request(&mut self, method: &str, path: &str, body: &[u8]) -> std::io::Result<u16> {
        let mut request = format!(
            "{method} {path} HTTP/1.1\r\nhost: bench\r\ncontent-type: application/json; charset=utf-8\r\n\
             content-length: {}\r\n\r\n",
            body.len()
        )
        .into_bytes();
        request.extend_from_slice(body);
        self.stream.write_all(&request).await?;
        self.buffer.clear();
        loop {
            if let Some(end) = find(&self.buffer, b"\r\n\r\n") {
                let head =
                    std::str::from_utf8(&self.buffer[..end]).map_err(std::io::Error::other)?;
                let status = head
                    .get(9..12)
                    .and_then(|s| s.parse().ok())
                    .ok_or_else(|| std::io::Error::other("bad status line"))?;
                let length: usize = head
                    .lines()
                    .find_map(|line| {
                        let (name, value) = line.split_once(':')?;
                        name.eq_ignore_ascii_case("content-length")
                            .then(|| value.trim().parse().ok())?
                    })
                    .unwrap_or(0);
                while self.buffer.len() < end + 4 + length {
                    self.read_more().await?;
                }
                return Ok(status);
            }
            self.read_more().await?;
        }
    }

    async fn read_more(&mut self) -> std::io::Result<()> {
        let mut chunk = [0u8; 4096];
        let n = self.stream.read(&mut chunk).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        self.buffer.extend_from_slice(&chunk[..n]);
        Ok(())
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

fn callback_body(counter: &AtomicU64, batch: usize) -> String {
    let events: Vec<String> = (0..batch)
        .map(|_| {
            EVENT.replace(
                "{ID}",
                &format!("bench-{}", counter.fetch_add(1, Ordering::Relaxed)),
            )
        })
        .collect();
    format!("[{}]", events.join(","))
}

/// The median of some values (NaN when there are none).
fn median(mut values: Vec<f64>) -> f64 {
    values.retain(|v| v.is_finite());
    if values.is_empty() {
        return f64::NAN;
    }
    values.sort_by(f64::total_cmp);
    let mid = values.len() / 2;
    if values.len().is_multiple_of(2) {
        (values[mid - 1] + values[mid]) / 2.0
    } else {
        values[mid]
    }
}

/// One row per cell: the median over rounds of each figure, the ratios taken within each
/// round against that round's (a), and the largest peak RSS.
fn print_table(rounds: &[Vec<Cell>], args: &Args) {
    println!(
        "\n{} s per cell after 1 s warm-up, {} round(s), medians; quorum queue (x-max-length {QUEUE_MAX_LENGTH}); {} cores{}\n",
        args.seconds,
        rounds.len(),
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(0),
        if args.pin {
            "; broker pinned to CPU 0, bench and forwarder to CPU 1"
        } else {
            ""
        }
    );
    println!(
        "| C | mode | req/s | events/s | p50 ms | p99 ms | p99.9 ms | peak RSS MB | publisher CPU µs/event | broker CPU µs/event | load gen. CPU µs/event | events/s ÷ (a) | p99 ÷ (a) |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|---|");
    let Some(first) = rounds.first() else {
        return;
    };
    for (index, cell) in first.iter().enumerate() {
        // The raw cell of the same concurrency opens each group.
        let raw_index = raw_cell_of(first, index);
        let of = |f: &dyn Fn(&Cell, &Cell) -> f64| {
            median(rounds.iter().map(|r| f(&r[index], &r[raw_index])).collect())
        };
        let per_event = |cpu: fn(&Cell) -> Option<f64>| {
            let value = of(&|c, _| {
                cpu(c)
                    .filter(|_| c.events > 0)
                    .map_or(f64::NAN, |s| s * 1e6 / c.events as f64)
            });
            if value.is_finite() {
                format!("{value:.0}")
            } else {
                "-".into()
            }
        };
        // (h) never touches the broker: its rates are not comparable with (a).
        let ratio = |f: &dyn Fn(&Cell, &Cell) -> f64| {
            if cell.mode.starts_with("(h)") {
                "-".to_owned()
            } else {
                format!("{:.2}", of(f))
            }
        };
        let peak_rss = rounds.iter().filter_map(|r| r[index].peak_rss_kb).max();
        println!(
            "| {} | {} | {:.0} | {:.0} | {:.2} | {:.2} | {:.2} | {} | {} | {} | {} | {} | {} |",
            cell.concurrency,
            cell.mode,
            of(&|c, _| c.requests as f64 / c.seconds),
            of(&|c, _| c.events_per_sec()),
            of(&|c, _| c.percentile_ms(0.5)),
            of(&|c, _| c.percentile_ms(0.99)),
            of(&|c, _| c.percentile_ms(0.999)),
            peak_rss
                .map(|kb| format!("{:.1}", kb as f64 / 1024.0))
                .unwrap_or_else(|| "-".into()),
            per_event(|c| c.cpu_seconds),
            per_event(|c| c.broker_cpu_seconds),
            per_event(|c| c.load_generator_cpu_seconds),
            ratio(&|c, raw| c.events_per_sec() / raw.events_per_sec()),
            ratio(&|c, raw| c.percentile_ms(0.99) / raw.percentile_ms(0.99)),
        );
    }
    println!();
    for (index, cell) in first.iter().enumerate() {
        if !cell.mode.starts_with("(h)") {
            continue;
        }
        let raw_index = raw_cell_of(first, index);
        let estimate = median(
            rounds
                .iter()
                .map(|r| cpu_budget_estimate(&r[raw_index], &r[index]))
                .collect(),
        );
        // The (b) cell of the same group, if single-event callbacks were measured.
        let by_round = group_of(first, index)
            .find(|&i| first[i].mode.starts_with("(b)"))
            .map(|b| {
                let ratios: Vec<String> = rounds
                    .iter()
                    .map(|r| {
                        format!(
                            "{:.2}",
                            r[b].events_per_sec() / r[raw_index].events_per_sec()
                        )
                    })
                    .collect();
                format!("(b)/(a) by round {}; ", ratios.join(", "))
            })
            .unwrap_or_default();
        println!(
            "C = {}: {by_round}CPU-budget estimate of the best (b)/(a) = {estimate:.2} (a forwarder \
             costing only lapin's CPU plus the bare server's; holds where the cores are the limit)",
            cell.concurrency
        );
    }
}

/// Index of the raw cell that opens the group `index` belongs to.
fn raw_cell_of(cells: &[Cell], index: usize) -> usize {
    group_of(cells, index).start
}

/// The indices of the group (one concurrency: its raw cell and the cells after it up to the
/// next raw cell) that `index` belongs to.
fn group_of(cells: &[Cell], index: usize) -> std::ops::Range<usize> {
    let is_raw = |c: &Cell| c.mode.starts_with("(a)");
    let start = cells[..=index]
        .iter()
        .rposition(is_raw)
        .expect("every group opens with a raw cell");
    let end = cells[index + 1..]
        .iter()
        .position(is_raw)
        .map_or(cells.len(), |offset| index + 1 + offset);
    start..end
}

/// Where the cores are the limit (equally busy in both cells), throughput is inversely
/// proportional to the CPU everything spends per event. (a) spends publisher + broker; the
/// cheapest possible forwarder adds the bare HTTP server's and the clients' CPU per request.
fn cpu_budget_estimate(raw: &Cell, http: &Cell) -> f64 {
    let per_event =
        |cpu: Option<f64>, cell: &Cell| cpu.map_or(f64::NAN, |s| s / cell.events as f64);
    let raw_cost = per_event(raw.cpu_seconds, raw) + per_event(raw.broker_cpu_seconds, raw);
    let http_cost =
        per_event(http.cpu_seconds, http) + per_event(http.load_generator_cpu_seconds, http);
    raw_cost / (raw_cost + http_cost)
}
