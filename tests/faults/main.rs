//! The fault suite: every 2xx must be in a durable queue, whatever happens to the broker or
//! the forwarder. Each scenario runs the real binary under load (16 concurrent posters), injects
//! one fault, and prints a row: requests, 2xx, non-2xx by status, lost, duplicates, events never
//! acknowledged, recovery time. Scenarios change the shared broker, so they run one at a time
//! and restore it on every path (a guard's `Drop`).

#[path = "../common/mod.rs"]
mod common;
mod load;

/// The broker-wide scenarios take the machine's broker to themselves instead (`BrokerToOneself`);
/// a shared hold in this process would wait for its own exclusive one.
const SHARES_THE_BROKER: bool = false;

use std::collections::HashMap;
use std::process::Command;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use bytes::Bytes;
use hyper::Method;

use common::{
    BrokerToOneself, Forwarder, Haproxy, Leftovers, amqp_uri, broker_at, count_ids,
    delete_topology, forwarder_toml, http_client, send, unique,
};
use load::{LoadResult, Report};

/// Scenarios share one broker: one at a time.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Publish timeout of the forwarders under test.
const PUBLISH_TIMEOUT_MS: u64 = 2_000;

/// Runs `rabbitmqctl` against the machine's node, panicking with its output on failure.
fn rabbitmqctl(args: &[&str]) {
    run_script("rabbitmqctl", args);
}

fn run_script(program: &str, args: &[&str]) -> String {
    let output = Command::new("timeout")
        .arg("180")
        .arg(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("running {program}: {e}.\n{PREREQUISITES}"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        output.status.success(),
        "{program} {args:?} failed:\n{text}\n{PREREQUISITES}"
    );
    text
}

/// What a failed broker command most likely means, and the way to run the suite that has it.
const PREREQUISITES: &str = "The fault suite drives the machine's RabbitMQ with `rabbitmqctl` \
(as root: it closes connections, stops the app, sets alarms) and starts nodes with \
`scripts/cluster`. Run the tests with `scripts/test`, which starts the broker and installs what \
the suite needs; see README.md.";

fn script(name: &str) -> String {
    format!("{}/scripts/{name}", env!("CARGO_MANIFEST_DIR"))
}

/// Runs its command when dropped: puts the broker back however the scenario ends.
struct Restore {
    program: String,
    args: Vec<String>,
}

impl Restore {
    fn new(program: &str, args: &[&str]) -> Self {
        Self {
            program: program.to_owned(),
            args: args.iter().map(|a| (*a).to_owned()).collect(),
        }
    }
}

impl Drop for Restore {
    /// Restores the broker on every path; a restore that fails is reported loudly: the
    /// machine's broker is left changed for every later test. (While the test is already
    /// failing, the failure is printed rather than raised, so that the first panic shows.)
    fn drop(&mut self) {
        let status = Command::new("timeout")
            .arg("180")
            .arg(&self.program)
            .args(&self.args)
            .status();
        if !status.as_ref().is_ok_and(|s| s.success()) {
            let message = format!(
                "RESTORING THE BROKER FAILED ({status:?}): `{} {}`; run it by hand",
                self.program,
                self.args.join(" ")
            );
            if std::thread::panicking() {
                eprintln!("{message}");
            } else {
                panic!("{message}");
            }
        }
    }
}

/// A forwarder with its own exchange and queue on `uri`.
struct Subject {
    uri: String,
    exchange: String,
    queue: String,
    /// On the machine's broker, the guard that deletes the queue and exchange on every path,
    /// a failing one too. (A scenario's own cluster is stopped and wiped with its nodes.)
    leftovers: Option<Leftovers>,
}

impl Subject {
    fn new(uri: &str) -> Self {
        let (exchange, queue) = (unique("ex"), unique("q"));
        let leftovers = (uri == amqp_uri()).then(|| Leftovers::of(&[&queue], &[&exchange]));
        Self {
            uri: uri.to_owned(),
            exchange,
            queue,
            leftovers,
        }
    }

    async fn start(&self) -> Forwarder {
        self.start_with("").await
    }

    /// Starts a forwarder whose `[amqp]` section also holds the lines `amqp`, once it is ready.
    async fn start_with(&self, amqp: &str) -> Forwarder {
        let toml = forwarder_toml(&self.uri, &self.exchange, &self.queue, PUBLISH_TIMEOUT_MS);
        assert!(
            toml.contains("[[amqp.queues]]"),
            "the [amqp] lines go before [[amqp.queues]], which the config lacks:\n{toml}"
        );
        let toml = toml.replace("[[amqp.queues]]", &format!("{amqp}[[amqp.queues]]"));
        let forwarder = Forwarder::start(&toml);
        assert!(
            wait_ready(&forwarder.url("/readyz"), Duration::from_secs(30)).await,
            "forwarder not ready; logs:\n{}",
            forwarder.logs()
        );
        forwarder
    }

    /// Every message id in the queue, read through the first URI that answers.
    async fn stored(&self, uri: &str) -> HashMap<String, usize> {
        let connection = broker_at(uri).await;
        let channel = connection.create_channel().await.expect("channel");
        let stored = count_ids(&channel, &self.queue).await;
        if self.leftovers.is_none() {
            delete_topology(&channel, &self.queue, &self.exchange).await;
        }
        stored
    }
}

async fn status_of(url: &str) -> u16 {
    get(url).await.0
}

/// Status and body of a request, or status 0 when no answer came within `within`.
async fn request(
    method: Method,
    url: &str,
    body: &'static [u8],
    within: Duration,
) -> (u16, String) {
    let json = [("content-type", "application/json")];
    let client = http_client();
    let sent = send(&client, method, url, &json, Bytes::from_static(body));
    match tokio::time::timeout(within, sent).await {
        Ok(Some(answer)) => (
            answer.status.as_u16(),
            String::from_utf8_lossy(&answer.body).into_owned(),
        ),
        _ => (0, String::new()),
    }
}

/// Status and body of a GET (status 0 when there was no answer).
async fn get(url: &str) -> (u16, String) {
    request(Method::GET, url, b"", Duration::from_secs(2)).await
}

async fn wait_ready(url: &str, within: Duration) -> bool {
    wait_status(url, 200, within).await
}

async fn wait_status(url: &str, status: u16, within: Duration) -> bool {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if status_of(url).await == status {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    false
}

/// Starts the load generator against `url`.
fn start_load(
    url: String,
    prefix: &str,
    retry: bool,
) -> (CancellationToken, tokio::task::JoinHandle<LoadResult>) {
    let stop = CancellationToken::new();
    let handle = tokio::spawn(load::run(url, unique(prefix), stop.clone(), retry));
    (stop, handle)
}

async fn finish_load(
    stop: CancellationToken,
    handle: tokio::task::JoinHandle<LoadResult>,
) -> LoadResult {
    stop.cancel();
    handle.await.expect("load generator")
}

fn assert_recovered(load: &LoadResult, after: Instant) {
    assert!(
        load.attempts
            .iter()
            .any(|a| a.status == 200 && a.at > after),
        "no 2xx after recovery"
    );
}

/// A running load against one forwarder, and when its fault was injected.
struct Run {
    stop: CancellationToken,
    load: tokio::task::JoinHandle<LoadResult>,
    fault: Instant,
}

/// Waits for `/readyz` to recover, keeps the load on for a second more, then checks the queue:
/// lost = 0 and 2xx after the recovery.
async fn recover_and_report(
    scenario: &'static str,
    forwarder: &Forwarder,
    subject: &Subject,
    run: Run,
    within: Duration,
) -> (Report, LoadResult) {
    assert!(
        wait_ready(&forwarder.url("/readyz"), within).await,
        "no recovery within {within:?}; logs:\n{}",
        forwarder.logs()
    );
    let ready = Instant::now();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let load = finish_load(run.stop, run.load).await;
    let report = Report::new(
        scenario,
        &load,
        &subject.stored(&subject.uri).await,
        run.fault,
    );
    report.print();
    // Every id is posted once: a second copy would be a publish the forwarder repeated.
    assert_eq!(report.duplicates, 0, "duplicates without a retry");
    assert_eq!(report.lost, 0);
    assert_recovered(&load, ready);
    (report, load)
}

#[tokio::test]
async fn s1_close_all_connections_mid_load() {
    let _serial = SERIAL.lock().await;
    // This fault reaches every connection to the machine's broker: no other test process may
    // be using it meanwhile.
    let _broker = BrokerToOneself::take();
    let subject = Subject::new(&amqp_uri());
    let forwarder = subject.start().await;
    let (stop, load) = start_load(forwarder.url("/callbacks/bandwidth/messaging"), "s1", false);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let fault = Instant::now();
    rabbitmqctl(&["close_all_connections", "fault suite"]);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let run = Run { stop, load, fault };
    let scenario = "1. close_all_connections";
    recover_and_report(scenario, &forwarder, &subject, run, Duration::from_secs(20)).await;
    let (_, metrics) = get(&forwarder.url("/metrics")).await;
    assert_eq!(
        common::metric(&metrics, "bandwidth_forwarder_broker_reconnects_total"),
        Some(1.0),
        "one reconnect counted:\n{metrics}"
    );
}

#[tokio::test]
async fn s2_broker_stop_app_and_start_app_mid_load() {
    let _serial = SERIAL.lock().await;
    // This fault reaches every connection to the machine's broker: no other test process may
    // be using it meanwhile.
    let _broker = BrokerToOneself::take();
    let subject = Subject::new(&amqp_uri());
    let forwarder = subject.start().await;
    let (stop, load) = start_load(forwarder.url("/callbacks/bandwidth/messaging"), "s2", false);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let fault = Instant::now();
    {
        let _restart = Restore::new("rabbitmqctl", &["start_app"]);
        rabbitmqctl(&["stop_app"]);
        assert!(
            wait_status(&forwarder.url("/readyz"), 503, Duration::from_secs(5)).await,
            "readyz must turn 503 while the broker is down"
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let run = Run { stop, load, fault };
    let scenario = "2. stop_app / start_app";
    let (report, _) =
        recover_and_report(scenario, &forwarder, &subject, run, Duration::from_secs(30)).await;
    assert!(
        report.failures.contains_key(&503),
        "the outage must show as 503s"
    );
}

#[tokio::test]
async fn s3_memory_alarm_blocks_then_recovers() {
    let _serial = SERIAL.lock().await;
    // This fault reaches every connection to the machine's broker: no other test process may
    // be using it meanwhile.
    let _broker = BrokerToOneself::take();
    let subject = Subject::new(&amqp_uri());
    let forwarder = subject.start().await;
    let callback = forwarder.url("/callbacks/bandwidth/messaging");
    let (stop, load) = start_load(callback.clone(), "s3", false);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let fault;
    let blocked;
    {
        let watermark = run_script(
            "rabbitmqctl",
            &["eval", "vm_memory_monitor:get_vm_memory_high_watermark()."],
        );
        let watermark = watermark.trim();
        assert!(watermark.parse::<f64>().is_ok(), "watermark `{watermark}`");
        let _restore = Restore::new("rabbitmqctl", &["set_vm_memory_high_watermark", watermark]);
        rabbitmqctl(&["set_vm_memory_high_watermark", "0.000001"]);
        fault = Instant::now();
        assert!(
            wait_status(&forwarder.url("/readyz"), 503, Duration::from_secs(1)).await,
            "readyz must turn 503 within 1 s of the alarm"
        );
        let blocked_after = fault.elapsed();
        let blocked_seen = Instant::now();
        let started = Instant::now();
        let status = status_of_post(&callback).await;
        assert_eq!(status, 503, "a callback during the alarm");
        // Refused because the broker is blocked, not after waiting out the publish timeout.
        let took = started.elapsed();
        assert!(
            took < Duration::from_millis(PUBLISH_TIMEOUT_MS) / 2,
            "503 after {took:?}: at once, not after the {PUBLISH_TIMEOUT_MS} ms publish timeout"
        );
        eprintln!("memory alarm: readyz 503 after {blocked_after:?}");
        // Longer than the publish timeout: requests in flight at the alarm time out while it
        // lasts, and must be answered 503 then, never 2xx.
        tokio::time::sleep(Duration::from_millis(PUBLISH_TIMEOUT_MS + 500)).await;
        blocked = blocked_seen..Instant::now();
    }
    let run = Run { stop, load, fault };
    let (_, load) = recover_and_report(
        "3. memory alarm",
        &forwarder,
        &subject,
        run,
        Duration::from_secs(20),
    )
    .await;
    // A blocked broker reads no publish, so nothing is confirmed: no 2xx while it is blocked,
    // but for confirms of what it had taken before the alarm (within the first 500 ms).
    let quiet = blocked.start + Duration::from_millis(500)..blocked.end;
    let confirmed_while_blocked: Vec<_> = load
        .attempts
        .iter()
        .filter(|a| (200..300).contains(&a.status) && quiet.contains(&a.at))
        .collect();
    assert!(
        confirmed_while_blocked.is_empty(),
        "2xx while the broker blocked publishing: {confirmed_while_blocked:?}"
    );
}

/// Status of posting one callback (0 when no answer came within 10 s).
async fn status_of_post(url: &str) -> u16 {
    let body = br#"[{"type":"message-sent"}]"#;
    request(Method::POST, url, body, Duration::from_secs(10))
        .await
        .0
}

async fn signal_mid_load(signal: &'static str, scenario: &'static str) -> Report {
    let subject = Subject::new(&amqp_uri());
    let forwarder = subject.start().await;
    let (stop, load) = start_load(
        forwarder.url("/callbacks/bandwidth/messaging"),
        scenario,
        false,
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
    // A callback admitted before the signal (its head sent) and finished after it: SIGTERM must
    // drain it to an answer; SIGKILL takes it down with the process.
    let held = br#"[{"type":"message-delivered","message":{"id":"held-across-the-signal"}}]"#;
    let mut admitted = tokio::net::TcpStream::connect(&forwarder.addr)
        .await
        .expect("connect");
    admitted
        .write_all(
            format!(
                "POST /callbacks/bandwidth/messaging HTTP/1.1\r\nhost: x\r\n\
                 content-type: application/json\r\nconnection: close\r\ncontent-length: {}\r\n\r\n",
                held.len()
            )
            .as_bytes(),
        )
        .await
        .expect("send its head");
    admitted
        .write_all(&held[..8])
        .await
        .expect("start its body");
    tokio::time::sleep(Duration::from_millis(200)).await;
    let fault = Instant::now();
    forwarder.signal(signal);
    if signal == "TERM" {
        tokio::time::sleep(Duration::from_millis(300)).await;
        admitted
            .write_all(&held[8..])
            .await
            .expect("finish its body");
        let mut answer = String::new();
        tokio::time::timeout(
            Duration::from_secs(10),
            admitted.read_to_string(&mut answer),
        )
        .await
        .expect("answered within the drain")
        .expect("read the answer");
        assert!(
            answer.starts_with("HTTP/1.1 200"),
            "the callback admitted before SIGTERM was answered: {answer:?}"
        );
    }
    let code = forwarder.wait_exit(Duration::from_secs(20)).await;
    if signal == "TERM" {
        assert_eq!(code, Some(0), "exit code after SIGTERM");
    }
    let load = finish_load(stop, load).await;
    let report = Report::new(scenario, &load, &subject.stored(&subject.uri).await, fault);
    report.print();
    // Every id is posted once: a second copy would be a publish the forwarder repeated.
    assert_eq!(report.duplicates, 0, "duplicates without a retry");
    assert!(report.ok > 0, "load ran before the signal");
    report
}

#[tokio::test]
async fn s4_sigterm_mid_load() {
    let _serial = SERIAL.lock().await;
    let report = signal_mid_load("TERM", "4. SIGTERM").await;
    assert_eq!(report.lost, 0);
}

#[tokio::test]
async fn s5_sigkill_mid_load() {
    let _serial = SERIAL.lock().await;
    let report = signal_mid_load("KILL", "5. SIGKILL").await;
    assert_eq!(report.lost, 0);
}

#[tokio::test]
async fn s6_cluster_node_loss_fails_over() {
    let _serial = SERIAL.lock().await;
    let _cluster = Restore::new(&script("cluster"), &["stop"]);
    run_script(&script("cluster"), &["start"]);
    let uris = run_script(&script("cluster"), &["uris"]).trim().to_owned();
    let survivor = uris.split(',').nth(2).expect("three URIs").to_owned();
    let subject = Subject::new(&uris);
    let forwarder = subject.start().await;
    let members = run_script(
        &script("cluster"),
        &["ctl", "1", "list_queues", "name", "members"],
    );
    let line = members
        .lines()
        .find(|line| line.contains(&subject.queue))
        .unwrap_or_else(|| panic!("queue not listed:\n{members}"));
    for node in ["bf1@localhost", "bf2@localhost", "bf3@localhost"] {
        assert!(
            line.contains(node),
            "quorum queue replicated on {node}: {line}"
        );
    }
    let (stop, load) = start_load(forwarder.url("/callbacks/bandwidth/messaging"), "s6", false);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let fault = Instant::now();
    run_script(&script("cluster"), &["stop-node", "1"]);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        wait_ready(&forwarder.url("/readyz"), Duration::from_secs(30)).await,
        "no failover"
    );
    let ready = Instant::now();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let load = finish_load(stop, load).await;
    let logs = forwarder.logs();
    assert!(
        logs.contains(":5702/") || logs.contains(":5703/"),
        "failed over to another node:\n{logs}"
    );
    assert_recovered(&load, ready);

    // Two of three down: the queue has no quorum, confirms stop coming; the timeout answers.
    run_script(&script("cluster"), &["stop-node", "2"]);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let started = Instant::now();
    let status = status_of_post(&forwarder.url("/callbacks/bandwidth/messaging")).await;
    assert_eq!(status, 503, "no quorum must never be 2xx");
    assert!(started.elapsed() < Duration::from_millis(PUBLISH_TIMEOUT_MS + 1_000));
    run_script(&script("cluster"), &["start-node", "2"]);
    let report = Report::new(
        "6. cluster node loss",
        &load,
        &subject.stored(&survivor).await,
        fault,
    );
    report.print();
    // Every id is posted once: a second copy would be a publish the forwarder repeated.
    assert_eq!(report.duplicates, 0, "duplicates without a retry");
    assert_eq!(report.lost, 0);
}

#[tokio::test]
async fn s7_load_balanced_pair_survives_sigkill_of_one() {
    let _serial = SERIAL.lock().await;
    let subject = Subject::new(&amqp_uri());
    let first = subject.start().await;
    let second = subject.start().await;
    let haproxy = Haproxy::start(&[&first.addr, &second.addr]);
    assert!(
        wait_ready(&format!("{}/readyz", haproxy.url), Duration::from_secs(10)).await,
        "haproxy up"
    );
    let (stop, load) = start_load(
        format!("{}/callbacks/bandwidth/messaging", haproxy.url),
        "s7",
        true,
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
    let fault = Instant::now();
    first.signal("KILL");
    tokio::time::sleep(Duration::from_secs(3)).await;
    let load = finish_load(stop, load).await;
    let report = Report::new(
        "7. haproxy, SIGKILL one of two",
        &load,
        &subject.stored(&subject.uri).await,
        fault,
    );
    report.print();
    drop(second);
    assert_eq!(report.lost, 0);
    assert_eq!(report.unacked, 0, "every event is eventually acknowledged");
    // A duplicate is a request the killed instance published but never answered, sent again:
    // at most one per request in flight at the kill, one per poster.
    assert!(
        report.duplicates <= load::CONCURRENCY,
        "{} duplicates, more than the {} requests in flight at the kill",
        report.duplicates,
        load::CONCURRENCY
    );
}

/// Suspends, on the machine's node, every channel process of `vhost`, held by a process named
/// `holder` until it is sent `release` (or for 60 s at most: a stall must not outlive a failed
/// test). A suspended channel takes publishes into its mailbox and confirms nothing, as a
/// stuck channel does. Returns how many channels it stalled.
fn stall_channels(vhost: &str, holder: &str) -> usize {
    let expression = format!(
        "Pids = [P || P <- rabbit_channel:list_local(), \
           rabbit_channel:info(P, [vhost]) =:= [{{vhost, <<\"{vhost}\">>}}]], \
         Holder = spawn(fun() -> [erlang:suspend_process(P) || P <- Pids], \
           receive release -> ok after 60000 -> ok end end), \
         register({holder}, Holder), length(Pids)."
    );
    let printed = run_script("rabbitmqctl", &["eval", &expression]);
    printed
        .trim()
        .lines()
        .last()
        .and_then(|line| line.trim().parse().ok())
        .unwrap_or_else(|| panic!("stalling the channels of {vhost} printed:\n{printed}"))
}

#[tokio::test]
async fn s8_stalled_channels_are_replaced_while_they_stay_stalled() {
    let _serial = SERIAL.lock().await;
    // A vhost of its own: only this forwarder's channels are stalled.
    let vhost = unique("vh");
    let holder = format!("bf_stall_{}", fastrand::u32(..));
    rabbitmqctl(&["add_vhost", &vhost]);
    let _vhost = Restore::new("rabbitmqctl", &["delete_vhost", &vhost]);
    rabbitmqctl(&["set_permissions", "-p", &vhost, "guest", ".*", ".*", ".*"]);
    let uri = format!("amqp://guest:guest@127.0.0.1:5672/{vhost}");
    let subject = Subject::new(&uri);
    let forwarder = subject.start().await;
    let (stop, load) = start_load(forwarder.url("/callbacks/bandwidth/messaging"), "s8", false);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let fault = Instant::now();
    let release = format!("catch (whereis({holder}) ! release), ok.");
    let _release = Restore::new("rabbitmqctl", &["eval", &release]);
    let stalled = stall_channels(&vhost, &holder);
    assert!(stalled >= 1, "no channel of {vhost} to stall");
    // The channels stay stalled: only replacing them brings 2xx back.
    tokio::time::sleep(Duration::from_millis(PUBLISH_TIMEOUT_MS + 4_000)).await;
    let load = finish_load(stop, load).await;
    rabbitmqctl(&["eval", &release]);
    let report = Report::new(
        "8. stalled channels",
        &load,
        &subject.stored(&uri).await,
        fault,
    );
    report.print();
    assert_eq!(report.lost, 0);
    assert_eq!(report.duplicates, 0, "duplicates without a retry");
    let timed_out = load
        .attempts
        .iter()
        .filter(|a| a.at > fault && a.status == 503)
        .count();
    assert!(timed_out > 0, "no request was caught by the stall");
    // The callbacks the stalled channels held: about one per poster per channel. Callbacks sent
    // while a channel is being replaced wait for the new one; they do not get 503 at once.
    assert!(
        timed_out <= 4 * load::CONCURRENCY,
        "{timed_out} callbacks got 503, more than the stalled channels held"
    );
    let replaced = fault + Duration::from_millis(PUBLISH_TIMEOUT_MS + 2_000);
    assert_recovered(&load, replaced);
}

#[tokio::test]
async fn broker_wide_scenarios_wait_for_processes_that_share_the_broker() {
    use std::io::BufRead;
    let lock = std::env::temp_dir().join("bandwidth-forwarder-broker.lock");
    // Another test process, as far as the lock can tell: it holds the broker shared for 1.5 s.
    let mut sharer = Command::new("flock")
        .arg("--shared")
        .arg(&lock)
        .args(["sh", "-c", "echo held; sleep 1.5"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("flock (util-linux)");
    let mut held = String::new();
    std::io::BufReader::new(sharer.stdout.take().expect("stdout"))
        .read_line(&mut held)
        .expect("the sharer reports");
    assert_eq!(held.trim(), "held");
    let started = std::time::Instant::now();
    let broker = BrokerToOneself::take();
    let waited = started.elapsed();
    drop(broker);
    assert!(sharer.wait().expect("sharer").success());
    assert!(
        waited >= Duration::from_millis(1_000),
        "took the broker while another process shared it (waited {waited:?})"
    );
}

/// The work (Erlang reductions) each channel process of `vhost` has done so far, by channel
/// number, on the machine's node.
fn channel_work(vhost: &str) -> HashMap<u64, u64> {
    let expression = format!(
        "[{{N, R}} || P <- rabbit_channel:list_local(), \
           rabbit_channel:info(P, [vhost]) =:= [{{vhost, <<\"{vhost}\">>}}], \
           [{{number, N}}] <- [rabbit_channel:info(P, [number])], \
           {{reductions, R}} <- [erlang:process_info(P, reductions)]]."
    );
    let printed = run_script("rabbitmqctl", &["eval", &expression]);
    let numbers: Vec<u64> = printed
        .split(|c: char| !c.is_ascii_digit())
        .filter_map(|n| n.parse().ok())
        .collect();
    assert!(
        printed.trim().starts_with('[') && numbers.len().is_multiple_of(2),
        "the channels of {vhost} printed:\n{printed}"
    );
    numbers.chunks(2).map(|pair| (pair[0], pair[1])).collect()
}

#[tokio::test]
async fn a_load_one_channel_carries_stays_on_the_first_and_a_heavier_one_spreads() {
    let _serial = SERIAL.lock().await;
    // Single-event callbacks from 16 posters: within 512 events in flight the first channel
    // takes them all; at 4 it is full at once and the second takes the rest.
    for (max_batch_events, spreads) in [(512, false), (4, true)] {
        let vhost = unique("vh");
        rabbitmqctl(&["add_vhost", &vhost]);
        let _vhost = Restore::new("rabbitmqctl", &["delete_vhost", &vhost]);
        rabbitmqctl(&["set_permissions", "-p", &vhost, "guest", ".*", ".*", ".*"]);
        let subject = Subject::new(&format!("amqp://guest:guest@127.0.0.1:5672/{vhost}"));
        let forwarder = subject
            .start_with(&format!("max_batch_events = {max_batch_events}\n"))
            .await;
        let before = channel_work(&vhost);
        let (stop, load) = start_load(forwarder.url("/callbacks/bandwidth/messaging"), "sp", false);
        tokio::time::sleep(Duration::from_secs(2)).await;
        let load = finish_load(stop, load).await;
        let after = channel_work(&vhost);
        let ok = load.attempts.iter().filter(|a| a.status == 200).count();
        assert!(ok > 1_000, "only {ok} callbacks answered 200");
        let mut work: Vec<u64> = after
            .iter()
            .map(|(number, work)| work.saturating_sub(before.get(number).copied().unwrap_or(0)))
            .collect();
        work.sort_unstable();
        assert_eq!(work.len(), 2, "two confirm channels: {after:?}");
        let (other, busiest) = (work[0], work[1]);
        if spreads {
            assert!(
                other * 5 > busiest,
                "at {max_batch_events} in flight the second channel did {other} against {busiest}"
            );
        } else {
            assert!(
                other * 20 < busiest,
                "within {max_batch_events} in flight the second channel did {other} against {busiest}"
            );
        }
        forwarder.signal("TERM");
        assert_eq!(forwarder.wait_exit(Duration::from_secs(20)).await, Some(0));
    }
}
