//! The cost table: CPU per event of the forwarder against its two libraries alone, and of the
//! broker behind the forwarder against behind lapin alone. Ratios are taken within each round
//! (the three cells of a round ran minutes apart on the same host), then summarised over
//! rounds.

use crate::cell::Cell;
use crate::stats::spread;

/// The cells of one concurrency in one round.
struct Group<'a> {
    raw: &'a Cell,
    http: &'a Cell,
    forwarder: &'a Cell,
}

impl<'a> Group<'a> {
    /// The (a), (h) and (b) cells of `concurrency` in `cells`, when all three were measured.
    fn of(cells: &'a [Cell], concurrency: usize) -> Option<Self> {
        let find = |prefix: &str| {
            cells
                .iter()
                .find(|c| c.concurrency == concurrency && c.mode.starts_with(prefix))
        };
        Some(Self {
            raw: find("(a)")?,
            http: find("(h)")?,
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

    fn p99_ratio(&self) -> f64 {
        self.forwarder.percentile_ms(0.99) / self.raw.percentile_ms(0.99)
    }

    fn throughput_ratio(&self) -> f64 {
        self.forwarder.events_per_sec() / self.raw.events_per_sec()
    }
}

/// Prints one row per concurrency that has (a), (h) and (b) cells: each figure as the median
/// of rounds with its range.
pub fn print_costs(rounds: &[Vec<Cell>], concurrencies: &[usize]) {
    println!(
        "\nCPU per event, median of {} round(s) (range): forwarder (b) against lapin alone (a) plus \
         a bare hyper server (h); the broker behind (b) against behind (a)\n",
        rounds.len()
    );
    println!(
        "| C | forwarder µs/event | (a) lapin µs/publish | (h) hyper µs/request | **overhead** fwd ÷ (a + h) | broker µs/event (a) | broker µs/event (b) | **broker parity** (b) ÷ (a) | p99 (b) ÷ (a) | events/s (b) ÷ (a) |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|");
    for &concurrency in concurrencies {
        let groups: Vec<Group> = rounds
            .iter()
            .filter_map(|cells| Group::of(cells, concurrency))
            .collect();
        if groups.is_empty() {
            continue;
        }
        let column = |figure: &dyn Fn(&Group) -> f64, decimals| {
            spread(&groups.iter().map(figure).collect::<Vec<_>>(), decimals)
        };
        println!(
            "| {concurrency} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            column(&|g| g.forwarder_us(), 1),
            column(&|g| g.lapin_us(), 1),
            column(&|g| g.hyper_us(), 1),
            column(&|g| g.overhead(), 2),
            column(&|g| g.broker_raw_us(), 1),
            column(&|g| g.broker_forwarder_us(), 1),
            column(&|g| g.broker_parity(), 2),
            column(&|g| g.p99_ratio(), 2),
            column(&|g| g.throughput_ratio(), 2),
        );
    }
}
