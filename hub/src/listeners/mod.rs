//! The hub's listeners, built in one place.
//!
//! # Layout
//! - `permit`: a socket's place under the connection limits, for every protocol;
//! - `fdlimit`: the file descriptor budget `max_connections` is fitted to at start.

pub mod fdlimit;
pub mod permit;
