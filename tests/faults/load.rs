//! The load generator: unique single-event callbacks at a fixed concurrency, every answer
//! recorded, and the report that checks the queue against the 2xx answers.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::Request;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// Concurrent posting tasks.
pub const CONCURRENCY: usize = 16;

/// One answer (or connection failure, status 0) and when it came.
#[derive(Debug, Clone)]
pub struct Attempt {
    pub id: String,
    pub status: u16,
    pub at: Instant,
}

/// Everything the load generator saw.
pub struct LoadResult {
    pub attempts: Vec<Attempt>,
}

impl LoadResult {
    /// Ids answered 2xx at least once.
    pub fn acked(&self) -> HashSet<String> {
        self.attempts
            .iter()
            .filter(|a| (200..300).contains(&a.status))
            .map(|a| a.id.clone())
            .collect()
    }

    /// Every id the generator sent.
    pub fn sent(&self) -> HashSet<String> {
        self.attempts.iter().map(|a| a.id.clone()).collect()
    }

    /// Time from `fault` to the first 2xx after the last failure (zero when nothing failed).
    pub fn recovery(&self, fault: Instant) -> Option<Duration> {
        let last_failure = self
            .attempts
            .iter()
            .filter(|a| !(200..300).contains(&a.status))
            .map(|a| a.at)
            .max()?;
        self.attempts
            .iter()
            .filter(|a| (200..300).contains(&a.status) && a.at > last_failure)
            .map(|a| a.at)
            .min()
            .map(|recovered| recovered.saturating_duration_since(fault))
    }
}

fn client() -> Client<HttpConnector, Full<Bytes>> {
    let mut connector = HttpConnector::new();
    connector.set_connect_timeout(Some(Duration::from_secs(2)));
    Client::builder(TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(5))
        .build(connector)
}

async fn post(client: &Client<HttpConnector, Full<Bytes>>, url: &str, id: &str) -> u16 {
    let body = format!(
        r#"[{{"type":"message-delivered","to":"+15554440101","message":{{"id":"{id}"}}}}]"#
    );
    let Ok(request) = Request::post(url)
        .header("content-type", "application/json; charset=utf-8")
        .body(Full::new(Bytes::from(body)))
    else {
        return 0;
    };
    let answer = tokio::time::timeout(Duration::from_secs(12), client.request(request)).await;
    match answer {
        Ok(Ok(response)) => {
            let status = response.status().as_u16();
            let _ = response.into_body().collect().await;
            status
        }
        _ => 0,
    }
}

/// Posts new events until `stop`; with `retry`, re-posts each failed event until it is
/// answered 2xx (as Bandwidth does) or `give_up` passes after `stop`.
pub async fn run(url: String, prefix: String, stop: CancellationToken, retry: bool) -> LoadResult {
    let client = client();
    let next = Arc::new(AtomicUsize::new(0));
    let give_up = Duration::from_secs(30);
    let tasks = (0..CONCURRENCY).map(|_| {
        let client = client.clone();
        let url = url.clone();
        let next = next.clone();
        let stop = stop.clone();
        let prefix = prefix.clone();
        tokio::spawn(async move {
            let mut attempts = Vec::new();
            while !stop.is_cancelled() {
                let id = format!("{prefix}-{}", next.fetch_add(1, Ordering::Relaxed));
                let mut stopped_at: Option<Instant> = None;
                loop {
                    let status = post(&client, &url, &id).await;
                    attempts.push(Attempt {
                        id: id.clone(),
                        status,
                        at: Instant::now(),
                    });
                    if !retry || (200..300).contains(&status) {
                        break;
                    }
                    if stop.is_cancelled() {
                        let since = *stopped_at.get_or_insert_with(Instant::now);
                        if since.elapsed() > give_up {
                            break;
                        }
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
            attempts
        })
    });
    let mut attempts = Vec::new();
    for task in futures_util::future::join_all(tasks).await {
        attempts.extend(task.expect("load task"));
    }
    attempts.sort_by_key(|a| a.at);
    LoadResult { attempts }
}

/// One scenario's line of the results table.
pub struct Report {
    pub scenario: &'static str,
    pub requests: usize,
    pub ok: usize,
    pub failures: BTreeMap<u16, usize>,
    pub lost: usize,
    pub duplicates: usize,
    pub unacked: usize,
    pub recovery: Option<Duration>,
}

impl Report {
    /// Compares the 2xx answers with what the queue holds.
    pub fn new(
        scenario: &'static str,
        load: &LoadResult,
        stored: &HashMap<String, usize>,
        fault: Instant,
    ) -> Self {
        let acked = load.acked();
        let mut failures = BTreeMap::new();
        for attempt in &load.attempts {
            if !(200..300).contains(&attempt.status) {
                *failures.entry(attempt.status).or_insert(0) += 1;
            }
        }
        Self {
            scenario,
            requests: load.attempts.len(),
            ok: load.attempts.len() - failures.values().sum::<usize>(),
            failures,
            lost: acked.iter().filter(|id| !stored.contains_key(*id)).count(),
            duplicates: stored.values().map(|n| n - 1).sum(),
            unacked: load.sent().difference(&acked).count(),
            recovery: load.recovery(fault),
        }
    }

    /// Prints the row and appends it to `target/fault-suite.md`.
    pub fn print(&self) {
        let failures = if self.failures.is_empty() {
            "-".to_owned()
        } else {
            self.failures
                .iter()
                .map(|(status, n)| match status {
                    0 => format!("conn-error {n}"),
                    s => format!("{s}: {n}"),
                })
                .collect::<Vec<_>>()
                .join(", ")
        };
        let recovery = self
            .recovery
            .map(|d| format!("{:.2} s", d.as_secs_f64()))
            .unwrap_or_else(|| "-".into());
        let row = format!(
            "| {} | {} | {} | {} | {} | {} | {} | {} |",
            self.scenario,
            self.requests,
            self.ok,
            failures,
            self.lost,
            self.duplicates,
            self.unacked,
            recovery
        );
        eprintln!("{row}");
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/fault-suite.md");
        if let Ok(mut file) = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
        {
            use std::io::Write;
            let _ = writeln!(file, "{row}");
        }
    }
}
