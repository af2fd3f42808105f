//! Tests of the twin core, by concern, and the helpers they share.

mod desired;
mod json;
mod persist;
mod validate;

use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};

use serde_json::Value;

use super::{Twins, TwinsReport};

/// A fresh directory under the system temp dir, removed when dropped.
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new(name: &str) -> TempDir {
        static COUNTER: AtomicUsize = AtomicUsize::new(0);
        let unique = COUNTER.fetch_add(1, Ordering::Relaxed);
        let path = std::env::temp_dir().join(format!("tinyedge-twin-{name}-{}-{unique}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        TempDir(path)
    }

    /// The twin directory inside it.
    pub fn twins(&self) -> PathBuf {
        self.0.join("twins")
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

pub const MODULE: &str = "gw/filter";
pub const LEAF: &str = "leaf1";

/// Opens the twins in `dir` and lists `ids`.
pub fn open(dir: &TempDir, ids: &[&str]) -> (Twins, TwinsReport) {
    let (twins, report) = Twins::open(dir.twins()).expect("open twins");
    twins.set_identities(&ids.iter().map(|id| id.to_string()).collect::<Vec<_>>()).expect("list identities");
    (twins, report)
}

/// JSON from text, for tables.
pub fn j(text: &str) -> Value {
    serde_json::from_str(text).expect("test JSON")
}

/// The (desired, reported) versions of a GET body.
pub fn versions(body: &Value) -> (u64, u64) {
    let version = |section: &str| body[section]["$version"].as_u64().expect("a $version");
    (version("desired"), version("reported"))
}
