//! Why a callback was not accepted, and the answer each reason gets.

use bytes::Bytes;
use http_body_util::Full;
use hyper::header::{self, HeaderValue};
use hyper::{Response, StatusCode};

use super::response::{error_response, with_retry_after};
use crate::auth::CHALLENGE;
use crate::event::InvalidCallback;
use crate::publisher::PublishError;

/// Why a callback was not accepted; each variant is exactly one status.
#[derive(Debug, thiserror::Error)]
pub enum CallbackError {
    #[error("this source address may not post callbacks")]
    Forbidden,
    #[error("missing or wrong Basic credentials")]
    Unauthorized,
    #[error("Content-Type must be application/json")]
    UnsupportedMediaType,
    #[error("Content-Encoding must be identity: the body is not decoded")]
    UnsupportedEncoding,
    #[error("the body is larger than {0} bytes")]
    TooLarge(usize),
    #[error("the body could not be read: {0}")]
    BodyRead(String),
    #[error("the body did not arrive within the read timeout")]
    BodyTimeout,
    #[error(transparent)]
    Invalid(#[from] InvalidCallback),
    #[error("this instance is shutting down; retry")]
    ShuttingDown,
    #[error(transparent)]
    Publish(#[from] PublishError),
}

impl CallbackError {
    pub(super) fn status(&self) -> StatusCode {
        match self {
            Self::Forbidden => StatusCode::FORBIDDEN,
            Self::Unauthorized => StatusCode::UNAUTHORIZED,
            Self::BodyTimeout => StatusCode::REQUEST_TIMEOUT,
            Self::UnsupportedMediaType | Self::UnsupportedEncoding => {
                StatusCode::UNSUPPORTED_MEDIA_TYPE
            }
            Self::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            Self::BodyRead(_) | Self::Invalid(_) => StatusCode::BAD_REQUEST,
            Self::ShuttingDown | Self::Publish(_) => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    pub(super) fn code(&self) -> &'static str {
        match self {
            Self::Forbidden => "forbidden",
            Self::Unauthorized => "unauthorized",
            Self::BodyTimeout => "body_timeout",
            Self::UnsupportedMediaType => "unsupported_media_type",
            Self::UnsupportedEncoding => "unsupported_encoding",
            Self::TooLarge(_) => "body_too_large",
            Self::BodyRead(_) => "body_read_error",
            Self::Invalid(invalid) => invalid.code(),
            Self::ShuttingDown => PublishError::ShuttingDown.code(),
            Self::Publish(publish) => publish.code(),
        }
    }

    /// The sentence the caller sees. A publish failure's cause (the broker's words, channel
    /// state) is for the log line only: the caller gets a fixed sentence per error word.
    pub(super) fn detail(&self) -> String {
        match self {
            Self::Publish(publish) => publish.summary().to_owned(),
            Self::ShuttingDown => PublishError::ShuttingDown.summary().to_owned(),
            other => other.to_string(),
        }
    }
}

pub(super) fn error_for(error: &CallbackError, retry_after_secs: u64) -> Response<Full<Bytes>> {
    let mut response = error_response(error.status(), error.code(), &error.detail());
    match error {
        CallbackError::Unauthorized => {
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static(CHALLENGE),
            );
        }
        CallbackError::UnsupportedEncoding => {
            response.headers_mut().insert(
                header::ACCEPT_ENCODING,
                HeaderValue::from_static("identity"),
            );
        }
        CallbackError::ShuttingDown | CallbackError::Publish(_) => {
            response = with_retry_after(response, retry_after_secs)
        }
        _ => {}
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn publish_failures_show_a_fixed_sentence_and_keep_the_cause_for_the_log() {
        let cause = "AMQP hard error: FRAME-ERROR frame_too_large";
        let error = CallbackError::Publish(PublishError::ChannelClosed(cause.into()));
        assert!(!error.detail().contains("FRAME"), "{}", error.detail());
        assert!(error.to_string().contains(cause), "the log line keeps it");
    }
}
