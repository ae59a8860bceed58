//! The machine's RabbitMQ as the tests use it: the URI and the lock shared with fault
//! scenarios, unique names, reading queues back, and deleting what a test made.

use std::collections::HashMap;
use std::time::Duration;

use futures_util::StreamExt;
use lapin::options::{
    BasicCancelOptions, BasicConsumeOptions, BasicGetOptions, BasicQosOptions,
    ExchangeDeleteOptions, QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties};

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
