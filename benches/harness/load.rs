//! The load generator: lean keep-alive clients posting callbacks, and the measured window.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::EVENT;
use crate::system::{Threads, cpu_seconds};

/// What a measured window took: its duration, the CPU seconds each process spent in it, and
/// how the first process's threads spent theirs.
pub struct Window {
    pub seconds: f64,
    pub cpu: Vec<Option<f64>>,
    pub threads: Option<Threads>,
}

/// Warm up for a second, then measure `pids` for `seconds`.
pub async fn measure_window(
    measuring: &AtomicBool,
    stop: &AtomicBool,
    seconds: u64,
    pids: &[Option<String>],
) -> Window {
    let sample = || -> Vec<Option<f64>> {
        pids.iter()
            .map(|pid| pid.as_deref().and_then(cpu_seconds))
            .collect()
    };
    let threads = || pids.first()?.as_deref().and_then(Threads::of);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (before, threads_before) = (sample(), threads());
    measuring.store(true, Ordering::Relaxed);
    let started = Instant::now();
    tokio::time::sleep(Duration::from_secs(seconds)).await;
    measuring.store(false, Ordering::Relaxed);
    let measured = started.elapsed().as_secs_f64();
    let (after, threads_after) = (sample(), threads());
    stop.store(true, Ordering::Relaxed);
    let spent = after
        .into_iter()
        .zip(before)
        .map(|(a, b)| a.zip(b).map(|(a, b)| a - b))
        .collect();
    Window {
        seconds: measured,
        cpu: spent,
        threads: threads_after
            .zip(threads_before)
            .map(|(after, before)| after.since(before)),
    }
}

/// What C clients measured: 2xx latencies, and the window with the CPU of `pids` in it.
pub struct Load {
    pub latencies_us: Vec<u64>,
    pub window: Window,
}

/// C keep-alive clients posting callbacks of `batch` unique events to `addr` for a warm-up
/// second and `seconds` more; only 2xx answers count.
pub async fn post_load(
    addr: &str,
    concurrency: usize,
    batch: usize,
    seconds: u64,
    pids: &[Option<String>],
) -> Load {
    let path = "/callbacks/bandwidth/messaging";
    let measuring = Arc::new(AtomicBool::new(false));
    let stop = Arc::new(AtomicBool::new(false));
    let counter = Arc::new(AtomicU64::new(0));
    let failures = Arc::new(AtomicU64::new(0));
    let tasks: Vec<_> = (0..concurrency)
        .map(|_| {
            let addr = addr.to_owned();
            let (measuring, stop, counter, failures) = (
                measuring.clone(),
                stop.clone(),
                counter.clone(),
                failures.clone(),
            );
            tokio::spawn(async move {
                let mut latencies = Vec::new();
                let mut poster = None;
                while !stop.load(Ordering::Relaxed) {
                    if poster.is_none() {
                        poster = Poster::connect(&addr).await.ok();
                    }
                    // A keep-alive client's latency: connecting is not part of a request.
                    let body = callback_body(&counter, batch);
                    let started = Instant::now();
                    let status = match poster.as_mut() {
                        Some(p) => p.request("POST", path, body.as_bytes()).await.unwrap_or(0),
                        None => 0,
                    };
                    if status == 0 {
                        poster = None;
                    }
                    if !measuring.load(Ordering::Relaxed) {
                        continue;
                    }
                    if (200..300).contains(&status) {
                        latencies.push(started.elapsed().as_micros() as u64);
                    } else {
                        failures.fetch_add(1, Ordering::Relaxed);
                    }
                }
                latencies
            })
        })
        .collect();
    let window = measure_window(&measuring, &stop, seconds, pids).await;
    let mut latencies = Vec::new();
    for task in tasks {
        latencies.extend(task.await.expect("poster"));
    }
    latencies.sort_unstable();
    let failed = failures.load(Ordering::Relaxed);
    if failed > 0 {
        eprintln!("  {failed} non-2xx answers (not counted)");
    }
    Load {
        latencies_us: latencies,
        window,
    }
}

/// A lean HTTP/1.1 keep-alive client (like wrk): one connection, one request at a time, so
/// the load generator takes as little of the shared CPU as it can.
pub struct Poster {
    stream: TcpStream,
    buffer: Vec<u8>,
}

impl Poster {
    pub async fn connect(addr: &str) -> std::io::Result<Self> {
        let stream = TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        Ok(Self {
            stream,
            buffer: Vec::with_capacity(4096),
        })
    }

    /// Sends one request and reads the whole response; returns its status.
    pub async fn request(&mut self, method: &str, path: &str, body: &[u8]) -> std::io::Result<u16> {
        let mut request = format!(
            "{method} {path} HTTP/1.1\r\nhost: bench\r\ncontent-type: application/json; charset=utf-8\r\n\
             content-length: {}\r\n\r\n",
            body.len()
        )
        .into_bytes();
        request.extend_from_slice(body);
        self.stream.write_all(&request).await?;
        self.buffer.clear();
        loop {
            if let Some(end) = find(&self.buffer, b"\r\n\r\n") {
                let head =
                    std::str::from_utf8(&self.buffer[..end]).map_err(std::io::Error::other)?;
                let status = head
                    .get(9..12)
                    .and_then(|s| s.parse().ok())
                    .ok_or_else(|| std::io::Error::other("bad status line"))?;
                let length: usize = head
                    .lines()
                    .find_map(|line| {
                        let (name, value) = line.split_once(':')?;
                        name.eq_ignore_ascii_case("content-length")
                            .then(|| value.trim().parse().ok())?
                    })
                    .unwrap_or(0);
                while self.buffer.len() < end + 4 + length {
                    self.read_more().await?;
                }
                return Ok(status);
            }
            self.read_more().await?;
        }
    }

    pub async fn read_more(&mut self) -> std::io::Result<()> {
        let mut chunk = [0u8; 4096];
        let n = self.stream.read(&mut chunk).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        self.buffer.extend_from_slice(&chunk[..n]);
        Ok(())
    }
}

pub fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

pub fn callback_body(counter: &AtomicU64, batch: usize) -> String {
    let events: Vec<String> = (0..batch)
        .map(|_| {
            EVENT.replace(
                "{ID}",
                &format!("bench-{}", counter.fetch_add(1, Ordering::Relaxed)),
            )
        })
        .collect();
    format!("[{}]", events.join(","))
}
