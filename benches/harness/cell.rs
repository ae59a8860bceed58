//! One measured cell: what a mode did at one concurrency in one round.

use crate::system::Threads;

/// One measured cell.
pub struct Cell {
    pub mode: String,
    pub concurrency: usize,
    pub requests: u64,
    pub events: u64,
    pub seconds: f64,
    pub latencies_us: Vec<u64>,
    pub peak_rss_kb: Option<u64>,
    pub cpu_seconds: Option<f64>,
    pub broker_cpu_seconds: Option<f64>,
    pub load_generator_cpu_seconds: Option<f64>,
    /// How the measured process's threads spent their CPU ((m), (b) and (c)).
    pub threads: Option<Threads>,
}

impl Cell {
    pub fn events_per_sec(&self) -> f64 {
        self.events as f64 / self.seconds
    }

    pub fn percentile_ms(&self, p: f64) -> f64 {
        if self.latencies_us.is_empty() {
            return f64::NAN;
        }
        self.percentile_us(p) as f64 / 1000.0
    }

    pub fn percentile_us(&self, p: f64) -> u64 {
        if self.latencies_us.is_empty() {
            return 0;
        }
        let index = ((self.latencies_us.len() as f64 * p).ceil() as usize)
            .clamp(1, self.latencies_us.len())
            - 1;
        self.latencies_us[index]
    }

    /// CPU microseconds per confirmed event of one part of the threads' time (NaN when not
    /// measured).
    pub fn threads_us_per_event(&self, part: fn(&Threads) -> f64) -> f64 {
        self.cpu_us_per_event(self.threads.as_ref().map(part))
    }

    /// Context switches per confirmed event (NaN when not measured).
    pub fn switches_per_event(&self) -> f64 {
        self.threads
            .filter(|_| self.events > 0)
            .map_or(f64::NAN, |t| t.switches / self.events as f64)
    }

    /// CPU microseconds per confirmed event of `cpu_seconds` (NaN when not measured).
    pub fn cpu_us_per_event(&self, cpu_seconds: Option<f64>) -> f64 {
        cpu_seconds
            .filter(|_| self.events > 0)
            .map_or(f64::NAN, |s| s * 1e6 / self.events as f64)
    }
}
