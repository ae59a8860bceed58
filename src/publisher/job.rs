//! What a request hands the confirm channels, and what it gets back.

use std::time::{SystemTime, UNIX_EPOCH};

use tokio::sync::oneshot;
use tokio::time::Instant;

use crate::clock::{self, Precision};
use crate::event::Event;

/// Why a request's events are not all confirmed; every variant is a 503.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PublishError {
    #[error("not connected to the broker")]
    Unavailable,
    #[error("the broker is blocking publishers (memory or disk alarm)")]
    Blocked,
    #[error("the service is shutting down")]
    ShuttingDown,
    #[error("too many requests are waiting for the broker")]
    Overloaded,
    #[error("the broker rejected an event (nack)")]
    Nacked,
    #[error("an event matched no queue (returned as unroutable)")]
    Unroutable,
    #[error("the channel or connection closed before every confirm arrived: {0}")]
    ChannelClosed(String),
    #[error("no confirm within the publish timeout")]
    Timeout,
}

impl PublishError {
    /// The short machine word for the JSON error body and the failure metric.
    pub fn code(&self) -> &'static str {
        match self {
            Self::Unavailable => "broker_unavailable",
            Self::Blocked => "broker_blocked",
            Self::ShuttingDown => "shutting_down",
            Self::Overloaded => "overloaded",
            Self::Nacked => "nack",
            Self::Unroutable => "unroutable",
            Self::ChannelClosed(_) => "channel_closed",
            Self::Timeout => "confirm_timeout",
        }
    }

    /// A fixed sentence per error word, for the caller; the cause stays in the log line.
    pub fn summary(&self) -> &'static str {
        match self {
            Self::Unavailable => "the broker is not reachable; retry later",
            Self::Blocked => "the broker is not accepting messages now; retry later",
            Self::ShuttingDown => "this instance is shutting down; retry",
            Self::Overloaded => "too many callbacks are waiting for the broker; retry later",
            Self::Nacked => "the broker did not accept an event; retry",
            Self::Unroutable => "an event matched no queue; retry once a queue is bound",
            Self::ChannelClosed(_) => "the broker channel closed before every confirm; retry",
            Self::Timeout => "the broker did not confirm in time; retry",
        }
    }
}

/// When a request was received, in the two forms the message carries, and its id.
#[derive(Debug, Clone)]
pub struct Received {
    /// Unix seconds, for the `timestamp` property.
    pub unix_secs: u64,
    /// RFC 3339 UTC, for the `x-received-at` header.
    pub rfc3339: String,
    /// The request's id (`X-Request-Id`), for the `correlation_id` property.
    pub request_id: String,
}

impl Received {
    /// Now, for the request `request_id`.
    pub fn now(request_id: &str) -> Self {
        Self::at(SystemTime::now(), request_id)
    }

    /// At `time`. A clock set before 1970 or past 9999 is written as the epoch: `clock` does
    /// not write it, and a wrong clock must not fail a callback.
    fn at(time: SystemTime, request_id: &str) -> Self {
        let (time, written) = match clock::rfc3339(time, Precision::Millis) {
            Some(written) => (time, written),
            None => (
                UNIX_EPOCH,
                clock::rfc3339(UNIX_EPOCH, Precision::Millis).expect("the epoch is in range"),
            ),
        };
        Self {
            unix_secs: time
                .duration_since(UNIX_EPOCH)
                .map_or(0, |since| since.as_secs()),
            rfc3339: written.as_str().to_owned(),
            request_id: request_id.to_owned(),
        }
    }
}

/// One request's events and where to send the outcome.
pub(super) struct Job {
    pub(super) events: Vec<Event>,
    pub(super) received: Received,
    pub(super) deadline: Instant,
    pub(super) reply: oneshot::Sender<Result<(), PublishError>>,
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn received_carries_the_time_in_both_forms() {
        let received = Received::at(UNIX_EPOCH + Duration::from_millis(1_700_000_000_123), "r-1");
        assert_eq!(received.unix_secs, 1_700_000_000);
        assert_eq!(received.rfc3339, "2023-11-14T22:13:20.123Z");
        assert_eq!(received.request_id, "r-1");
    }

    #[test]
    fn a_clock_outside_what_rfc_3339_can_write_reads_as_the_epoch() {
        for time in [
            UNIX_EPOCH - Duration::from_secs(1),
            UNIX_EPOCH + Duration::from_secs(clock::RFC3339_END),
        ] {
            let received = Received::at(time, "r-2");
            assert_eq!(received.unix_secs, 0);
            assert_eq!(received.rfc3339, "1970-01-01T00:00:00.000Z");
        }
    }
}
