//! The one test-support layer both test crates share: HTTP to a forwarder (`http`), the
//! broker (`broker`), a forwarder in the test's process (`app`), the real binary
//! (`binary`) and haproxy in front of it (`haproxy`).

// Each test crate uses a part of it.
#![allow(dead_code, unused_imports)]

mod app;
mod binary;
mod broker;
mod haproxy;
mod http;

pub use app::*;
pub use binary::*;
pub use broker::*;
pub use haproxy::*;
pub use http::*;
