//! The AMQP plumbing below both halves of the product (`serve` publishes through a [`Link`],
//! `consume` and `replay` connect with [`connect`]): connecting with failover across the
//! configured URIs, reconnect backoff, declaring a topology on every new connection, and the
//! supervised connection whose state the publisher reads. Imports nothing above it.

mod backoff;
mod connect;
mod declare;
mod link;

pub use backoff::Backoff;
pub use connect::{CONNECT_TIMEOUT, connect};
pub use declare::{
    DeclareError, Topology, declare_exchange, differing_arguments, quorum_arguments,
};
pub use link::{CurrentConnection, Link, LinkState, REDECLARE_TIMEOUT};
