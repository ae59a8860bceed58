//! `message.id`, read in the same pass as the rest of the event: `message` may be any JSON
//! value, and only an object's single `id` counts (a repeated `id` counts as none, so the dedup
//! key falls back to the event's bytes).

use std::fmt;

use serde::de::{self, Deserialize, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde_json::value::RawValue;

/// The raw `id` of an event's `message` object, if it has exactly one.
#[derive(Default)]
pub(super) struct MessageId<'a>(pub(super) Option<&'a RawValue>);

impl<'de: 'a, 'a> Deserialize<'de> for MessageId<'a> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(MessageIdVisitor(std::marker::PhantomData))
    }
}

/// A key of `message`: `id` or any other (escapes in a key are read like serde's own).
#[derive(serde::Deserialize)]
#[serde(field_identifier, rename_all = "lowercase")]
enum Key {
    Id,
    #[serde(other)]
    Other,
}

struct MessageIdVisitor<'a>(std::marker::PhantomData<&'a ()>);

impl<'de: 'a, 'a> Visitor<'de> for MessageIdVisitor<'a> {
    type Value = MessageId<'a>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let (mut id, mut ids) = (None, 0);
        while let Some(key) = map.next_key::<Key>()? {
            match key {
                Key::Id => {
                    id = Some(map.next_value::<&'de RawValue>()?);
                    ids += 1;
                }
                Key::Other => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(MessageId(if ids == 1 { id } else { None }))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(MessageId(None))
    }

    fn visit_bool<E: de::Error>(self, _: bool) -> Result<Self::Value, E> {
        Ok(MessageId(None))
    }

    fn visit_i64<E: de::Error>(self, _: i64) -> Result<Self::Value, E> {
        Ok(MessageId(None))
    }

    fn visit_u64<E: de::Error>(self, _: u64) -> Result<Self::Value, E> {
        Ok(MessageId(None))
    }

    fn visit_f64<E: de::Error>(self, _: f64) -> Result<Self::Value, E> {
        Ok(MessageId(None))
    }

    fn visit_str<E: de::Error>(self, _: &str) -> Result<Self::Value, E> {
        Ok(MessageId(None))
    }

    fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(MessageId(None))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(message: &str) -> Option<String> {
        let read: MessageId = serde_json::from_str(message).expect("any JSON value reads");
        read.0.map(|raw| raw.get().to_owned())
    }

    #[test]
    fn only_a_single_id_of_an_object_counts() {
        assert_eq!(
            id(r#"{"text":"a","id":"m-1","to":["x"]}"#),
            Some(r#""m-1""#.into())
        );
        assert_eq!(
            id(r#"{"\u0069d":"m-2"}"#),
            Some(r#""m-2""#.into()),
            "an escaped key"
        );
        assert_eq!(
            id(r#"{"id":7}"#),
            Some("7".into()),
            "the caller wants a string"
        );
        assert_eq!(id(r#"{"id":"a","id":"b"}"#), None, "a repeated id is none");
        assert_eq!(id(r#"{"text":"no id"}"#), None);
        for other in [
            r#"["id","m"]"#,
            r#""m-3""#,
            "12",
            "1.5",
            "-3",
            "true",
            "null",
        ] {
            assert_eq!(id(other), None, "{other}");
        }
    }
}
