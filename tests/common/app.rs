//! A forwarder in the test's own process (`Application`) on a random port, with unique broker
//! objects per test; the fixtures it is fed.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use bandwidth_forwarder::app::Application;
use bandwidth_forwarder::settings::{QueueSettings, Secret, Settings};
use bytes::Bytes;
use hyper::Method;
use lapin::{Channel, Connection};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use super::broker::{Leftovers, Message, amqp_uri, broker, drain_queue, unique};
use super::http::{Answer, HttpClient, READY_WITHIN, http_client, ready_within, send};

/// The bytes of a fixture under `tests/fixtures/bandwidth/`.
pub fn fixture(name: &str) -> Bytes {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/bandwidth")
        .join(name);
    Bytes::from(std::fs::read(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display())))
}

/// Every fixture file name.
pub fn fixture_names() -> Vec<String> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/bandwidth");
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .expect("fixtures dir")
        .filter_map(|entry| entry.ok()?.file_name().into_string().ok())
        .filter(|name| name.ends_with(".json"))
        .collect();
    names.sort();
    names
}

/// Settings for one test: random port, unique exchange and queue bound to `#`.
pub fn test_settings() -> Settings {
    let mut settings = Settings::default();
    settings.http.listen = "127.0.0.1:0".parse().expect("address");
    settings.amqp.uri = Secret::new(amqp_uri());
    settings.amqp.exchange = unique("ex").parse().expect("a name");
    settings.amqp.queues = vec![QueueSettings {
        name: unique("q").parse().expect("a name"),
        bindings: vec!["#".into()],
        max_length: None,
    }];
    settings.amqp.publish_timeout = Duration::from_millis(3_000);
    settings.amqp.reconnect_initial = Duration::from_millis(50);
    settings.amqp.reconnect_max = Duration::from_millis(500);
    settings
}

/// A running forwarder and the broker objects made for it.
pub struct TestApp {
    pub addr: SocketAddr,
    pub settings: Settings,
    pub channel: Channel,
    client: HttpClient,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<anyhow::Result<()>>>,
    _connection: Connection,
    /// Deletes this app's queues and exchange when the test ends, passing or failing.
    leftovers: std::sync::Mutex<Leftovers>,
}

/// Starts a forwarder with `settings` and waits until it is ready.
pub async fn spawn_app(settings: Settings) -> TestApp {
    let app = spawn_app_unready(settings).await;
    app.wait_ready().await;
    app
}

/// Starts a forwarder without waiting for the broker.
pub async fn spawn_app_unready(settings: Settings) -> TestApp {
    bind_app(settings).await.serve()
}

/// Builds a forwarder: its port is bound, but nothing accepts connections until `serve`.
pub async fn bind_app(settings: Settings) -> BoundApp {
    let connection = broker().await;
    let channel = connection.create_channel().await.expect("test channel");
    let application = Application::build(settings.clone())
        .await
        .expect("build app");
    BoundApp {
        addr: application.local_addr().expect("local addr"),
        application,
        settings,
        channel,
        connection,
    }
}

/// A forwarder that is bound and not yet serving.
pub struct BoundApp {
    pub addr: SocketAddr,
    application: Application,
    settings: Settings,
    channel: Channel,
    connection: Connection,
}

impl BoundApp {
    /// Starts serving; the broker objects are cleaned up with the returned app.
    pub fn serve(self) -> TestApp {
        let queues: Vec<&str> = self
            .settings
            .amqp
            .queues
            .iter()
            .map(|q| q.name.as_str())
            .collect();
        let leftovers = Leftovers::of(&queues, &[&self.settings.amqp.exchange]);
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(self.application.run_until_stopped(async {
            let _ = stopped.await;
        }));
        TestApp {
            addr: self.addr,
            settings: self.settings,
            channel: self.channel,
            client: http_client(),
            stop: Some(stop),
            task: Some(task),
            _connection: self.connection,
            leftovers: std::sync::Mutex::new(leftovers),
        }
    }
}

impl TestApp {
    /// The one queue this app declared.
    pub fn queue(&self) -> &str {
        &self.settings.amqp.queues[0].name
    }

    pub fn callback_url(&self) -> String {
        format!("http://{}{}", self.addr, self.settings.http.path)
    }

    pub async fn wait_ready(&self) {
        let readyz = format!("http://{}/readyz", self.addr);
        assert!(
            ready_within(&self.client, &readyz, READY_WITHIN).await,
            "forwarder not ready after {READY_WITHIN:?}: is RabbitMQ up at {}?",
            amqp_uri()
        );
    }

    pub async fn request(
        &self,
        method: Method,
        url: &str,
        headers: &[(&str, &str)],
        body: Bytes,
    ) -> Answer {
        send(&self.client, method, url, headers, body)
            .await
            .expect("the forwarder answers")
    }

    pub async fn get(&self, path: &str) -> Answer {
        self.request(
            Method::GET,
            &format!("http://{}{path}", self.addr),
            &[],
            Bytes::new(),
        )
        .await
    }

    /// POSTs a JSON callback the way Bandwidth does.
    pub async fn post_callback(&self, body: impl Into<Bytes>) -> Answer {
        self.post_callback_with(body, &[]).await
    }

    pub async fn post_callback_with(
        &self,
        body: impl Into<Bytes>,
        extra: &[(&str, &str)],
    ) -> Answer {
        let mut headers = vec![
            ("content-type", "application/json; charset=utf-8"),
            ("user-agent", "BandwidthAPI/v2"),
        ];
        headers.extend_from_slice(extra);
        self.request(Method::POST, &self.callback_url(), &headers, body.into())
            .await
    }

    /// Takes every message now in the queue (publishes are confirmed before 2xx, so a
    /// message that should be there is there).
    pub async fn drain(&self) -> Vec<Message> {
        drain_queue(&self.channel, self.queue()).await
    }

    /// Stops the app (graceful shutdown); its queue and exchange go with its `Leftovers`.
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            tokio::time::timeout(Duration::from_secs(20), task)
                .await
                .expect("app stops within 20 s")
                .expect("app task")
                .expect("app run");
        }
    }

    /// Also deletes `queue` (one a test declared beside the app's) when the test ends.
    pub fn delete_at_end(&self, queue: &str) {
        self.leftovers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .queue(queue);
    }

    /// Triggers graceful shutdown without waiting for it.
    pub fn begin_stop(&mut self) -> JoinHandle<anyhow::Result<()>> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        self.task.take().expect("app still running")
    }
}

/// Lowercase hex SHA-256, computed here independently of the crate.
pub fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(bytes))
}
