//! Atomic file writes for keys and certificates.
//!
//! A crash half-way through writing `device.key` or a certificate must never leave a truncated
//! file that the next start would reject (or worse, accept): we write a temp file in the same
//! directory, fsync it, then rename it over the target, which POSIX makes atomic.

use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// Who may read the written file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Owner read/write only (0600): private keys.
    OwnerOnly,
    /// World-readable (0644): certificates and other public material.
    Public,
}

/// Distinguishes temp files of concurrent writers within one process.
static TEMP_COUNTER: AtomicU64 = AtomicU64::new(0);

fn temp_path_for(path: &Path) -> PathBuf {
    let name = path.file_name().map_or_else(|| "file".into(), |name| name.to_string_lossy());
    let counter = TEMP_COUNTER.fetch_add(1, Ordering::Relaxed);
    path.with_file_name(format!(".{name}.tmp.{}.{counter}", std::process::id()))
}

#[cfg(unix)]
fn open_new(path: &Path, access: Access) -> io::Result<fs::File> {
    use std::os::unix::fs::OpenOptionsExt as _;
    let mode = match access {
        Access::OwnerOnly => 0o600,
        Access::Public => 0o644,
    };
    // The mode is applied at creation, so a private key is never readable by others, not even
    // for the instant between create and chmod.
    fs::OpenOptions::new().write(true).create_new(true).mode(mode).open(path)
}

#[cfg(not(unix))]
fn open_new(path: &Path, _access: Access) -> io::Result<fs::File> {
    fs::OpenOptions::new().write(true).create_new(true).open(path)
}

/// Writes `contents` to `path` atomically (temp file, fsync, rename), replacing any old file.
pub fn write_atomic(path: &Path, contents: &[u8], access: Access) -> io::Result<()> {
    let temp = temp_path_for(path);
    let result = (|| {
        let mut file = open_new(&temp, access)?;
        file.write_all(contents)?;
        file.sync_all()?;
        fs::rename(&temp, path)
    })();
    if result.is_err() {
        // Best effort: the temp name is unique, so a leftover only wastes a few bytes.
        let _ = fs::remove_file(&temp);
        return result;
    }
    sync_parent_dir(path);
    Ok(())
}

/// Makes the rename itself durable. Best effort: some filesystems refuse to fsync directories,
/// and the file contents are already safe either way.
fn sync_parent_dir(path: &Path) {
    if let Some(dir) = path.parent().filter(|dir| !dir.as_os_str().is_empty()) {
        if let Ok(dir) = fs::File::open(dir) {
            let _ = dir.sync_all();
        }
    }
}

/// Reads a file that must be at most `max_bytes` long, so a corrupt or hostile file cannot make
/// us allocate without bound.
pub fn read_bounded(path: &Path, max_bytes: u64) -> io::Result<Vec<u8>> {
    use std::io::Read as _;
    let file = fs::File::open(path)?;
    let mut contents = Vec::new();
    file.take(max_bytes + 1).read_to_end(&mut contents)?;
    if contents.len() as u64 > max_bytes {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{} is larger than {max_bytes} bytes", path.display()),
        ));
    }
    Ok(contents)
}

#[cfg(test)]
pub(crate) mod testdir {
    //! Unique temp directories for tests, without a tempfile dependency.

    use std::path::{Path, PathBuf};
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::time::{SystemTime, UNIX_EPOCH};

    static COUNTER: AtomicU64 = AtomicU64::new(0);

    /// A fresh directory removed (best effort) on drop.
    pub(crate) struct TestDir(PathBuf);

    impl TestDir {
        pub(crate) fn new(label: &str) -> Self {
            let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.subsec_nanos());
            let counter = COUNTER.fetch_add(1, Ordering::Relaxed);
            let path = std::env::temp_dir()
                .join(format!("tinyedge-platform-{label}-{}-{counter}-{nanos}", std::process::id()));
            std::fs::create_dir_all(&path).expect("create test dir");
            TestDir(path)
        }

        pub(crate) fn path(&self) -> &Path {
            &self.0
        }
    }

    impl Drop for TestDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::testdir::TestDir;
    use super::*;

    #[test]
    fn write_atomic_replaces_and_leaves_no_temp_files() {
        let dir = TestDir::new("fsutil");
        let path = dir.path().join("file.txt");
        write_atomic(&path, b"one", Access::Public).unwrap();
        write_atomic(&path, b"two", Access::Public).unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"two");
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[cfg(unix)]
    #[test]
    fn owner_only_files_get_mode_0600() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = TestDir::new("fsutil-mode");
        let path = dir.path().join("secret");
        write_atomic(&path, b"k", Access::OwnerOnly).unwrap();
        assert_eq!(fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
    }

    #[test]
    fn read_bounded_refuses_oversized_files() {
        let dir = TestDir::new("fsutil-bounded");
        let path = dir.path().join("big");
        fs::write(&path, [0u8; 11]).unwrap();
        assert_eq!(read_bounded(&path, 11).unwrap().len(), 11);
        assert_eq!(read_bounded(&path, 10).unwrap_err().kind(), io::ErrorKind::InvalidData);
    }
}
