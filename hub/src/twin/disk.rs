//! The few file operations twins need: a private directory, bounded reads, atomic
//! replacement (write a temporary file, fsync it, rename it over the old one, fsync the
//! directory) and removal.

use std::fs::{self, DirBuilder, File, OpenOptions};
use std::io::{ErrorKind, Read, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::Path;

use super::error::TwinError;
use super::file::TEMP_SUFFIX;

/// Twins may hold secrets a deployment put in desired properties: only the hub's user reads them.
const FILE_MODE: u32 = 0o600;
const DIR_MODE: u32 = 0o700;

/// Creates `dir` (and its parents) if missing, and makes its creation durable.
pub fn create_dir(dir: &Path) -> Result<(), TwinError> {
    if dir.is_dir() {
        return Ok(());
    }
    DirBuilder::new()
        .recursive(true)
        .mode(DIR_MODE)
        .create(dir)
        .map_err(|error| TwinError::io("create directory", dir, error))?;
    match dir.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => sync_dir(parent),
        _ => Ok(()),
    }
}

/// Replaces `dir/name` with `bytes` so that a crash leaves either the old or the new content.
pub fn replace_atomically(dir: &Path, name: &str, bytes: &[u8]) -> Result<(), TwinError> {
    let path = dir.join(name);
    let temp = dir.join(format!("{name}{TEMP_SUFFIX}"));
    let mut file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(FILE_MODE)
        .open(&temp)
        .map_err(|error| TwinError::io("create", &temp, error))?;
    if let Err(error) = file.write_all(bytes).and_then(|()| file.sync_all()) {
        drop(file);
        let _ = fs::remove_file(&temp);
        return Err(TwinError::io("write", &temp, error));
    }
    drop(file);
    fs::rename(&temp, &path).map_err(|error| TwinError::io("rename", &temp, error))?;
    sync_dir(dir)
}

/// Renames `dir/from` to `dir/to` (replacing it) durably.
pub fn rename(dir: &Path, from: &str, to: &str) -> Result<(), TwinError> {
    let source = dir.join(from);
    fs::rename(&source, dir.join(to)).map_err(|error| TwinError::io("rename", &source, error))?;
    sync_dir(dir)
}

/// Removes `dir/name` if it exists; the caller syncs the directory.
pub fn remove(dir: &Path, name: &str) -> Result<(), TwinError> {
    let path = dir.join(name);
    match fs::remove_file(&path) {
        Err(error) if error.kind() != ErrorKind::NotFound => Err(TwinError::io("remove", &path, error)),
        _ => Ok(()),
    }
}

/// Makes renames, creations and removals in `dir` durable.
pub fn sync_dir(dir: &Path) -> Result<(), TwinError> {
    File::open(dir).and_then(|handle| handle.sync_all()).map_err(|error| TwinError::io("sync directory", dir, error))
}

/// Reads a whole small file, or `None` if it does not exist. A file longer than `max_bytes` is
/// returned as its first `max_bytes + 1` bytes, which its decoder then refuses.
pub fn read_bounded(path: &Path, max_bytes: usize) -> Result<Option<Vec<u8>>, TwinError> {
    let file = match File::open(path) {
        Ok(file) => file,
        Err(error) if error.kind() == ErrorKind::NotFound => return Ok(None),
        Err(error) => return Err(TwinError::io("open", path, error)),
    };
    let mut bytes = Vec::new();
    let limit = u64::try_from(max_bytes).unwrap_or(u64::MAX).saturating_add(1);
    file.take(limit).read_to_end(&mut bytes).map_err(|error| TwinError::io("read", path, error))?;
    Ok(Some(bytes))
}
