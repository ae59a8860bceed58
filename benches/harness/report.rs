//! The tables printed at the end: medians of rounds, ratios within each round.

use crate::cell::Cell;
use crate::stats::median;
use crate::{Args, QUEUE_MAX_LENGTH};

/// One row per cell: the median over rounds of each figure, the ratios taken within each
/// round against that round's (a), and the largest peak RSS.
pub fn print_table(rounds: &[Vec<Cell>], args: &Args) {
    println!(
        "\n{} s per cell after 1 s warm-up, {} round(s), medians; quorum queue (x-max-length {QUEUE_MAX_LENGTH}); {} cores{}\n",
        args.seconds,
        rounds.len(),
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(0),
        if args.pin {
            "; broker pinned to CPU 0, bench and forwarder to CPU 1"
        } else {
            ""
        }
    );
    println!(
        "| C | mode | req/s | events/s | p50 ms | p99 ms | p99.9 ms | peak RSS MB | publisher CPU µs/event | broker CPU µs/event | load gen. CPU µs/event | events/s ÷ (a) | p99 ÷ (a) |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|---|");
    let Some(first) = rounds.first() else {
        return;
    };
    for (index, cell) in first.iter().enumerate() {
        // The raw cell of the same concurrency opens each group.
        let raw_index = raw_cell_of(first, index);
        let of = |f: &dyn Fn(&Cell, &Cell) -> f64| {
            median(rounds.iter().map(|r| f(&r[index], &r[raw_index])).collect())
        };
        let per_event = |cpu: fn(&Cell) -> Option<f64>| {
            let value = of(&|c, _| {
                cpu(c)
                    .filter(|_| c.events > 0)
                    .map_or(f64::NAN, |s| s * 1e6 / c.events as f64)
            });
            if value.is_finite() {
                format!("{value:.0}")
            } else {
                "-".into()
            }
        };
        // (h) and (w) never touch the broker: their rates are not comparable with (a).
        let ratio = |f: &dyn Fn(&Cell, &Cell) -> f64| {
            if cell.mode.starts_with("(h)") || cell.mode.starts_with("(w)") {
                "-".to_owned()
            } else {
                format!("{:.2}", of(f))
            }
        };
        let peak_rss = rounds.iter().filter_map(|r| r[index].peak_rss_kb).max();
        println!(
            "| {} | {} | {:.0} | {:.0} | {:.2} | {:.2} | {:.2} | {} | {} | {} | {} | {} | {} |",
            cell.concurrency,
            cell.mode,
            of(&|c, _| c.requests as f64 / c.seconds),
            of(&|c, _| c.events_per_sec()),
            of(&|c, _| c.percentile_ms(0.5)),
            of(&|c, _| c.percentile_ms(0.99)),
            of(&|c, _| c.percentile_ms(0.999)),
            peak_rss
                .map(|kb| format!("{:.1}", kb as f64 / 1024.0))
                .unwrap_or_else(|| "-".into()),
            per_event(|c| c.cpu_seconds),
            per_event(|c| c.broker_cpu_seconds),
            per_event(|c| c.load_generator_cpu_seconds),
            ratio(&|c, raw| c.events_per_sec() / raw.events_per_sec()),
            ratio(&|c, raw| c.percentile_ms(0.99) / raw.percentile_ms(0.99)),
        );
    }
    println!();
    for (index, cell) in first.iter().enumerate() {
        if !cell.mode.starts_with("(h)") {
            continue;
        }
        let raw_index = raw_cell_of(first, index);
        let estimate = median(
            rounds
                .iter()
                .map(|r| cpu_budget_estimate(&r[raw_index], &r[index]))
                .collect(),
        );
        // The (b) cell of the same group, if single-event callbacks were measured.
        let by_round = group_of(first, index)
            .find(|&i| first[i].mode.starts_with("(b)"))
            .map(|b| {
                let ratios: Vec<String> = rounds
                    .iter()
                    .map(|r| {
                        format!(
                            "{:.2}",
                            r[b].events_per_sec() / r[raw_index].events_per_sec()
                        )
                    })
                    .collect();
                format!("(b)/(a) by round {}; ", ratios.join(", "))
            })
            .unwrap_or_default();
        println!(
            "C = {}: {by_round}CPU-budget estimate of the best (b)/(a) = {estimate:.2} (a forwarder \
             costing only lapin's CPU plus the bare server's; holds where the cores are the limit)",
            cell.concurrency
        );
    }
}

/// Index of the raw cell that opens the group `index` belongs to.
pub fn raw_cell_of(cells: &[Cell], index: usize) -> usize {
    group_of(cells, index).start
}

/// The indices of the group (one concurrency: its raw cell and the cells after it up to the
/// next raw cell) that `index` belongs to.
pub fn group_of(cells: &[Cell], index: usize) -> std::ops::Range<usize> {
    let is_raw = |c: &Cell| c.mode.starts_with("(a)");
    let start = cells[..=index]
        .iter()
        .rposition(is_raw)
        .expect("every group opens with a raw cell");
    let end = cells[index + 1..]
        .iter()
        .position(is_raw)
        .map_or(cells.len(), |offset| index + 1 + offset);
    start..end
}

/// Where the cores are the limit (equally busy in both cells), throughput is inversely
/// proportional to the CPU everything spends per event. (a) spends publisher + broker; the
/// cheapest possible forwarder adds the bare HTTP server's and the clients' CPU per request.
pub fn cpu_budget_estimate(raw: &Cell, http: &Cell) -> f64 {
    let per_event =
        |cpu: Option<f64>, cell: &Cell| cpu.map_or(f64::NAN, |s| s / cell.events as f64);
    let raw_cost = per_event(raw.cpu_seconds, raw) + per_event(raw.broker_cpu_seconds, raw);
    let http_cost =
        per_event(http.cpu_seconds, http) + per_event(http.load_generator_cpu_seconds, http);
    raw_cost / (raw_cost + http_cost)
}
