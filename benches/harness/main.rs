//! Benchmark harness: in one run, on one broker and one quorum queue, measures
//! (a) the raw limit — lapin publishing with confirms, persistent, mandatory — and
//! (b) the forwarder end to end with single-event callbacks, and (c) with 10- and 100-event
//! callbacks, at each concurrency, and prints a table with the ratios to (a). An (h) cell
//! measures the HTTP exchange alone (a bare hyper server, no broker), from which the table's
//! last lines estimate the best any forwarder could reach beside the same broker and clients;
//! a (w) cell is that server also parsing each callback and writing the forwarder's access line,
//! the floor of the overhead; an (m) cell is (w) publishing each event as (a) does, in a process
//! of its own: the least a forwarder can be with these libraries. The bench runs on the
//! forwarder's allocator (mimalloc).
//!
//! `cargo bench --bench harness -- [--seconds N] [--rounds N] [--concurrency 16,64,256]
//! [--batches 1,10,100] [--pin] [--log-level LEVEL] [--forwarder PATH] [--uri URI]`

mod bare;
mod cell;
mod costs;
mod forwarder;
mod load;
mod minimal;
mod raw;
mod report;
mod stats;
mod system;

use std::time::Duration;

use clap::Parser;
use lapin::options::{QueueDeclareOptions, QueueDeleteOptions, QueuePurgeOptions};
use lapin::types::{AMQPValue, FieldTable, LongString};
use lapin::{Connection, ConnectionProperties};

use bare::http_floor;
use cell::Cell;
use forwarder::{forwarder, minimal};
use raw::raw;
use report::print_table;
use system::Pinning;

/// A delivery receipt as Bandwidth sends it; `{ID}` is replaced per event.
pub const EVENT: &str = r#"{"time":"2026-03-10T14:07:45.120Z","type":"message-delivered","to":"+15554440101","description":"ok","message":{"id":"{ID}","owner":"+15553330101","applicationId":"5b1e2c4a-7d3f-4e8a-9c61-0f2d8b7a3e15","time":"2026-03-10T14:07:41.002Z","segmentCount":2,"direction":"out","to":["+15554440101"],"from":"+15553330101","text":"","tag":"campaign-42","priority":"default"}}"#;

/// Queue bound for the run: quorum, capped so it never grows without bound.
pub const QUEUE_MAX_LENGTH: i64 = 200_000;

#[derive(Parser)]
pub struct Args {
    /// Measured seconds per cell (after a 1 s warm-up).
    #[arg(long, default_value_t = 5)]
    pub seconds: u64,
    /// Concurrency levels to sweep.
    #[arg(long, value_delimiter = ',', default_value = "16,64,256")]
    pub concurrency: Vec<usize>,
    /// Events per callback in the forwarder cells (1 is (b), larger ones are (c)).
    #[arg(long, value_delimiter = ',', default_value = "1,10,100")]
    pub batches: Vec<usize>,
    /// Broker.
    #[arg(long, default_value = "amqp://guest:guest@127.0.0.1:5672/%2f")]
    pub uri: String,
    /// The forwarder's `log.level` (its default, `info`, logs a line per request).
    #[arg(long, default_value = "info")]
    pub log_level: String,
    /// Repeat the whole sweep this many times and print medians (machines are noisy).
    #[arg(long, default_value_t = 1)]
    pub rounds: usize,
    /// Pin the broker to CPU 0 and the bench and forwarder to CPU 1 (restored at the end), so
    /// the broker has the same one core in every cell.
    #[arg(long)]
    pub pin: bool,
    /// (a) publishes a lean message (the keys, `type` and `correlation_id` only), to price the
    /// rest of the contract's properties and headers.
    #[arg(long)]
    pub lean_raw: bool,
    /// The forwarder binary to measure (default: the one this build made), e.g. another
    /// build kept aside, to compare two versions against the same broker in one session.
    #[arg(long)]
    pub forwarder: Option<std::path::PathBuf>,
    /// Ignored: cargo bench passes it.
    #[arg(long, hide = true)]
    pub bench: bool,
    /// Serve as the minimal forwarder (m) on this address instead (the harness starts it).
    #[arg(long, hide = true)]
    pub minimal_forwarder: Option<String>,
    /// The exchange the minimal forwarder publishes to.
    #[arg(long, hide = true, default_value = "")]
    pub minimal_exchange: String,
}

/// The forwarder's allocator, so that (a), (h) and (w) are not charged for a slower one.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    let args = Args::parse();
    if let Some(listen) = &args.minimal_forwarder {
        minimal::serve(listen, &args.uri, &args.minimal_exchange);
        return;
    }
    tokio::runtime::Runtime::new()
        .expect("runtime")
        .block_on(run(args));
}

async fn run(args: Args) {
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
            cells.push(
                raw(
                    &connection,
                    &exchange,
                    concurrency,
                    args.seconds,
                    args.lean_raw,
                )
                .await,
            );
            eprintln!("round {round}, concurrency {concurrency}: HTTP only");
            let confirm_time = Duration::from_micros(cells[cells.len() - 1].percentile_us(0.5));
            cells.push(http_floor(concurrency, args.seconds, confirm_time, false).await);
            eprintln!("round {round}, concurrency {concurrency}: HTTP + the forwarder's work");
            cells.push(http_floor(concurrency, args.seconds, confirm_time, true).await);
            eprintln!("round {round}, concurrency {concurrency}: minimal forwarder");
            purge().await;
            cells.push(minimal(&args, &exchange, concurrency).await);
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
    costs::print_costs(&rounds, &args.concurrency);
    print_table(&rounds, &args);
}
