//! The sections of the configuration file, each with its defaults.

use std::net::SocketAddr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::split_uris;
use super::values::{self, Name, Network, Secret};

/// The async runtime.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct RuntimeSettings {
    /// 1 runs every task on one thread (best beside a broker on a small machine);
    /// more gives a multi-threaded runtime with that many workers.
    pub worker_threads: usize,
}

impl Default for RuntimeSettings {
    fn default() -> Self {
        Self { worker_threads: 1 }
    }
}

/// The HTTP listener and the callback route.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct HttpSettings {
    /// Address to listen on; port 0 picks a free port.
    pub listen: SocketAddr,
    /// The route Bandwidth POSTs callbacks to.
    pub path: String,
    /// Bodies larger than this get 413.
    pub max_body_bytes: usize,
    /// Seconds advertised in `Retry-After` on 503.
    pub retry_after_secs: u64,
    /// A client must send its request headers within this many milliseconds.
    #[serde(rename = "header_read_timeout_ms", with = "values::millis")]
    pub header_read_timeout: Duration,
    /// How long shutdown waits for in-flight requests before closing anyway.
    #[serde(rename = "drain_timeout_ms", with = "values::millis")]
    pub drain_timeout: Duration,
    /// A client must send the whole body within this many milliseconds (else 408).
    #[serde(rename = "body_read_timeout_ms", with = "values::millis")]
    pub body_read_timeout: Duration,
    /// An answer that makes no progress for this many milliseconds (the client does not read)
    /// closes the connection and frees its slot.
    #[serde(rename = "write_timeout_ms", with = "values::millis")]
    pub write_timeout: Duration,
    /// Open connections at most; more are answered 503 and closed. Also the listen backlog.
    pub max_connections: usize,
    /// Request line plus headers at most, in bytes (else 431).
    pub max_header_bytes: usize,
    /// Deepest JSON nesting accepted in a body (the array counts as 1).
    pub max_json_depth: usize,
}

impl Default for HttpSettings {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([0, 0, 0, 0], 8080)),
            path: "/callbacks/bandwidth/messaging".into(),
            max_body_bytes: 262_144,
            retry_after_secs: 5,
            header_read_timeout: Duration::from_millis(10_000),
            drain_timeout: Duration::from_millis(10_000),
            body_read_timeout: Duration::from_millis(10_000),
            write_timeout: Duration::from_millis(5_000),
            max_connections: 1024,
            max_header_bytes: 16_384,
            max_json_depth: 32,
        }
    }
}

/// HTTP Basic credentials Bandwidth is configured to send.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthSettings {
    pub username: String,
    pub password: Secret,
    /// More accepted credentials, e.g. old and new during a rotation.
    pub credentials: Vec<Credential>,
    /// Client networks (CIDR) allowed to post callbacks; empty allows every source.
    pub allowed_sources: Vec<Network>,
    /// Proxies (CIDR) whose `X-Forwarded-For` names the real client.
    pub trusted_proxies: Vec<Network>,
}

/// One accepted username and password.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Credential {
    pub username: String,
    #[serde(default)]
    pub password: Secret,
}

impl AuthSettings {
    /// Auth is on when any username is configured.
    pub fn enabled(&self) -> bool {
        !self.username.is_empty() || !self.credentials.is_empty()
    }

    /// Every accepted credential.
    pub fn all_credentials(&self) -> Vec<Credential> {
        let primary = (!self.username.is_empty()).then(|| Credential {
            username: self.username.clone(),
            password: self.password.clone(),
        });
        primary
            .into_iter()
            .chain(self.credentials.iter().cloned())
            .collect()
    }
}

/// The broker, the exchange and the topology declared at start.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct AmqpSettings {
    /// One or more AMQP URIs separated by commas, tried in order.
    pub uri: Secret,
    /// PEM file of CA certificates trusted for `amqps://` besides the system's; empty = none.
    pub tls_ca_file: String,
    /// Durable topic exchange every event is published to.
    pub exchange: Name,
    /// Routing key template: `{type}` and field placeholders such as
    /// `{message.applicationId}`.
    pub routing_key: String,
    /// No confirm within this many milliseconds means 503.
    #[serde(rename = "publish_timeout_ms", with = "values::millis")]
    pub publish_timeout: Duration,
    /// Queues declared (quorum, durable) and bound at start.
    pub queues: Vec<QueueSettings>,
    /// Confirm channels publishing in parallel.
    pub channels: usize,
    /// Most events one channel has published and not yet seen confirmed.
    pub max_batch_events: usize,
    /// First reconnect delay; doubles per failure up to `reconnect_max_ms`.
    #[serde(rename = "reconnect_initial_ms", with = "values::millis")]
    pub reconnect_initial: Duration,
    /// Longest reconnect delay.
    #[serde(rename = "reconnect_max_ms", with = "values::millis")]
    pub reconnect_max: Duration,
}

impl Default for AmqpSettings {
    fn default() -> Self {
        Self {
            uri: Secret::new("amqp://guest:guest@127.0.0.1:5672/%2f"),
            tls_ca_file: String::new(),
            exchange: "bandwidth.messaging".parse().expect("a valid name"),
            routing_key: "{type}".into(),
            publish_timeout: Duration::from_millis(5_000),
            queues: vec![QueueSettings {
                name: "bandwidth.messaging.all".parse().expect("a valid name"),
                bindings: vec!["#".into()],
                max_length: Some(DEFAULT_ARCHIVE_LENGTH),
            }],
            channels: 2,
            max_batch_events: 512,
            reconnect_initial: Duration::from_millis(100),
            reconnect_max: Duration::from_millis(5_000),
        }
    }
}

impl AmqpSettings {
    /// The broker URIs in failover order.
    pub fn uris(&self) -> Vec<String> {
        split_uris(self.uri.expose())
    }
}

/// Events the default catch-all queue keeps, newest first: nothing consumes it unless an
/// operator does, so it must not grow without end.
pub const DEFAULT_ARCHIVE_LENGTH: u64 = 100_000;

/// A queue the forwarder declares, with the binding keys it binds to the exchange.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct QueueSettings {
    pub name: Name,
    #[serde(default)]
    pub bindings: Vec<String>,
    /// Keep at most this many messages, dropping the oldest (`x-max-length` with `drop-head`:
    /// publishing is never refused); absent = unbounded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_length: Option<u64>,
}

/// Log output.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogSettings {
    pub format: LogFormat,
    /// An `EnvFilter` directive; `RUST_LOG` overrides it.
    pub level: String,
}

impl Default for LogSettings {
    fn default() -> Self {
        Self {
            format: LogFormat::Pretty,
            level: "info".into(),
        }
    }
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Pretty,
    Json,
}
