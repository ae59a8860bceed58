//! Fuzzes the callback parser and validator: it must never panic, and whatever it accepts must
//! satisfy the contract (an object with a string `type`, routing and dedup keys well formed,
//! each event a slice of the body).

#![no_main]

use bandwidth_forwarder::event::parse_callback;
use bandwidth_forwarder::routing::RoutingTemplate;
use bytes::Bytes;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let body = Bytes::copy_from_slice(data);
    let Ok(events) = parse_callback(&body, 32, &RoutingTemplate::default()) else {
        return;
    };
    assert!(!events.is_empty());
    for event in events {
        assert!(event.body.starts_with(b"{") && event.body.ends_with(b"}"));
        let offset = event.body.as_ptr() as usize - body.as_ptr() as usize;
        assert!(offset + event.body.len() <= body.len());
        // Value rejects numbers out of f64 range that the grammar (and the parser) allows.
        if let Ok(value) = serde_json::from_slice::<serde_json::Value>(&event.body) {
            assert_eq!(value["type"].as_str(), Some(event.kind.as_str()));
        }
        assert!(event.routing_key == "unknown" || event.routing_key == event.kind.replace('-', "."));
        assert_eq!(event.dedup_key.len(), 64);
        assert!(event.dedup_key.bytes().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()));
    }
});
