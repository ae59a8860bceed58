//! Log output: human-readable or one JSON object per line.

use std::io::IsTerminal;

use tracing::Subscriber;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::util::SubscriberInitExt;

use crate::settings::{LogFormat, LogSettings};

mod json_line;
mod span_fields;

use json_line::JsonLine;
use span_fields::SpanFields;

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
    let _ = match settings.format {
        LogFormat::Json => json(filter, std::io::stderr).try_init(),
        // Colour codes only where a person reads them, never into files and pipes.
        LogFormat::Pretty => tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_ansi(std::io::stderr().is_terminal())
            .with_writer(std::io::stderr)
            .finish()
            .try_init(),
    };
}

/// What `log.format = "json"` writes: one object per line, the event's fields at the top level
/// beside `timestamp`, `level`, `message` and `target`, and the enclosing spans' fields under
/// `span` and `spans`: byte for byte what tracing-subscriber's JSON formatter writes with
/// `flatten_event(true)`, at a third of its cost. Public so that the benchmark prices the same line.
pub fn json<W>(filter: EnvFilter, writer: W) -> impl Subscriber + Send + Sync + 'static
where
    W: for<'w> MakeWriter<'w> + Send + Sync + 'static,
{
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer)
        .with_ansi(false)
        .fmt_fields(SpanFields)
        .event_format(JsonLine)
        .finish()
}
