//! The line `log.format = "json"` writes: the object tracing-subscriber's JSON formatter makes,
//! key for key, serialized straight into one byte buffer.
//!
//! tracing-subscriber serializes through an adaptor that checks every fragment serde_json
//! writes for UTF-8, and formats the timestamp field by field into a `String` of its own; for
//! the access line that is two thirds of its cost. This writes the same bytes at a third of it
//! (BENCHMARKS.md).

use std::cell::RefCell;
use std::fmt;
use std::time::SystemTime;

use serde::Serialize;
use serde::ser::{SerializeMap, SerializeSeq, Serializer as _};
use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_log::NormalizeEvent;
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::time::FormatTime;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormattedFields};
use tracing_subscriber::registry::{LookupSpan, SpanRef};

use super::SpanFields;
use crate::clock::{self, Precision};

/// One object per event: `timestamp`, `level`, the event's fields in their order (`message`
/// among them), `target`, and inside a span `span` (the innermost) and `spans` (root first).
#[derive(Debug, Clone, Copy, Default)]
pub struct JsonLine;

impl<S> FormatEvent<S, SpanFields> for JsonLine
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, SpanFields>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        thread_local! {
            static LINE: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
        }
        LINE.with(|line| {
            // An event logged while this thread formats another (from a field's `Debug`)
            // gets a buffer of its own.
            let mut spare = Vec::new();
            let mut borrowed = line.try_borrow_mut();
            let line = match borrowed.as_deref_mut() {
                Ok(line) => line,
                Err(_) => &mut spare,
            };
            line.clear();
            serialize(ctx, event, line).map_err(|_| fmt::Error)?;
            line.push(b'\n');
            writer.write_str(std::str::from_utf8(line).map_err(|_| fmt::Error)?)
        })
    }
}

fn serialize<S>(
    ctx: &FmtContext<'_, S, SpanFields>,
    event: &Event<'_>,
    line: &mut Vec<u8>,
) -> serde_json::Result<()>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    // A record from the `log` crate names its own target, not "log".
    let normalized = event.normalized_metadata();
    let meta = normalized.as_ref().unwrap_or_else(|| event.metadata());
    let mut object = Object::open(line, "timestamp", &Timestamp(SystemTime::now()))?;
    object.entry("level", meta.level().as_str())?;
    event.record(&mut object);
    object.fields_written()?;
    object.entry("target", meta.target())?;
    let current = event
        .parent()
        .and_then(|id| ctx.span(id))
        .or_else(|| ctx.lookup_current());
    if let Some(span) = &current {
        object.entry("span", &SpanObject(span))?;
        object.entry("spans", &Scope(ctx))?;
    }
    object.line.push(b'}');
    Ok(())
}

/// A JSON object written into the line entry by entry, the event's fields as they are recorded:
/// the bytes serde_json's map serializer writes, without its state machine around every entry.
struct Object<'a> {
    line: &'a mut Vec<u8>,
    /// The first error, after which nothing more is written.
    state: serde_json::Result<()>,
}

impl<'a> Object<'a> {
    /// `{` and the first entry.
    fn open(
        line: &'a mut Vec<u8>,
        key: &str,
        value: &(impl Serialize + ?Sized),
    ) -> serde_json::Result<Self> {
        line.push(b'{');
        Self::key_and_value(line, key, value)?;
        Ok(Self {
            line,
            state: Ok(()),
        })
    }

    /// `,`, then the entry.
    fn entry(&mut self, key: &str, value: &(impl Serialize + ?Sized)) -> serde_json::Result<()> {
        self.line.push(b',');
        Self::key_and_value(self.line, key, value)
    }

    fn key_and_value(
        line: &mut Vec<u8>,
        key: &str,
        value: &(impl Serialize + ?Sized),
    ) -> serde_json::Result<()> {
        serde_json::Serializer::new(&mut *line).serialize_str(key)?;
        line.push(b':');
        value.serialize(&mut serde_json::Serializer::new(line))
    }

    /// Whether every field recorded so far was written.
    fn fields_written(&mut self) -> serde_json::Result<()> {
        std::mem::replace(&mut self.state, Ok(()))
    }

    /// An event's field, unless an earlier one failed.
    fn field(&mut self, field: &Field, value: &(impl Serialize + ?Sized)) {
        if self.state.is_ok() {
            self.state = self.entry(field.name(), value);
        }
    }
}

/// What tracing-subscriber's JSON formatter writes for each kind of value (through
/// tracing-serde's `SerdeMapVisitor`); the kinds left to the defaults (bytes, errors, 128-bit
/// integers) reach `record_debug` as they do there.
impl Visit for Object<'_> {
    fn record_bool(&mut self, field: &Field, value: bool) {
        self.field(field, &value);
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.field(field, &format_args!("{value:?}"));
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.field(field, &value);
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.field(field, &value);
    }

    fn record_f64(&mut self, field: &Field, value: f64) {
        self.field(field, &value);
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        self.field(field, value);
    }
}

/// A wall-clock time as RFC 3339 with microseconds, e.g. `2026-03-10T14:07:45.120345Z`.
struct Timestamp(SystemTime);

impl Serialize for Timestamp {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match clock::rfc3339(self.0, Precision::Micros) {
            Some(written) => serializer.serialize_str(written.as_str()),
            // `clock` does not write a clock set before 1970 or past 9999; tracing-subscriber's
            // formatter writes any time (it reads the clock itself).
            None => {
                let mut text = String::new();
                let _ = tracing_subscriber::fmt::time::SystemTime
                    .format_time(&mut Writer::new(&mut text));
                serializer.serialize_str(&text)
            }
        }
    }
}

/// A span's fields (as `SpanFields` recorded them) and its `name`.
struct SpanObject<'a, 'r, R: LookupSpan<'r>>(&'a SpanRef<'r, R>);

impl<'r, R: LookupSpan<'r>> Serialize for SpanObject<'_, 'r, R> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(None)?;
        let extensions = self.0.extensions();
        let recorded = extensions
            .get::<FormattedFields<SpanFields>>()
            .map_or("{}", |fields| fields.fields.as_str());
        match serde_json::from_str::<serde_json::Map<String, serde_json::Value>>(recorded) {
            Ok(fields) => {
                for (name, value) in &fields {
                    map.serialize_entry(name, value)?;
                }
            }
            Err(error) => map.serialize_entry("field_error", &error.to_string())?,
        }
        map.serialize_entry("name", self.0.metadata().name())?;
        map.end()
    }
}

/// Every span the current one sits in, root first.
struct Scope<'a, 'c, S, N>(&'a FmtContext<'c, S, N>);

impl<S> Serialize for Scope<'_, '_, S, SpanFields>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    fn serialize<T: serde::Serializer>(&self, serializer: T) -> Result<T::Ok, T::Error> {
        let mut spans = serializer.serialize_seq(None)?;
        if let Some(leaf) = self.0.lookup_current() {
            for span in leaf.scope().from_root() {
                spans.serialize_element(&SpanObject(&span))?;
            }
        }
        spans.end()
    }
}

#[cfg(test)]
mod tests {
    use std::io;
    use std::sync::{Arc, Mutex};
    use std::time::{Duration, UNIX_EPOCH};

    use tracing::{Level, field, info, info_span, warn};
    use tracing_subscriber::EnvFilter;
    use tracing_subscriber::fmt::MakeWriter;

    use super::*;

    /// Everything a subscriber writes, kept in memory.
    #[derive(Clone, Default)]
    struct Written(Arc<Mutex<Vec<u8>>>);

    impl Written {
        fn lines(&self) -> Vec<String> {
            let bytes = self.0.lock().expect("not poisoned");
            String::from_utf8_lossy(&bytes)
                .lines()
                .map(String::from)
                .collect()
        }
    }

    impl io::Write for Written {
        fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
            self.0
                .lock()
                .expect("not poisoned")
                .extend_from_slice(bytes);
            Ok(bytes.len())
        }

        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    impl MakeWriter<'_> for Written {
        type Writer = Written;

        fn make_writer(&self) -> Written {
            self.clone()
        }
    }

    /// Events of every shape the forwarder logs, and some it does not.
    fn log_everything() {
        info!(
            request_id = "4f1c",
            status = 200,
            events = 3usize,
            latency_ms = 1.25,
            "callback accepted"
        );
        let callback = info_span!("callback", request_id = "req \"quoted\"");
        let _callback = callback.enter();
        let batch = info_span!(
            "batch",
            worker = 3,
            size = field::Empty,
            r#type = ?"raw",
            "r#named" = ?1,
            "log.line" = ?7,
            bytes = &b"ab"[..],
            ok = true,
            share = 0.5,
            offset = -1i64,
        );
        batch.record("size", 2);
        batch.record("worker", 4);
        let _batch = batch.enter();
        warn!(
            error = %"channel_closed",
            detail = ?Some("broker said \"no\""),
            retried = true,
            offset = -4i64,
            largest = u64::MAX,
            ratio = f64::NAN,
            "channel failed\nwith \u{1b}[31m colour and ünïcode"
        );
        tracing::event!(parent: &callback, Level::ERROR, "explicit parent");
        tracing::event!(parent: None, Level::DEBUG, "no parent");
        tracing_log::format_trace(
            &tracing_log::log::Record::builder()
                .args(format_args!("from the log crate"))
                .level(tracing_log::log::Level::Warn)
                .target("rustls_connector")
                .module_path_static(Some("rustls_connector"))
                .build(),
        )
        .expect("a log record becomes an event");
    }

    /// What `log_everything` makes the subscriber that `build` configures write.
    fn lines_logged_by<S>(build: impl FnOnce(Written) -> S) -> Vec<String>
    where
        S: Subscriber + Send + Sync + 'static,
    {
        let written = Written::default();
        tracing::subscriber::with_default(build(written.clone()), log_everything);
        written.lines()
    }

    /// The timestamp, which differs between two runs, cut out of a line.
    fn split_timestamp(line: &str) -> (String, String) {
        let rest = line
            .strip_prefix(r#"{"timestamp":""#)
            .unwrap_or_else(|| panic!("no leading timestamp: {line}"));
        let end = rest.find('"').expect("a closed timestamp");
        (rest[..end].to_owned(), rest[end..].to_owned())
    }

    #[test]
    fn writes_the_lines_tracing_subscribers_json_formatter_writes() {
        let ours = lines_logged_by(|to| crate::telemetry::json(EnvFilter::new("trace"), to));
        let theirs = lines_logged_by(|to| {
            let json = tracing_subscriber::fmt()
                .with_max_level(Level::TRACE)
                .with_writer(to);
            json.json().flatten_event(true).finish()
        });
        assert_eq!(ours.len(), 5, "{ours:#?}");
        assert_eq!(ours.len(), theirs.len(), "{ours:#?}\n{theirs:#?}");
        for (our, their) in ours.iter().zip(&theirs) {
            let (our_time, our_rest) = split_timestamp(our);
            let (their_time, their_rest) = split_timestamp(their);
            assert_eq!(our_rest, their_rest);
            assert_eq!(our_time.len(), their_time.len(), "{our_time} {their_time}");
            let written = humantime::parse_rfc3339(&our_time).expect("RFC 3339");
            let age = SystemTime::now()
                .duration_since(written)
                .expect("not ahead");
            assert!(age < Duration::from_secs(60), "{our_time}");
        }
        // What the comparison covers: spans with escaped, raw-named, late and re-recorded fields
        // of every kind, and a record from the `log` crate under its own target.
        let batch = r#"{"bytes":[97,98],"named":"1","offset":-1,"ok":true,"share":0.5,"size":2,"type":"\"raw\"","worker":4,"name":"batch"}"#;
        let spans =
            format!(r#""spans":[{{"request_id":"req \"quoted\"","name":"callback"}},{batch}]"#);
        assert!(ours[1].ends_with(&format!("{spans}}}")), "{}", ours[1]);
        assert!(
            ours[4].contains(r#""target":"rustls_connector""#),
            "{}",
            ours[4]
        );
    }

    #[test]
    fn a_clock_before_1970_or_past_9999_still_gets_a_timestamp() {
        for time in [
            UNIX_EPOCH - Duration::from_secs(1),
            UNIX_EPOCH + Duration::from_secs(clock::RFC3339_END),
        ] {
            let text = serde_json::to_string(&Timestamp(time)).expect("serializes");
            assert_eq!(
                text.len(),
                r#""2026-03-10T14:07:45.120345Z""#.len(),
                "{text}"
            );
        }
    }
}
