//! Runtime-quality telemetry, as IoT Edge's edgeAgent sends it (cloud-reference §E): every
//! `scrape_interval_secs` the metrics tagged `ms_telemetry` are sampled, anonymised and appended
//! to a bounded file; every `upload_interval_secs` (the first time after a random delay within
//! one interval) they are sent to the cloud as `{device}/$edgeAgent`, directly on its upstream
//! connection — never through the store or the routes, never counted as user telemetry — with
//! content type `application/x-azureiot-edgeruntimediagnostics`.
//!
//! Anonymised: the labels that name modules and devices (`id`, `module_name`, `from`, `to`,
//! `from_route_output`, `to_route_input`) get a keyed hash (HMAC-SHA256 with a per-device random
//! key kept in `{data_dir}/telemetry/key`, which never leaves the device), except system
//! modules (`$edgeHub`, `$edgeAgent`); `id` of `{device}/{module}` becomes `device/{hash}`, a
//! bare device id `device`; the `iothub`, `edge_device` and `ms_telemetry` labels are removed.
//!
//! Off with `[telemetry] enabled = false`, or when the deployment's
//! `systemModules.edgeAgent.env` has `SendRuntimeQualityTelemetry` = `false` (IoT Edge's switch).
//!
//! The message is JSON (not IoT Edge's binary `MetricsSerializer` format, which no consumer
//! outside Microsoft reads and which miscounts non-ASCII lengths): see [`encode_messages`].

use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use serde_json::{json, Value};
use tinyedge_hub::cloud::Cloud;
use tinyedge_platform::{identity, Config};

use crate::metrics::Endpoint;

/// The diagnostics' content type (IoT Edge's).
pub const CONTENT_TYPE: &str = "application/x-azureiot-edgeruntimediagnostics";
/// The samples file may hold this much; beyond it the oldest samples are dropped (counted).
pub const BUFFER_MAX_BYTES: u64 = 1024 * 1024;
/// Samples older than this are dropped unsent (IoT Edge's `MetricMaxUploadAge`).
pub const MAX_AGE: Duration = Duration::from_secs(7 * 86_400);
/// Largest message (IoT Edge splits at 255,000 bytes; IoT Hub takes 256 KiB).
pub const MESSAGE_MAX_BYTES: usize = 255_000;
/// How long one message may take to be acknowledged.
const SEND_TIMEOUT: Duration = Duration::from_secs(30);
/// Labels that name modules or devices.
const NAMING_LABELS: &[&str] = &["id", "module_name", "from", "to", "from_route_output", "to_route_input"];
/// Labels removed (they identify the hub and the device).
const REMOVED_LABELS: &[&str] = &["iothub", "edge_device", "ms_telemetry"];
/// IoT Edge's opt-out variable in the edgeAgent's environment.
const OPT_OUT_ENV: &str = "SendRuntimeQualityTelemetry";

/// One sample of one series.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

/// The `ms_telemetry="True"` samples of a Prometheus text exposition, with the hub's labels
/// removed. Lines that do not parse are skipped.
pub fn tagged_samples(exposition: &str) -> Vec<Sample> {
    let mut samples = Vec::new();
    for line in exposition.lines() {
        if line.starts_with('#') || !line.contains("ms_telemetry=\"True\"") {
            continue;
        }
        let Some((series, value)) = line.rsplit_once(' ') else { continue };
        let Ok(value) = value.parse::<f64>() else { continue };
        let (name, labels) = match series.split_once('{') {
            Some((name, rest)) => (name, rest.strip_suffix('}').unwrap_or(rest)),
            None => (series, ""),
        };
        let mut parsed = BTreeMap::new();
        for pair in split_labels(labels) {
            let Some((key, quoted)) = pair.split_once('=') else { continue };
            let raw = quoted.trim_matches('"');
            let value = raw.replace("\\\"", "\"").replace("\\n", "\n").replace("\\\\", "\\");
            if !REMOVED_LABELS.contains(&key) {
                parsed.insert(key.to_string(), value);
            }
        }
        samples.push(Sample { name: name.to_string(), labels: parsed, value });
    }
    samples
}

/// Splits `a="x",b="y,z"` at the commas outside quotes.
fn split_labels(labels: &str) -> Vec<&str> {
    let (mut parts, mut start, mut quoted, mut escaped) = (Vec::new(), 0, false, false);
    for (i, c) in labels.char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' => escaped = true,
            '"' => quoted = !quoted,
            ',' if !quoted => {
                parts.push(&labels[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    if start < labels.len() {
        parts.push(&labels[start..]);
    }
    parts
}

/// Replaces module and device names in `sample`'s labels by keyed hashes (see the module doc).
pub fn anonymise(sample: &mut Sample, key: &[u8]) {
    for label in NAMING_LABELS {
        let Some(value) = sample.labels.get_mut(*label) else { continue };
        if value.starts_with('$') || value.is_empty() {
            continue;
        }
        *value = if *label == "id" {
            match value.split_once('/') {
                Some((_, module)) if module.starts_with('$') => format!("device/{module}"),
                Some((_, module)) => format!("device/{}", identity::pseudonym(key, module)),
                None => "device".to_string(),
            }
        } else {
            identity::pseudonym(key, value)
        };
    }
}

/// One line of the samples file.
fn sample_line(at_ms: u64, sample: &Sample) -> String {
    json!({"t": at_ms, "n": sample.name, "l": sample.labels, "v": sample.value}).to_string()
}

/// The series of the samples file's lines newer than `oldest_ms`, condensed: a point is kept
/// when its value differs from the one before, and the last point of each series always.
/// Returns the series and how many lines were too old.
pub fn series_of(lines: &str, oldest_ms: u64) -> (Vec<Value>, u64) {
    let mut by_series: BTreeMap<(String, String), Vec<(u64, f64)>> = BTreeMap::new();
    let mut too_old = 0;
    for line in lines.lines() {
        let Ok(doc) = serde_json::from_str::<Value>(line) else { continue };
        let (Some(t), Some(name), Some(value)) = (doc["t"].as_u64(), doc["n"].as_str(), doc["v"].as_f64()) else {
            continue;
        };
        if t < oldest_ms {
            too_old += 1;
            continue;
        }
        by_series.entry((name.to_string(), doc["l"].to_string())).or_default().push((t, value));
    }
    let mut all = Vec::new();
    for ((name, labels), points) in by_series {
        let mut kept: Vec<(u64, f64)> = Vec::new();
        for (i, (t, v)) in points.iter().enumerate() {
            let last = i + 1 == points.len();
            if last || kept.last().is_none_or(|(_, previous)| previous != v) {
                kept.push((*t, *v));
            }
        }
        let labels: Value = serde_json::from_str(&labels).unwrap_or(Value::Null);
        all.push(json!({"name": name, "tags": labels, "points": kept.iter().map(|(t, v)| json!([t, v])).collect::<Vec<_>>()}));
    }
    (all, too_old)
}

/// The messages to send: `{"format": "tinyedge-runtime-diagnostics", "version": 1,
/// "series": [{"name", "tags": {…}, "points": [[unix_ms, value], …]}, …]}`, as many as needed
/// to keep each at most [`MESSAGE_MAX_BYTES`] (a series larger than that alone is cut to its
/// latest points).
pub fn encode_messages(series: Vec<Value>) -> Vec<Vec<u8>> {
    const ENVELOPE: usize = 96;
    let mut messages = Vec::new();
    let mut current: Vec<Value> = Vec::new();
    let mut size = ENVELOPE;
    for mut one in series {
        let mut len = one.to_string().len() + 1;
        while len + ENVELOPE > MESSAGE_MAX_BYTES {
            if let Some(points) = one["points"].as_array_mut() {
                let keep = points.len() / 2;
                points.drain(..points.len() - keep);
                if keep == 0 {
                    break;
                }
            }
            len = one.to_string().len() + 1;
        }
        if size + len > MESSAGE_MAX_BYTES && !current.is_empty() {
            messages.push(envelope(std::mem::take(&mut current)));
            size = ENVELOPE;
        }
        size += len;
        current.push(one);
    }
    if !current.is_empty() {
        messages.push(envelope(current));
    }
    messages
}

fn envelope(series: Vec<Value>) -> Vec<u8> {
    json!({"format": "tinyedge-runtime-diagnostics", "version": 1, "series": series}).to_string().into_bytes()
}

/// Whether the deployment's edgeAgent environment switches the telemetry off.
pub fn opted_out(deployment: &Value) -> bool {
    let env = &deployment["modulesContent"]["$edgeAgent"]["properties.desired"]["systemModules"]["edgeAgent"]["env"];
    env.get(OPT_OUT_ENV).is_some_and(|v| {
        let value = v.get("value").unwrap_or(v);
        value == false || value.as_str().is_some_and(|s| s.eq_ignore_ascii_case("false"))
    })
}

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// The sampler and uploader.
pub struct Telemetry {
    config: Config,
    dir: PathBuf,
    key: Vec<u8>,
    metrics: Arc<Endpoint>,
    cloud: Arc<Cloud>,
}

impl Telemetry {
    /// Starts the loop, unless `[telemetry] enabled = false`.
    pub fn start(config: &Config, metrics: Arc<Endpoint>, cloud: Arc<Cloud>) {
        if !config.telemetry.enabled {
            log::info!("runtime-quality telemetry off ([telemetry] enabled = false)");
            return;
        }
        let dir = config.data_dir.join("telemetry");
        let key = match load_or_create_key(&dir) {
            Ok(key) => key,
            Err(e) => {
                log::warn!("runtime-quality telemetry off: its key in {}: {e}", dir.display());
                return;
            }
        };
        let telemetry = Telemetry { config: config.clone(), dir, key, metrics, cloud };
        tinyedge_platform::rt::spawn(telemetry.run()).detach();
    }

    fn samples_file(&self) -> PathBuf {
        self.dir.join("samples.jsonl")
    }

    /// The last applied deployment (as `run` loads it), for the opt-out switch.
    fn opted_out(&self) -> bool {
        let deployed = crate::plan::deployed_file(&self.config);
        let path = if deployed.exists() { Some(deployed) } else { self.config.deployment.clone() };
        path.and_then(|p| std::fs::read(p).ok())
            .and_then(|bytes| serde_json::from_slice::<Value>(&bytes).ok())
            .is_some_and(|d| opted_out(&d))
    }

    async fn run(self) {
        let scrape = Duration::from_secs(self.config.telemetry.scrape_interval_secs);
        let upload = Duration::from_secs(self.config.telemetry.upload_interval_secs);
        let jitter = Duration::from_millis(random_below(u64::try_from(upload.as_millis()).unwrap_or(u64::MAX).max(1)));
        let mut next_upload = std::time::Instant::now() + jitter;
        let mut failed = false;
        loop {
            smol::Timer::after(scrape).await;
            if self.opted_out() {
                log::debug!("runtime-quality telemetry: off ({OPT_OUT_ENV}=false in the edgeAgent's env)");
                let _ = std::fs::remove_file(self.samples_file());
                continue;
            }
            self.sample();
            if failed || std::time::Instant::now() >= next_upload {
                failed = !self.upload().await;
                if !failed {
                    next_upload = std::time::Instant::now() + upload;
                }
            }
        }
    }

    /// Appends this moment's anonymised samples (dropping the oldest past the bound).
    fn sample(&self) {
        self.metrics.sample();
        let mut text = String::new();
        self.metrics.render(&mut text);
        let at = now_ms();
        let mut lines = String::new();
        for mut sample in tagged_samples(&text) {
            anonymise(&mut sample, &self.key);
            lines.push_str(&sample_line(at, &sample));
            lines.push('\n');
        }
        let path = self.samples_file();
        let result = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .and_then(|mut f| f.write_all(lines.as_bytes()));
        if let Err(e) = result {
            log::warn!("runtime-quality telemetry: {}: {e}", path.display());
            return;
        }
        if std::fs::metadata(&path).is_ok_and(|m| m.len() > BUFFER_MAX_BYTES) {
            trim_oldest(&path, BUFFER_MAX_BYTES / 2);
        }
    }

    /// Sends everything sampled; `true` when every message was acknowledged (then the file is
    /// emptied).
    async fn upload(&self) -> bool {
        let path = self.samples_file();
        let Ok(text) = std::fs::read_to_string(&path) else { return true };
        let oldest = now_ms().saturating_sub(u64::try_from(MAX_AGE.as_millis()).unwrap_or(u64::MAX));
        let (series, too_old) = series_of(&text, oldest);
        if too_old > 0 {
            log::info!("runtime-quality telemetry: {too_old} sample(s) older than 7 days dropped");
        }
        if series.is_empty() {
            let _ = std::fs::remove_file(&path);
            return true;
        }
        let id = format!("{}/$edgeAgent", self.config.device_id);
        let topic = format!(
            "devices/{}/modules/$edgeAgent/messages/events/%24.ct={}&%24.ce=utf-8",
            self.config.device_id,
            tinyedge_platform::urlenc::encode(CONTENT_TYPE)
        );
        let messages = encode_messages(series);
        let count = messages.len();
        for message in messages {
            if !self.cloud.send_direct(&id, topic.clone(), Bytes::from(message), SEND_TIMEOUT).await {
                log::info!("runtime-quality telemetry: not acknowledged by the cloud; kept for the next attempt");
                return false;
            }
        }
        log::info!("runtime-quality telemetry: {count} message(s) sent");
        let _ = std::fs::remove_file(&path);
        true
    }
}

/// Keeps the newest lines of `path` within `keep_bytes`.
fn trim_oldest(path: &Path, keep_bytes: u64) {
    let Ok(text) = std::fs::read_to_string(path) else { return };
    let skip = text.len().saturating_sub(usize::try_from(keep_bytes).unwrap_or(usize::MAX));
    let start = text[skip..].find('\n').map_or(text.len(), |i| skip + i + 1);
    let dropped = text[..start].lines().count();
    if let Err(e) = tinyedge_platform::fsutil::write_atomic(
        path,
        &text.as_bytes()[start..],
        tinyedge_platform::fsutil::Access::OwnerOnly,
    ) {
        log::warn!("runtime-quality telemetry: {}: {e}", path.display());
        return;
    }
    log::info!("runtime-quality telemetry: buffer full, {dropped} oldest sample(s) dropped");
}

fn load_or_create_key(dir: &Path) -> std::io::Result<Vec<u8>> {
    std::fs::create_dir_all(dir)?;
    let path = dir.join("key");
    if let Ok(key) = std::fs::read(&path) {
        if key.len() == 32 {
            return Ok(key);
        }
    }
    let key = identity::generate_key();
    tinyedge_platform::fsutil::write_atomic(&path, &key, tinyedge_platform::fsutil::Access::OwnerOnly)?;
    Ok(key)
}

/// A random number below `bound`, from the OS's random source (std's `RandomState` seed).
fn random_below(bound: u64) -> u64 {
    use std::hash::{BuildHasher as _, Hasher as _};
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u64(now_ms());
    hasher.finish() % bound
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXPOSITION: &str = "# HELP edgehub_messages_received_total x\n# TYPE edgehub_messages_received_total counter\n\
edgehub_messages_received_total{iothub=\"h.net\",edge_device=\"gw\",instance_number=\"1\",ms_telemetry=\"True\",id=\"gw/sensor\",route_output=\"out\"} 12\n\
edgehub_messages_received_total{iothub=\"h.net\",edge_device=\"gw\",instance_number=\"1\",ms_telemetry=\"True\",id=\"gw/$edgeHub\",route_output=\"a,b\"} 1\n\
edgehub_connected_clients{iothub=\"h.net\",edge_device=\"gw\",instance_number=\"1\"} 3\n\
edgeAgent_used_memory_bytes{iothub=\"h.net\",edge_device=\"gw\",instance_number=\"1\",ms_telemetry=\"True\",module_name=\"sensor\"} 1024\n";

    #[test]
    fn only_tagged_series_are_taken_without_the_hub_labels_and_names_are_hashed_with_the_key() {
        let mut samples = tagged_samples(EXPOSITION);
        assert_eq!(samples.len(), 3, "{samples:?}");
        assert!(samples.iter().all(|s| !s.labels.contains_key("iothub") && !s.labels.contains_key("edge_device")));
        assert_eq!(samples[1].labels["route_output"], "a,b", "commas inside quotes");
        for sample in &mut samples {
            anonymise(sample, b"key-1");
        }
        assert_eq!(samples[0].labels["id"], format!("device/{}", identity::pseudonym(b"key-1", "sensor")));
        assert_eq!(samples[1].labels["id"], "device/$edgeHub", "system modules are kept");
        assert_eq!(samples[2].labels["module_name"], identity::pseudonym(b"key-1", "sensor"));
        let text = format!("{samples:?}");
        assert!(!text.contains("sensor") && !text.contains("\"gw"), "{text}");
        let mut other = tagged_samples(EXPOSITION);
        anonymise(&mut other[0], b"key-2");
        assert_ne!(other[0].labels["id"], samples[0].labels["id"], "another device's key gives another name");
    }

    #[test]
    fn series_are_condensed_old_samples_dropped_and_messages_bounded() {
        let s = |v: f64| Sample { name: "m".into(), labels: BTreeMap::new(), value: v };
        let lines: String = [(1, 5.0), (2, 5.0), (3, 5.0), (4, 6.0), (5, 6.0)]
            .iter()
            .map(|(t, v)| sample_line(*t, &s(*v)) + "\n")
            .chain(std::iter::once(sample_line(0, &s(1.0)) + "\n"))
            .collect();
        let (series, too_old) = series_of(&lines, 1);
        assert_eq!(too_old, 1);
        assert_eq!(series[0]["points"], json!([[1, 5.0], [4, 6.0], [5, 6.0]]));
        let many: Vec<Value> = (0..5000)
            .map(|i| json!({"name": format!("metric_{i}"), "tags": {"a": "b".repeat(40)}, "points": [[1, 1.0], [2, 2.0]]}))
            .collect();
        let messages = encode_messages(many);
        assert!(messages.len() > 1);
        assert!(messages.iter().all(|m| m.len() <= MESSAGE_MAX_BYTES));
        let total: usize = messages
            .iter()
            .map(|m| serde_json::from_slice::<Value>(m).expect("json")["series"].as_array().map_or(0, Vec::len))
            .sum();
        assert_eq!(total, 5000, "nothing lost in the split");
    }

    #[test]
    fn the_edge_agent_env_switch_is_read_as_iot_edge_writes_it() {
        let with = |v: Value| json!({"modulesContent": {"$edgeAgent": {"properties.desired": {"systemModules": {"edgeAgent": {"env": {"SendRuntimeQualityTelemetry": v}}}}}}});
        assert!(opted_out(&with(json!({"value": "false"}))));
        assert!(opted_out(&with(json!({"value": false}))));
        assert!(!opted_out(&with(json!({"value": "true"}))));
        assert!(!opted_out(&json!({})));
    }
}
