//! Log output: human-readable or one JSON object per line.

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

use crate::settings::{LogFormat, LogSettings};

/// lapin logs every message the broker returns, body and headers included, at `warn`. The
/// forwarder answers such a callback 503 and logs that line itself, without the event's text, so
/// lapin's stays off unless a filter names lapin.
const RETURNED_MESSAGES_OFF: &str = "lapin::returned_messages=off";

/// Installs the global subscriber; `RUST_LOG`, when set, overrides `log.level`.
pub fn init(settings: &LogSettings) {
    let requested = std::env::var(EnvFilter::DEFAULT_ENV)
        .ok()
        .filter(|directives| {
            !directives.trim().is_empty() && EnvFilter::try_new(directives).is_ok()
        });
    let directives = requested.unwrap_or_else(|| settings.level.clone());
    let mut filter = EnvFilter::try_new(&directives).unwrap_or_else(|_| EnvFilter::new("info"));
    if !directives.contains("lapin") {
        filter = filter.add_directive(
            RETURNED_MESSAGES_OFF
                .parse()
                .expect("a valid filter directive"),
        );
    }
    // Colour codes only where a person reads them, never into files and pipes.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    let _ = match settings.format {
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
        LogFormat::Pretty => builder.try_init(),
    };
}
