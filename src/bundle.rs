//! `tinyedge support-bundle [--output FILE]`: one `.tar.gz` with what support asks for first —
//! the config (secrets redacted), the deployments, tinyedge's own log from journald (tinyedge
//! logs to stderr), each module's log files, the twins, the status file and store stats,
//! `tinyedge check --json`, and versions — bounded in size ([`BUNDLE_MAX_BYTES`] of content,
//! the last [`LOG_TAIL_BYTES`] of each log file). Keys, certificates' private keys and the
//! device-scope cache are never read; `MANIFEST.txt` lists what is inside and what was left out.
//!
//! - `tar`: the ustar writer; `gzip`: the gzip stream over miniz_oxide's deflate;
//! - `redact`: what is a secret, in JSON and in log text (pure).

mod gzip;
mod redact;
mod tar;

use std::fs;
use std::io::{self, Read as _, Seek as _, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use tinyedge_platform::utc::UtcDateTime;
use tinyedge_platform::Config;

use crate::failure::Failure;

/// Bound of the bundle's content (before compression): room for a dozen modules' logs, and
/// small enough to mail or attach to a ticket once compressed.
pub const BUNDLE_MAX_BYTES: u64 = 16 * 1024 * 1024;
/// Of each log file (tinyedge's journal, each module's), the last this many bytes: the size of
/// a module's log file at the default `[agent] log_max_bytes`.
pub const LOG_TAIL_BYTES: u64 = 1024 * 1024;
/// Any other file (twins, deployments, the status file) is copied up to this size.
pub const FILE_MAX_BYTES: u64 = 1024 * 1024;
/// A command the bundle runs (journalctl) is stopped after this long.
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(10);
/// Lines of tinyedge's journal asked for (the tail bound applies after).
const JOURNAL_LINES: &str = "20000";
/// Kept free within the bound for `MANIFEST.txt`, written last.
const MANIFEST_RESERVE_BYTES: u64 = 64 * 1024;
/// The directory every entry is under.
const ROOT: &str = "tinyedge-support-bundle";

/// Entries written so far, within the bound, and what was left out.
struct Builder<W: Write> {
    tar: tar::TarWriter<gzip::GzipWriter<W>>,
    used: u64,
    files: Vec<String>,
    notes: Vec<String>,
    redacted: usize,
}

impl<W: Write> Builder<W> {
    fn add(&mut self, path: &str, data: &[u8]) -> io::Result<()> {
        let room = BUNDLE_MAX_BYTES.saturating_sub(self.used + MANIFEST_RESERVE_BYTES);
        let len = data.len() as u64;
        if len > room {
            self.notes.push(format!(
                "{path}: left out ({len} bytes): the bundle's bound of {BUNDLE_MAX_BYTES} bytes is reached"
            ));
            return Ok(());
        }
        self.tar.file(&format!("{ROOT}/{path}"), 0o600, data)?;
        self.used += len;
        self.files.push(format!("{path} ({len} bytes)"));
        Ok(())
    }

    fn note(&mut self, note: String) {
        self.notes.push(note);
    }

    /// A JSON document, redacted, pretty-printed.
    fn add_json(&mut self, path: &str, mut doc: serde_json::Value) -> io::Result<()> {
        self.redacted += redact::json(&mut doc);
        let mut text = serde_json::to_string_pretty(&doc).unwrap_or_default();
        text.push('\n');
        self.add(path, text.as_bytes())
    }

    /// A JSON file, redacted; a file that does not parse is left out (it might hold anything).
    fn add_json_file(&mut self, path: &str, file: &Path) -> io::Result<()> {
        match read_head(file, FILE_MAX_BYTES) {
            Ok((bytes, false)) => match serde_json::from_slice(&bytes) {
                Ok(doc) => self.add_json(path, doc),
                Err(e) => {
                    self.note(format!("{path}: left out: {} is not valid JSON ({e})", file.display()));
                    Ok(())
                }
            },
            Ok((_, true)) => {
                self.note(format!("{path}: left out: {} is larger than {FILE_MAX_BYTES} bytes", file.display()));
                Ok(())
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => {
                self.note(format!("{path}: {}: {e}", file.display()));
                Ok(())
            }
        }
    }

    /// A log file's tail, with secrets masked.
    fn add_log(&mut self, path: &str, file: &Path) -> io::Result<()> {
        match read_tail(file, LOG_TAIL_BYTES) {
            Ok((bytes, cut)) => {
                if cut {
                    self.note(format!("{path}: the last {LOG_TAIL_BYTES} bytes of {}", file.display()));
                }
                self.add(path, redact::log_text(&String::from_utf8_lossy(&bytes)).as_bytes())
            }
            Err(e) => {
                self.note(format!("{path}: {}: {e}", file.display()));
                Ok(())
            }
        }
    }
}

/// The first `max` bytes of a file, and whether there was more.
fn read_head(path: &Path, max: u64) -> io::Result<(Vec<u8>, bool)> {
    let mut bytes = Vec::new();
    fs::File::open(path)?.take(max + 1).read_to_end(&mut bytes)?;
    let more = bytes.len() as u64 > max;
    bytes.truncate(usize::try_from(max).unwrap_or(usize::MAX));
    Ok((bytes, more))
}

/// The last `max` bytes of a file from a line start, and whether the file was longer.
fn read_tail(path: &Path, max: u64) -> io::Result<(Vec<u8>, bool)> {
    let mut file = fs::File::open(path)?;
    let len = file.metadata()?.len();
    let cut = len > max;
    if cut {
        file.seek(io::SeekFrom::Start(len - max))?;
    }
    let mut bytes = Vec::new();
    file.take(max).read_to_end(&mut bytes)?;
    Ok((tail_from_line_start(bytes, cut), cut))
}

/// Drops a partial first line when the bytes are a tail cut from something longer.
fn tail_from_line_start(mut bytes: Vec<u8>, cut: bool) -> Vec<u8> {
    if cut {
        if let Some(newline) = bytes.iter().position(|b| *b == b'\n') {
            bytes.drain(..=newline);
        }
    }
    bytes
}

/// Whether `program` is on `PATH`.
fn on_path(program: &str) -> bool {
    std::env::var_os("PATH").is_some_and(|path| std::env::split_paths(&path).any(|dir| dir.join(program).is_file()))
}

/// Runs a command with no input, keeping the last `max` bytes of its stdout; stopped after
/// [`COMMAND_TIMEOUT`]. Returns the output and how it ended.
fn run_command(program: &str, args: &[&str], max: u64) -> io::Result<(Vec<u8>, String)> {
    let mut child =
        Command::new(program).args(args).stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::null()).spawn()?;
    let mut stdout = child.stdout.take().ok_or_else(|| io::Error::other("no stdout"))?;
    let keep = usize::try_from(max).unwrap_or(usize::MAX);
    let reader = std::thread::spawn(move || {
        let (mut kept, mut chunk, mut cut) = (Vec::new(), vec![0u8; 64 * 1024], false);
        while let Ok(n) = stdout.read(&mut chunk) {
            if n == 0 {
                break;
            }
            kept.extend_from_slice(&chunk[..n]);
            if kept.len() > 2 * keep {
                kept.drain(..kept.len() - keep);
                cut = true;
            }
        }
        if kept.len() > keep {
            kept.drain(..kept.len() - keep);
            cut = true;
        }
        tail_from_line_start(kept, cut)
    });
    let deadline = Instant::now() + COMMAND_TIMEOUT;
    let ended = loop {
        if let Some(status) = child.try_wait()? {
            break status.to_string();
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            break format!("stopped after {} s", COMMAND_TIMEOUT.as_secs());
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let output = reader.join().unwrap_or_default();
    Ok((output, ended))
}

/// `versions.txt`: tinyedge, the kernel (uname), the OS, containerd (from the check).
fn versions(checks: &[crate::check::Check]) -> String {
    let uname = rustix::system::uname();
    let field = |c: &std::ffi::CStr| c.to_string_lossy().into_owned();
    let os = fs::read_to_string("/etc/os-release")
        .ok()
        .and_then(|text| {
            text.lines().find_map(|l| l.strip_prefix("PRETTY_NAME=")).map(|v| v.trim_matches('"').to_owned())
        })
        .unwrap_or_else(|| "unknown (no /etc/os-release)".to_owned());
    let containerd = checks.iter().find(|c| c.name == "containerd").map_or("not checked", |c| c.detail.as_str());
    let agent = if cfg!(feature = "agent") { "with the agent" } else { "without the agent" };
    format!(
        "tinyedge {} ({agent})\nkernel: {} {} {} {}\nos: {os}\ncontainerd: {containerd}\n",
        env!("CARGO_PKG_VERSION"),
        field(uname.sysname()),
        field(uname.release()),
        field(uname.version()),
        field(uname.machine()),
    )
}

/// The config file as JSON with its secrets redacted (comments do not survive; a secret in a
/// comment therefore does not either).
fn config_json(source: &Path) -> Result<serde_json::Value, String> {
    let max = tinyedge_platform::config::CONFIG_MAX_BYTES as u64;
    let (bytes, _) = read_head(source, max).map_err(|e| format!("{}: {e}", source.display()))?;
    let text = String::from_utf8(bytes).map_err(|_| format!("{}: not UTF-8", source.display()))?;
    let table: toml::Table = text.parse().map_err(|e| format!("{}: {e}", source.display()))?;
    serde_json::to_value(table).map_err(|e| e.to_string())
}

/// Every regular file of `dir`, by name.
fn files_in(dir: &Path) -> Vec<(String, std::path::PathBuf)> {
    let mut files: Vec<(String, std::path::PathBuf)> = fs::read_dir(dir)
        .map(|entries| {
            entries
                .flatten()
                .filter(|e| e.file_type().is_ok_and(|t| t.is_file()))
                .filter_map(|e| e.file_name().to_str().map(|name| (name.to_owned(), e.path())))
                .collect()
        })
        .unwrap_or_default();
    files.sort();
    files
}

fn build<W: Write>(config: &Config, source: Option<&Path>, output: W) -> io::Result<(W, usize, u64)> {
    let started = UtcDateTime::now();
    let now = crate::status::unix_ms() / 1000;
    let gz = gzip::GzipWriter::new(output, u32::try_from(now).unwrap_or(0))?;
    let mut tar = tar::TarWriter::new(gz, now);
    tar.dir(ROOT)?;
    let mut b = Builder { tar, used: 0, files: Vec::new(), notes: Vec::new(), redacted: 0 };

    let checks = crate::check::run(config, source);
    b.add("check.json", format!("{}\n", crate::check::render_json(&checks)).as_bytes())?;
    b.add("versions.txt", versions(&checks).as_bytes())?;

    match source {
        Some(path) => match config_json(path) {
            Ok(doc) => b.add_json("config.json", doc)?,
            Err(e) => b.note(format!("config.json: left out: {e}")),
        },
        None => b.note("config.json: none: tinyedge runs on its embedded defaults".into()),
    }
    let effective = redact::log_text(&format!("{config:#?}\n"));
    b.add("config-effective.txt", effective.as_bytes())?;
    if let Some(path) = &config.deployment {
        b.add_json_file("deployment.json", path)?;
    }
    b.add_json_file("deployment-applied.json", &crate::plan::deployed_file(config))?;

    let status = crate::status::status_path(&config.data_dir);
    b.add_json_file("status.json", &status)?;
    match crate::status::render(&config.data_dir, Some("store")) {
        Ok(text) => b.add("store-stats.txt", format!("{text}\n").as_bytes())?,
        Err(e) => b.note(format!("store-stats.txt: left out: {e}")),
    }

    if on_path("journalctl") {
        let args = ["-u", "tinyedge", "--no-pager", "-o", "short-iso", "-n", JOURNAL_LINES];
        match run_command("journalctl", &args, LOG_TAIL_BYTES) {
            Ok((output, ended)) => {
                b.note(format!("logs/journal-tinyedge.txt: `journalctl {}`: {ended}", args.join(" ")));
                b.add("logs/journal-tinyedge.txt", redact::log_text(&String::from_utf8_lossy(&output)).as_bytes())?;
            }
            Err(e) => b.note(format!("logs/journal-tinyedge.txt: journalctl: {e}")),
        }
    } else {
        b.note(
            "logs: tinyedge logs to stderr and there is no journalctl here: add its log file by hand if you keep one"
                .into(),
        );
    }
    let logs_dir = config.data_dir.join("agent").join("logs");
    for (name, path) in files_in(&logs_dir) {
        b.add_log(&format!("logs/modules/{name}"), &path)?;
    }

    let twins_dir = config.data_dir.join(crate::runtime::TWINS_DIR);
    for (name, path) in files_in(&twins_dir) {
        match read_head(&path, FILE_MAX_BYTES) {
            Ok((bytes, more)) => {
                if more {
                    b.note(format!("twins/{name}: the first {FILE_MAX_BYTES} bytes"));
                }
                b.add(&format!("twins/{name}"), &bytes)?;
            }
            Err(e) => b.note(format!("twins/{name}: {e}")),
        }
    }

    let manifest = format!(
        "tinyedge support bundle\ncreated {started} by tinyedge {}\nconfig: {}\ndata_dir: {}\n\
         bounds: {BUNDLE_MAX_BYTES} bytes of content in all; the last {LOG_TAIL_BYTES} bytes of each log; \
         the first {FILE_MAX_BYTES} bytes of any other file\n\
         redacted: {} secret value(s) in the JSON files; in logs, SAS tokens and their signatures, and what \
         follows SharedAccessKey=, AccountKey= and password=\n\
         not included: device.key, private keys, certificates, the store's messages, the device-scope cache\n\n\
         files:\n{}\n\nnotes:\n{}\n",
        env!("CARGO_PKG_VERSION"),
        source.map_or_else(|| "none (embedded defaults)".to_owned(), |p| p.display().to_string()),
        config.data_dir.display(),
        b.redacted,
        b.files.iter().map(|f| format!("  {f}")).collect::<Vec<_>>().join("\n"),
        b.notes.iter().map(|n| format!("  {n}")).collect::<Vec<_>>().join("\n"),
    );
    let count = b.files.len() + 1;
    let used = b.used + manifest.len() as u64;
    b.tar.file(&format!("{ROOT}/MANIFEST.txt"), 0o600, manifest.as_bytes())?;
    let output = b.tar.finish()?.finish()?;
    Ok((output, count, used))
}

/// The default file name: `tinyedge-support-bundle-20261201T224800Z.tar.gz`.
fn default_name() -> String {
    let t = UtcDateTime::now();
    format!(
        "tinyedge-support-bundle-{:04}{:02}{:02}T{:02}{:02}{:02}Z.tar.gz",
        t.year, t.month, t.day, t.hour, t.minute, t.second
    )
}

/// `tinyedge support-bundle [--output FILE]` (`-`: standard output).
pub fn command(config: &Config, source: Option<&Path>, output: Option<&str>) -> Result<(), Failure> {
    let name = output.map_or_else(default_name, str::to_owned);
    if name == "-" {
        let stdout = io::stdout().lock();
        let (_, count, used) = build(config, source, io::BufWriter::new(stdout))
            .map_err(|e| Failure::Runtime(format!("support bundle: {e}")))?;
        eprintln!("support bundle: {count} files, {used} bytes before compression, to standard output");
        return Ok(());
    }
    let path = Path::new(&name);
    let partial = path.with_file_name(format!(
        ".{}.partial",
        path.file_name().map_or_else(|| "bundle".into(), |n| n.to_string_lossy().into_owned())
    ));
    let written = (|| {
        use std::os::unix::fs::OpenOptionsExt as _;
        let file = fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(&partial)?;
        let (writer, count, used) = build(config, source, io::BufWriter::new(file))?;
        let file = writer.into_inner().map_err(io::IntoInnerError::into_error)?;
        file.sync_all()?;
        fs::rename(&partial, path)?;
        Ok::<_, io::Error>((count, used))
    })();
    match written {
        Ok((count, used)) => {
            let size = fs::metadata(path).map_or(0, |m| m.len());
            crate::out(&format!(
                "support bundle: {} ({size} bytes; {count} files, {used} bytes before compression)",
                path.display()
            ));
            Ok(())
        }
        Err(e) => {
            let _ = fs::remove_file(&partial);
            Err(Failure::Runtime(format!("support bundle {}: {e}", path.display())))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tails_start_at_a_line() {
        assert_eq!(tail_from_line_start(b"ial line\nwhole\n".to_vec(), true), b"whole\n".to_vec());
        assert_eq!(tail_from_line_start(b"all of it\n".to_vec(), false), b"all of it\n".to_vec());
    }

    #[test]
    fn the_default_name_is_dated() {
        let name = default_name();
        assert!(name.starts_with("tinyedge-support-bundle-20") && name.ends_with("Z.tar.gz"), "{name}");
        assert_eq!(name.len(), "tinyedge-support-bundle-20261201T224800Z.tar.gz".len());
    }

    #[test]
    fn the_builder_keeps_to_its_bound_and_says_what_it_left_out() {
        let tar = tar::TarWriter::new(gzip::GzipWriter::new(Vec::new(), 0).expect("gzip"), 0);
        let mut b = Builder { tar, used: 0, files: Vec::new(), notes: Vec::new(), redacted: 0 };
        let mib = vec![b'x'; 1024 * 1024];
        for i in 0..20 {
            b.add(&format!("f{i}"), &mib).expect("add");
        }
        assert_eq!(b.files.len(), 15, "15 MiB fit beside the manifest's reserve");
        assert!(b.used <= BUNDLE_MAX_BYTES - MANIFEST_RESERVE_BYTES);
        assert_eq!(b.notes.len(), 5);
        assert!(b.notes[0].starts_with("f15: left out"), "{:?}", b.notes);
    }
}
