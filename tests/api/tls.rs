//! `amqps://` to a separate RabbitMQ node with a TLS listener (`scripts/tls-node`) and a CA of
//! its own: trusted through `amqp.tls_ca_file` it publishes; with any other CA it never
//! connects — `/readyz` stays 503, callbacks get 503 and the log says why — and never falls
//! back to plain text.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use bytes::Bytes;
use hyper::{Method, StatusCode};
use lapin::tcp::OwnedTLSConfig;
use lapin::{Connection, ConnectionProperties};

use crate::common::{Forwarder, drain_queue, forwarder_toml, http_client, send, unique};

const URI: &str = "amqps://guest:guest@localhost:5711/%2f";

/// The TLS node, stopped when dropped (also when the test fails).
struct TlsNode {
    certs: PathBuf,
}

impl TlsNode {
    fn start() -> Self {
        let output = Command::new(script())
            .arg("start")
            .output()
            .expect("scripts/tls-node runs (needs RabbitMQ's sbin, root)");
        assert!(
            output.status.success(),
            "scripts/tls-node start failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        let certs = String::from_utf8_lossy(&output.stdout).trim().to_owned();
        Self {
            certs: PathBuf::from(certs),
        }
    }

    fn ca(&self, name: &str) -> String {
        self.certs.join(name).display().to_string()
    }
}

impl Drop for TlsNode {
    fn drop(&mut self) {
        let stopped = Command::new(script()).arg("stop").status();
        assert!(
            stopped.is_ok_and(|s| s.success()) || std::thread::panicking(),
            "scripts/tls-node stop failed"
        );
    }
}

fn script() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/tls-node"))
}

fn settings(exchange: &str, queue: &str, ca: &str) -> String {
    let toml = forwarder_toml(URI, exchange, queue, 3_000);
    if ca.is_empty() {
        toml
    } else {
        toml.replacen("[amqp]\n", &format!("[amqp]\ntls_ca_file = \"{ca}\"\n"), 1)
    }
}

async fn post(forwarder: &Forwarder) -> StatusCode {
    send(
        &http_client(),
        Method::POST,
        &forwarder.url("/callbacks/bandwidth/messaging"),
        &[("content-type", "application/json")],
        Bytes::from_static(br#"[{"type":"message-delivered","message":{"id":"over-tls"}}]"#),
    )
    .await
    .expect("an answer")
    .status
}

#[tokio::test]
async fn publishes_over_tls_with_the_brokers_ca_and_refuses_any_other() {
    let node = TlsNode::start();
    let (exchange, queue) = (unique("ex"), unique("q"));

    let trusted = Forwarder::start(&settings(&exchange, &queue, &node.ca("ca.pem")));
    trusted.wait_ready().await;
    assert_eq!(post(&trusted).await, StatusCode::OK);
    let ca = std::fs::read_to_string(node.ca("ca.pem")).expect("ca.pem");
    let reader = Connection::connect_with_config(
        URI,
        ConnectionProperties::default(),
        OwnedTLSConfig {
            identity: None,
            cert_chain: Some(ca),
        },
        lapin::runtime::default_runtime().expect("runtime"),
    )
    .await
    .expect("the test reads the node over TLS too");
    let channel = reader.create_channel().await.expect("channel");
    let stored = drain_queue(&channel, &queue).await;
    assert_eq!(stored.len(), 1);
    assert_eq!(
        stored[0].header("x-bandwidth-message-id").as_deref(),
        Some("over-tls")
    );
    drop(trusted);

    for ca in [node.ca("other-ca.pem"), String::new()] {
        let untrusted = Forwarder::start(&settings(&exchange, &queue, &ca));
        let client = http_client();
        let watched = Instant::now();
        while watched.elapsed() < Duration::from_secs(3) {
            let readyz = send(
                &client,
                Method::GET,
                &untrusted.url("/readyz"),
                &[],
                Bytes::new(),
            )
            .await
            .expect("readyz answers");
            assert_eq!(readyz.status, StatusCode::SERVICE_UNAVAILABLE, "CA {ca:?}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert_eq!(post(&untrusted).await, StatusCode::SERVICE_UNAVAILABLE);
        let logs = untrusted.logs();
        assert!(
            logs.contains("broker connection failed") && logs.contains("certificate"),
            "CA {ca:?}: the log names the certificate problem:\n{logs}"
        );
    }
    assert!(
        drain_queue(&channel, &queue).await.is_empty(),
        "nothing got through"
    );
    crate::common::delete_topology(&channel, &queue, &exchange).await;
}
