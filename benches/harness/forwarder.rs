//! (b) and (c): the release binary under load; (m): the minimal forwarder, measured the same way.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::Args;
use crate::cell::Cell;
use crate::load::{Poster, post_load};
use crate::system::broker_pid;

/// The release binary, started fresh per cell so its peak RSS belongs to that cell; or, for
/// (m), this bench binary serving as the minimal forwarder.
pub struct Subject {
    child: Child,
    addr: String,
    config: Option<std::path::PathBuf>,
}

impl Subject {
    pub fn start(args: &Args, exchange: &str) -> Self {
        let (uri, log_level) = (&args.uri, &args.log_level);
        let addr = free_addr();
        let port = addr.rsplit(':').next().expect("host:port");
        let config = std::env::temp_dir().join(format!("{exchange}.{port}.toml"));
        std::fs::write(
            &config,
            format!(
                "[http]\nlisten = \"{addr}\"\n[amqp]\nuri = \"{uri}\"\nexchange = \"{exchange}\"\n\
                 queues = []\n[log]\nformat = \"json\"\nlevel = \"{log_level}\"\n"
            ),
        )
        .expect("config");
        let binary = args
            .forwarder
            .clone()
            .unwrap_or_else(|| env!("CARGO_BIN_EXE_bandwidth-forwarder").into());
        let mut command = Command::new(binary);
        command.args(["serve", "--config"]).arg(&config);
        Self::spawn(command, addr, Some(config))
    }

    /// (m): `minimal::serve` in a process of its own, measured as (b) is.
    pub fn start_minimal(args: &Args, exchange: &str) -> Self {
        let addr = free_addr();
        let mut command = Command::new(std::env::current_exe().expect("the bench binary"));
        command
            .args(["--minimal-forwarder", &addr, "--minimal-exchange", exchange])
            .args(["--uri", &args.uri]);
        Self::spawn(command, addr, None)
    }

    fn spawn(mut command: Command, addr: String, config: Option<std::path::PathBuf>) -> Self {
        let child = command
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("forwarder binary");
        Self {
            child,
            addr,
            config,
        }
    }

    /// Peak resident set (VmHWM) in kB.
    pub fn peak_rss_kb(&self) -> Option<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).ok()?;
        let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
        line.split_whitespace().nth(1)?.parse().ok()
    }
}

impl Drop for Subject {
    fn drop(&mut self) {
        // SIGTERM first, so a forwarder run under a profiler (`--forwarder` pointing at a
        // wrapper script) exits cleanly and writes its profile; SIGKILL if it takes too long.
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        for _ in 0..100 {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        if let Some(config) = &self.config {
            let _ = std::fs::remove_file(config);
        }
    }
}

/// A free port on the loopback interface, as `host:port`.
fn free_addr() -> String {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("free port")
        .port();
    format!("127.0.0.1:{port}")
}

/// (b)/(c): C clients posting callbacks of `batch` unique events, counting only 2xx.
pub async fn forwarder(args: &Args, exchange: &str, concurrency: usize, batch: usize) -> Cell {
    let mode = format!(
        "({}) forwarder, {batch}-event callbacks",
        if batch == 1 { 'b' } else { 'c' }
    );
    under_load(
        Subject::start(args, exchange),
        mode,
        args.seconds,
        concurrency,
        batch,
    )
    .await
}

/// (m): the same clients, single-event callbacks, against the minimal forwarder.
pub async fn minimal(args: &Args, exchange: &str, concurrency: usize) -> Cell {
    let subject = Subject::start_minimal(args, exchange);
    let mode = "(m) minimal forwarder".to_owned();
    under_load(subject, mode, args.seconds, concurrency, 1).await
}

/// `subject` once ready, under C clients posting callbacks of `batch` unique events.
async fn under_load(
    subject: Subject,
    mode: String,
    seconds: u64,
    concurrency: usize,
    batch: usize,
) -> Cell {
    for _ in 0..500 {
        let ready = match Poster::connect(&subject.addr).await {
            Ok(mut poster) => poster.request("GET", "/readyz", b"").await.unwrap_or(0),
            Err(_) => 0,
        };
        if ready == 200 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let pids = [
        Some(subject.child.id().to_string()),
        broker_pid(),
        Some("self".to_owned()),
    ];
    let load = post_load(&subject.addr, concurrency, batch, seconds, &pids).await;
    Cell {
        mode,
        concurrency,
        requests: load.latencies_us.len() as u64,
        events: load.latencies_us.len() as u64 * batch as u64,
        seconds: load.window.seconds,
        latencies_us: load.latencies_us,
        peak_rss_kb: subject.peak_rss_kb(),
        cpu_seconds: load.window.cpu[0],
        broker_cpu_seconds: load.window.cpu[1],
        load_generator_cpu_seconds: load.window.cpu[2],
        threads: load.window.threads,
    }
}
