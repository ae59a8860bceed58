//! Command line: parse flags, load settings, start telemetry, run.

use std::path::PathBuf;
use std::process::ExitCode;

use bandwidth_forwarder::{app, settings::Settings, telemetry};
use clap::{Parser, Subcommand};

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
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let settings = match Settings::load(cli.config.as_deref()) {
        Ok(settings) => settings,
        Err(error) => {
            eprintln!("invalid configuration: {error}");
            return ExitCode::from(2);
        }
    };
    if let Some(Command::CheckConfig) = cli.command {
        print!("{}", settings.to_redacted_toml());
        return ExitCode::SUCCESS;
    }
    telemetry::init(&settings.log);
    match app::serve(settings, cli.config) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!("{error:#}");
            ExitCode::FAILURE
        }
    }
}
