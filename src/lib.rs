//! bandwidth-forwarder: Bandwidth messaging callbacks in, confirmed RabbitMQ messages out.

pub mod access;
pub mod amqp;
pub mod app;
pub mod auth;
pub mod clock;
pub mod consumer;
pub mod event;
pub mod healthcheck;
pub mod http;
pub mod metrics;
pub mod publisher;
pub mod reload;
pub mod routing;
pub mod settings;
pub mod shutdown;
pub mod telemetry;
