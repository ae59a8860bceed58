//! `/metrics` read by a real OpenMetrics parser (the `prometheus_client` Python package's):
//! names in the `bandwidth_forwarder_` namespace, types and units, and values that move with
//! traffic.

use std::io::Write;
use std::process::{Command, Stdio};

use hyper::StatusCode;
use serde_json::Value;

use crate::common::{TestApp, spawn_app, test_settings};

/// The exposition as the parser read it: `{family: {type, unit, samples}}`.
fn parse(exposition: &str) -> Value {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/tools/openmetrics.py");
    let mut child = Command::new("python3")
        .arg(script)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python3 runs (scripts/test installs what the tests need)");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(exposition.as_bytes())
        .expect("feed the parser");
    let output = child.wait_with_output().expect("parser output");
    assert!(
        output.status.success(),
        "the OpenMetrics parser rejected /metrics (or is missing: `pip install prometheus-client`, \
         which scripts/ensure-test-tools does): {}\n{exposition}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).expect("JSON from the parser")
}

/// The value of the sample `name` whose labels include `labels`; 0 when absent.
fn sample(families: &Value, name: &str, labels: &[(&str, &str)]) -> f64 {
    families
        .as_object()
        .expect("families")
        .values()
        .flat_map(|family| family["samples"].as_array().expect("samples"))
        .find(|s| {
            s[0] == name
                && labels
                    .iter()
                    .all(|(key, value)| s[1][*key].as_str() == Some(value))
        })
        .map_or(0.0, |s| s[2].as_f64().expect("a number"))
}

async fn scrape(app: &TestApp) -> Value {
    let answer = app.get("/metrics").await;
    assert_eq!(answer.status, StatusCode::OK);
    parse(&String::from_utf8_lossy(&answer.body))
}

#[tokio::test]
async fn metrics_parse_as_openmetrics_with_their_types_and_units_and_move_with_traffic() {
    let app = spawn_app(test_settings()).await;
    let before = scrape(&app).await;

    let published = app.post_callback(r#"[{"type":"message-sent"}]"#).await;
    assert_eq!(published.status, StatusCode::OK);
    let rejected = app.post_callback("nope").await;
    assert_eq!(rejected.status, StatusCode::BAD_REQUEST);
    let after = scrape(&app).await;

    for (family, kind, unit) in [
        ("bandwidth_forwarder_build", "info", ""),
        (
            "bandwidth_forwarder_process_start_time_seconds",
            "gauge",
            "seconds",
        ),
        ("bandwidth_forwarder_http_requests", "counter", ""),
        (
            "bandwidth_forwarder_http_request_duration_seconds",
            "histogram",
            "seconds",
        ),
        ("bandwidth_forwarder_events_published", "counter", ""),
        (
            "bandwidth_forwarder_publish_confirm_seconds",
            "histogram",
            "seconds",
        ),
        ("bandwidth_forwarder_broker_connected", "gauge", ""),
        ("bandwidth_forwarder_broker_blocked", "gauge", ""),
        ("bandwidth_forwarder_inflight_requests", "gauge", ""),
        ("bandwidth_forwarder_open_channels", "gauge", ""),
        ("bandwidth_forwarder_broker_reconnects", "counter", ""),
    ] {
        assert_eq!(after[family]["type"], kind, "{family}: {after}");
        assert_eq!(after[family]["unit"], unit, "{family}");
    }
    for family in after.as_object().expect("families").keys() {
        assert!(family.starts_with("bandwidth_forwarder_"), "{family}");
    }
    let version = env!("CARGO_PKG_VERSION");
    assert_eq!(
        sample(
            &after,
            "bandwidth_forwarder_build_info",
            &[("version", version)]
        ),
        1.0
    );
    assert!(
        sample(
            &after,
            "bandwidth_forwarder_process_start_time_seconds",
            &[]
        ) > 1.6e9
    );
    assert_eq!(
        sample(&after, "bandwidth_forwarder_broker_connected", &[]),
        1.0
    );

    let moved = |name: &str, labels: &[(&str, &str)]| {
        sample(&after, name, labels) - sample(&before, name, labels)
    };
    let published = [("outcome", "published")];
    let invalid = [("outcome", "invalid_json")];
    let duration = "bandwidth_forwarder_http_request_duration_seconds_count";
    assert_eq!(moved(duration, &published), 1.0);
    assert_eq!(moved(duration, &invalid), 1.0);
    assert_eq!(
        moved(
            "bandwidth_forwarder_events_published_total",
            &[("type", "message-sent")]
        ),
        1.0
    );
    assert_eq!(
        moved(
            "bandwidth_forwarder_http_requests_total",
            &[("status", "400")]
        ),
        1.0
    );
    assert_eq!(
        moved("bandwidth_forwarder_publish_confirm_seconds_count", &[]),
        1.0
    );
    app.drain().await;
    app.stop().await;
}
