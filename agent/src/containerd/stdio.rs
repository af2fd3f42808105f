//! Module stdout/stderr: FIFOs the containerd shim writes to, pumped by the agent into one
//! size-bounded log file per module, and read back by `tinyedge logs`.
//!
//! Bounds: each module has `{logs_dir}/{module}.log` of at most `max_bytes`; when a write would
//! pass that, the file becomes `{module}.log.1` (replacing the previous one) and a new file
//! starts, so a module never holds more than `2 × max_bytes` of logs on disk.
//!
//! The agent opens each FIFO read-write, as containerd's own `fifo` package does: the FIFO then
//! never reads end-of-file while the container restarts, and a restarted agent picks the same
//! FIFOs up again for adopted containers. While no agent reads, a container writing more than
//! the pipe buffer (64 KiB) blocks on its output until the agent is back.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// Default size of one module's log file (`[agent] log_max_bytes`).
pub const LOG_MAX_BYTES_DEFAULT: u64 = 1024 * 1024;
/// Bytes read from a FIFO at a time.
const READ_CHUNK: usize = 16 * 1024;

/// A size-bounded, rotating log file.
pub struct LogFile {
    path: PathBuf,
    max_bytes: u64,
    file: Option<File>,
    size: u64,
}

impl LogFile {
    pub fn new(path: PathBuf, max_bytes: u64) -> LogFile {
        LogFile { path, max_bytes: max_bytes.max(1024), file: None, size: 0 }
    }

    /// Appends `bytes`, rotating first when they would not fit. Errors are logged and the
    /// bytes dropped: a full disk must not stop the module.
    pub fn append(&mut self, bytes: &[u8]) {
        if let Err(e) = self.try_append(bytes) {
            log::warn!("module log {}: {e}; {} bytes dropped", self.path.display(), bytes.len());
            self.file = None;
        }
    }

    fn try_append(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        if self.file.is_none() {
            let file = OpenOptions::new().create(true).append(true).mode(0o600).open(&self.path)?;
            self.size = file.metadata()?.len();
            self.file = Some(file);
        }
        if self.size > 0 && self.size + bytes.len() as u64 > self.max_bytes {
            self.file = None;
            std::fs::rename(&self.path, rotated(&self.path))?;
            self.file = Some(OpenOptions::new().create(true).append(true).mode(0o600).open(&self.path)?);
            self.size = 0;
        }
        // One write larger than the whole budget keeps only its tail.
        let bytes =
            if bytes.len() as u64 > self.max_bytes { &bytes[bytes.len() - self.max_bytes as usize..] } else { bytes };
        if let Some(file) = &mut self.file {
            file.write_all(bytes)?;
            self.size += bytes.len() as u64;
        }
        Ok(())
    }
}

/// `{module}.log.1`.
pub fn rotated(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(".1");
    PathBuf::from(name)
}

/// The log file of `module` under `logs_dir`.
pub fn log_path(logs_dir: &Path, module: &str) -> PathBuf {
    logs_dir.join(format!("{module}.log"))
}

/// The two FIFO paths of a module.
pub fn fifo_paths(fifo_dir: &Path, module: &str) -> (PathBuf, PathBuf) {
    (fifo_dir.join(format!("{module}.stdout")), fifo_dir.join(format!("{module}.stderr")))
}

fn open_fifo(path: &Path) -> std::io::Result<File> {
    match rustix::fs::mkfifoat(rustix::fs::CWD, path, rustix::fs::Mode::from_raw_mode(0o600)) {
        Ok(()) => {}
        Err(e) if e == rustix::io::Errno::EXIST => {}
        Err(e) => return Err(e.into()),
    }
    OpenOptions::new().read(true).write(true).custom_flags(rustix::fs::OFlags::NONBLOCK.bits() as i32).open(path)
}

/// Pumps a module's FIFOs into its log file until dropped.
pub struct Pump {
    _tasks: Vec<smol::Task<()>>,
}

/// Makes (or reuses) the module's FIFOs and starts pumping them into its log file.
///
/// # Errors
/// The FIFOs cannot be made or opened.
pub fn start_pump(fifo_dir: &Path, logs_dir: &Path, module: &str, max_bytes: u64) -> std::io::Result<Pump> {
    std::fs::create_dir_all(fifo_dir)?;
    std::fs::create_dir_all(logs_dir)?;
    let log = Arc::new(Mutex::new(LogFile::new(log_path(logs_dir, module), max_bytes)));
    let (out, err) = fifo_paths(fifo_dir, module);
    let mut tasks = Vec::new();
    for path in [out, err] {
        let fifo = smol::Async::new(open_fifo(&path)?)?;
        let log = log.clone();
        let module = module.to_owned();
        tasks.push(tinyedge_platform::rt::spawn(async move {
            let mut fifo = fifo;
            let mut buffer = vec![0u8; READ_CHUNK];
            loop {
                use smol::io::AsyncReadExt as _;
                match fifo.read(&mut buffer).await {
                    Ok(0) => {
                        smol::Timer::after(std::time::Duration::from_millis(100)).await;
                    }
                    Ok(n) => {
                        // File writes (and rotation) off the executor: slow flash must not
                        // stall the hub's connections.
                        let chunk = buffer[..n].to_vec();
                        let log = log.clone();
                        smol::unblock(move || {
                            if let Ok(mut log) = log.lock() {
                                log.append(&chunk);
                            }
                        })
                        .await;
                    }
                    Err(e) => {
                        log::warn!("module {module}: reading {}: {e}; its output is no longer logged", path.display());
                        return;
                    }
                }
            }
        }));
    }
    Ok(Pump { _tasks: tasks })
}

/// Removes a module's FIFOs (after its container is removed).
pub fn remove_fifos(fifo_dir: &Path, module: &str) {
    let (out, err) = fifo_paths(fifo_dir, module);
    let _ = std::fs::remove_file(out);
    let _ = std::fs::remove_file(err);
}

/// The last `tail` lines of a module's logs (both files, oldest first); all when `None`.
///
/// # Errors
/// Neither log file exists.
pub fn read_tail(logs_dir: &Path, module: &str, tail: Option<usize>) -> std::io::Result<Vec<u8>> {
    let path = log_path(logs_dir, module);
    let mut bytes = Vec::new();
    let mut found = false;
    for p in [rotated(&path), path.clone()] {
        if let Ok(mut f) = File::open(&p) {
            found = true;
            f.read_to_end(&mut bytes)?;
        }
    }
    if !found {
        return Err(std::io::Error::new(
            std::io::ErrorKind::NotFound,
            format!("no logs for module {module:?} in {}", logs_dir.display()),
        ));
    }
    if let Some(tail) = tail {
        let mut lines = 0;
        let end = if bytes.ends_with(b"\n") { bytes.len() - 1 } else { bytes.len() };
        let mut start = 0;
        for i in (0..end).rev() {
            if bytes[i] == b'\n' {
                lines += 1;
                if lines == tail {
                    start = i + 1;
                    break;
                }
            }
        }
        if tail == 0 {
            start = bytes.len();
        }
        bytes.drain(..start);
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("tinyedge-stdio-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn log_file_rotates_at_its_bound() {
        let d = dir("rotate");
        let mut log = LogFile::new(log_path(&d, "m"), 1024);
        for i in 0..100 {
            log.append(format!("line {i:04} ........................\n").as_bytes());
        }
        let current = std::fs::metadata(log_path(&d, "m")).unwrap().len();
        let old = std::fs::metadata(rotated(&log_path(&d, "m"))).unwrap().len();
        assert!(current <= 1024 && old <= 1024, "{current} {old}");
        let tail = read_tail(&d, "m", Some(2)).unwrap();
        assert_eq!(
            String::from_utf8(tail).unwrap(),
            "line 0098 ........................\nline 0099 ........................\n"
        );
        assert!(read_tail(&d, "other", None).unwrap_err().to_string().contains("no logs"));
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn fifo_output_reaches_the_log() {
        let d = dir("fifo");
        let pump = start_pump(&d, &d, "m", 4096).unwrap();
        let (out, _) = fifo_paths(&d, "m");
        let mut writer = OpenOptions::new().write(true).open(&out).unwrap();
        writer.write_all(b"hello from a module\n").unwrap();
        drop(writer);
        let mut text = String::new();
        for _ in 0..100 {
            text = String::from_utf8(read_tail(&d, "m", None).unwrap_or_default()).unwrap();
            if !text.is_empty() {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        assert_eq!(text, "hello from a module\n");
        drop(pump);
        let _ = std::fs::remove_dir_all(&d);
    }
}
