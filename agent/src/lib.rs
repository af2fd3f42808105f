//! # tinyedge agent
//!
//! The agent side of tinyedge: it reads deployment manifests (what IoT Hub says should run),
//! plans how to get from the running modules to the desired ones, and runs the modules on
//! containerd: pulls their images, makes, starts, stops and removes their containers, restarts
//! them by their restart policy, runs their health checks and reports their status.
//!
//! The decisions are pure code, tested with tables: manifest validation, the planner,
//! createOptions, image references and documents, the OCI runtime spec, the reported status. The
//! IO calls into them from the edges: containerd's gRPC socket, registries over HTTP, the
//! management and workload API sockets. The IO is cargo feature `runtime` (on by default);
//! without it only [`manifest`], [`plan`] and [`container`] remain, which is all a hub-only build
//! of tinyedge needs.
//!
//! # Layout
//! - [`manifest`]: parse and validate IoT Edge deployment manifests (`$edgeAgent` modules,
//!   `$edgeHub` routes, module twins) into typed values, with IoT Edge's status codes and the
//!   JSON path of every error (pure).
//! - [`plan`]: the reconcile planner and the restart policy with IoT Edge's backoff (pure).
//! - [`container`]: Docker `createOptions` turned into a container configuration for the OCI
//!   runtime, and the IoT Edge environment of a module (pure).
//! - [`image`] (`runtime`): image references and the OCI index, manifest and config documents
//!   (pure), and the registry client with token auth and blob verification (IO).
//! - [`containerd`] (`runtime`): the containerd client (IO), client-side pull and unpack, a
//!   module's OCI runtime spec (pure), and the modules' stdout/stderr FIFOs and bounded logs.
//! - [`supervisor`] (`runtime`): the agent task that keeps containerd's containers equal to the
//!   deployment, the agent's side of the management API, and each module's workload API socket.
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
