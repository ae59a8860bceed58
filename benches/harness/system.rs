//! What the harness reads off the machine: CPU seconds of a process and of its threads, the
//! broker's process, and CPU pinning.

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
    let (user, system) = user_and_system(&stat)?;
    Some(user + system)
}

/// User and system CPU seconds from the text of a `/proc/.../stat` file.
fn user_and_system(stat: &str) -> Option<(f64, f64)> {
    let fields: Vec<&str> = stat.rsplit_once(") ")?.1.split_whitespace().collect();
    let seconds = |index: usize| Some(fields.get(index)?.parse::<u64>().ok()? as f64 / 100.0);
    Some((seconds(11)?, seconds(12)?))
}

/// CPU seconds and context switches of a process's threads (`/proc/PID/task`), lapin's I/O
/// thread apart from the rest: the async runtime's threads, and an idle main thread.
#[derive(Debug, Clone, Copy, Default)]
pub struct Threads {
    pub runtime_user: f64,
    pub runtime_system: f64,
    pub io_user: f64,
    pub io_system: f64,
    /// Voluntary and involuntary, of every thread.
    pub switches: f64,
}

impl Threads {
    /// Now, for the process `pid` (`self` for this one).
    pub fn of(pid: &str) -> Option<Self> {
        let mut threads = Self::default();
        for task in std::fs::read_dir(format!("/proc/{pid}/task"))
            .ok()?
            .flatten()
        {
            // A thread that ended since the listing is skipped.
            let Ok(stat) = std::fs::read_to_string(task.path().join("stat")) else {
                continue;
            };
            let Some((user, system)) = user_and_system(&stat) else {
                continue;
            };
            if stat.contains("(lapin-io-loop) ") {
                threads.io_user += user;
                threads.io_system += system;
            } else {
                threads.runtime_user += user;
                threads.runtime_system += system;
            }
            let status = std::fs::read_to_string(task.path().join("status")).unwrap_or_default();
            threads.switches += status
                .lines()
                .filter(|line| line.contains("ctxt_switches:"))
                .filter_map(|line| line.split_whitespace().nth(1)?.parse::<f64>().ok())
                .sum::<f64>();
        }
        Some(threads)
    }

    /// What was spent from `before` to `self`.
    pub fn since(self, before: Self) -> Self {
        Self {
            runtime_user: self.runtime_user - before.runtime_user,
            runtime_system: self.runtime_system - before.runtime_system,
            io_user: self.io_user - before.io_user,
            io_system: self.io_system - before.io_system,
            switches: self.switches - before.switches,
        }
    }
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
