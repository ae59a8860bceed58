//! A callback body read in one pass: each event parsed where it lies, its bytes cut out at the
//! offsets where the parser stopped. Splitting the body first and then parsing each event reads
//! every byte twice; for a typical callback that was a third of the parser's cost. The body's
//! UTF-8 is checked once, whole, so that the parser does not check each string again.

use bytes::Bytes;

use super::scan::skip_whitespace;
use super::{Event, EventFields, event_from};
use crate::routing::RoutingTemplate;

/// Every event of a valid body, exactly as the two-pass reading finds them; `None` at the first
/// thing that is not a valid event where one belongs, so that reading names the error.
pub(super) fn events(body: &Bytes, routing: &RoutingTemplate) -> Option<Vec<Event>> {
    // The two-pass reading refuses invalid UTF-8 even inside strings the parser skips.
    let text = std::str::from_utf8(body).ok()?;
    let bytes = text.as_bytes();
    let mut at = skip_whitespace(bytes, 0);
    let mut events = Vec::new();
    match bytes.get(at)? {
        b'{' => {
            let (event, end) = event_at(body, text, at, 0, routing)?;
            events.push(event);
            at = end;
        }
        b'[' => {
            at = skip_whitespace(bytes, at + 1);
            loop {
                let (event, end) = event_at(body, text, at, events.len(), routing)?;
                events.push(event);
                at = skip_whitespace(bytes, end);
                match bytes.get(at)? {
                    b',' => at = skip_whitespace(bytes, at + 1),
                    b']' => {
                        at += 1;
                        break;
                    }
                    _ => return None,
                }
            }
        }
        _ => return None,
    }
    (skip_whitespace(bytes, at) == bytes.len()).then_some(events)
}

/// The event object starting at `start` of `text` (`body` as text), and the offset just past it.
fn event_at(
    body: &Bytes,
    text: &str,
    start: usize,
    index: usize,
    routing: &RoutingTemplate,
) -> Option<(Event, usize)> {
    let rest = text.get(start..)?;
    if !rest.starts_with('{') {
        return None;
    }
    // Read from a `str`, the parser takes its strings as they are: the body was checked whole.
    let mut parsed = serde_json::Deserializer::from_str(rest).into_iter::<EventFields>();
    let fields = parsed.next()?.ok()?;
    let end = start + parsed.byte_offset();
    let event = event_from(body, index, text.get(start..end)?, fields, routing).ok()?;
    Some((event, end))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::in_two_passes;

    fn read(body: &str) -> Option<Vec<Event>> {
        events(
            &Bytes::copy_from_slice(body.as_bytes()),
            &RoutingTemplate::default(),
        )
    }

    #[test]
    fn finds_the_events_the_two_pass_reading_finds() {
        for body in [
            r#"[{"type":"message-delivered","to":"+1555","message":{"id":"m-1"},"time":"t"}]"#,
            r#"{"type":"message-sent","message":{"id":"a\"b","to":["x"]}}"#,
            " \r\n\t[ {\"type\":\"a\",\"x\":[1,{\"y\":\"]\"}]} ,\n{\"type\":\"b\"}\t] \n",
            r#"[{"type":"a","message":"not an object"},{"type":"b","message":{"id":1}}]"#,
            r#"[{"type":"a","message":{"id":"x","id":"y"}},{"type":"\u0061"}]"#,
        ] {
            let two = in_two_passes(
                &Bytes::copy_from_slice(body.as_bytes()),
                &RoutingTemplate::default(),
            )
            .unwrap_or_else(|error| panic!("{body}: {error}"));
            assert_eq!(read(body), Some(two), "{body}");
        }
    }

    #[test]
    fn leaves_anything_else_to_the_two_pass_reading() {
        for body in [
            "",
            " ",
            "[]",
            "[ ]",
            "{}",
            "[{}]",
            r#"[{"type":7}]"#,
            r#"[{"type":"a"},]"#,
            r#"[,{"type":"a"}]"#,
            r#"[{"type":"a"} {"type":"b"}]"#,
            r#"[{"type":"a"},,{"type":"b"}]"#,
            r#"[{"type":"a"}"#,
            r#"[{"type":"a"}]]"#,
            r#"[{"type":"a"}] x"#,
            r#"{"type":"a"},"#,
            r#"{"type":"a"}{"type":"b"}"#,
            r#"[{"type":"a"},3]"#,
            // serde reads a struct from an array too: only an object is an event.
            r#"[["message-sent",{"id":"m"},"+1555","t"]]"#,
            r#"[{"type":"a","type":"b"}]"#,
            r#"[{"type":"a",}]"#,
            r#""x""#,
            "42",
        ] {
            assert_eq!(read(body), None, "{body}");
            let bytes = Bytes::copy_from_slice(body.as_bytes());
            assert!(
                in_two_passes(&bytes, &RoutingTemplate::default()).is_err(),
                "{body}"
            );
        }
        let invalid_utf8_in_a_skipped_string = b"[{\"type\":\"a\",\"text\":\"\xff\"}]";
        let body = Bytes::from_static(invalid_utf8_in_a_skipped_string);
        assert_eq!(events(&body, &RoutingTemplate::default()), None);
        assert!(matches!(
            in_two_passes(&body, &RoutingTemplate::default()),
            Err(crate::event::InvalidCallback::NotJson(_))
        ));
    }
}
