//! What the harness reads off the machine: CPU seconds of a process, the broker's process,
//! and CPU pinning.

use std::process::Command;

/// CPU affinity for `--pin`: broker on CPU 0, this process and its children on CPU 1.
pub struct Pinning {
    broker: Option<String>,
}

impl Pinning {
    pub fn apply() -> Self {
        let broker = broker_pid();
        if let Some(pid) = &broker {
            taskset("0", pid);
        }
        taskset("1", &std::process::id().to_string());
        Self { broker }
    }
}

impl Drop for Pinning {
    fn drop(&mut self) {
        if let Some(pid) = &self.broker {
            taskset("0-1023", pid);
        }
    }
}

/// Sets the CPU list of every thread of `pid` (children inherit it).
pub fn taskset(cpus: &str, pid: &str) {
    let status = Command::new("taskset")
        .args(["-a", "-pc", cpus, pid])
        .output();
    if !status.is_ok_and(|o| o.status.success()) {
        eprintln!("taskset -a -pc {cpus} {pid} failed; running unpinned");
    }
}

/// User + system CPU seconds of a process (`self` for this one).
pub fn cpu_seconds(pid: &str) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let fields: Vec<&str> = stat.rsplit_once(") ")?.1.split_whitespace().collect();
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    Some(ticks as f64 / 100.0)
}

/// The local broker's Erlang VM, to report its CPU beside ours.
pub fn broker_pid() -> Option<String> {
    std::fs::read_dir("/proc")
        .ok()?
        .flatten()
        .find_map(|entry| {
            let pid = entry.file_name().into_string().ok()?;
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
            let cmdline = String::from_utf8_lossy(&cmdline);
            let cmdline = cmdline.replace('\0', " ");
            (cmdline.contains("beam.smp") && cmdline.contains("-s rabbit boot")).then_some(pid)
        })
}
