//! The real binary as a process: `serve` and `consume` with a generated settings file and
//! JSON logs, run to exit, signals, its command line.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::broker::unique;
use super::http::{READY_WITHIN, http_client, ready_within};

/// The binary, as every test starts it: without any `FORWARDER__*` variable of the
/// environment the tests run in, so only what a test sets reaches it.
pub fn binary() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_bandwidth-forwarder"));
    for (key, _) in std::env::vars().filter(|(k, _)| k.starts_with("FORWARDER__")) {
        command.env_remove(key);
    }
    command
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

/// Starts the binary with `ARGS` and the settings file `config`, its log (stderr) piped.
fn launch(args: &[&str], config: &Path, stdout: Stdio) -> Child {
    binary()
        .args(args)
        .arg("--config")
        .arg(config)
        .stdin(Stdio::null())
        .stdout(stdout)
        .stderr(Stdio::piped())
        .spawn()
        .expect("start the binary")
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
        let mut child = launch(args, &config, Stdio::null());
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
        let mut child = launch(args, &config, Stdio::piped());
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

/// Asserts that the binary's command line accepts `args`: `--help` after them prints the help
/// only if every flag before it parsed.
pub fn assert_cli_accepts(args: &[&str]) {
    let output = binary()
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
