//! Shared by the test crates: the broker, unique names, reading queues, the real binary.

#![allow(dead_code)]

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use http_body_util::{BodyExt, Full};
use hyper::{HeaderMap, Method, Request, StatusCode};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use lapin::options::{
    BasicCancelOptions, BasicConsumeOptions, BasicGetOptions, BasicQosOptions,
    ExchangeDeleteOptions, QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties};

/// The HTTP client the tests post with.
pub type HttpClient = Client<HttpConnector, Full<Bytes>>;

pub fn http_client() -> HttpClient {
    Client::builder(TokioExecutor::new()).build_http()
}

/// An answered HTTP request.
pub struct Answer {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Answer {
    /// The body as JSON (every answer of the forwarder is JSON but /metrics).
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "body is not JSON ({e}): {:?}",
                String::from_utf8_lossy(&self.body)
            )
        })
    }

    /// Asserts the contract's error body and returns its `error` word.
    pub fn error_word(&self) -> String {
        let json = self.json();
        assert!(json["detail"].is_string(), "no detail in {json}");
        json["error"]
            .as_str()
            .unwrap_or_else(|| panic!("no error word in {json}"))
            .to_owned()
    }
}

/// How a request ended without an answer.
#[derive(Debug)]
pub enum NoAnswer {
    /// No connection was made (nothing listening).
    Refused,
    /// Connected, then the connection closed or reset before a whole answer came.
    Dropped(String),
}

/// Sends one request and reads the whole answer, or says how it failed.
pub async fn try_send(
    client: &HttpClient,
    method: Method,
    url: &str,
    headers: &[(&str, &str)],
    body: Bytes,
) -> Result<Answer, NoAnswer> {
    let mut builder = Request::builder().method(method).uri(url);
    for (name, value) in headers {
        builder = builder.header(*name, *value);
    }
    let request = builder.body(Full::new(body)).expect("request");
    let response = client.request(request).await.map_err(|e| {
        if e.is_connect() {
            NoAnswer::Refused
        } else {
            NoAnswer::Dropped(e.to_string())
        }
    })?;
    let status = response.status();
    let headers = response.headers().clone();
    // The forwarder never repeats a header: two `x-request-id`s, say, are a defect.
    for name in headers.keys() {
        assert_eq!(
            headers.get_all(name).iter().count(),
            1,
            "header `{name}` repeated in the answer to {url}: {headers:?}"
        );
    }
    let body = response
        .into_body()
        .collect()
        .await
        .map_err(|e| NoAnswer::Dropped(e.to_string()))?
        .to_bytes();
    Ok(Answer {
        status,
        headers,
        body,
    })
}

/// Sends one request and reads the whole answer; `None` when no answer came (connection
/// refused or reset, as while a forwarder stops).
pub async fn send(
    client: &HttpClient,
    method: Method,
    url: &str,
    headers: &[(&str, &str)],
    body: Bytes,
) -> Option<Answer> {
    try_send(client, method, url, headers, body).await.ok()
}

/// The value of one series in a Prometheus text exposition, matched by its whole name and
/// labels (`bandwidth_forwarder_broker_reconnects_total`, `x_total{type="a"}`); `None` when absent.
pub fn metric(exposition: &str, series: &str) -> Option<f64> {
    exposition.lines().find_map(|line| {
        let (name, value) = line.rsplit_once(' ')?;
        (name == series).then(|| value.parse().expect("a number"))
    })
}

/// How many series of metric family `name` an exposition holds.
pub fn series_count(exposition: &str, name: &str) -> usize {
    exposition
        .lines()
        .filter(|line| line.starts_with(name) && line[name.len()..].starts_with('{'))
        .count()
}

/// How long a forwarder may take to become ready in a test.
pub const READY_WITHIN: Duration = Duration::from_secs(15);

/// Polls `readyz` until it answers 200; false if it has not within `within`.
pub async fn ready_within(client: &HttpClient, readyz: &str, within: Duration) -> bool {
    let deadline = tokio::time::Instant::now() + within;
    while tokio::time::Instant::now() < deadline {
        let answer = send(client, Method::GET, readyz, &[], Bytes::new()).await;
        if answer.is_some_and(|answer| answer.status == StatusCode::OK) {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    false
}

/// The broker the tests use; `TEST_AMQP_URI` overrides it.
pub fn amqp_uri() -> String {
    if crate::SHARES_THE_BROKER {
        share_the_broker();
    }
    std::env::var("TEST_AMQP_URI")
        .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into())
}

/// A name no other test (or run) uses.
pub fn unique(prefix: &str) -> String {
    format!("test.{prefix}.{:016x}", fastrand::u64(..))
}

/// The file every test binary locks around the machine's broker: a test process that uses the
/// broker holds it shared until it exits, and a fault scenario that changes the broker for
/// everyone (closing every connection, stopping the app, an alarm) holds it exclusively.
/// `cargo test` runs the binaries one after another; the lock keeps parallel runners correct.
fn broker_lock() -> std::fs::File {
    std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(std::env::temp_dir().join("bandwidth-forwarder-broker.lock"))
        .expect("open the broker lock file")
}

/// Holds the broker lock shared for the rest of this process (waiting out a fault scenario).
fn share_the_broker() {
    static HELD: std::sync::OnceLock<std::fs::File> = std::sync::OnceLock::new();
    HELD.get_or_init(|| {
        let file = broker_lock();
        file.lock_shared().expect("share the broker lock");
        file
    });
}

/// The broker lock held exclusively: no other test process uses the broker meanwhile.
pub struct BrokerToOneself(std::fs::File);

impl BrokerToOneself {
    /// Waits until no other test process holds the broker.
    pub fn take() -> Self {
        let file = broker_lock();
        file.lock().expect("take the broker lock");
        Self(file)
    }
}

/// Connects to `uri` or fails saying how to start a broker.
pub async fn broker_at(uri: &str) -> Connection {
    match Connection::connect(uri, ConnectionProperties::default()).await {
        Ok(connection) => connection,
        Err(error) => panic!(
            "RabbitMQ is not reachable at {uri}: {error}.\n\
             Start one with `scripts/ensure-rabbitmq` (or `docker compose up -d rabbitmq`), \
             or point TEST_AMQP_URI at one."
        ),
    }
}

/// Connects to the test broker or fails saying how to start one.
pub async fn broker() -> Connection {
    broker_at(&amqp_uri()).await
}

/// A message read back from a queue.
#[derive(Debug)]
pub struct Message {
    pub body: Vec<u8>,
    pub exchange: String,
    pub routing_key: String,
    pub properties: BasicProperties,
}

impl Message {
    /// A header as a string, if present.
    pub fn header(&self, name: &str) -> Option<String> {
        let headers = self.properties.headers().as_ref()?;
        match headers.inner().get(&ShortString::from(name))? {
            AMQPValue::LongString(s) => Some(String::from_utf8_lossy(s.as_bytes()).into_owned()),
            AMQPValue::ShortString(s) => Some(s.to_string()),
            other => panic!("header {name} is not a string: {other:?}"),
        }
    }

    pub fn message_id(&self) -> String {
        self.properties
            .message_id()
            .as_ref()
            .map(|s| s.to_string())
            .expect("message_id")
    }
}

/// Takes every message now in `queue`, one `basic.get` at a time (keeps order).
pub async fn drain_queue(channel: &Channel, queue: &str) -> Vec<Message> {
    let mut messages = Vec::new();
    while let Some(got) = channel
        .basic_get(queue.into(), BasicGetOptions { no_ack: true })
        .await
        .expect("basic.get")
    {
        let delivery = got.delivery;
        messages.push(Message {
            body: delivery.data,
            exchange: delivery.exchange.to_string(),
            routing_key: delivery.routing_key.to_string(),
            properties: delivery.properties,
        });
    }
    messages
}

/// Counts the messages of `queue` by their `x-bandwidth-message-id` header, consuming them all.
pub async fn count_ids(channel: &Channel, queue: &str) -> HashMap<String, usize> {
    let declared = channel
        .queue_declare(
            queue.into(),
            QueueDeclareOptions {
                passive: true,
                ..QueueDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await
        .expect("queue exists");
    let expected = declared.message_count() as usize;
    channel
        .basic_qos(2000, BasicQosOptions::default())
        .await
        .expect("qos");
    let mut consumer = channel
        .basic_consume(
            queue.into(),
            unique("reader").as_str().into(),
            BasicConsumeOptions {
                no_ack: true,
                ..BasicConsumeOptions::default()
            },
            FieldTable::default(),
        )
        .await
        .expect("consume");
    let mut counts = HashMap::new();
    let mut seen = 0;
    while seen < expected {
        let next = tokio::time::timeout(Duration::from_secs(10), consumer.next())
            .await
            .expect("messages keep coming");
        let delivery = next.expect("consumer open").expect("delivery");
        let id = Message {
            body: Vec::new(),
            exchange: String::new(),
            routing_key: String::new(),
            properties: delivery.properties.clone(),
        }
        .header("x-bandwidth-message-id")
        .unwrap_or_default();
        *counts.entry(id).or_insert(0) += 1;
        seen += 1;
    }
    // Leave the channel as it was: a consumer left behind makes the broker cancel it when the
    // queue is deleted, after which lapin refuses any further call on the channel (the
    // exchange would be left behind).
    channel
        .basic_cancel(consumer.tag(), BasicCancelOptions::default())
        .await
        .expect("cancel the reader");
    counts
}

/// Declares a durable quorum queue with no other argument, as an operator (or an older
/// version) might have.
pub async fn declare_plain_quorum_queue(channel: &Channel, queue: &str) {
    let mut arguments = FieldTable::default();
    arguments.insert(
        "x-queue-type".into(),
        AMQPValue::LongString("quorum".into()),
    );
    channel
        .queue_declare(
            queue.into(),
            QueueDeclareOptions {
                durable: true,
                ..QueueDeclareOptions::default()
            },
            arguments,
        )
        .await
        .expect("declare a plain quorum queue");
}

/// Broker objects a test made. Dropped — at the end of the test, passing or failing — it
/// deletes them, on a thread with a runtime of its own since `Drop` cannot await; a failed
/// deletion fails the test (unless it is already failing).
#[derive(Default)]
pub struct Leftovers {
    queues: Vec<String>,
    exchanges: Vec<String>,
}

impl Leftovers {
    pub fn of(queues: &[&str], exchanges: &[&str]) -> Self {
        Self {
            queues: queues.iter().map(|q| q.to_string()).collect(),
            exchanges: exchanges.iter().map(|e| e.to_string()).collect(),
        }
    }

    /// Adds a queue to delete.
    pub fn queue(&mut self, name: &str) {
        self.queues.push(name.to_owned());
    }
}

impl Drop for Leftovers {
    fn drop(&mut self) {
        let (queues, exchanges) = (
            std::mem::take(&mut self.queues),
            std::mem::take(&mut self.exchanges),
        );
        if queues.is_empty() && exchanges.is_empty() {
            return;
        }
        let deleted = std::thread::spawn(move || -> Result<(), String> {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| e.to_string())?;
            runtime.block_on(async {
                let connection = Connection::connect(&amqp_uri(), ConnectionProperties::default())
                    .await
                    .map_err(|e| format!("connecting to delete {queues:?}: {e}"))?;
                // A channel per object: a refused deletion closes its channel.
                for queue in &queues {
                    let channel = connection
                        .create_channel()
                        .await
                        .map_err(|e| e.to_string())?;
                    channel
                        .queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
                        .await
                        .map_err(|e| format!("deleting queue {queue}: {e}"))?;
                }
                for exchange in &exchanges {
                    let channel = connection
                        .create_channel()
                        .await
                        .map_err(|e| e.to_string())?;
                    channel
                        .exchange_delete(exchange.as_str().into(), ExchangeDeleteOptions::default())
                        .await
                        .map_err(|e| format!("deleting exchange {exchange}: {e}"))?;
                }
                let _ = connection.close(200, "test cleanup".into()).await;
                Ok(())
            })
        })
        .join();
        if !std::thread::panicking() {
            deleted
                .expect("the cleanup thread")
                .expect("the test's queues and exchanges are deleted");
        }
    }
}

/// Deletes a queue and an exchange, ignoring what is already gone.
pub async fn delete_topology(channel: &Channel, queue: &str, exchange: &str) {
    let _ = channel
        .queue_delete(queue.into(), QueueDeleteOptions::default())
        .await;
    let _ = channel
        .exchange_delete(exchange.into(), ExchangeDeleteOptions::default())
        .await;
}

/// The real binary, started with a generated config file and JSON logs.
pub struct Forwarder {
    child: Child,
    /// The address from its `listening` log line (empty for `consume`).
    pub addr: String,
    logs: Arc<Mutex<Vec<String>>>,
    stdout: Arc<Mutex<Vec<String>>>,
    /// The threads reading stderr and stdout; they end when the process does.
    readers: Vec<std::thread::JoinHandle<()>>,
    config: PathBuf,
}

/// Collects a child's output lines; sends a JSON line whose `message` is `ready` on `tx`.
fn collect_lines(
    from: impl std::io::Read + Send + 'static,
    into: Arc<Mutex<Vec<String>>>,
    ready: Option<(&'static str, std::sync::mpsc::Sender<serde_json::Value>)>,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        for line in BufReader::new(from).lines().map_while(Result::ok) {
            if let Some((message, tx)) = &ready
                && let Ok(json) = serde_json::from_str::<serde_json::Value>(&line)
                && json["message"] == *message
            {
                let _ = tx.send(json);
            }
            into.lock().unwrap_or_else(|e| e.into_inner()).push(line);
        }
    })
}

/// Writes a settings file for the binary: `toml` plus JSON logs.
fn write_config(toml: &str) -> PathBuf {
    let config = std::env::temp_dir().join(format!("{}.toml", unique("forwarder")));
    std::fs::write(&config, format!("{toml}\n[log]\nformat = \"json\"\n")).expect("write config");
    config
}

impl Forwarder {
    /// Starts `serve` with `toml` (which should set `http.listen = "127.0.0.1:0"`), once it
    /// logs `listening`.
    pub fn start(toml: &str) -> Self {
        Self::spawn(&["serve"], toml, "listening")
    }

    /// Starts `consume ARGS` with `toml`, once it logs `consuming`.
    pub fn consume(toml: &str, args: &[&str]) -> Self {
        Self::spawn(&[&["consume"], args].concat(), toml, "consuming")
    }

    /// Runs the binary with `ARGS` (a subcommand and its flags) and `toml` to its end, which
    /// must come within `within`: exit code and everything it logged.
    pub async fn run_to_exit(toml: &str, args: &[&str], within: Duration) -> (Option<i32>, String) {
        let config = write_config(toml);
        let mut child = Command::new(env!("CARGO_BIN_EXE_bandwidth-forwarder"))
            .args(args)
            .arg("--config")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start the binary");
        let logs = Arc::new(Mutex::new(Vec::new()));
        let reader = collect_lines(child.stderr.take().expect("stderr"), logs.clone(), None);
        let deadline = tokio::time::Instant::now() + within;
        let status = loop {
            if let Some(status) = child.try_wait().expect("try_wait") {
                break status;
            }
            if tokio::time::Instant::now() > deadline {
                let _ = child.kill();
                panic!(
                    "still running after {within:?}; logs:\n{}",
                    logs.lock().expect("logs").join("\n")
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        let _ = std::fs::remove_file(&config);
        reader.join().expect("the log reader ends with the process");
        let logged = logs.lock().expect("logs").join("\n");
        (status.code(), logged)
    }

    fn spawn(args: &[&str], toml: &str, ready: &'static str) -> Self {
        let config = write_config(toml);
        let mut child = Command::new(env!("CARGO_BIN_EXE_bandwidth-forwarder"))
            .args(args)
            .arg("--config")
            .arg(&config)
            .stdin(Stdio::null())
            .stderr(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("start the binary");
        let logs = Arc::new(Mutex::new(Vec::new()));
        let stdout = Arc::new(Mutex::new(Vec::new()));
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let readers = vec![
            collect_lines(
                child.stderr.take().expect("stderr"),
                logs.clone(),
                Some((ready, ready_tx)),
            ),
            collect_lines(child.stdout.take().expect("stdout"), stdout.clone(), None),
        ];
        let mut forwarder = Self {
            child,
            addr: String::new(),
            logs,
            stdout,
            readers,
            config,
        };
        match ready_rx.recv_timeout(Duration::from_secs(15)) {
            Ok(line) => line["listen"]
                .as_str()
                .unwrap_or_default()
                .clone_into(&mut forwarder.addr),
            Err(_) => panic!("no `{ready}` log line; logs:\n{}", forwarder.logs()),
        }
        forwarder
    }

    /// Every line it wrote on stdout so far.
    pub fn stdout_lines(&self) -> Vec<String> {
        self.stdout
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Replaces its settings file (as `start` wrote it), e.g. before a SIGHUP.
    pub fn rewrite_config(&self, toml: &str) {
        std::fs::write(&self.config, format!("{toml}\n[log]\nformat = \"json\"\n"))
            .expect("rewrite config");
    }

    /// Resident memory now, in bytes (from `/proc`).
    pub fn rss_bytes(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid()))
            .expect("the process is alive");
        let kib: u64 = status
            .lines()
            .find_map(|line| line.strip_prefix("VmRSS:"))
            .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("VmRSS in /proc/PID/status");
        kib * 1024
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Sends a signal by name (`TERM`, `KILL`, …).
    pub fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .args([format!("-{name}"), self.pid().to_string()])
            .status()
            .expect("kill");
        assert!(status.success(), "kill -{name} failed");
    }

    /// Waits for the process to exit; its exit code, or `None` if killed by a signal.
    pub async fn wait_exit(mut self, within: Duration) -> Option<i32> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return status.code();
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "still running after {within:?}; logs:\n{}",
                self.logs()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// SIGTERM, then waits for the exit and for every line it wrote: exit code and the whole
    /// log.
    pub async fn stop(mut self) -> (Option<i32>, String) {
        self.signal("TERM");
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        let status = loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                break status;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "still running 20 s after SIGTERM; logs:\n{}",
                self.logs()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        for reader in std::mem::take(&mut self.readers) {
            reader.join().expect("output reader");
        }
        (status.code(), self.logs())
    }

    /// Waits until `/readyz` answers 200.
    pub async fn wait_ready(&self) {
        let ready = ready_within(&http_client(), &self.url("/readyz"), READY_WITHIN).await;
        assert!(
            ready,
            "not ready after {READY_WITHIN:?}; logs:\n{}",
            self.logs()
        );
    }

    /// Everything it logged so far.
    pub fn logs(&self) -> String {
        self.logs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .join("\n")
    }
}

impl Drop for Forwarder {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.config);
    }
}

/// The TOML of a forwarder on a random port publishing to `exchange`, declaring `queue`.
pub fn forwarder_toml(uri: &str, exchange: &str, queue: &str, publish_timeout_ms: u64) -> String {
    format!(
        "[http]\nlisten = \"127.0.0.1:0\"\n\
         [amqp]\nuri = \"{uri}\"\nexchange = \"{exchange}\"\npublish_timeout_ms = {publish_timeout_ms}\n\
         reconnect_initial_ms = 50\nreconnect_max_ms = 1000\n\
         [[amqp.queues]]\nname = \"{queue}\"\nbindings = [\"#\"]\n"
    )
}

/// haproxy running `deploy/haproxy/haproxy.cfg` in front of `backends`: the file unchanged but
/// for its addresses (the listening port, and one server line per backend instead of the
/// DNS-discovered `server-template`).
pub struct Haproxy {
    child: Child,
    /// `http://127.0.0.1:PORT`, where it listens.
    pub url: String,
    config: PathBuf,
}

impl Haproxy {
    pub fn start(backends: &[&str]) -> Self {
        let shipped = std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/deploy/haproxy/haproxy.cfg"
        ))
        .expect("deploy/haproxy/haproxy.cfg");
        let port = free_port();
        let servers: Vec<String> = backends
            .iter()
            .enumerate()
            .map(|(i, addr)| format!("  server forwarder{} {addr}", i + 1))
            .collect();
        let mut rewritten = 0;
        let config_text: Vec<String> = shipped
            .lines()
            .map(|line| match line.trim() {
                "bind :8080" => {
                    rewritten += 1;
                    format!("  bind 127.0.0.1:{port}")
                }
                "server-template forwarder 1-10 forwarder:8080" => {
                    rewritten += 1;
                    servers.join("\n")
                }
                _ => line.to_owned(),
            })
            .collect();
        assert_eq!(
            rewritten, 2,
            "the shipped config's bind and server lines were found"
        );
        let config = std::env::temp_dir().join(format!("{}.cfg", unique("haproxy")));
        std::fs::write(&config, config_text.join("\n") + "\n").expect("haproxy config");
        let child = Command::new("haproxy")
            .arg("-db")
            .arg("-f")
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("haproxy (apt-get install haproxy; scripts/test installs it)");
        Self {
            child,
            url: format!("http://127.0.0.1:{port}"),
            config,
        }
    }
}

impl Drop for Haproxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.config);
    }
}

/// A TCP port free at the moment of asking.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("a free port")
        .port()
}

/// Asserts that the binary's command line accepts `args`: `--help` after them prints the help
/// only if every flag before it parsed.
pub fn assert_cli_accepts(args: &[&str]) {
    let output = Command::new(env!("CARGO_BIN_EXE_bandwidth-forwarder"))
        .args(args)
        .arg("--help")
        .output()
        .expect("run the binary");
    assert!(
        output.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}
