//! Reconnect backoff.

use std::time::Duration;

use crate::settings::AmqpSettings;

/// Exponential backoff with full jitter between `initial` and `max`.
pub struct Backoff {
    initial: Duration,
    max: Duration,
    current: Duration,
}

impl Backoff {
    pub fn new(settings: &AmqpSettings) -> Self {
        let initial = settings.reconnect_initial;
        Self {
            initial,
            max: settings.reconnect_max,
            current: initial,
        }
    }

    pub fn reset(&mut self) {
        self.current = self.initial;
    }

    pub fn next_delay(&mut self) -> Duration {
        let ceiling = self.current;
        self.current = (self.current * 2).min(self.max);
        let jitter_ms = fastrand::u64(0..=ceiling.as_millis() as u64 / 2);
        ceiling / 2 + Duration::from_millis(jitter_ms)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_to_the_cap_and_resets() {
        let settings = AmqpSettings {
            reconnect_initial: Duration::from_millis(100),
            reconnect_max: Duration::from_millis(800),
            ..AmqpSettings::default()
        };
        let mut backoff = Backoff::new(&settings);
        let delays: Vec<Duration> = (0..6).map(|_| backoff.next_delay()).collect();
        for (delay, ceiling) in delays.iter().zip([100, 200, 400, 800, 800, 800]) {
            assert!(*delay >= Duration::from_millis(ceiling / 2), "{delays:?}");
            assert!(*delay <= Duration::from_millis(ceiling), "{delays:?}");
        }
        backoff.reset();
        assert!(backoff.next_delay() <= Duration::from_millis(100));
    }
}
