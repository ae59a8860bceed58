//! Property tests of the callback parser: random and mutated bodies never panic, and validation
//! accepts exactly what the contract calls valid (checked against an independent reference).

use std::collections::HashSet;

use bandwidth_forwarder::event::parse_callback;
use bandwidth_forwarder::routing::RoutingTemplate;
use bytes::Bytes;
use proptest::prelude::*;
use serde::de::{Deserialize, Deserializer, IgnoredAny, MapAccess, Visitor};
use serde_json::Value;
use serde_json::value::RawValue;

use crate::common::{fixture, fixture_names};

const MAX_DEPTH: usize = 32;

/// Object keys in order, duplicates kept.
struct Keys(Vec<String>);

impl<'de> Deserialize<'de> for Keys {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct KeysVisitor;
        impl<'de> Visitor<'de> for KeysVisitor {
            type Value = Keys;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("an object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Keys, A::Error> {
                let mut keys = Vec::new();
                while let Some((key, IgnoredAny)) = map.next_entry::<String, IgnoredAny>()? {
                    keys.push(key);
                }
                Ok(Keys(keys))
            }
        }
        deserializer.deserialize_map(KeysVisitor)
    }
}

fn depth(value: &Value) -> usize {
    match value {
        Value::Array(items) => 1 + items.iter().map(depth).max().unwrap_or(0),
        Value::Object(map) => 1 + map.values().map(depth).max().unwrap_or(0),
        _ => 0,
    }
}

/// The contract, written independently: the raw bytes of each valid event, or `None`.
fn reference(body: &[u8]) -> Option<Vec<Vec<u8>>> {
    let value: Value = serde_json::from_slice(body).ok()?;
    if depth(&value) > MAX_DEPTH {
        return None;
    }
    let raws: Vec<Box<RawValue>> = match &value {
        Value::Array(items) if !items.is_empty() => serde_json::from_slice(body).ok()?,
        Value::Object(_) => vec![serde_json::from_slice(body).ok()?],
        _ => return None,
    };
    let mut events = Vec::new();
    for raw in raws {
        let event: Value = serde_json::from_str(raw.get()).ok()?;
        event.as_object()?.get("type")?.as_str()?;
        // The fields the forwarder reads must not be ambiguous.
        let Keys(keys) = serde_json::from_str(raw.get()).ok()?;
        let mut seen = HashSet::new();
        for key in keys
            .iter()
            .filter(|k| ["type", "to", "time", "message"].contains(&k.as_str()))
        {
            if !seen.insert(key) {
                return None;
            }
        }
        events.push(raw.get().as_bytes().to_vec());
    }
    Some(events)
}

fn check(body: &[u8]) -> Result<(), TestCaseError> {
    let parsed = parse_callback(
        &Bytes::copy_from_slice(body),
        MAX_DEPTH,
        &RoutingTemplate::default(),
    );
    let expected = reference(body);
    match (parsed, expected) {
        (Ok(events), Some(raws)) => {
            let bodies: Vec<Vec<u8>> = events.iter().map(|e| e.body.to_vec()).collect();
            prop_assert_eq!(bodies, raws);
        }
        (Err(_), None) => {}
        (parsed, expected) => prop_assert!(
            false,
            "parser {:?} but reference {:?} for {:?}",
            parsed.map(|e| e.len()),
            expected.map(|e| e.len()),
            String::from_utf8_lossy(body)
        ),
    }
    Ok(())
}

fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i32>().prop_map(Value::from),
        "[a-z\\-]{0,12}".prop_map(Value::from),
        ".{0,8}".prop_map(Value::from),
    ];
    leaf.prop_recursive(4, 32, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::btree_map("(type|to|time|message|id|[a-z]{1,6})", inner, 0..5)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// An event whose `deep` field nests `levels` arrays and objects around a random value: around
/// `MAX_DEPTH`, on both sides of it.
fn deeply_nested_event() -> impl Strategy<Value = String> {
    (25usize..40, any::<u64>(), json_value()).prop_map(|(levels, shapes, inner)| {
        let mut nested = inner.to_string();
        for level in 0..levels {
            nested = if shapes >> (level % 64) & 1 == 1 {
                format!(r#"{{"k":{nested}}}"#)
            } else {
                format!("[{nested}]")
            };
        }
        format!(r#"[{{"type":"message-sent","deep":{nested}}}]"#)
    })
}

/// An event that repeats a key, written as text (a `Value` cannot hold a duplicate): one of
/// the four the forwarder reads (invalid) or another (valid).
fn event_with_a_repeated_key() -> impl Strategy<Value = String> {
    let key = prop::sample::select(vec!["type", "to", "time", "message", "id", "text"]);
    (key, json_value(), json_value()).prop_map(|(key, first, second)| {
        format!(r#"[{{"type":"message-sent","{key}":{first},"{key}":{second}}}]"#)
    })
}

fn mutate(mut bytes: Vec<u8>, edits: &[(usize, u8, u8)]) -> Vec<u8> {
    for &(position, byte, kind) in edits {
        if bytes.is_empty() {
            bytes.push(byte);
            continue;
        }
        let at = position % bytes.len();
        match kind % 3 {
            0 => bytes[at] = byte,
            1 => bytes.insert(at, byte),
            _ => {
                bytes.remove(at);
            }
        }
    }
    bytes
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2_000))]

    #[test]
    fn random_json_is_judged_as_the_contract_says(value in json_value(), wrap in 0u8..3) {
        let body = match wrap {
            0 => serde_json::to_vec(&value),
            1 => serde_json::to_vec(&Value::Array(vec![value])),
            _ => serde_json::to_vec(&serde_json::json!([{"type": "message-sent"}, value])),
        }.expect("serialize");
        check(&body)?;
    }

    #[test]
    fn mutated_fixtures_never_panic_and_are_judged_as_the_contract_says(
        which in 0usize..64,
        edits in prop::collection::vec((any::<usize>(), any::<u8>(), any::<u8>()), 1..6),
    ) {
        let names = fixture_names();
        let body = fixture(&names[which % names.len()]).to_vec();
        check(&mutate(body, &edits))?;
    }

    #[test]
    fn random_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
        check(&bytes)?;
    }

    #[test]
    fn nesting_around_the_depth_limit_is_judged_as_the_contract_says(body in deeply_nested_event()) {
        check(body.as_bytes())?;
    }

    #[test]
    fn repeated_keys_are_judged_as_the_contract_says(body in event_with_a_repeated_key()) {
        check(body.as_bytes())?;
    }
}

#[test]
fn the_new_generators_reach_both_verdicts() {
    use proptest::strategy::ValueTree;
    use proptest::test_runner::TestRunner;
    let mut runner = TestRunner::deterministic();
    let mut verdicts = [HashSet::new(), HashSet::new()];
    for _ in 0..400 {
        let deep = deeply_nested_event()
            .new_tree(&mut runner)
            .expect("tree")
            .current();
        verdicts[0].insert(reference(deep.as_bytes()).is_some());
        let repeated = event_with_a_repeated_key()
            .new_tree(&mut runner)
            .expect("tree")
            .current();
        verdicts[1].insert(reference(repeated.as_bytes()).is_some());
    }
    assert_eq!(
        verdicts[0].len(),
        2,
        "deep bodies both within and past the limit"
    );
    assert_eq!(
        verdicts[1].len(),
        2,
        "repeated keys both allowed and refused"
    );
}

#[test]
fn the_reference_agrees_on_every_fixture() {
    for name in fixture_names() {
        let body = fixture(&name);
        assert!(reference(&body).is_some(), "{name}");
        check(&body).expect("parser and reference agree");
    }
}
