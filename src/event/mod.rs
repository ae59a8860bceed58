//! Splitting a callback body into events: validation and the fields each event carries. The
//! keys are computed in `keys.rs`. Pure, no I/O.

use bytes::Bytes;
use serde::Deserialize;
use serde_json::value::RawValue;

mod keys;
mod message_id;
mod one_pass;
mod scan;

pub use keys::{dedup_key_for_message, routing_key, sha256_hex};
use message_id::MessageId;
pub use scan::with_string_flags;
use scan::{first_byte, nesting_exceeds};

use crate::routing::RoutingTemplate;

/// Routing key for a `type` outside `[a-z0-9-]{1,64}`.
pub const UNKNOWN_ROUTING_KEY: &str = "unknown";

/// The event types Bandwidth's messaging API sends today. Others are forwarded just the same;
/// this list only bounds what metrics label by type.
pub const KNOWN_TYPES: [&str; 8] = [
    "message-received",
    "message-sending",
    "message-sent",
    "message-delivered",
    "message-failed",
    "message-read",
    "message-reaction",
    "suggestion-response",
];

/// One event of a callback, with everything the publisher needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    /// The event object's bytes exactly as received.
    pub body: Bytes,
    /// The event `type`.
    pub kind: String,
    /// The routing key `amqp.routing_key` gives it (by default `type` with `-` as `.`).
    pub routing_key: String,
    /// Deterministic deduplication key (lowercase hex SHA-256).
    pub dedup_key: String,
    /// `message.id`, when it is a string.
    pub message_id: Option<String>,
    /// The event `time`, when it is a string.
    pub time: Option<String>,
}

/// Why a body is not a valid callback; each maps to 400.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidCallback {
    #[error("the body is not valid JSON: {0}")]
    NotJson(String),
    #[error("the body must be a JSON array of events or a single event object")]
    NotArrayOrObject,
    #[error("the array holds no events")]
    EmptyArray,
    #[error("event {index} is not a JSON object")]
    NotAnObject { index: usize },
    #[error("event {index} has no string `type`")]
    MissingType { index: usize },
    #[error("event {index} is malformed: {reason}")]
    Malformed { index: usize, reason: String },
    #[error("the JSON nests deeper than {0} levels")]
    TooDeep(usize),
}

impl InvalidCallback {
    /// The short machine word for the JSON error body.
    pub fn code(&self) -> &'static str {
        match self {
            Self::NotJson(_) => "invalid_json",
            Self::NotArrayOrObject => "not_array_or_object",
            Self::EmptyArray => "empty_array",
            Self::NotAnObject { .. } => "event_not_object",
            Self::MissingType { .. } => "missing_type",
            Self::Malformed { .. } => "malformed_event",
            Self::TooDeep(_) => "too_deep",
        }
    }
}

/// The few fields the forwarder reads; everything else is forwarded untouched.
#[derive(Deserialize)]
struct EventFields<'a> {
    #[serde(rename = "type", borrow)]
    kind: Option<&'a RawValue>,
    #[serde(default, borrow)]
    message: MessageId<'a>,
    #[serde(borrow)]
    to: Option<&'a RawValue>,
    #[serde(borrow)]
    time: Option<&'a RawValue>,
}

/// Splits and validates a whole callback body; on any error nothing is returned.
pub fn parse_callback(
    body: &Bytes,
    max_depth: usize,
    routing: &RoutingTemplate,
) -> Result<Vec<Event>, InvalidCallback> {
    if nesting_exceeds(body, max_depth) {
        return Err(InvalidCallback::TooDeep(max_depth));
    }
    match one_pass::events(body, routing) {
        Some(events) => Ok(events),
        None => in_two_passes(body, routing),
    }
}

/// The body split into its events first, then read event by event: slower than one pass, and
/// the reading that names what is wrong.
fn in_two_passes(body: &Bytes, routing: &RoutingTemplate) -> Result<Vec<Event>, InvalidCallback> {
    let raws: Vec<&RawValue> = match first_byte(body) {
        Some(b'[') => {
            serde_json::from_slice(body).map_err(|e| InvalidCallback::NotJson(e.to_string()))?
        }
        Some(b'{') => vec![
            serde_json::from_slice(body).map_err(|e| InvalidCallback::NotJson(e.to_string()))?,
        ],
        _ => {
            return Err(
                match serde_json::from_slice::<serde::de::IgnoredAny>(body) {
                    Ok(_) => InvalidCallback::NotArrayOrObject,
                    Err(e) => InvalidCallback::NotJson(e.to_string()),
                },
            );
        }
    };
    if raws.is_empty() {
        return Err(InvalidCallback::EmptyArray);
    }
    raws.into_iter()
        .enumerate()
        .map(|(index, raw)| parse_event(body, index, raw, routing))
        .collect()
}

fn parse_event(
    body: &Bytes,
    index: usize,
    raw: &RawValue,
    routing: &RoutingTemplate,
) -> Result<Event, InvalidCallback> {
    let text = raw.get();
    if !text.starts_with('{') {
        return Err(InvalidCallback::NotAnObject { index });
    }
    let fields: EventFields =
        serde_json::from_str(text).map_err(|e| InvalidCallback::Malformed {
            index,
            reason: e.to_string(),
        })?;
    event_from(body, index, text, fields, routing)
}

/// The event whose text `text` (a slice of `body`) holds `fields`.
fn event_from(
    body: &Bytes,
    index: usize,
    text: &str,
    fields: EventFields,
    routing: &RoutingTemplate,
) -> Result<Event, InvalidCallback> {
    let kind = fields
        .kind
        .and_then(as_string)
        .ok_or(InvalidCallback::MissingType { index })?;
    let message_id = fields.message.0.and_then(as_string);
    let to = fields.to.and_then(as_string).unwrap_or_default();
    let dedup_key = match &message_id {
        Some(id) => dedup_key_for_message(&kind, id, &to),
        None => sha256_hex(text.as_bytes()),
    };
    Ok(Event {
        body: body.slice_ref(text.as_bytes()),
        routing_key: routing.render(&kind, text),
        kind,
        dedup_key,
        message_id,
        time: fields.time.and_then(as_string),
    })
}

/// A JSON string value, unescaped; `None` for any other JSON type. The parser has checked the
/// token, so a string without a backslash is its text between the quotes.
fn as_string(raw: &RawValue) -> Option<String> {
    let text = raw.get();
    let quoted = text.strip_prefix('"')?.strip_suffix('"')?;
    if quoted.contains('\\') {
        serde_json::from_str(text).ok()
    } else {
        Some(quoted.to_owned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_strings_are_read_as_strings_with_escapes_resolved() {
        let read = |json: &str| {
            let raw: &RawValue = serde_json::from_str(json).expect("a JSON value");
            as_string(raw)
        };
        assert_eq!(read(r#""message-sent""#).as_deref(), Some("message-sent"));
        assert_eq!(read(r#""""#).as_deref(), Some(""));
        assert_eq!(read(r#""a\"b\\c\u0041""#).as_deref(), Some(r#"a"b\cA"#));
        assert_eq!(read(r#""\"""#).as_deref(), Some("\""));
        assert_eq!(read("\"é ✓\"").as_deref(), Some("é ✓"));
        for other in ["7", "null", "true", r#"["a"]"#, r#"{"a":"b"}"#] {
            assert_eq!(read(other), None, "{other}");
        }
    }

    fn parse(body: &str) -> Result<Vec<Event>, InvalidCallback> {
        parse_callback(
            &Bytes::copy_from_slice(body.as_bytes()),
            32,
            &RoutingTemplate::default(),
        )
    }

    #[test]
    fn bounds_nesting_depth_outside_strings() {
        let nested = |depth: usize| {
            format!(
                "[{{\"type\":\"t\",\"x\":{}{}}}]",
                "[".repeat(depth),
                "]".repeat(depth)
            )
        };
        assert!(
            parse(&nested(30)).is_ok(),
            "array + object + 30 = 32 levels"
        );
        assert_eq!(parse(&nested(31)), Err(InvalidCallback::TooDeep(32)));
        assert_eq!(parse(&nested(100_000)), Err(InvalidCallback::TooDeep(32)));
        let brackets_in_strings = format!(
            "[{{\"type\":\"t\",\"x\":\"{}\\\"{}\"}}]",
            "[".repeat(100),
            "{".repeat(100)
        );
        assert!(parse(&brackets_in_strings).is_ok());
        let many_shallow = format!("[{}]", vec![r#"{"type":"t"}"#; 40].join(","));
        assert_eq!(parse(&many_shallow).map(|events| events.len()), Ok(40));
    }

    #[test]
    fn keeps_each_element_byte_for_byte() {
        let body = "[ {\"type\":\"message-received\",  \"x\" : [1, 2]} ,\n{\"type\":\"a\"}]";
        let events = parse(body).expect("valid");
        assert_eq!(events.len(), 2);
        assert_eq!(
            &events[0].body[..],
            b"{\"type\":\"message-received\",  \"x\" : [1, 2]}"
        );
        assert_eq!(&events[1].body[..], b"{\"type\":\"a\"}");
    }

    #[test]
    fn a_single_object_is_a_batch_of_one() {
        let events = parse(" {\"type\":\"message-sent\"} ").expect("valid");
        assert_eq!(events.len(), 1);
        assert_eq!(&events[0].body[..], b"{\"type\":\"message-sent\"}");
    }

    #[test]
    fn rejects_what_the_contract_calls_invalid() {
        assert!(matches!(parse("nope"), Err(InvalidCallback::NotJson(_))));
        assert!(matches!(parse(""), Err(InvalidCallback::NotJson(_))));
        assert!(matches!(
            parse("[{\"type\":\"a\"}"),
            Err(InvalidCallback::NotJson(_))
        ));
        assert_eq!(parse("\"x\""), Err(InvalidCallback::NotArrayOrObject));
        assert_eq!(parse("42"), Err(InvalidCallback::NotArrayOrObject));
        assert_eq!(parse("[]"), Err(InvalidCallback::EmptyArray));
        assert_eq!(
            parse("[{\"type\":\"a\"}, 3]"),
            Err(InvalidCallback::NotAnObject { index: 1 })
        );
        assert_eq!(
            parse("[[]]"),
            Err(InvalidCallback::NotAnObject { index: 0 })
        );
        assert_eq!(
            parse("[{}]"),
            Err(InvalidCallback::MissingType { index: 0 })
        );
        assert_eq!(
            parse("[{\"type\":7}]"),
            Err(InvalidCallback::MissingType { index: 0 })
        );
        assert_eq!(
            parse("[{\"type\":null}]"),
            Err(InvalidCallback::MissingType { index: 0 })
        );
    }

    #[test]
    fn dedup_key_uses_type_message_id_and_to() {
        let events = parse(
            r#"[{"type":"message-delivered","to":"+15554440101","message":{"id":"m1","text":""}}]"#,
        )
        .expect("valid");
        // printf 'message-delivered\nm1\n+15554440101' | sha256sum
        assert_eq!(
            events[0].dedup_key,
            "cb513baa2dc750a6f037b6de82e2783a6fc44ca816122f7a5643bec00cdbc2f5"
        );
        assert_eq!(events[0].message_id.as_deref(), Some("m1"));
    }

    #[test]
    fn dedup_key_ignores_field_order_and_spacing_when_message_id_is_present() {
        let a = parse(r#"{"type":"t","to":"1","message":{"id":"m"}}"#).expect("valid");
        let b = parse(r#"{ "message" : { "id" : "m", "x": 1 }, "to":"1", "type":"t" }"#)
            .expect("valid");
        assert_eq!(a[0].dedup_key, b[0].dedup_key);
    }

    #[test]
    fn dedup_key_falls_back_to_the_raw_bytes() {
        let body = r#"{"type":"t","message":{"id":5}}"#;
        let events = parse(body).expect("valid");
        assert_eq!(events[0].message_id, None);
        assert_eq!(events[0].dedup_key, sha256_hex(body.as_bytes()));
        let no_message = parse(r#"{"type":"t","message":"text"}"#).expect("valid");
        assert_eq!(
            no_message[0].dedup_key,
            sha256_hex(br#"{"type":"t","message":"text"}"#)
        );
    }

    #[test]
    fn missing_to_hashes_as_empty() {
        let events = parse(r#"{"type":"t","message":{"id":"m"}}"#).expect("valid");
        assert_eq!(events[0].dedup_key, sha256_hex(b"t\nm\n"));
        let numeric_to = parse(r#"{"type":"t","to":5,"message":{"id":"m"}}"#).expect("valid");
        assert_eq!(numeric_to[0].dedup_key, sha256_hex(b"t\nm\n"));
    }

    #[test]
    fn escaped_strings_are_unescaped_before_hashing() {
        let events =
            parse(r#"{"type":"message-\u0073ent","message":{"id":"a\/b"}}"#).expect("valid");
        assert_eq!(events[0].kind, "message-sent");
        assert_eq!(events[0].routing_key, "message.sent");
        assert_eq!(events[0].dedup_key, sha256_hex(b"message-sent\na/b\n"));
    }

    #[test]
    fn reads_time_when_it_is_a_string() {
        let events = parse(r#"[{"type":"t","time":"2024-01-01T00:00:00Z"},{"type":"t","time":1}]"#)
            .expect("valid");
        assert_eq!(events[0].time.as_deref(), Some("2024-01-01T00:00:00Z"));
        assert_eq!(events[1].time, None);
    }
}
