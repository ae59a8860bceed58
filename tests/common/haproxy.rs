//! The shipped haproxy config, run in front of real forwarders.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

use super::broker::unique;

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
