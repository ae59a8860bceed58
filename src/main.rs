//! Command line: parse flags, load settings, start telemetry, run.

use std::num::{NonZeroU16, NonZeroU64};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use bandwidth_forwarder::consumer::{self, ConsumeOptions};
use bandwidth_forwarder::settings::{Settings, SettingsError};
use bandwidth_forwarder::{app, telemetry};
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
    #[arg(long, value_name = "N", default_value = "1")]
    concurrency: NonZeroU16,
    /// Deliveries of an event before it is dead-lettered.
    #[arg(
        long,
        value_name = "N",
        default_value_t = 5,
        value_parser = clap::value_parser!(u32).range(1..=1000)
    )]
    max_attempts: u32,
    /// A handler running longer is killed (its process group) and the event retried.
    #[arg(long, value_name = "N", default_value = "30000")]
    handler_timeout_ms: NonZeroU64,
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
        let concurrency = self.concurrency.get();
        ConsumeOptions {
            queue: self.queue,
            bindings: self.bindings,
            exec: self.exec,
            prefetch: self
                .prefetch
                .unwrap_or(concurrency.saturating_mul(2))
                .max(concurrency),
            concurrency: usize::from(concurrency),
            max_attempts: self.max_attempts,
            handler_timeout: Duration::from_millis(self.handler_timeout_ms.get()),
            window_entries: WINDOW_ENTRIES,
            window_age: WINDOW_AGE,
            listen: self.listen,
        }
    }
}

/// How a command failed, and so what it prints and exits with.
enum Failure {
    /// The settings did not load: the reason on stderr, exit 2.
    Settings(SettingsError),
    /// A probe did not answer 200: the reason on stderr, exit 1.
    Unhealthy(String),
    /// The command ran and failed: an error log line, exit 1.
    Run(anyhow::Error),
}

impl From<SettingsError> for Failure {
    fn from(error: SettingsError) -> Self {
        Self::Settings(error)
    }
}

impl From<anyhow::Error> for Failure {
    fn from(error: anyhow::Error) -> Self {
        Self::Run(error)
    }
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure::Settings(error)) => {
            eprintln!("invalid configuration: {error}");
            ExitCode::from(2)
        }
        Err(Failure::Unhealthy(error)) => {
            eprintln!("unhealthy: {error}");
            ExitCode::FAILURE
        }
        Err(Failure::Run(error)) => {
            tracing::error!("{error:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<(), Failure> {
    let load = || Settings::load(cli.config.as_deref());
    match cli.command.unwrap_or(Command::Serve) {
        // Needs no settings: a broken configuration must not make a running service look
        // unhealthy.
        Command::Healthcheck { url } => {
            bandwidth_forwarder::healthcheck::check(&url).map_err(Failure::Unhealthy)
        }
        Command::CheckConfig => {
            print!("{}", load()?.to_redacted_toml());
            Ok(())
        }
        Command::Consume(args) => {
            let settings = load()?;
            telemetry::init(&settings.log);
            Ok(consumer::consume(settings, args.into_options())?)
        }
        Command::Replay { queue, limit } => {
            let settings = load()?;
            telemetry::init(&settings.log);
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(anyhow::Error::from)?;
            let moved = runtime.block_on(consumer::replay(&settings, &queue, limit))?;
            println!("{moved}");
            Ok(())
        }
        Command::Serve => {
            let settings = load()?;
            telemetry::init(&settings.log);
            Ok(app::serve(settings, cli.config.clone())?)
        }
    }
}
