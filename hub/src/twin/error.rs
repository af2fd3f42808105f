//! The twin core's errors: one line each, saying what to change.

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};

use super::limits::TWINS_MAX;

/// Why a twin operation failed.
#[derive(Debug)]
pub enum TwinError {
    /// The identity has no twin: it is neither a module of the deployment nor a configured
    /// device (or it was, and has been removed). Protocol adapters answer 404.
    NotFound(String),
    /// The request breaks IoT Hub's rules (malformed JSON, a limit, a read-only key); the
    /// message says which and where. Protocol adapters answer 400 with it.
    Invalid(String),
    /// More identities than [`TWINS_MAX`] were listed; the listing was not changed.
    TooMany { identities: usize },
    /// A file operation failed (disk full, permissions). Nothing was changed in memory, so what
    /// is served is what is on disk; retrying is safe.
    Io { action: &'static str, path: PathBuf, source: io::Error },
}

impl TwinError {
    pub(crate) fn io(action: &'static str, path: &Path, source: io::Error) -> TwinError {
        TwinError::Io { action, path: path.to_path_buf(), source }
    }

    /// The IoT Hub status a protocol adapter answers with: 404, 400 or 500.
    pub fn status(&self) -> u16 {
        match self {
            TwinError::NotFound(_) => 404,
            TwinError::Invalid(_) | TwinError::TooMany { .. } => 400,
            TwinError::Io { .. } => 500,
        }
    }
}

impl fmt::Display for TwinError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TwinError::NotFound(id) => write!(
                f,
                "no twin for {id:?}: only the modules of the current deployment and the configured devices have twins"
            ),
            TwinError::Invalid(reason) => f.write_str(reason),
            TwinError::TooMany { identities } => write!(
                f,
                "{identities} identities need twins, over the limit of {TWINS_MAX}: deploy fewer modules or configure fewer devices"
            ),
            TwinError::Io { action, path, source } => {
                write!(f, "twins: cannot {action} {}: {source}", path.display())
            }
        }
    }
}

impl std::error::Error for TwinError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            TwinError::Io { source, .. } => Some(source),
            _ => None,
        }
    }
}
