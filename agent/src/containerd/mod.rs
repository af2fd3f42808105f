//! containerd, the container runtime modules run on, reached over its gRPC socket.
//!
//! - [`client`]: one method per containerd call, namespaced, errors as one line (IO adapter).
//! - [`pull`]: client-side pull and unpack (containerd 1.6 has no transfer service).
//! - [`spec`]: the OCI runtime spec of a module's container (pure).
//! - [`stdio`]: module stdout/stderr FIFOs and their size-bounded log files.

pub mod client;
pub mod pull;
pub mod spec;
pub mod stdio;

pub use client::{Containerd, CtrError};
