//! The cost table: CPU per event of the forwarder against its two libraries alone, and of the
//! broker behind the forwarder against behind lapin alone. Ratios are taken within each round
//! (the cells of a round ran minutes apart on the same host), then summarised over
//! rounds.

use crate::cell::Cell;
use crate::stats::spread;

/// The cells of one concurrency in one round.
struct Group<'a> {
    raw: &'a Cell,
    http: &'a Cell,
    work: &'a Cell,
    minimal: &'a Cell,
    forwarder: &'a Cell,
}

impl<'a> Group<'a> {
    /// The (a), (h), (w), (m) and (b) cells of `concurrency` in `cells`, when all were measured.
    fn of(cells: &'a [Cell], concurrency: usize) -> Option<Self> {
        let find = |prefix: &str| {
            cells
                .iter()
                .find(|c| c.concurrency == concurrency && c.mode.starts_with(prefix))
        };
        Some(Self {
            raw: find("(a)")?,
            http: find("(h)")?,
            work: find("(w)")?,
            minimal: find("(m)")?,
            forwarder: find("(b)")?,
        })
    }

    fn forwarder_us(&self) -> f64 {
        self.forwarder.cpu_us_per_event(self.forwarder.cpu_seconds)
    }

    fn lapin_us(&self) -> f64 {
        self.raw.cpu_us_per_event(self.raw.cpu_seconds)
    }

    fn hyper_us(&self) -> f64 {
        self.http.cpu_us_per_event(self.http.cpu_seconds)
    }

    fn work_us(&self) -> f64 {
        self.work.cpu_us_per_event(self.work.cpu_seconds)
    }

    fn parse_and_log_us(&self) -> f64 {
        self.work_us() - self.hyper_us()
    }

    /// The overhead of a forwarder that spends nothing beyond lapin, hyper and its own parse
    /// and log line: the floor the overhead can reach with this work.
    fn floor(&self) -> f64 {
        (self.lapin_us() + self.work_us()) / (self.lapin_us() + self.hyper_us())
    }

    fn minimal_us(&self) -> f64 {
        self.minimal.cpu_us_per_event(self.minimal.cpu_seconds)
    }

    /// The overhead of the minimal forwarder: (w) publishing as (a) does, in one process.
    fn minimal_overhead(&self) -> f64 {
        self.minimal_us() / (self.lapin_us() + self.hyper_us())
    }

    /// What the forwarder spends beyond the minimal one: channel workers, span, metrics,
    /// admission, timeouts.
    fn beyond_minimal(&self) -> f64 {
        self.forwarder_us() / self.minimal_us()
    }

    fn broker_raw_us(&self) -> f64 {
        self.raw.cpu_us_per_event(self.raw.broker_cpu_seconds)
    }

    fn broker_forwarder_us(&self) -> f64 {
        self.forwarder
            .cpu_us_per_event(self.forwarder.broker_cpu_seconds)
    }

    fn overhead(&self) -> f64 {
        self.forwarder_us() / (self.lapin_us() + self.hyper_us())
    }

    fn broker_parity(&self) -> f64 {
        self.broker_forwarder_us() / self.broker_raw_us()
    }

    /// The broker's CPU per event behind (m) against behind (a): the parity of a forwarder that
    /// publishes from each request's task, with nothing in between.
    fn minimal_broker_parity(&self) -> f64 {
        self.minimal
            .cpu_us_per_event(self.minimal.broker_cpu_seconds)
            / self.broker_raw_us()
    }

    fn p99_ratio(&self) -> f64 {
        self.forwarder.percentile_ms(0.99) / self.raw.percentile_ms(0.99)
    }

    fn throughput_ratio(&self) -> f64 {
        self.forwarder.events_per_sec() / self.raw.events_per_sec()
    }
}

/// A figure of a group, and its decimals.
type Figure = (fn(&Group) -> f64, usize);

/// The headline table: the two ratios and what they are made of.
const COSTS: [Figure; 9] = [
    (|g| g.forwarder_us(), 1),
    (|g| g.lapin_us(), 1),
    (|g| g.hyper_us(), 1),
    (|g| g.overhead(), 2),
    (|g| g.broker_raw_us(), 1),
    (|g| g.broker_forwarder_us(), 1),
    (|g| g.broker_parity(), 2),
    (|g| g.p99_ratio(), 2),
    (|g| g.throughput_ratio(), 2),
];

/// The overhead's floor: what parsing and the access line add to the bare server, and what
/// the least forwarder doing that work costs.
const FLOOR: [Figure; 8] = [
    (|g| g.hyper_us(), 1),
    (|g| g.work_us(), 1),
    (|g| g.parse_and_log_us(), 1),
    (|g| g.floor(), 2),
    (|g| g.minimal_us(), 1),
    (|g| g.minimal_overhead(), 2),
    (|g| g.beyond_minimal(), 2),
    (|g| g.minimal_broker_parity(), 2),
];

/// Where (m) and the forwarder spend their CPU: the async runtime's threads and lapin's I/O
/// thread, user and system time, and context switches.
const THREADS: [Figure; 10] = [
    (|g| g.minimal.threads_us_per_event(|t| t.runtime_user), 1),
    (|g| g.minimal.threads_us_per_event(|t| t.runtime_system), 1),
    (|g| g.minimal.threads_us_per_event(|t| t.io_user), 1),
    (|g| g.minimal.threads_us_per_event(|t| t.io_system), 1),
    (|g| g.minimal.switches_per_event(), 2),
    (|g| g.forwarder.threads_us_per_event(|t| t.runtime_user), 1),
    (
        |g| g.forwarder.threads_us_per_event(|t| t.runtime_system),
        1,
    ),
    (|g| g.forwarder.threads_us_per_event(|t| t.io_user), 1),
    (|g| g.forwarder.threads_us_per_event(|t| t.io_system), 1),
    (|g| g.forwarder.switches_per_event(), 2),
];

/// Prints one row per concurrency that has all four cells: each figure as the median of rounds
/// with its range; then what the overhead is made of, and where (m) and (b) spend their CPU.
pub fn print_costs(rounds: &[Vec<Cell>], concurrencies: &[usize]) {
    println!(
        "\nCPU per event, median of {} round(s) (range): forwarder (b) against lapin alone (a) plus \
         a bare hyper server (h); the broker behind (b) against behind (a)\n",
        rounds.len()
    );
    println!(
        "| C | forwarder µs/event | (a) lapin µs/publish | (h) hyper µs/request | **overhead** fwd ÷ (a + h) | broker µs/event (a) | broker µs/event (b) | **broker parity** (b) ÷ (a) | p99 (b) ÷ (a) | events/s (b) ÷ (a) |"
    );
    print_rows(rounds, concurrencies, &COSTS);
    println!(
        "\nThe overhead's floor: (w) is (h) that also parses each callback with the forwarder's \
         parser and writes its JSON access line; floor = (a + w) ÷ (a + h). (m) is (w) also \
         publishing each event as (a) does, in a process of its own: the least forwarder\n"
    );
    println!(
        "| C | (h) µs/request | (w) µs/request | parse + log line µs | **floor** (a + w) ÷ (a + h) | (m) µs/event | **(m) overhead** (m) ÷ (a + h) | fwd ÷ (m) | (m) broker parity |"
    );
    print_rows(rounds, concurrencies, &FLOOR);
    println!(
        "\nWhere (m) and the forwarder (b) spend their CPU, per event: their async runtime's \
         threads and lapin's I/O thread, user and system µs (`/proc/PID/task`, in 10 ms ticks), \
         and context switches of all threads\n"
    );
    println!(
        "| C | (m) runtime user | (m) runtime system | (m) I/O user | (m) I/O system | (m) switches | (b) runtime user | (b) runtime system | (b) I/O user | (b) I/O system | (b) switches |"
    );
    print_rows(rounds, concurrencies, &THREADS);
}

/// The separator and one row per concurrency measured in every cell.
fn print_rows(rounds: &[Vec<Cell>], concurrencies: &[usize], figures: &[Figure]) {
    println!("|---{}|", "|---".repeat(figures.len()));
    for &concurrency in concurrencies {
        let groups: Vec<Group> = rounds
            .iter()
            .filter_map(|cells| Group::of(cells, concurrency))
            .collect();
        if groups.is_empty() {
            continue;
        }
        let cells: Vec<String> = figures
            .iter()
            .map(|(figure, decimals)| {
                spread(&groups.iter().map(figure).collect::<Vec<_>>(), *decimals)
            })
            .collect();
        println!("| {concurrency} | {} |", cells.join(" | "));
    }
}
