//! Benchmark harness: in one run, on one broker and one quorum queue, measures
//! (a) the raw limit — lapin publishing with confirms, persistent, mandatory — and
//! (b) the forwarder end to end with single-event callbacks, and (c) with 10- and 100-event
//! callbacks, at each concurrency, and prints a table with the ratios to (a).
//!
//! `cargo bench --bench harness -- [--seconds N] [--concurrency 1,16,64,256] [--uri URI]`

use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use clap::Parser;
use http_body_util::{BodyExt, Full};
use hyper::Request;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use lapin::options::{
    BasicPublishOptions, ConfirmSelectOptions, QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{BasicProperties, Confirmation, Connection, ConnectionProperties};

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
    /// Broker.
    #[arg(long, default_value = "amqp://guest:guest@127.0.0.1:5672/%2f")]
    uri: String,
    /// The forwarder's `log.level` (its default, `info`, logs a line per request).
    #[arg(long, default_value = "info")]
    log_level: String,
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
}

impl Cell {
    fn events_per_sec(&self) -> f64 {
        self.events as f64 / self.seconds
    }

    fn percentile_ms(&self, p: f64) -> f64 {
        if self.latencies_us.is_empty() {
            return f64::NAN;
        }
        let index = ((self.latencies_us.len() as f64 * p).ceil() as usize)
            .clamp(1, self.latencies_us.len())
            - 1;
        self.latencies_us[index] as f64 / 1000.0
    }
}

#[tokio::main]
async fn main() {
    let args = Args::parse();
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

    let mut cells = Vec::new();
    for &concurrency in &args.concurrency {
        eprintln!("concurrency {concurrency}: raw lapin");
        cells.push(raw(&connection, &queue, concurrency, args.seconds).await);
        for batch in [1, 10, 100] {
            eprintln!("concurrency {concurrency}: forwarder, {batch}-event callbacks");
            cells.push(forwarder(&args, &exchange, concurrency, batch).await);
        }
    }
    let _ = admin
        .queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
        .await;
    let _ = admin
        .exchange_delete(exchange.as_str().into(), Default::default())
        .await;
    print_table(&cells, &args);
}

/// (a): C publishers sharing one confirm channel, each awaiting its confirm.
async fn raw(connection: &Connection, queue: &str, concurrency: usize, seconds: u64) -> Cell {
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
            let queue = ShortString::from(queue);
            let (measuring, stop, counter) = (measuring.clone(), stop.clone(), counter.clone());
            tokio::spawn(async move {
                let mut latencies = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    let id = format!("raw-{}", counter.fetch_add(1, Ordering::Relaxed));
                    let body = EVENT.replace("{ID}", &id);
                    let started = Instant::now();
                    let confirm = channel
                        .basic_publish(
                            "".into(),
                            queue.clone(),
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
    let seconds = measure_window(&measuring, &stop, seconds).await;
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
        cpu_seconds: None,
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

/// Warm up for a second, then measure for `seconds`; returns the measured duration.
async fn measure_window(measuring: &AtomicBool, stop: &AtomicBool, seconds: u64) -> f64 {
    tokio::time::sleep(Duration::from_secs(1)).await;
    measuring.store(true, Ordering::Relaxed);
    let started = Instant::now();
    tokio::time::sleep(Duration::from_secs(seconds)).await;
    measuring.store(false, Ordering::Relaxed);
    let measured = started.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    measured
}

/// The release binary, started fresh per cell so its peak RSS belongs to that cell.
struct Subject {
    child: Child,
    addr: String,
    config: std::path::PathBuf,
}

impl Subject {
    fn start(uri: &str, exchange: &str, log_level: &str) -> Self {
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
        let child = Command::new(env!("CARGO_BIN_EXE_bandwidth-forwarder"))
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

    /// User + system CPU seconds so far.
    fn cpu_seconds(&self) -> Option<f64> {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.child.id())).ok()?;
        let fields: Vec<&str> = stat.rsplit_once(") ")?.1.split_whitespace().collect();
        let ticks: u64 =
            fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
        Some(ticks as f64 / 100.0)
    }
}

impl Drop for Subject {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.config);
    }
}

/// (b)/(c): C clients posting callbacks of `batch` unique events, counting only 2xx.
async fn forwarder(args: &Args, exchange: &str, concurrency: usize, batch: usize) -> Cell {
    let seconds = args.seconds;
    let subject = Subject::start(&args.uri, exchange, &args.log_level);
    let client: Client<HttpConnector, Full<Bytes>> = Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(concurrency)
        .build_http();
    let url = format!("http://{}/callbacks/bandwidth/messaging", subject.addr);
    let ready = format!("http://{}/readyz", subject.addr);
    for _ in 0..500 {
        let request = Request::get(&ready).body(Full::default()).expect("request");
        if client
            .request(request)
            .await
            .is_ok_and(|r| r.status().is_success())
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let cpu_before = subject.cpu_seconds();
    let measuring = Arc::new(AtomicBool::new(false));
    let stop = Arc::new(AtomicBool::new(false));
    let counter = Arc::new(AtomicU64::new(0));
    let failures = Arc::new(AtomicU64::new(0));
    let tasks: Vec<_> = (0..concurrency)
        .map(|_| {
            let (client, url) = (client.clone(), url.clone());
            let (measuring, stop, counter, failures) = (
                measuring.clone(),
                stop.clone(),
                counter.clone(),
                failures.clone(),
            );
            tokio::spawn(async move {
                let mut latencies = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    let body = callback_body(&counter, batch);
                    let request = Request::post(&url)
                        .header("content-type", "application/json; charset=utf-8")
                        .body(Full::new(Bytes::from(body)))
                        .expect("request");
                    let started = Instant::now();
                    let ok = match client.request(request).await {
                        Ok(response) => {
                            let ok = response.status().is_success();
                            let _ = response.into_body().collect().await;
                            ok
                        }
                        Err(_) => false,
                    };
                    if !measuring.load(Ordering::Relaxed) {
                        continue;
                    }
                    if ok {
                        latencies.push(started.elapsed().as_micros() as u64);
                    } else {
                        failures.fetch_add(1, Ordering::Relaxed);
                    }
                }
                latencies
            })
        })
        .collect();
    let seconds = measure_window(&measuring, &stop, seconds).await;
    let mut latencies = Vec::new();
    for task in tasks {
        latencies.extend(task.await.expect("poster"));
    }
    latencies.sort_unstable();
    let failed = failures.load(Ordering::Relaxed);
    if failed > 0 {
        eprintln!("  {failed} non-2xx answers (not counted)");
    }
    let cpu_seconds = subject
        .cpu_seconds()
        .zip(cpu_before)
        .map(|(after, before)| after - before);
    Cell {
        mode: format!(
            "({}) forwarder, {batch}-event callbacks",
            if batch == 1 { 'b' } else { 'c' }
        ),
        concurrency,
        requests: latencies.len() as u64,
        events: latencies.len() as u64 * batch as u64,
        seconds,
        latencies_us: latencies,
        peak_rss_kb: subject.peak_rss_kb(),
        cpu_seconds,
    }
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

fn print_table(cells: &[Cell], args: &Args) {
    println!(
        "\n{} s per cell after 1 s warm-up; quorum queue (x-max-length {QUEUE_MAX_LENGTH}); {} cores\n",
        args.seconds,
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(0)
    );
    println!(
        "| C | mode | req/s | events/s | p50 ms | p99 ms | p99.9 ms | peak RSS MB | CPU s | events/s ÷ (a) | p99 ÷ (a) |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|");
    for group in cells.chunk_by(|a, b| a.concurrency == b.concurrency) {
        let raw = &group[0];
        for cell in group {
            println!(
                "| {} | {} | {:.0} | {:.0} | {:.2} | {:.2} | {:.2} | {} | {} | {:.2} | {:.2} |",
                cell.concurrency,
                cell.mode,
                cell.requests as f64 / cell.seconds,
                cell.events_per_sec(),
                cell.percentile_ms(0.5),
                cell.percentile_ms(0.99),
                cell.percentile_ms(0.999),
                cell.peak_rss_kb
                    .map(|kb| format!("{:.1}", kb as f64 / 1024.0))
                    .unwrap_or_else(|| "-".into()),
                cell.cpu_seconds
                    .map(|s| format!("{s:.1}"))
                    .unwrap_or_else(|| "-".into()),
                cell.events_per_sec() / raw.events_per_sec(),
                cell.percentile_ms(0.99) / raw.percentile_ms(0.99),
            );
        }
    }
}
