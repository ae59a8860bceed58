//! The contract's AMQP message for one event: routing key, properties and headers. Pure.

use lapin::BasicProperties;
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};

use super::job::Received;
use crate::event::Event;

/// Longest value copied from an event into a property or header; a longer one is left out
/// (the body still carries it). With every copied value this short (and a request id of at most
/// 128 bytes), a message's whole header frame stays under 2 KB, well below 4 096 bytes, the
/// smallest `frame_max` an AMQP 0-9-1 broker may negotiate: no event can make the broker refuse
/// the frame and close the connection that every request shares. 255 is also AMQP's limit for
/// short strings, which the `type` property is.
pub const MAX_COPIED_VALUE_BYTES: usize = 255;

/// `app_id` of every message.
const APP_ID: &str = "bandwidth-forwarder";

/// The routing key as AMQP wants it.
pub(super) fn routing_key(event: &Event) -> ShortString {
    // Routing keys are at most 64 bytes by construction.
    ShortString::from(event.routing_key.as_str())
}

/// The AMQP properties and headers of the contract.
pub(super) fn properties(event: &Event, received: &Received) -> BasicProperties {
    let mut headers = FieldTable::default();
    let text = |value: &str| AMQPValue::LongString(LongString::from(value));
    headers.insert("x-deduplication-header".into(), text(&event.dedup_key));
    headers.insert("x-received-at".into(), text(&received.rfc3339));
    let copied = [
        ("x-bandwidth-event-type", Some(event.kind.as_str())),
        ("x-bandwidth-message-id", event.message_id.as_deref()),
        ("x-bandwidth-event-time", event.time.as_deref()),
    ];
    for (name, value) in copied {
        if let Some(value) = value.and_then(bounded) {
            headers.insert(name.into(), text(value));
        }
    }
    let properties = BasicProperties::default()
        .with_delivery_mode(2)
        .with_content_type("application/json".into())
        .with_message_id(ShortString::from(event.dedup_key.as_str()))
        .with_timestamp(received.unix_secs)
        .with_app_id(APP_ID.into())
        // At most 128 bytes: a caller's id is reused only when it is that short.
        .with_correlation_id(ShortString::from(received.request_id.as_str()))
        .with_headers(headers);
    match bounded(&event.kind) {
        Some(kind) => properties.with_type(ShortString::from(kind)),
        None => properties,
    }
}

/// `value` if it is short enough to be copied into the message's header frame.
fn bounded(value: &str) -> Option<&str> {
    (value.len() <= MAX_COPIED_VALUE_BYTES).then_some(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(kind: &str, message_id: Option<&str>, time: Option<&str>) -> Event {
        Event {
            body: bytes::Bytes::from_static(b"{}"),
            kind: kind.into(),
            routing_key: crate::event::routing_key(kind),
            dedup_key: "k".repeat(64),
            message_id: message_id.map(String::from),
            time: time.map(String::from),
        }
    }

    fn received() -> Received {
        Received {
            unix_secs: 1_700_000_000,
            rfc3339: "2023-11-14T22:13:20.000Z".into(),
            request_id: "bw-req-7".into(),
        }
    }

    fn header(properties: &BasicProperties, name: &str) -> Option<String> {
        let headers = properties.headers().as_ref().expect("headers");
        match headers.inner().get(&ShortString::from(name))? {
            AMQPValue::LongString(s) => Some(String::from_utf8_lossy(s.as_bytes()).into_owned()),
            other => panic!("{name} is not a long string: {other:?}"),
        }
    }

    #[test]
    fn every_row_of_the_contracts_message_table() {
        let e = event(
            "message-delivered",
            Some("1589228074636lm4k2je7j7jklbn2"),
            Some("2020-05-11T20:14:34.636Z"),
        );
        let p = properties(&e, &received());
        assert_eq!(routing_key(&e).as_str(), "message.delivered");
        assert_eq!(*p.delivery_mode(), Some(2));
        assert_eq!(
            p.content_type().as_ref().map(ShortString::as_str),
            Some("application/json")
        );
        assert_eq!(
            p.message_id().as_ref().map(ShortString::as_str),
            Some(e.dedup_key.as_str())
        );
        assert_eq!(
            p.kind().as_ref().map(ShortString::as_str),
            Some("message-delivered")
        );
        assert_eq!(*p.timestamp(), Some(1_700_000_000));
        assert_eq!(
            p.correlation_id().as_ref().map(ShortString::as_str),
            Some("bw-req-7")
        );
        assert_eq!(
            p.app_id().as_ref().map(ShortString::as_str),
            Some("bandwidth-forwarder")
        );
        assert_eq!(
            header(&p, "x-deduplication-header").as_deref(),
            Some(e.dedup_key.as_str())
        );
        assert_eq!(
            header(&p, "x-bandwidth-message-id").as_deref(),
            Some("1589228074636lm4k2je7j7jklbn2")
        );
        assert_eq!(
            header(&p, "x-bandwidth-event-type").as_deref(),
            Some("message-delivered")
        );
        assert_eq!(
            header(&p, "x-bandwidth-event-time").as_deref(),
            Some("2020-05-11T20:14:34.636Z")
        );
        assert_eq!(
            header(&p, "x-received-at").as_deref(),
            Some("2023-11-14T22:13:20.000Z")
        );
    }

    #[test]
    fn absent_fields_are_absent_headers() {
        let p = properties(&event("message-sending", None, None), &received());
        assert_eq!(header(&p, "x-bandwidth-message-id"), None);
        assert_eq!(header(&p, "x-bandwidth-event-time"), None);
    }

    #[test]
    fn values_over_the_bound_are_left_out_and_values_at_it_are_kept() {
        let at = "a".repeat(MAX_COPIED_VALUE_BYTES);
        let p = properties(&event(&at, Some(&at), Some(&at)), &received());
        assert_eq!(
            p.kind().as_ref().map(ShortString::as_str),
            Some(at.as_str())
        );
        for name in [
            "x-bandwidth-event-type",
            "x-bandwidth-message-id",
            "x-bandwidth-event-time",
        ] {
            assert_eq!(header(&p, name).as_deref(), Some(at.as_str()), "{name}");
        }

        let over = "a".repeat(150_000);
        let e = event(&over, Some(&over), Some(&over));
        let p = properties(&e, &received());
        assert_eq!(*p.kind(), None);
        for name in [
            "x-bandwidth-event-type",
            "x-bandwidth-message-id",
            "x-bandwidth-event-time",
        ] {
            assert_eq!(header(&p, name), None, "{name}");
        }
        // The rest of the message is unchanged.
        assert_eq!(routing_key(&e).as_str(), "unknown");
        assert_eq!(
            header(&p, "x-deduplication-header").as_deref(),
            Some(e.dedup_key.as_str())
        );
    }

    #[test]
    fn the_bound_counts_bytes_not_characters() {
        // 128 two-byte characters: 256 bytes, one over.
        let wide = "é".repeat(128);
        let p = properties(&event("t", Some(&wide), None), &received());
        assert_eq!(header(&p, "x-bandwidth-message-id"), None);
    }
}
