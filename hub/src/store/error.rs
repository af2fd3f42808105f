//! The store's errors: one line each, naming the file and the OS error where there is one.

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::record::EncodeError;
use super::registry::{ENDPOINTS_MAX, ENDPOINT_NAME_BYTES_MAX};

/// Why a store operation failed.
#[derive(Debug)]
pub enum StoreError {
    /// A file operation failed (disk full, permissions, IO error). The log stays consistent:
    /// a failed append leaves no partial record, and the next append retries cleanly.
    Io { action: &'static str, path: PathBuf, source: io::Error },
    /// The configuration's limits contradict each other.
    Config(String),
    /// The file system is full: the record was refused (nothing partial written). Appends
    /// succeed again by themselves once delivery or retention frees space.
    NoSpace { path: PathBuf, source: io::Error },
    /// The store holds `max_bytes` and is configured to refuse new records.
    Full { max_bytes: u64 },
    /// The record breaks a size limit.
    Record(EncodeError),
    /// The registry holds [`ENDPOINTS_MAX`] endpoints.
    TooManyEndpoints,
    /// An endpoint name is empty or longer than [`ENDPOINT_NAME_BYTES_MAX`].
    BadEndpointName(String),
    /// A record names an endpoint id the registry never handed out.
    UnknownEndpoint(u16),
    /// `durable` was asked about a sequence number that was never appended.
    NotAppended { seq: u64, last: u64 },
    /// fsync failed, so records the OS had accepted may be lost; the sender should retry.
    Durability(Arc<str>),
}

impl StoreError {
    pub(crate) fn io(action: &'static str, path: &Path, source: io::Error) -> StoreError {
        StoreError::Io { action, path: path.to_path_buf(), source }
    }
}

impl fmt::Display for StoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StoreError::Io { action, path, source } => {
                write!(f, "store: cannot {action} {}: {source}", path.display())
            }
            StoreError::NoSpace { path, source } => write!(
                f,
                "store: disk full writing {} ({source}); new messages are refused until delivery or retention frees space",
                path.display()
            ),
            StoreError::Config(reason) => write!(f, "store: bad configuration: {reason}"),
            StoreError::Full { max_bytes } => write!(f, "store: full ({max_bytes} bytes); record refused"),
            StoreError::Record(error) => write!(f, "store: {error}"),
            StoreError::TooManyEndpoints => write!(f, "store: more than {ENDPOINTS_MAX} endpoints"),
            StoreError::BadEndpointName(name) => {
                write!(f, "store: endpoint name {name:?} is empty or longer than {ENDPOINT_NAME_BYTES_MAX} bytes")
            }
            StoreError::UnknownEndpoint(id) => write!(f, "store: endpoint id {id} is not registered"),
            StoreError::NotAppended { seq, last } => {
                write!(f, "store: record {seq} was never appended (last is {last})")
            }
            StoreError::Durability(reason) => write!(f, "store: records may not be durable: {reason}"),
        }
    }
}

impl std::error::Error for StoreError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            StoreError::Io { source, .. } | StoreError::NoSpace { source, .. } => Some(source),
            StoreError::Record(error) => Some(error),
            _ => None,
        }
    }
}

impl From<EncodeError> for StoreError {
    fn from(error: EncodeError) -> StoreError {
        StoreError::Record(error)
    }
}
