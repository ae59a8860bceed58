//! Medians and spreads over rounds.

/// The median of some values (NaN when there are none).
pub fn median(mut values: Vec<f64>) -> f64 {
    values.retain(|v| v.is_finite());
    if values.is_empty() {
        return f64::NAN;
    }
    values.sort_by(f64::total_cmp);
    let mid = values.len() / 2;
    if values.len().is_multiple_of(2) {
        (values[mid - 1] + values[mid]) / 2.0
    } else {
        values[mid]
    }
}

/// A figure over rounds: its median and its range, `median (min–max)`; `-` when no round has it.
pub fn spread(values: &[f64], decimals: usize) -> String {
    let finite: Vec<f64> = values.iter().copied().filter(|v| v.is_finite()).collect();
    if finite.is_empty() {
        return "-".into();
    }
    let low = finite.iter().copied().fold(f64::INFINITY, f64::min);
    let high = finite.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let middle = median(finite.clone());
    if finite.len() == 1 {
        format!("{middle:.decimals$}")
    } else {
        format!("{middle:.decimals$} ({low:.decimals$}–{high:.decimals$})")
    }
}
