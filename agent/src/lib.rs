//! # tinyedge agent
//!
//! The agent side of tinyedge: it reads deployment manifests (what IoT Hub says should run),
//! plans how to get from the running modules to the desired ones, and supervises the modules.
//! The parts here are pure code; IO (IoT Hub, containerd) lives at the edges and calls in.
//!
//! # Layout
//! - [`manifest`]: parse and validate IoT Edge deployment manifests (`$edgeAgent` modules,
//!   `$edgeHub` routes, module twins) into typed values, with IoT Edge's status codes and the
//!   JSON path of every error (pure code).
//! - [`plan`]: the reconcile planner and the restart policy with IoT Edge's backoff (pure code).
//! - [`container`]: Docker `createOptions` turned into a container configuration for the OCI
//!   runtime, and the IoT Edge environment of a module (pure code).
#![forbid(unsafe_code)]

pub mod container;
#[cfg(feature = "runtime")]
pub mod containerd;
#[cfg(feature = "runtime")]
pub mod image;
pub mod manifest;
pub mod plan;
#[cfg(feature = "runtime")]
pub mod supervisor;
