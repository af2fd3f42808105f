//! # tinyedge hub
//!
//! An MQTT endpoint that speaks Azure IoT Hub's dialect (topics, property bags, SAS
//! authentication) and routes messages between modules, devices and the cloud with IoT Hub's
//! route language.
//!
//! # Layout
//! - [`route`]: the route language — lexer, parser, condition evaluator, sources, endpoints
//!   (pure code);
//! - [`message`]: messages and IoT Hub property bags;
//! - [`topic`]: which topics an identity may use, and the topics the hub delivers on (parsed
//!   and built here, used by the MQTT adapter);
//! - [`auth`]: usernames, client ids and SAS tokens checked against the identities' keys;
//! - [`ingest`]: the one synchronous path from a client's message into routes and store,
//!   shared by the protocol adapters;
//! - [`broker`]: the protocol-neutral core: sessions and their bounded lanes, protocol-neutral
//!   deliveries, in-flight/in-order acknowledgement, routing into the store, the pumps from
//!   the store to modules and the outbox to the cloud (smol tasks around the above);
//! - [`mqtt`]: the MQTT 3.1.1 adapter: codec, connection, writer, transport, the accept loop
//!   (with [`upstream`], the only code that knows MQTT packets);
//! - `amqp` (feature `amqp`): the AMQP 1.0 adapter the SDKs' AMQP transport speaks: frames,
//!   SASL, CBS, links into the same ingest and lanes as MQTT;
//! - [`listeners`]: every listener of the hub built in one place and served until a shutdown;
//!   socket permits under the connection limits; the file descriptor budget;
//! - [`store`]: the offline store: a segmented, bounded, crash-safe append-only log with one
//!   checkpoint per endpoint (format code pure, files in thin adapters);
//! - [`upstream`]: the single MQTT connection to the cloud IoT Hub, with reconnect and backoff;
//! - [`tls`]: the TLS listener's rustls configuration;
//! - [`twin`]: every identity's twin (desired from the deployment, reported from the client),
//!   versions, limits, persistence (pure code and a small file adapter);
//! - [`methods`]: direct-method calls waiting for their answers, with their timeouts;
//! - [`metrics`]: counters of everything accepted, routed and dropped.
#![forbid(unsafe_code)]

#[cfg(feature = "amqp")]
pub mod amqp;
pub mod auth;
pub mod broker;
pub mod cloud;
pub mod ingest;
pub mod listeners;
pub mod message;
pub mod methods;
pub mod metrics;
pub mod mqtt;
pub mod route;
pub mod store;
pub mod tls;
pub mod topic;
pub mod twin;
pub mod upstream;
