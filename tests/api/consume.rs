//! `consume`: real forwarder, real broker, the real binary consuming. Each backend gets its
//! own queue, every event is handled once, failures end in `NAME.dead`, nothing is lost.

use std::collections::HashSet;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use bandwidth_forwarder::consumer::compact_json;
use bytes::Bytes;
use hyper::{Method, StatusCode};
use lapin::options::BasicGetOptions;

use crate::common::{
    Forwarder, Message, TestApp, amqp_uri, declare_plain_quorum_queue, drain_queue, http_client,
    metric, send, spawn_app, test_settings, unique,
};

/// A forwarder publishing to a fresh exchange with no queue of its own: only the consumers'
/// queues receive its events.
async fn forwarder() -> TestApp {
    let mut settings = test_settings();
    settings.amqp.queues = Vec::new();
    spawn_app(settings).await
}

/// The settings file a consumer of `app`'s exchange reads.
/// `consume` of `queue`, bound to every event, running `exec`, with `more` flags.
fn consume_all(toml: &str, queue: &str, exec: &str, more: &[&str]) -> Forwarder {
    let every = ["--queue", queue, "--bind", "#", "--exec", exec];
    Forwarder::consume(toml, &[&every[..], more].concat())
}

fn consumer_toml(app: &TestApp) -> String {
    format!(
        "[amqp]\nuri = \"{}\"\nexchange = \"{}\"\nreconnect_initial_ms = 50\nreconnect_max_ms = 500\n",
        amqp_uri(),
        app.settings.amqp.exchange
    )
}

/// One event of `kind` with message id `id`, as a callback body.
fn event(kind: &str, id: &str) -> String {
    format!(
        r#"[{{"type": "{kind}", "to": "+15550100", "message": {{"id": "{id}", "text": "hi  there"}}}}]"#
    )
}

async fn post(app: &TestApp, body: &str) {
    let answer = app.post_callback(body.to_owned()).await;
    assert_eq!(answer.status, StatusCode::OK, "{:?}", answer.body);
}

/// A file in the temp folder for a handler to write, removed when dropped.
struct Scratch(PathBuf);

impl Scratch {
    fn new() -> Self {
        Self(std::env::temp_dir().join(unique("consume")))
    }

    fn path(&self) -> String {
        self.0.display().to_string()
    }

    fn lines(&self) -> Vec<String> {
        std::fs::read_to_string(&self.0)
            .unwrap_or_default()
            .lines()
            .map(String::from)
            .collect()
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Polls `done` until it holds, failing with `what` (and its last value) after `within`.
async fn eventually<T: std::fmt::Debug>(
    what: &str,
    within: Duration,
    mut probe: impl FnMut() -> T,
    done: impl Fn(&T) -> bool,
) -> T {
    let deadline = Instant::now() + within;
    loop {
        let value = probe();
        if done(&value) {
            return value;
        }
        assert!(Instant::now() < deadline, "{what}: still {value:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A unique consumer queue name; it and its dead-letter queue are deleted when the test ends.
fn consumer_queue(app: &TestApp, prefix: &str) -> String {
    let queue = unique(prefix);
    app.delete_at_end(&queue);
    app.delete_at_end(&format!("{queue}.dead"));
    queue
}

/// The `message.id`s of the JSON lines a stdout consumer printed.
fn printed_ids(lines: &[String]) -> Vec<String> {
    lines
        .iter()
        .map(|line| {
            let json: serde_json::Value = serde_json::from_str(line)
                .unwrap_or_else(|e| panic!("stdout line is not JSON ({e}): {line}"));
            json["message"]["id"]
                .as_str()
                .expect("message.id")
                .to_owned()
        })
        .collect()
}

#[tokio::test]
async fn consumers_with_different_bindings_each_get_exactly_their_events_and_catch_up_after_a_stop()
{
    let app = forwarder().await;
    let toml = consumer_toml(&app);
    let (receipts, messages) = (
        consumer_queue(&app, "receipts"),
        consumer_queue(&app, "messages"),
    );
    let receipts_args = ["--queue", receipts.as_str(), "--bind", "message.delivered"];
    let receipts_consumer = Forwarder::consume(&toml, &receipts_args);
    let messages_consumer = Forwarder::consume(
        &toml,
        &["--queue", messages.as_str(), "--bind", "message.*"],
    );

    let delivered = event("message-delivered", "d1");
    post(&app, &delivered).await;
    post(&app, &event("message-failed", "f1")).await;
    post(&app, &event("message-received", "r1")).await;
    let all = eventually(
        "message.* gets delivered, failed and received",
        Duration::from_secs(10),
        || printed_ids(&messages_consumer.stdout_lines()),
        |ids| ids.len() >= 3,
    )
    .await;
    assert_eq!(all, ["d1", "f1", "r1"]);
    let lines = receipts_consumer.stdout_lines();
    assert_eq!(printed_ids(&lines), ["d1"]);
    // The body as published, whitespace outside strings dropped: one line, the text intact.
    let published = &delivered.as_bytes()[1..delivered.len() - 1];
    assert_eq!(lines[0].as_bytes(), compact_json(published));
    assert!(lines[0].contains(r#""text":"hi  there""#), "{}", lines[0]);

    // One stopped does not hold the other back; restarted, it gets what it missed.
    receipts_consumer.signal("TERM");
    assert_eq!(
        receipts_consumer.wait_exit(Duration::from_secs(20)).await,
        Some(0)
    );
    post(&app, &event("message-delivered", "d2")).await;
    post(&app, &event("message-failed", "f2")).await;
    eventually(
        "the running consumer goes on",
        Duration::from_secs(10),
        || printed_ids(&messages_consumer.stdout_lines()),
        |ids| ids.len() == 5,
    )
    .await;
    let restarted = Forwarder::consume(&toml, &receipts_args);
    let caught_up = eventually(
        "the restarted consumer gets what it missed",
        Duration::from_secs(10),
        || printed_ids(&restarted.stdout_lines()),
        |ids| !ids.is_empty(),
    )
    .await;
    assert_eq!(caught_up, ["d2"]);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(printed_ids(&messages_consumer.stdout_lines()).len(), 5);
    drop((restarted, messages_consumer));
    app.stop().await;
}

#[tokio::test]
async fn the_same_event_twice_is_handled_once_and_another_event_runs() {
    let app = forwarder().await;
    let queue = consumer_queue(&app, "dedup");
    let handled = Scratch::new();
    let exec = format!("echo \"$BANDWIDTH_MESSAGE_ID\" >> {}", handled.path());
    let consumer = consume_all(&consumer_toml(&app), &queue, &exec, &[]);
    let body = event("message-delivered", "same");
    post(&app, &body).await;
    eventually(
        "handled once",
        Duration::from_secs(10),
        || handled.lines(),
        |lines| lines.len() == 1,
    )
    .await;
    // Bandwidth's retry of the same callback: a second message with the same dedup key.
    post(&app, &body).await;
    post(&app, &event("message-delivered", "other")).await;
    let lines = eventually(
        "the other event runs",
        Duration::from_secs(10),
        || handled.lines(),
        |lines| lines.len() == 2,
    )
    .await;
    assert_eq!(lines, ["same", "other"]);
    let logs = consumer.logs();
    assert_eq!(
        logs.matches(r#""outcome":"duplicate""#).count(),
        1,
        "{logs}"
    );
    drop(consumer);
    app.stop().await;
}

/// Takes the messages of `queue` once it holds `count` (dead-lettering is asynchronous).
async fn wait_for_messages(app: &TestApp, queue: &str, count: usize) -> Vec<Message> {
    let mut messages = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(15);
    while messages.len() < count {
        assert!(
            Instant::now() < deadline,
            "{queue} holds {}",
            messages.len()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
        messages.extend(drain_queue(&app.channel, queue).await);
    }
    messages
}

/// Consumes with `--max-attempts 2` and a handler that records its attempt then runs `then`,
/// posts one event and waits for it in the dead-letter queue. Returns the attempts the handler
/// saw, the dead-lettered message and the consumer's logs; the queue itself must be empty.
async fn dead_lettered(
    then: &str,
    extra: &[&str],
    kind: &str,
    id: &str,
) -> (Vec<String>, Message, String) {
    let app = forwarder().await;
    let queue = consumer_queue(&app, "failing");
    let attempts = Scratch::new();
    let exec = format!(
        "echo \"$BANDWIDTH_DELIVERY_ATTEMPT\" >> {}; {then}",
        attempts.path()
    );
    let args = [
        &[
            "--queue",
            &queue,
            "--bind",
            "#",
            "--exec",
            &exec,
            "--max-attempts",
            "2",
        ],
        extra,
    ]
    .concat();
    let consumer = Forwarder::consume(&consumer_toml(&app), &args);
    post(&app, &event(kind, id)).await;
    let mut dead = wait_for_messages(&app, &format!("{queue}.dead"), 1).await;
    assert_eq!(dead.len(), 1);
    assert!(
        drain_queue(&app.channel, &queue).await.is_empty(),
        "nothing left behind in the queue"
    );
    let logs = consumer.logs();
    drop(consumer);
    app.stop().await;
    (attempts.lines(), dead.remove(0), logs)
}

#[tokio::test]
async fn a_handler_that_always_fails_is_tried_max_attempts_times_then_dead_lettered_intact() {
    let (attempts, message, logs) = dead_lettered("exit 3", &[], "message-failed", "doomed").await;
    assert_eq!(attempts, ["1", "2"]);
    assert_eq!(
        message.header("x-bandwidth-message-id").as_deref(),
        Some("doomed")
    );
    assert_eq!(
        message.header("x-bandwidth-event-type").as_deref(),
        Some("message-failed")
    );
    assert_eq!(
        message.header("x-deduplication-header"),
        Some(message.message_id())
    );
    assert!(message.body.starts_with(br#"{"type": "message-failed""#));
    // What the broker adds on dead-lettering, which the docs describe.
    assert_eq!(
        message.header("x-first-death-reason").as_deref(),
        Some("delivery_limit")
    );
    assert!(
        message
            .header("x-first-death-queue")
            .is_some_and(|queue| queue.starts_with("test.failing.")),
        "{:?}",
        message.header("x-first-death-queue")
    );
    assert_eq!(logs.matches(r#""outcome":"failed""#).count(), 1, "{logs}");
    assert_eq!(
        logs.matches(r#""outcome":"dead_lettered""#).count(),
        1,
        "{logs}"
    );
}

#[tokio::test]
async fn a_handler_that_runs_too_long_is_killed_with_its_children_and_retried() {
    // A sleep no other process runs, to show that none is left behind.
    let sleep = format!("sleep 30.{}", fastrand::u32(..));
    let (attempts, _, logs) = dead_lettered(
        &format!("{sleep} & wait"),
        &["--handler-timeout-ms", "300"],
        "message-sending",
        "slow",
    )
    .await;
    assert_eq!(attempts, ["1", "2"]);
    assert_eq!(logs.matches("was killed").count(), 2, "{logs}");
    let left = std::process::Command::new("pgrep")
        .args(["-f", &sleep])
        .output()
        .expect("pgrep");
    assert!(
        left.stdout.is_empty(),
        "a killed handler's child survived: {:?}",
        String::from_utf8_lossy(&left.stdout)
    );
}

#[tokio::test]
async fn an_event_whose_consumer_is_killed_mid_handler_is_handled_by_the_next() {
    let app = forwarder().await;
    let queue = consumer_queue(&app, "crash");
    let (started, handled) = (Scratch::new(), Scratch::new());
    let toml = consumer_toml(&app);
    // A sleep no other process runs, so the handler orphaned by the SIGKILL can be found.
    let sleep = format!("sleep 30.{}", fastrand::u32(..));
    let exec = format!(
        "echo \"$BANDWIDTH_MESSAGE_ID\" >> {}; {sleep}",
        started.path()
    );
    let first = consume_all(&toml, &queue, &exec, &[]);
    post(&app, &event("message-received", "inbound-1")).await;
    eventually(
        "the first consumer started the handler",
        Duration::from_secs(10),
        || started.lines(),
        |lines| !lines.is_empty(),
    )
    .await;
    first.signal("KILL");
    assert_eq!(first.wait_exit(Duration::from_secs(5)).await, None);
    let orphan = std::process::Command::new("pkill")
        .args(["-f", &sleep])
        .status()
        .expect("pkill");
    assert!(
        orphan.success(),
        "the killed consumer's handler was running"
    );
    let exec = format!(
        "echo \"$BANDWIDTH_MESSAGE_ID $BANDWIDTH_DELIVERY_ATTEMPT\" >> {}",
        handled.path()
    );
    let second = consume_all(&toml, &queue, &exec, &[]);
    let lines = eventually(
        "the next consumer handles it",
        Duration::from_secs(10),
        || handled.lines(),
        |lines| !lines.is_empty(),
    )
    .await;
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert!(lines[0].starts_with("inbound-1 "), "{lines:?}");
    assert_ne!(lines[0], "inbound-1 1", "a redelivery, not a first attempt");
    drop(second);
    app.stop().await;
}

#[tokio::test]
async fn sigterm_lets_the_running_handler_finish_acks_it_and_exits_0() {
    let app = forwarder().await;
    let queue = consumer_queue(&app, "drain");
    let (started, finished) = (Scratch::new(), Scratch::new());
    let exec = format!(
        "echo start >> {}; sleep 1; echo \"$BANDWIDTH_MESSAGE_ID\" >> {}",
        started.path(),
        finished.path()
    );
    let consumer = consume_all(&consumer_toml(&app), &queue, &exec, &[]);
    post(&app, &event("message-delivered", "in-flight")).await;
    eventually(
        "the handler started",
        Duration::from_secs(10),
        || started.lines(),
        |lines| !lines.is_empty(),
    )
    .await;
    consumer.signal("TERM");
    assert_eq!(consumer.wait_exit(Duration::from_secs(20)).await, Some(0));
    assert_eq!(
        finished.lines(),
        ["in-flight"],
        "the handler ran to its end"
    );
    let left = app
        .channel
        .basic_get(queue.as_str().into(), BasicGetOptions { no_ack: true })
        .await
        .expect("basic.get");
    assert!(left.is_none(), "the finished event was acknowledged");
    app.stop().await;
}

#[tokio::test]
async fn two_instances_on_one_queue_share_the_work_and_handle_each_event_once() {
    let app = forwarder().await;
    let queue = consumer_queue(&app, "shared");
    let (one, two) = (Scratch::new(), Scratch::new());
    let toml = consumer_toml(&app);
    let start = |file: &Scratch| {
        let exec = format!(
            "sleep 0.05; echo \"$BANDWIDTH_MESSAGE_ID\" >> {}",
            file.path()
        );
        consume_all(&toml, &queue, &exec, &[])
    };
    let consumers = (start(&one), start(&two));
    let ids: Vec<String> = (0..40).map(|i| format!("shared-{i}")).collect();
    for id in &ids {
        post(&app, &event("message-delivered", id)).await;
    }
    eventually(
        "every event handled",
        Duration::from_secs(20),
        || one.lines().len() + two.lines().len(),
        |count| *count >= ids.len(),
    )
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (first, second) = (one.lines(), two.lines());
    assert!(
        !first.is_empty() && !second.is_empty(),
        "{first:?} / {second:?}"
    );
    let all: Vec<&String> = first.iter().chain(&second).collect();
    let unique_ids: HashSet<&String> = all.iter().copied().collect();
    assert_eq!(all.len(), ids.len(), "none handled twice");
    assert_eq!(unique_ids, ids.iter().collect(), "together all");
    drop(consumers);
    app.stop().await;
}

#[tokio::test]
async fn an_existing_queue_with_other_arguments_is_a_clear_error_and_exit_non_zero() {
    let app = forwarder().await;
    let queue = consumer_queue(&app, "existing");
    // Declared by hand, without a delivery limit or dead-lettering.
    declare_plain_quorum_queue(&app.channel, &queue).await;
    let (code, logs) = Forwarder::run_to_exit(
        &consumer_toml(&app),
        &["consume", "--queue", &queue, "--bind", "#"],
        Duration::from_secs(20),
    )
    .await;
    assert_eq!(code, Some(1), "{logs}");
    assert!(
        logs.contains("already exists with other arguments"),
        "{logs}"
    );
    assert!(
        logs.contains("inequivalent arg 'x-"),
        "names the argument: {logs}"
    );
    app.stop().await;
}

#[tokio::test]
async fn a_routing_template_lets_a_backend_take_one_applications_receipts() {
    let mut settings = test_settings();
    settings.amqp.routing_key = "{message.applicationId}.{type}".into();
    let app = spawn_app(settings).await;
    let queue = consumer_queue(&app, "app1-receipts");
    let consumer = Forwarder::consume(
        &consumer_toml(&app),
        &["--queue", &queue, "--bind", "app-1.message.delivered"],
    );
    let with_app = |kind: &str, application: &str, id: &str| {
        format!(r#"[{{"type":"{kind}","message":{{"id":"{id}","applicationId":{application}}}}}]"#)
    };
    post(&app, &with_app("message-delivered", r#""app-1""#, "mine")).await;
    post(&app, &with_app("message-delivered", r#""app-2""#, "theirs")).await;
    post(&app, &with_app("message-failed", r#""app-1""#, "failed")).await;
    let long = format!(r#""{}""#, "a".repeat(300));
    let hostile = [r#""a.b""#, r##""#""##, r#""*""#, r#""""#, long.as_str()];
    for application in hostile {
        post(&app, &with_app("message-delivered", application, "hostile")).await;
    }
    let printed = eventually(
        "the receipt of application app-1",
        Duration::from_secs(10),
        || printed_ids(&consumer.stdout_lines()),
        |ids| !ids.is_empty(),
    )
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(printed, ["mine"]);
    assert_eq!(printed_ids(&consumer.stdout_lines()), ["mine"]);
    let keys: Vec<String> = app
        .drain()
        .await
        .into_iter()
        .map(|m| m.routing_key)
        .collect();
    let mut expected = vec![
        "app-1.message.delivered",
        "app-2.message.delivered",
        "app-1.message.failed",
    ];
    expected.extend(["unknown.message.delivered"; 5]);
    assert_eq!(keys, expected);
    drop(consumer);
    app.stop().await;
}

#[tokio::test]
async fn a_consumer_with_listen_serves_probes_and_counts_every_outcome() {
    let app = forwarder().await;
    let queue = consumer_queue(&app, "observed");
    let exec = r#"test "$BANDWIDTH_MESSAGE_ID" != bad"#;
    let consumer = consume_all(
        &consumer_toml(&app),
        &queue,
        exec,
        &["--max-attempts", "2", "--listen", "127.0.0.1:0"],
    );
    let client = http_client();
    let get = async |path: &str| {
        send(&client, Method::GET, &consumer.url(path), &[], Bytes::new())
            .await
            .expect("the probes answer")
    };
    assert_eq!(get("/healthz").await.status, StatusCode::OK);
    assert_eq!(get("/readyz").await.status, StatusCode::OK);

    let good = event("message-delivered", "good");
    post(&app, &good).await;
    post(&app, &good).await;
    post(&app, &event("message-failed", "bad")).await;
    wait_for_messages(&app, &format!("{queue}.dead"), 1).await;
    let counted = |text: &str, outcome: &str| {
        metric(
            text,
            &format!("bandwidth_forwarder_consumer_deliveries_total{{outcome=\"{outcome}\"}}"),
        )
    };
    // With one handler at a time each outcome is counted before the next delivery starts, and
    // the last one's before the broker gets it back to dead-letter: every count is in.
    let metrics = get("/metrics").await;
    let text = String::from_utf8_lossy(&metrics.body).into_owned();
    assert_eq!(counted(&text, "handled"), Some(1.0), "{text}");
    assert_eq!(counted(&text, "duplicate"), Some(1.0), "{text}");
    assert_eq!(counted(&text, "failed"), Some(1.0), "{text}");
    assert_eq!(counted(&text, "dead_lettered"), Some(1.0), "{text}");
    assert_eq!(
        metric(
            &text,
            "bandwidth_forwarder_consumer_handler_duration_seconds_count"
        ),
        Some(3.0),
        "one good run and two bad ones: {text}"
    );
    drop(consumer);
    app.stop().await;
}

#[tokio::test]
async fn replay_returns_dead_lettered_events_to_the_queue_for_another_try() {
    let app = forwarder().await;
    let queue = consumer_queue(&app, "replayed");
    let (fixed, handled) = (Scratch::new(), Scratch::new());
    // The handler fails until the file `fixed` exists, as a backend does until its bug is fixed.
    let exec = format!(
        "test -f {} && echo \"$BANDWIDTH_MESSAGE_ID\" >> {}",
        fixed.path(),
        handled.path()
    );
    let toml = consumer_toml(&app);
    let consumer = consume_all(&toml, &queue, &exec, &["--max-attempts", "1"]);
    post(&app, &event("message-received", "retry-me")).await;
    let dead = format!("{queue}.dead");
    eventually(
        "the event is dead-lettered",
        Duration::from_secs(10),
        || {
            consumer
                .logs()
                .matches(r#""outcome":"dead_lettered""#)
                .count()
        },
        |count| *count == 1,
    )
    .await;
    std::fs::write(&fixed.0, "").expect("fix the backend");
    let deadline = Instant::now() + Duration::from_secs(10);
    let replayed = loop {
        // Dead-lettering completes shortly after the consumer's nack.
        let (code, logs) = Forwarder::run_to_exit(
            &toml,
            &["replay", "--queue", &queue],
            Duration::from_secs(20),
        )
        .await;
        assert_eq!(code, Some(0), "{logs}");
        if logs.contains(r#""replayed":1"#) || Instant::now() > deadline {
            break logs;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(replayed.contains(r#""replayed":1"#), "{replayed}");
    let lines = eventually(
        "the replayed event is handled",
        Duration::from_secs(10),
        || handled.lines(),
        |lines| !lines.is_empty(),
    )
    .await;
    assert_eq!(lines, ["retry-me"]);
    assert!(drain_queue(&app.channel, &dead).await.is_empty());

    let (code, logs) = Forwarder::run_to_exit(
        &toml,
        &["replay", "--queue", &unique("no-such-queue")],
        Duration::from_secs(20),
    )
    .await;
    assert_eq!(code, Some(1), "{logs}");
    assert!(logs.contains("NOT_FOUND"), "{logs}");
    drop(consumer);
    app.stop().await;
}
