//! Command line: parse flags, load settings, start telemetry, run.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use bandwidth_forwarder::consumer::{self, ConsumeOptions};
use bandwidth_forwarder::{app, settings::Settings, telemetry};
use clap::{Args, Parser, Subcommand};

/// mimalloc rather than glibc's allocator: a request allocates and frees dozens of small
/// buffers, and mimalloc's thread-local free lists make that cheaper (BENCHMARKS.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Receives Bandwidth messaging callbacks and publishes each event to RabbitMQ.
#[derive(Parser)]
#[command(name = "bandwidth-forwarder", version)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    /// TOML configuration file (default: config/default.toml when it exists).
    #[arg(long, global = true, value_name = "PATH")]
    config: Option<PathBuf>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the service (the default).
    Serve,
    /// Print the effective configuration with secrets redacted, or what is wrong with it.
    CheckConfig,
    /// Consume events from a queue of your own and run a handler for each.
    Consume(ConsumeArgs),
    /// Exit 0 if a probe URL answers 200 (for a container's HEALTHCHECK).
    Healthcheck {
        /// The probe to GET.
        #[arg(long, default_value = "http://127.0.0.1:8080/healthz")]
        url: String,
    },
    /// Move a consumer's dead-lettered events (NAME.dead) back to its queue NAME.
    Replay {
        /// The consumer's queue.
        #[arg(long, value_name = "NAME")]
        queue: String,
        /// Move at most this many events (default: all).
        #[arg(long, value_name = "N")]
        limit: Option<u64>,
    },
}

/// `consume`'s flags.
#[derive(Args)]
struct ConsumeArgs {
    /// The durable quorum queue to declare and consume (its dead letters go to NAME.dead).
    #[arg(long, value_name = "NAME")]
    queue: String,
    /// Binding key on the exchange (`message.delivered`, `message.*`, `#`); repeatable.
    #[arg(long = "bind", value_name = "KEY", required = true)]
    bindings: Vec<String>,
    /// Run CMD through `sh -c` per event, body on stdin; default: one JSON line on stdout.
    #[arg(long, value_name = "CMD")]
    exec: Option<String>,
    /// Events held unacknowledged at most (default 2 × concurrency).
    #[arg(long, value_name = "N")]
    prefetch: Option<u16>,
    /// Handlers running at once; 1 keeps the queue's order.
    #[arg(long, value_name = "N", default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..))]
    concurrency: u16,
    /// Deliveries of an event before it is dead-lettered.
    #[arg(long, value_name = "N", default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..=1000))]
    max_attempts: u32,
    /// A handler running longer is killed (its process group) and the event retried.
    #[arg(long, value_name = "N", default_value_t = 30_000, value_parser = clap::value_parser!(u64).range(1..))]
    handler_timeout_ms: u64,
    /// Serve /healthz, /readyz and /metrics on this address (`127.0.0.1:0` picks a port).
    #[arg(long, value_name = "ADDR")]
    listen: Option<std::net::SocketAddr>,
}

/// Keys remembered for duplicate detection, at most.
const WINDOW_ENTRIES: usize = 100_000;
/// How long a handled key is remembered: Bandwidth's retry window.
const WINDOW_AGE: Duration = Duration::from_secs(24 * 60 * 60);

impl ConsumeArgs {
    fn into_options(self) -> ConsumeOptions {
        let concurrency = usize::from(self.concurrency);
        ConsumeOptions {
            queue: self.queue,
            bindings: self.bindings,
            exec: self.exec,
            prefetch: self
                .prefetch
                .unwrap_or(self.concurrency.saturating_mul(2))
                .max(self.concurrency),
            concurrency,
            max_attempts: self.max_attempts,
            handler_timeout: Duration::from_millis(self.handler_timeout_ms),
            window_entries: WINDOW_ENTRIES,
            window_age: WINDOW_AGE,
            listen: self.listen,
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // Needs no settings: a broken configuration must not make a running service look unhealthy.
    if let Some(Command::Healthcheck { url }) = &cli.command {
        return match bandwidth_forwarder::healthcheck::check(url) {
            Ok(()) => ExitCode::SUCCESS,
            Err(error) => {
                eprintln!("unhealthy: {error}");
                ExitCode::FAILURE
            }
        };
    }
    let settings = match Settings::load(cli.config.as_deref()) {
        Ok(settings) => settings,
        Err(error) => {
            eprintln!("invalid configuration: {error}");
            return ExitCode::from(2);
        }
    };
    let outcome = match cli.command {
        Some(Command::CheckConfig) => {
            print!("{}", settings.to_redacted_toml());
            return ExitCode::SUCCESS;
        }
        Some(Command::Consume(args)) => {
            telemetry::init(&settings.log);
            consumer::consume(settings, args.into_options())
        }
        Some(Command::Replay { queue, limit }) => {
            telemetry::init(&settings.log);
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(anyhow::Error::from)
                .and_then(|runtime| runtime.block_on(consumer::replay(&settings, &queue, limit)))
                .map(|moved| println!("{moved}"))
        }
        Some(Command::Healthcheck { .. }) => unreachable!("handled before the settings"),
        Some(Command::Serve) | None => {
            telemetry::init(&settings.log);
            app::serve(settings, cli.config)
        }
    };
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!("{error:#}");
            ExitCode::FAILURE
        }
    }
}
