//! How `log.format = "json"` keeps a span's fields until an event inside it is written: the text
//! of one JSON object, serialized straight from the fields.
//!
//! tracing-subscriber's `JsonFields` first collects the fields into a map of `Value`s and then
//! serializes that through a UTF-8-checking adaptor, on every span (the forwarder opens one per
//! callback); this writes the same object at a fraction of that. `JsonLine` reads the object back
//! into a sorted map, so the order written here never shows.

use std::fmt;

use serde::Serialize;
use serde::ser::{SerializeMap, Serializer as _};
use tracing::field::{Field, Visit};
use tracing::span::Record;
use tracing_subscriber::field::RecordFields;
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FormatFields, FormattedFields};

/// A span's fields as one JSON object, named and valued as `JsonFields` names and values them.
#[derive(Debug, Clone, Copy, Default)]
pub struct SpanFields;

impl<'writer> FormatFields<'writer> for SpanFields {
    fn format_fields<R: RecordFields>(
        &self,
        mut writer: Writer<'writer>,
        fields: R,
    ) -> fmt::Result {
        writer.write_str(&object_of(fields)?)
    }

    /// Fields recorded after the span opened join its object; a name recorded again keeps the
    /// newer value.
    fn add_fields(
        &self,
        current: &'writer mut FormattedFields<Self>,
        fields: &Record<'_>,
    ) -> fmt::Result {
        if current.fields.is_empty() {
            current.fields = object_of(fields)?;
            return Ok(());
        }
        type Object = serde_json::Map<String, serde_json::Value>;
        let mut merged: Object = serde_json::from_str(&current.fields).map_err(|_| fmt::Error)?;
        let added: Object = serde_json::from_str(&object_of(fields)?).map_err(|_| fmt::Error)?;
        merged.extend(added);
        current.fields = serde_json::to_string(&merged).map_err(|_| fmt::Error)?;
        Ok(())
    }
}

/// The fields as the text of one JSON object.
fn object_of<R: RecordFields>(fields: R) -> Result<String, fmt::Error> {
    // Room for a request id and its name, so that one allocation usually does.
    let mut object = Vec::with_capacity(64);
    let mut serializer = serde_json::Serializer::new(&mut object);
    let mut visitor = Entries {
        map: serializer.serialize_map(None).map_err(|_| fmt::Error)?,
        state: Ok(()),
    };
    fields.record(&mut visitor);
    visitor.state.map_err(|_| fmt::Error)?;
    SerializeMap::end(visitor.map).map_err(|_| fmt::Error)?;
    String::from_utf8(object).map_err(|_| fmt::Error)
}

/// Writes each field as one entry of the object; the first error stops the rest.
struct Entries<M: SerializeMap> {
    map: M,
    state: Result<(), M::Error>,
}

impl<M: SerializeMap> Entries<M> {
    fn entry<V: Serialize + ?Sized>(&mut self, name: &str, value: &V) {
        if self.state.is_ok() {
            self.state = self.map.serialize_entry(name, value);
        }
    }
}

impl<M: SerializeMap> Visit for Entries<M> {
    fn record_f64(&mut self, field: &Field, value: f64) {
        self.entry(field.name(), &value);
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.entry(field.name(), &value);
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.entry(field.name(), &value);
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.entry(field.name(), &value);
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        self.entry(field.name(), &value);
    }

    fn record_bytes(&mut self, field: &Field, value: &[u8]) {
        self.entry(field.name(), &value);
    }

    /// As `JsonFields`: a `log` record's metadata fields are left out and a raw identifier
    /// loses its `r#`.
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        let name = field.name();
        if name.starts_with("log.") {
            return;
        }
        let name = name.strip_prefix("r#").unwrap_or(name);
        self.entry(name, &format_args!("{value:?}"));
    }
}
