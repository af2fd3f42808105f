//! The runtime's status file: counters, store and upstream state, rewritten every few seconds
//! under `data_dir`, so `tinyedge status` and `tinyedge store stats` can read them from
//! another process without a management socket.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::{Map, Value};

/// Name of the status file under `data_dir`.
pub const STATUS_FILE: &str = "status.json";
/// How often the file is rewritten: often enough for a human watching, rare enough to cost
/// nothing (one small write every 2 s).
pub const STATUS_INTERVAL: Duration = Duration::from_secs(2);

pub fn status_path(data_dir: &Path) -> PathBuf {
    data_dir.join(STATUS_FILE)
}

pub fn unix_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

/// Room every status file keeps for the next one: its content is padded with spaces (which
/// JSON ignores) to at least twice its length, in whole 4 KiB blocks. With the disk full the
/// file is then overwritten in place, within blocks it already has.
const STATUS_BLOCK_BYTES: usize = 4096;

/// Writes `doc` atomically (temp file + rename), so readers never see half a file. If the disk
/// is full, overwrites the old file in place instead, within the room it reserved (a reader
/// racing with that write may see a torn file and reads again; see [`render`]).
pub fn write(data_dir: &Path, doc: &Value) -> std::io::Result<()> {
    let path = status_path(data_dir);
    let temp = path.with_extension("json.tmp");
    let mut content = serde_json::to_vec_pretty(doc).unwrap_or_default();
    let used = content.len();
    content.resize((2 * used + 1).next_multiple_of(STATUS_BLOCK_BYTES), b' ');
    if let Some(last) = content.last_mut() {
        *last = b'\n';
    }
    let replaced = std::fs::write(&temp, &content).and_then(|()| std::fs::rename(&temp, &path));
    match replaced {
        Err(error) if is_no_space(&error) => {
            let _ = std::fs::remove_file(&temp);
            overwrite_in_place(&path, &content[..used], error)
        }
        other => other,
    }
}

fn is_no_space(error: &std::io::Error) -> bool {
    matches!(error.raw_os_error(), Some(28 | 122)) || error.kind() == std::io::ErrorKind::StorageFull
}

/// Writes `content` over the start of the existing file and blanks the rest of it.
fn overwrite_in_place(path: &Path, content: &[u8], no_space: std::io::Error) -> std::io::Result<()> {
    use std::os::unix::fs::FileExt as _;
    let file = std::fs::OpenOptions::new().write(true).open(path)?;
    let len = usize::try_from(file.metadata()?.len()).unwrap_or(0);
    if len < content.len() + 1 {
        return Err(no_space);
    }
    let mut padded = content.to_vec();
    padded.resize(len, b' ');
    padded[len - 1] = b'\n';
    file.write_all_at(&padded, 0)
}

/// Flattens nested objects into `a.b value` lines, in key order.
fn flatten(prefix: &str, value: &Value, out: &mut Vec<String>) {
    match value {
        Value::Object(map) => {
            for (key, value) in map {
                let name = if prefix.is_empty() { key.clone() } else { format!("{prefix}.{key}") };
                flatten(&name, value, out);
            }
        }
        Value::String(s) => out.push(format!("{prefix} {s}")),
        other => out.push(format!("{prefix} {other}")),
    }
}

/// Reads the status file and renders `section` (or everything) as `key value` lines.
pub fn render(data_dir: &Path, section: Option<&str>) -> Result<String, String> {
    let path = status_path(data_dir);
    let doc = read_document(&path)?;
    let updated = doc.get("updated_unix_ms").and_then(Value::as_u64).unwrap_or(0);
    let age_secs = unix_ms().saturating_sub(updated) / 1000;
    let mut lines = vec![format!("status of {} ({age_secs} s old)", data_dir.display())];
    let part = match section {
        Some(name) => doc.get(name).cloned().ok_or_else(|| format!("no {name:?} section in {}", path.display()))?,
        None => doc,
    };
    let mut body = Vec::new();
    flatten(section.unwrap_or(""), &part, &mut body);
    lines.extend(body);
    Ok(lines.join("\n"))
}

/// Reads and parses the status file; a file caught mid-overwrite (see [`write`]) is read again.
pub fn read_document(path: &Path) -> Result<Value, String> {
    let mut attempt = 0;
    loop {
        let text = std::fs::read_to_string(path).map_err(|e| {
            format!("no status at {} ({e}): is `tinyedge run` running with this config?", path.display())
        })?;
        match serde_json::from_str(&text) {
            Ok(doc) => return Ok(doc),
            Err(_) if attempt < 3 => {
                attempt += 1;
                std::thread::sleep(Duration::from_millis(50));
            }
            Err(e) => return Err(format!("{}: {e}", path.display())),
        }
    }
}

/// Builds the document from named parts.
pub fn document(parts: Vec<(&str, Value)>) -> Value {
    let mut map = Map::new();
    map.insert("updated_unix_ms".into(), Value::from(unix_ms()));
    map.insert("version".into(), Value::from(env!("CARGO_PKG_VERSION")));
    for (name, value) in parts {
        map.insert(name.into(), value);
    }
    Value::Object(map)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn written_status_renders_as_key_value_lines() {
        let dir = std::env::temp_dir().join(format!("tinyedge-status-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let doc = document(vec![
            ("hub", serde_json::json!({"connections_open": 2, "messages_received": 5})),
            ("upstream", serde_json::json!({"connected": false})),
        ]);
        write(&dir, &doc).expect("write");
        let all = render(&dir, None).expect("render");
        assert!(all.contains("hub.connections_open 2"), "{all}");
        assert!(all.contains("upstream.connected false"), "{all}");
        let hub = render(&dir, Some("hub")).expect("render");
        assert!(hub.contains("hub.messages_received 5") && !hub.contains("upstream"), "{hub}");
        assert!(render(&dir, Some("store")).is_err());
        let _ = std::fs::remove_dir_all(&dir);
        assert!(render(&dir, None).expect_err("missing").contains("is `tinyedge run` running"));
    }
}
