//! Wall-clock times written as RFC 3339 UTC, exactly as humantime writes them. The date and
//! time of day change once a second, so each thread has humantime format them once a second
//! and writes only the fraction itself.

use std::cell::Cell;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Seconds from the epoch to the first second RFC 3339 cannot write (year 10000).
pub const RFC3339_END: u64 = 253_402_300_800;

/// `YYYY-MM-DDTHH:MM:SS`, the part every time of one second shares.
const SECOND_LEN: usize = 19;

/// Digits after the second.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Precision {
    Millis,
    Micros,
}

impl Precision {
    fn digits_of(self, nanos: u32) -> (u32, usize) {
        match self {
            Self::Millis => (nanos / 1_000_000, 3),
            Self::Micros => (nanos / 1_000, 6),
        }
    }
}

/// A time written out, e.g. `2026-03-10T14:07:45.120Z`; at most `…:45.120345Z`.
#[derive(Debug, Clone, Copy)]
pub struct Rfc3339 {
    bytes: [u8; SECOND_LEN + 8],
    len: usize,
}

impl Rfc3339 {
    pub fn as_str(&self) -> &str {
        std::str::from_utf8(&self.bytes[..self.len]).expect("digits and separators are ASCII")
    }
}

thread_local! {
    /// The last second this thread wrote, and its text.
    static LAST_SECOND: Cell<(u64, [u8; SECOND_LEN])> = const { Cell::new((u64::MAX, [0; SECOND_LEN])) };
}

/// `time` in UTC with `precision`; `None` before 1970 or from year 10000 (humantime panics on
/// the one and cannot write the other).
pub fn rfc3339(time: SystemTime, precision: Precision) -> Option<Rfc3339> {
    let since = time
        .duration_since(UNIX_EPOCH)
        .ok()
        .filter(|since| since.as_secs() < RFC3339_END)?;
    let second = LAST_SECOND.with(|last| {
        let (cached, text) = last.get();
        if cached == since.as_secs() {
            return text;
        }
        let text = second_text(since.as_secs());
        last.set((since.as_secs(), text));
        text
    });
    let mut bytes = [0u8; SECOND_LEN + 8];
    bytes[..SECOND_LEN].copy_from_slice(&second);
    bytes[SECOND_LEN] = b'.';
    let (mut fraction, digits) = precision.digits_of(since.subsec_nanos());
    for digit in bytes[SECOND_LEN + 1..SECOND_LEN + 1 + digits]
        .iter_mut()
        .rev()
    {
        *digit = b'0' + (fraction % 10) as u8;
        fraction /= 10;
    }
    let len = SECOND_LEN + 1 + digits + 1;
    bytes[len - 1] = b'Z';
    Some(Rfc3339 { bytes, len })
}

/// `YYYY-MM-DDTHH:MM:SS` of a second humantime can write.
fn second_text(secs: u64) -> [u8; SECOND_LEN] {
    let whole = humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_secs(secs));
    let mut text = [0u8; SECOND_LEN];
    text.copy_from_slice(&whole.to_string().as_bytes()[..SECOND_LEN]);
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    fn humantime(time: SystemTime, precision: Precision) -> String {
        match precision {
            Precision::Millis => humantime::format_rfc3339_millis(time).to_string(),
            Precision::Micros => humantime::format_rfc3339_micros(time).to_string(),
        }
    }

    #[test]
    fn writes_what_humantime_writes() {
        let mut rng = fastrand::Rng::with_seed(16);
        let edges = [
            Duration::ZERO,
            Duration::new(0, 999_999_999),
            Duration::new(951_782_400, 1_000), // 2000-02-29
            Duration::new(1_700_000_000, 123_456_789),
            Duration::new(RFC3339_END - 1, 999_999_999),
        ];
        let random =
            (0..5_000).map(|_| Duration::new(rng.u64(..RFC3339_END), rng.u32(..1_000_000_000)));
        for since in edges.into_iter().chain(random) {
            let time = UNIX_EPOCH + since;
            for precision in [Precision::Millis, Precision::Micros] {
                let ours = rfc3339(time, precision).expect("in range");
                assert_eq!(ours.as_str(), humantime(time, precision), "{since:?}");
            }
        }
    }

    #[test]
    fn a_cached_second_gives_way_to_the_next() {
        let second = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        for (time, expected) in [
            (second, "2023-11-14T22:13:20.000000Z"),
            (
                second + Duration::from_micros(7),
                "2023-11-14T22:13:20.000007Z",
            ),
            (
                second + Duration::from_secs(1),
                "2023-11-14T22:13:21.000000Z",
            ),
            (second, "2023-11-14T22:13:20.000000Z"),
        ] {
            let written = rfc3339(time, Precision::Micros).expect("in range");
            assert_eq!(written.as_str(), expected);
        }
    }

    #[test]
    fn a_time_before_1970_or_from_year_10000_is_none() {
        for time in [
            UNIX_EPOCH - Duration::from_nanos(1),
            UNIX_EPOCH + Duration::from_secs(RFC3339_END),
        ] {
            assert!(rfc3339(time, Precision::Millis).is_none());
        }
    }
}
