//! Integration tests against a real RabbitMQ (127.0.0.1:5672, or `TEST_AMQP_URI`).

/// These tests share the machine's broker with each other, and wait out fault scenarios that
/// change it for everyone (`tests/common`, the broker lock).
const SHARES_THE_BROKER: bool = true;

mod auth;
mod bad_input;
mod balancer;
mod broker;
mod callbacks;
mod cli;
#[path = "../common/mod.rs"]
mod common;
mod compose;
mod consume;
mod hostile;
mod isolation;
mod logs;
mod metrics;
mod operations;
mod parser_properties;
mod shutdown;
mod tls;
