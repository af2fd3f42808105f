//! # tinyedge platform
//!
//! Everything the runtime needs before it can serve a single packet: the config file, the edge
//! device's identity and keys, the SAS tokens IoT Hub clients authenticate with, the edge CA and
//! TLS server certificate, and the stderr logger. Parsing and token logic is pure (`now` is passed
//! in); file IO is confined to loading the config, the device key and the certificates.
//!
//! # Layout
//! - [`config`]: the runtime's TOML config, mapped by hand so every error names the exact key.
//! - [`urlenc`]: percent-encoding as IoT Hub property bags and SAS tokens use it.
//! - [`sas`]: parse, sign, generate and verify `SharedAccessSignature` tokens.
//! - [`identity`]: module key derivation, connection strings, the persisted device key.
//! - [`certs`]: the self-signed edge CA and the hub's TLS server certificate, made on first start.
//! - [`http`]: HTTP/1.1 for the local APIs and the method API: the request head parser, one
//!   bounded request loop over any byte stream, the CLI's Unix socket client.
//! - [`logger`]: a minimal `log::Log` to stderr with UTC timestamps.
//! - [`rt`]: the executor every task runs on, with its own epoll for the hub's TCP sockets.
//! - [`utc`]: civil (calendar) UTC time from the system clock, without a date library.
//! - [`fsutil`]: atomic file writes (keys, certificates, the device-scope cache) and bounded reads.
#![forbid(unsafe_code)]

pub mod certs;
pub mod config;
pub mod fsutil;
pub mod http;
pub mod identity;
pub mod logger;
pub mod rt;
pub mod sas;
pub mod urlenc;
pub mod utc;

pub use config::{
    AgentConfig, Config, ConfigError, DeviceConfig, FsyncSetting, HubConfig, MetricsConfig, StoreSettings,
    UpstreamSettings, WhenFull,
};
