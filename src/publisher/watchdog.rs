//! The timer that tells a channel worker its channel is stuck: no confirm for a job in flight
//! by the job's deadline.

use std::pin::Pin;

use tokio::time::{Instant, Sleep};

/// The timer that tells a stuck channel: it fires no later than the earliest deadline of a
/// job in flight. It is set when a job with an earlier deadline is taken and, when it fires
/// while the jobs it was set for have been answered in time, set again at the earliest
/// deadline left; so a channel whose confirms keep coming moves it about once per publish
/// timeout, not once per request.
pub(super) struct Watchdog {
    sleep: Pin<Box<Sleep>>,
    /// When `sleep` fires, if it is set.
    at: Option<Instant>,
}

impl Watchdog {
    pub(super) fn new() -> Self {
        Self {
            sleep: Box::pin(tokio::time::sleep_until(Instant::now())),
            at: None,
        }
    }

    /// Fires no later than `deadline`.
    pub(super) fn cover(&mut self, deadline: Instant) {
        if self.at.is_none_or(|at| deadline < at) {
            self.set(Some(deadline));
        }
    }

    fn set(&mut self, at: Option<Instant>) {
        if let Some(at) = at {
            self.sleep.as_mut().reset(at);
        }
        self.at = at;
    }

    /// Resolves when the timer fires; never while it is not set.
    pub(super) async fn fired(&mut self) {
        if self.at.is_some() {
            self.sleep.as_mut().await;
        } else {
            std::future::pending().await
        }
    }

    /// After it fired: true when `oldest`, the earliest deadline in flight now, has passed;
    /// otherwise it is set again at `oldest` (or left unset with nothing in flight).
    pub(super) fn expired(&mut self, oldest: Option<Instant>) -> bool {
        if oldest.is_some_and(|oldest| oldest <= Instant::now()) {
            return true;
        }
        self.set(oldest);
        false
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    const MS: Duration = Duration::from_millis(1);
    /// Long enough for a timer that is due to fire on a busy machine.
    const DUE: Duration = Duration::from_secs(2);

    /// Whether `watchdog` fires within `within`.
    async fn fires_within(watchdog: &mut Watchdog, within: Duration) -> bool {
        tokio::time::timeout(within, watchdog.fired()).await.is_ok()
    }

    #[tokio::test]
    async fn the_watchdog_fires_at_the_earliest_deadline_it_covers_and_not_before() {
        let mut watchdog = Watchdog::new();
        assert!(!fires_within(&mut watchdog, 100 * MS).await, "not set");

        let start = Instant::now();
        watchdog.cover(start + 500 * MS);
        watchdog.cover(start + 300 * MS);
        watchdog.cover(start + 400 * MS);
        assert_eq!(watchdog.sleep.deadline(), start + 300 * MS);
        assert!(fires_within(&mut watchdog, DUE).await);
        assert!(start.elapsed() >= 300 * MS);
    }

    #[tokio::test]
    async fn a_watchdog_whose_jobs_were_answered_waits_for_the_earliest_left() {
        let start = Instant::now();
        let mut watchdog = Watchdog::new();
        watchdog.cover(start + 50 * MS);
        assert!(fires_within(&mut watchdog, DUE).await);
        // The job due at 50 ms was answered; the earliest left is due at 300 ms.
        assert!(!watchdog.expired(Some(start + 300 * MS)));
        assert_eq!(watchdog.sleep.deadline(), start + 300 * MS);
        assert!(fires_within(&mut watchdog, DUE).await);
        assert!(start.elapsed() >= 300 * MS);
        assert!(watchdog.expired(Some(start + 300 * MS)));
    }

    #[tokio::test]
    async fn a_watchdog_with_nothing_in_flight_rests_until_covered_again() {
        let mut watchdog = Watchdog::new();
        watchdog.cover(Instant::now() + 10 * MS);
        assert!(fires_within(&mut watchdog, DUE).await);
        assert!(!watchdog.expired(None));
        assert!(!fires_within(&mut watchdog, 200 * MS).await);
        watchdog.cover(Instant::now() + 10 * MS);
        assert!(fires_within(&mut watchdog, DUE).await);
    }
}
