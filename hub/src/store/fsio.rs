//! The few file operations the store's metadata needs: bounded reads and atomic replacement
//! (write a temporary file, fsync it, rename it over the old one, fsync the directory).

use std::fs::{self, File, OpenOptions};
use std::io::{ErrorKind, Read, Write};
use std::path::Path;

use super::error::StoreError;

/// Suffix of a replacement being written. Left behind only by a crash mid-write; removed on open.
pub const TEMP_SUFFIX: &str = ".tmp";

/// Replaces `dir/name` with `bytes` so that a crash leaves either the old or the new content.
pub fn replace_atomically(dir: &Path, name: &str, bytes: &[u8]) -> Result<(), StoreError> {
    let path = dir.join(name);
    let temp = dir.join(format!("{name}{TEMP_SUFFIX}"));
    let mut file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(&temp)
        .map_err(|error| StoreError::io("create", &temp, error))?;
    let written = file.write_all(bytes).and_then(|()| file.sync_all());
    if let Err(error) = written {
        drop(file);
        let _ = fs::remove_file(&temp);
        return Err(StoreError::io("write", &temp, error));
    }
    drop(file);
    fs::rename(&temp, &path).map_err(|error| StoreError::io("rename", &temp, error))?;
    sync_dir(dir)
}

/// Makes renames, creations and deletions in `dir` durable.
pub fn sync_dir(dir: &Path) -> Result<(), StoreError> {
    File::open(dir).and_then(|handle| handle.sync_all()).map_err(|error| StoreError::io("sync directory", dir, error))
}

/// Reads a whole small file, or `None` if it does not exist. A file longer than `max_bytes` is
/// reported as `Some` of its first `max_bytes + 1` bytes, which its parser then refuses.
pub fn read_bounded(path: &Path, max_bytes: usize) -> Result<Option<Vec<u8>>, StoreError> {
    let file = match File::open(path) {
        Ok(file) => file,
        Err(error) if error.kind() == ErrorKind::NotFound => return Ok(None),
        Err(error) => return Err(StoreError::io("open", path, error)),
    };
    let mut bytes = Vec::new();
    let limit = u64::try_from(max_bytes).unwrap_or(u64::MAX).saturating_add(1);
    file.take(limit).read_to_end(&mut bytes).map_err(|error| StoreError::io("read", path, error))?;
    Ok(Some(bytes))
}
