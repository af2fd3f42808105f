//! # The device scope: leaf devices the cloud lets this edge device serve (pure)
//!
//! IoT Hub keeps, for every edge device, the set of devices in its *device scope* (the leaf
//! devices whose parent it is, and itself). edgeHub reads it (`DeviceScopeApiClient`) with
//! `{edge}/$edgeHub`'s SAS token, so leaf devices that nobody configured on the gateway can
//! connect with their own keys, and keeps what it read (`DeviceScopeIdentitiesCache`) so they
//! still can while the cloud is away. This module is the pure part: what an answer means, the
//! cache file, and how a new answer changes what is cached.
//!
//! - **Wire format** (`GET /devices/{edge}/modules/$edgeHub/devicesAndModulesInDeviceScope?
//!   deviceCount=N&continuationToken=&api-version=2018-08-30-preview`):
//!   `{"devices":[…],"modules":[…],"continuationLink":"/devices/…?…&continuationToken=…"|null}`.
//!   A device is Microsoft.Azure.Devices' `Device`: `deviceId`, `generationId`, `status`
//!   (`enabled`/`disabled`), `authentication` `{type: "sas"|"selfSigned"|
//!   "certificateAuthority"|"none", symmetricKey: {primaryKey, secondaryKey}}` (base64),
//!   `capabilities`, `deviceScope`, `parentScopes`. The continuation link is a path on the
//!   same host, fetched as is.
//! - **What is kept**: enabled devices with SAS keys. Disabled devices, certificate devices
//!   (the hub authenticates with SAS tokens only) and entries that are not well formed are
//!   skipped with a reason; modules are not kept (this edge device's modules have keys derived
//!   from its own key and come from the deployment; modules of other devices do not connect
//!   here).
//! - **Merge rule** ([`Scope::from_listing`]): a full listing replaces the cache, so a device
//!   removed from the scope or disabled is gone after the next refresh. Ids the caller reserves — the edge
//!   device itself and the configured `[[devices]]` — are never taken from the scope: the
//!   config wins. At most [`SCOPE_DEVICES_MAX`] devices, in listing order.
//! - **Cache file** ([`encode_cache`], [`decode_cache`]): one line of compact JSON and a line
//!   `fnv1a64:{16 hex digits}`, like the twin files (`crate::twin::file`):
//!   `{"devices":[{"generationId":…,"id":…,"primaryKey":…,"secondaryKey":…}],"edgeDevice":…,
//!   "format":1,"savedUnix":…}`. It holds keys: it is written owner-only.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use serde_json::{json, Value};

use crate::twin::file::{seal, unseal};

/// The device-scope API version edgeHub's (non-nested) `DeviceScopeApiClient` speaks.
pub const API_VERSION: &str = "2018-08-30-preview";
/// Devices kept from the scope. edgeHub serves 100 clients (`MaxConnectedClients`); the twin
/// directory holds 1024 twins ([`crate::twin::TWINS_MAX`]), shared with modules and
/// configured devices.
pub const SCOPE_DEVICES_MAX: usize = 1000;
/// `deviceCount` asked per page (IoT Hub allows 1 to 1000; edgeHub asks 1000 at once, smaller
/// pages keep each answer small on a gateway).
pub const PAGE_DEVICES: usize = 100;
/// Largest page accepted. A device entry is about 900 bytes, a module entry about 700; a page
/// of [`PAGE_DEVICES`] devices with a few modules each stays well below this.
pub const PAGE_BYTES_MAX: usize = 1024 * 1024;
/// Pages followed in one refresh: a scope that never ends (or a cloud that keeps answering with
/// a continuation link) stops here, and the refresh fails.
pub const PAGES_MAX: usize = 2 * SCOPE_DEVICES_MAX / PAGE_DEVICES;
/// Largest continuation link followed.
pub const CONTINUATION_BYTES_MAX: usize = 4096;
/// Largest cache file read: [`SCOPE_DEVICES_MAX`] entries of at most about 450 bytes.
pub const CACHE_BYTES_MAX: usize = 1024 * 1024;
/// At most one fetch for an identity the hub does not know per this interval, so a flood of
/// made-up client ids costs the cloud one request per interval.
pub const ON_DEMAND_INTERVAL: Duration = Duration::from_secs(30);

const FORMAT: u64 = 1;
/// Longest generation id kept (IoT Hub's are 18 digits).
const GENERATION_ID_MAX: usize = 128;

/// A device of the scope that may connect: its id and SAS keys.
#[derive(Clone, PartialEq, Eq)]
pub struct ScopeDevice {
    pub id: String,
    /// IoT Hub's `generationId`: changes when a device of the same id is deleted and created
    /// again.
    pub generation_id: String,
    pub primary_key: Vec<u8>,
    /// Empty when the cloud gave none (or an unusable one).
    pub secondary_key: Vec<u8>,
}

impl ScopeDevice {
    /// The keys a token of this device may be signed with, primary first.
    pub fn keys(&self) -> Vec<Vec<u8>> {
        let mut keys = vec![self.primary_key.clone()];
        if !self.secondary_key.is_empty() {
            keys.push(self.secondary_key.clone());
        }
        keys
    }
}

impl std::fmt::Debug for ScopeDevice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ScopeDevice")
            .field("id", &self.id)
            .field("generation_id", &self.generation_id)
            .field("keys", &"<redacted>")
            .finish()
    }
}

/// One page of the scope, or the answer of a one-device lookup.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Page {
    /// Devices that may connect, in the cloud's order.
    pub devices: Vec<ScopeDevice>,
    /// Devices listed but not kept: (id, or `?` when it has none; why).
    pub skipped: Vec<(String, String)>,
    /// Modules listed (not kept).
    pub modules: usize,
    /// The path of the next page; `None` on the last.
    pub continuation: Option<String>,
}

/// Parses a device-scope answer. A malformed envelope is an error; a malformed device entry
/// is skipped (listed in [`Page::skipped`]) and the others kept.
pub fn parse_page(bytes: &[u8]) -> Result<Page, String> {
    if bytes.len() > PAGE_BYTES_MAX {
        return Err(format!("a page of {} bytes (at most {PAGE_BYTES_MAX})", bytes.len()));
    }
    let fields = match serde_json::from_slice(bytes) {
        Ok(Value::Object(fields)) => fields,
        Ok(_) => return Err("the answer is not a JSON object".to_string()),
        Err(e) => return Err(format!("the answer is not JSON: {e}")),
    };
    let mut page = Page::default();
    match fields.get("devices") {
        None | Some(Value::Null) => {}
        Some(Value::Array(devices)) => {
            for entry in devices {
                match parse_device(entry) {
                    Ok(device) => page.devices.push(device),
                    Err(skip) => page.skipped.push(skip),
                }
            }
        }
        Some(_) => return Err("\"devices\" is not an array".to_string()),
    }
    page.modules = match fields.get("modules") {
        None | Some(Value::Null) => 0,
        Some(Value::Array(modules)) => modules.len(),
        Some(_) => return Err("\"modules\" is not an array".to_string()),
    };
    page.continuation = match fields.get("continuationLink") {
        None | Some(Value::Null) => None,
        Some(Value::String(link)) if link.trim().is_empty() => None,
        Some(Value::String(link)) => Some(check_continuation(link)?),
        Some(_) => return Err("\"continuationLink\" is not a string".to_string()),
    };
    Ok(page)
}

/// A continuation link must be a path on the host that was asked (it is fetched with the
/// edge hub's token): `/…`, not `//host/…` or an absolute URL, printable ASCII only.
fn check_continuation(link: &str) -> Result<String, String> {
    let printable = link.bytes().all(|b| b.is_ascii_graphic());
    if link.len() > CONTINUATION_BYTES_MAX || !printable || !link.starts_with('/') || link.starts_with("//") {
        return Err(format!(
            "the continuation link is not a path on this host ({} bytes, starting {:?})",
            link.len(),
            link.chars().take(16).collect::<String>()
        ));
    }
    Ok(link.to_string())
}

fn parse_device(entry: &Value) -> Result<ScopeDevice, (String, String)> {
    let id = entry.get("deviceId").and_then(Value::as_str).unwrap_or("?").to_string();
    let skip = |why: String| (id.clone(), why);
    tinyedge_platform::identity::check_id(&id).map_err(|why| skip(format!("device id: {why}")))?;
    let status = entry.get("status").and_then(Value::as_str).unwrap_or("");
    if !status.eq_ignore_ascii_case("enabled") {
        return Err(skip(format!("status {status:?}")));
    }
    let generation_id = match entry.get("generationId") {
        None | Some(Value::Null) => String::new(),
        Some(Value::String(g)) if g.len() <= GENERATION_ID_MAX => g.clone(),
        Some(_) => return Err(skip("generationId is not a short string".to_string())),
    };
    let authentication = entry.get("authentication").unwrap_or(&Value::Null);
    let kind = authentication.get("type").and_then(Value::as_str).unwrap_or("none");
    if !kind.eq_ignore_ascii_case("sas") {
        return Err(skip(format!("authentication {kind:?} (only SAS keys are served)")));
    }
    let keys = authentication.get("symmetricKey").unwrap_or(&Value::Null);
    let primary_key = decode_key(keys.get("primaryKey")).map_err(|why| skip(format!("primaryKey: {why}")))?;
    // A missing or unusable secondary key costs only the tokens signed with it.
    let secondary_key = decode_key(keys.get("secondaryKey")).unwrap_or_default();
    Ok(ScopeDevice { id, generation_id, primary_key, secondary_key })
}

fn decode_key(value: Option<&Value>) -> Result<Vec<u8>, String> {
    let text = value.and_then(Value::as_str).ok_or("missing")?;
    let key = BASE64.decode(text.as_bytes()).map_err(|_| "not base64".to_string())?;
    tinyedge_platform::identity::check_key_length(&key)?;
    Ok(key)
}

/// The devices of the scope the hub admits, by id.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Scope {
    devices: BTreeMap<String, ScopeDevice>,
}

/// What a new listing changed, by device id (each sorted).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Diff {
    pub added: Vec<String>,
    pub removed: Vec<String>,
    /// Listed before and now, with other keys or another generation.
    pub changed: Vec<String>,
}

impl Diff {
    pub fn is_empty(&self) -> bool {
        self.added.is_empty() && self.removed.is_empty() && self.changed.is_empty()
    }
}

impl std::fmt::Display for Diff {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} added, {} removed, {} with new keys", self.added.len(), self.removed.len(), self.changed.len())
    }
}

/// Devices of a listing that were not kept, counted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Dropped {
    /// The edge device itself and configured devices: the config wins.
    pub reserved: usize,
    /// Beyond [`SCOPE_DEVICES_MAX`].
    pub over_limit: usize,
    /// Listed twice (the first is kept).
    pub duplicates: usize,
}

impl Scope {
    /// The scope a full listing gives: its devices in order, minus the ids `reserved` claims,
    /// at most [`SCOPE_DEVICES_MAX`].
    pub fn from_listing(
        listed: impl IntoIterator<Item = ScopeDevice>,
        reserved: impl Fn(&str) -> bool,
    ) -> (Scope, Dropped) {
        let mut scope = Scope::default();
        let mut dropped = Dropped::default();
        for device in listed {
            if reserved(&device.id) {
                dropped.reserved += 1;
            } else if scope.devices.contains_key(&device.id) {
                dropped.duplicates += 1;
            } else if scope.devices.len() >= SCOPE_DEVICES_MAX {
                dropped.over_limit += 1;
            } else {
                scope.devices.insert(device.id.clone(), device);
            }
        }
        (scope, dropped)
    }

    /// The cached scope without the ids `reserved` now claims (a device added to the config
    /// since the cache was written).
    pub fn without(&self, reserved: impl Fn(&str) -> bool) -> Scope {
        Scope {
            devices: self.devices.iter().filter(|(id, _)| !reserved(id)).map(|(k, v)| (k.clone(), v.clone())).collect(),
        }
    }

    pub fn get(&self, id: &str) -> Option<&ScopeDevice> {
        self.devices.get(id)
    }

    pub fn devices(&self) -> impl Iterator<Item = &ScopeDevice> {
        self.devices.values()
    }

    pub fn len(&self) -> usize {
        self.devices.len()
    }

    pub fn is_empty(&self) -> bool {
        self.devices.is_empty()
    }

    /// What changes from `self` to `new`.
    pub fn diff(&self, new: &Scope) -> Diff {
        let mut diff = Diff::default();
        for (id, device) in &new.devices {
            match self.devices.get(id) {
                None => diff.added.push(id.clone()),
                Some(old) if old != device => diff.changed.push(id.clone()),
                Some(_) => {}
            }
        }
        diff.removed = self.devices.keys().filter(|id| !new.devices.contains_key(*id)).cloned().collect();
        diff
    }
}

/// The cache file of `edge_device`'s scope, written at `saved_unix`.
pub fn encode_cache(edge_device: &str, saved_unix: u64, scope: &Scope) -> Vec<u8> {
    let devices: Vec<Value> = scope
        .devices()
        .map(|d| {
            json!({
                "id": d.id,
                "generationId": d.generation_id,
                "primaryKey": BASE64.encode(&d.primary_key),
                "secondaryKey": BASE64.encode(&d.secondary_key),
            })
        })
        .collect();
    let body = json!({ "format": FORMAT, "edgeDevice": edge_device, "savedUnix": saved_unix, "devices": devices });
    seal(&body)
}

/// A cache file read back: the scope and when it was written, or why the file is damaged or
/// not this edge device's.
pub fn decode_cache(bytes: &[u8], edge_device: &str) -> Result<(Scope, u64), String> {
    if bytes.len() > CACHE_BYTES_MAX {
        return Err(format!("{} bytes (at most {CACHE_BYTES_MAX})", bytes.len()));
    }
    let fields = unseal(bytes)?;
    match fields.get("edgeDevice").and_then(Value::as_str) {
        Some(edge) if edge == edge_device => {}
        Some(edge) => return Err(format!("the scope of edge device {edge:?}, not {edge_device:?}")),
        None => return Err("no \"edgeDevice\"".to_string()),
    }
    let refreshed = fields.get("savedUnix").and_then(Value::as_u64).ok_or("no \"savedUnix\"")?;
    let entries = fields.get("devices").and_then(Value::as_array).ok_or("no \"devices\" array")?;
    if entries.len() > SCOPE_DEVICES_MAX {
        return Err(format!("{} devices (at most {SCOPE_DEVICES_MAX})", entries.len()));
    }
    let mut scope = Scope::default();
    for entry in entries {
        let text = |name: &str| entry.get(name).and_then(Value::as_str);
        let id = text("id").ok_or("a device without \"id\"")?;
        tinyedge_platform::identity::check_id(id).map_err(|why| format!("device id {id:?}: {why}"))?;
        let primary_key = decode_key(entry.get("primaryKey")).map_err(|why| format!("{id}: primaryKey: {why}"))?;
        let secondary_key = match text("secondaryKey") {
            Some("") => Vec::new(),
            _ => decode_key(entry.get("secondaryKey")).map_err(|why| format!("{id}: secondaryKey: {why}"))?,
        };
        let generation_id = text("generationId").unwrap_or_default().to_string();
        let device = ScopeDevice { id: id.to_string(), generation_id, primary_key, secondary_key };
        if scope.devices.insert(id.to_string(), device).is_some() {
            return Err(format!("device {id:?} listed twice"));
        }
    }
    Ok((scope, refreshed))
}

/// Fetches for identities the hub does not know: at most one per `interval` (the caller
/// passes `now`).
#[derive(Debug, Clone)]
pub struct OnDemand {
    interval: Duration,
    last: Option<Instant>,
}

impl OnDemand {
    pub fn new(interval: Duration) -> OnDemand {
        OnDemand { interval, last: None }
    }

    /// Whether a fetch may start at `now`; if so, it counts from `now`.
    pub fn try_start(&mut self, now: Instant) -> bool {
        if self.last.is_some_and(|last| now.saturating_duration_since(last) < self.interval) {
            return false;
        }
        self.last = Some(now);
        true
    }

    /// How long until the next fetch may start (zero: now).
    pub fn wait(&self, now: Instant) -> Duration {
        self.last.map_or(Duration::ZERO, |last| self.interval.saturating_sub(now.saturating_duration_since(last)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY_A: &[u8] = b"0123456789abcdef0123456789abcdef";
    const KEY_B: &[u8] = b"fedcba9876543210fedcba9876543210";

    /// A device entry as IoT Hub lists it (`Microsoft.Azure.Devices.Device` serialized).
    fn entry(id: &str, status: &str, kind: &str) -> Value {
        json!({
            "deviceId": id,
            "generationId": "638000000000000001",
            "etag": "NjM4MDAwMDAwMDAwMDAwMDAx",
            "connectionState": "Disconnected",
            "connectionStateUpdatedTime": "0001-01-01T00:00:00Z",
            "lastActivityTime": "0001-01-01T00:00:00Z",
            "cloudToDeviceMessageCount": 0,
            "authentication": {
                "symmetricKey": {"primaryKey": BASE64.encode(KEY_A), "secondaryKey": BASE64.encode(KEY_B)},
                "x509Thumbprint": {"primaryThumbprint": null, "secondaryThumbprint": null},
                "type": kind,
            },
            "status": status,
            "statusReason": null,
            "statusUpdatedTime": "0001-01-01T00:00:00Z",
            "capabilities": {"iotEdge": false},
            "deviceScope": "ms-azure-iot-edge://gw-638000000000000000",
            "parentScopes": ["ms-azure-iot-edge://gw-638000000000000000"],
        })
    }

    fn device(id: &str, key: &[u8]) -> ScopeDevice {
        ScopeDevice {
            id: id.into(),
            generation_id: "1".into(),
            primary_key: key.to_vec(),
            secondary_key: KEY_B.to_vec(),
        }
    }

    fn page(devices: Vec<Value>, continuation: Value) -> Vec<u8> {
        let module = json!({"deviceId": "gw", "moduleId": "$edgeHub", "managedBy": "iotEdge",
                            "authentication": {"type": "sas", "symmetricKey": {"primaryKey": BASE64.encode(KEY_A)}}});
        json!({"devices": devices, "modules": [module], "continuationLink": continuation}).to_string().into_bytes()
    }

    #[test]
    fn a_page_keeps_enabled_sas_devices_and_says_why_it_skips_others() {
        let mut no_secondary = entry("s3", "enabled", "sas");
        no_secondary["authentication"]["symmetricKey"]["secondaryKey"] = Value::Null;
        let mut bad_key = entry("s4", "enabled", "sas");
        bad_key["authentication"]["symmetricKey"]["primaryKey"] = json!("not base64!");
        let mut short_key = entry("s5", "enabled", "sas");
        short_key["authentication"]["symmetricKey"]["primaryKey"] = json!(BASE64.encode(b"short"));
        let bytes = page(
            vec![
                entry("s1", "enabled", "sas"),
                entry("s2", "Enabled", "SAS"),
                no_secondary,
                entry("off", "disabled", "sas"),
                entry("x509", "enabled", "selfSigned"),
                entry("ca", "enabled", "certificateAuthority"),
                entry("bad/id", "enabled", "sas"),
                json!({"status": "enabled"}),
                bad_key,
                short_key,
            ],
            Value::Null,
        );
        let page = parse_page(&bytes).expect("valid page");
        let ids: Vec<&str> = page.devices.iter().map(|d| d.id.as_str()).collect();
        assert_eq!(ids, ["s1", "s2", "s3"]);
        assert_eq!(page.devices[0].keys(), vec![KEY_A.to_vec(), KEY_B.to_vec()]);
        assert_eq!(page.devices[0].generation_id, "638000000000000001");
        assert_eq!(page.devices[2].keys(), vec![KEY_A.to_vec()], "no secondary key: the primary alone");
        let skipped: Vec<&str> = page.skipped.iter().map(|(id, _)| id.as_str()).collect();
        assert_eq!(skipped, ["off", "x509", "ca", "bad/id", "?", "s4", "s5"]);
        assert!(page.skipped[0].1.contains("disabled"), "{:?}", page.skipped);
        assert!(page.skipped[1].1.contains("selfSigned"), "{:?}", page.skipped);
        assert_eq!((page.modules, page.continuation), (1, None));
        assert!(!format!("{:?}", page.devices).contains("48, 49"), "keys are not in Debug output");
    }

    #[test]
    fn continuation_links_are_paths_on_the_same_host() {
        let link = "/devices/gw/modules/%24edgeHub/devicesAndModulesInDeviceScope?deviceCount=100&continuationToken=cccDDD&api-version=2018-08-30-preview";
        let parsed = parse_page(&page(vec![], json!(link))).expect("valid");
        assert_eq!(parsed.continuation.as_deref(), Some(link));
        assert_eq!(parse_page(&page(vec![], json!(""))).expect("valid").continuation, None);
        assert_eq!(parse_page(br#"{"devices":null,"modules":null}"#).expect("valid"), Page::default());
        for bad in ["https://evil.example/x", "//evil.example/x", "devices/gw", "/a b", "/a\nb"] {
            let error = parse_page(&page(vec![], json!(bad))).expect_err(bad);
            assert!(error.contains("continuation"), "{bad:?}: {error}");
        }
        let long = format!("/{}", "a".repeat(CONTINUATION_BYTES_MAX));
        assert!(parse_page(&page(vec![], json!(long))).is_err());
    }

    #[test]
    fn malformed_pages_are_errors() {
        for bad in [&b"not json"[..], b"[]", br#"{"devices":{}}"#, br#"{"modules":3}"#, br#"{"continuationLink":7}"#] {
            assert!(parse_page(bad).is_err(), "{}", String::from_utf8_lossy(bad));
        }
        let huge = vec![b' '; PAGE_BYTES_MAX + 1];
        assert!(parse_page(&huge).expect_err("too big").contains("bytes"));
    }

    #[test]
    fn a_listing_replaces_the_scope_and_the_config_wins() {
        let reserved = |id: &str| id == "gw" || id == "configured";
        let (old, _) = Scope::from_listing([device("a", KEY_A), device("b", KEY_A), device("c", KEY_A)], reserved);
        let (new, dropped) = Scope::from_listing(
            [
                device("gw", KEY_A),
                device("a", KEY_A),
                device("c", KEY_B),
                device("configured", KEY_B),
                device("d", KEY_A),
                device("d", KEY_B),
            ],
            reserved,
        );
        assert_eq!(dropped, Dropped { reserved: 2, over_limit: 0, duplicates: 1 });
        let ids: Vec<&str> = new.devices().map(|d| d.id.as_str()).collect();
        assert_eq!(ids, ["a", "c", "d"]);
        assert_eq!(new.get("d").expect("d").primary_key, KEY_A, "the first listing of a duplicate is kept");
        let diff = old.diff(&new);
        assert_eq!(diff, Diff { added: vec!["d".into()], removed: vec!["b".into()], changed: vec!["c".into()] });
        assert!(new.diff(&new).is_empty());
        assert_eq!(diff.to_string(), "1 added, 1 removed, 1 with new keys");
        // A device the config now lists leaves the cached scope.
        assert_eq!(new.without(|id| id == "a").len(), 2);
    }

    #[test]
    fn the_scope_is_bounded() {
        let listed = (0..SCOPE_DEVICES_MAX + 5).map(|i| device(&format!("d{i}"), KEY_A));
        let (scope, dropped) = Scope::from_listing(listed, |_| false);
        assert_eq!((scope.len(), dropped.over_limit), (SCOPE_DEVICES_MAX, 5));
        assert!(scope.get("d0").is_some() && scope.get(&format!("d{SCOPE_DEVICES_MAX}")).is_none(), "listing order");
    }

    #[test]
    fn the_cache_round_trips_and_damage_is_detected() {
        let (scope, _) = Scope::from_listing([device("a", KEY_A), device("b:1", KEY_B)], |_| false);
        let bytes = encode_cache("gw", 1_800_000_000, &scope);
        let text = String::from_utf8(bytes.clone()).expect("UTF-8");
        assert_eq!(text.lines().count(), 2);
        assert!(text.lines().nth(1).expect("checksum").starts_with("fnv1a64:"));
        assert_eq!(decode_cache(&bytes, "gw"), Ok((scope.clone(), 1_800_000_000)));
        assert!(decode_cache(&bytes, "other").expect_err("another edge device").contains("\"gw\""));
        let empty = encode_cache("gw", 5, &Scope::default());
        assert_eq!(decode_cache(&empty, "gw"), Ok((Scope::default(), 5)));
        // Every truncation and every flipped bit is refused.
        for cut in 0..bytes.len() {
            assert!(decode_cache(&bytes[..cut], "gw").is_err(), "cut at {cut}");
        }
        for index in 0..bytes.len() {
            for bit in 0..8 {
                let mut flipped = bytes.clone();
                flipped[index] ^= 1 << bit;
                assert!(decode_cache(&flipped, "gw").is_err(), "bit {bit} of byte {index}");
            }
        }
    }

    #[test]
    fn a_sealed_cache_with_bad_entries_is_refused() {
        let seal = |body: Value| crate::twin::file::seal(&body);
        let good = json!({"id": "a", "generationId": "1", "primaryKey": BASE64.encode(KEY_A), "secondaryKey": ""});
        let ok = seal(json!({"format": 1, "edgeDevice": "gw", "savedUnix": 1, "devices": [good]}));
        assert_eq!(decode_cache(&ok, "gw").expect("valid").0.get("a").expect("a").keys().len(), 1);
        for body in [
            json!({"format": 2, "edgeDevice": "gw", "savedUnix": 1, "devices": []}),
            json!({"format": 1, "savedUnix": 1, "devices": []}),
            json!({"format": 1, "edgeDevice": "gw", "devices": []}),
            json!({"format": 1, "edgeDevice": "gw", "savedUnix": 1, "devices": [good, good]}),
            json!({"format": 1, "edgeDevice": "gw", "savedUnix": 1, "devices": [{"id": "a/b", "primaryKey": BASE64.encode(KEY_A)}]}),
            json!({"format": 1, "edgeDevice": "gw", "savedUnix": 1, "devices": [{"id": "a", "primaryKey": "x"}]}),
            json!([1]),
        ] {
            assert!(decode_cache(&seal(body.clone()), "gw").is_err(), "{body}");
        }
    }

    #[test]
    fn the_cache_size_per_device_is_small() {
        let (scope, _) = Scope::from_listing(
            (0..100).map(|i| ScopeDevice {
                id: format!("sensor-{i:04}"),
                generation_id: "638000000000000001".into(),
                primary_key: vec![7; 32],
                secondary_key: vec![9; 32],
            }),
            |_| false,
        );
        let per_device = (encode_cache("gw", 1, &scope).len() - encode_cache("gw", 1, &Scope::default()).len()) / 100;
        assert!((150..=200).contains(&per_device), "{per_device} bytes per device");
        // The largest entries (128-character ids, 64-byte keys) still fit the bound.
        let (largest, _) = Scope::from_listing(
            (0..SCOPE_DEVICES_MAX).map(|i| ScopeDevice {
                id: format!("{i:0>128}"),
                generation_id: "6".repeat(GENERATION_ID_MAX),
                primary_key: vec![7; 64],
                secondary_key: vec![9; 64],
            }),
            |_| false,
        );
        assert!(encode_cache("gw", 1, &largest).len() <= CACHE_BYTES_MAX);
    }

    #[test]
    fn on_demand_fetches_are_rate_limited() {
        let start = Instant::now();
        let mut limit = OnDemand::new(ON_DEMAND_INTERVAL);
        assert_eq!(limit.wait(start), Duration::ZERO);
        assert!(limit.try_start(start));
        assert!(!limit.try_start(start));
        assert!(!limit.try_start(start + Duration::from_secs(29)));
        assert_eq!(limit.wait(start + Duration::from_secs(10)), Duration::from_secs(20));
        assert!(limit.try_start(start + ON_DEMAND_INTERVAL));
        assert!(!limit.try_start(start + ON_DEMAND_INTERVAL + Duration::from_secs(1)));
        // A clock that goes back never allows more.
        assert!(!limit.try_start(start));
    }
}
