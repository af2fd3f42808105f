//! The cloud's device scope at run time (`[upstream] protocol = "iothub"`): leaf devices that
//! are not in `[[devices]]` but that IoT Hub lists in this edge device's scope may connect with
//! their own keys, also while the cloud is away.
//!
//! - **Fetch**: `GET {api_url}/devices/{edge}/modules/$edgeHub/devicesAndModulesInDeviceScope
//!   ?deviceCount=100&continuationToken=&api-version=2018-08-30-preview`, then every
//!   `continuationLink`, with `Authorization: SharedAccessSignature sr={iothub}/devices/{edge}/
//!   modules/%24edgeHub…` signed with `$edgeHub`'s key (derived from the device key), as
//!   edgeHub's `DeviceScopeApiClient` does. Blocking (ureq, on `smol::unblock`), 20 s per
//!   request (edgeHub's `CloudOperationTimeoutSecs`), 60 s per listing; TLS trusts the system bundle and
//!   `[upstream] ca`, like the MQTT link.
//! - **Refresh**: at start, then every `[upstream] scope_refresh_secs` (default 3600, edgeHub's
//!   `DeviceScopeCacheRefreshRateSecs`); after a failure, again within a minute. A full listing
//!   replaces the cache: removed or disabled devices are refused from then on, and connected
//!   ones are disconnected (edgeHub's `ServiceIdentityRemoved`).
//! - **On demand**: a CONNECT of a device the hub does not know fetches the scope again (so
//!   every device added since the last refresh is known at once), with at most one fetch in
//!   flight — CONNECTs arriving meanwhile take its answer — and at most one such fetch per
//!   30 s, so a flood of made-up client ids costs the cloud one listing per 30 s.
//! - **Cache**: `{data_dir}/scope.json` (format in `tinyedge_hub::cloud::scope`), written
//!   atomically (0600: it holds keys) whenever the scope changes, read at start
//!   ([`crate::plan::cached_scope`]) so a restart while the cloud is down admits the cached
//!   devices at once.
//! - **Admission**: scope devices join the hub's authenticator (so the cloud side signs their
//!   upstream connections with their keys, and a redeploy keeps them: `plan::authenticator`
//!   reads the cache) and get a twin; configured devices are never taken from the scope.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tinyedge_hub::auth::Identity;
use tinyedge_hub::broker::{Broker, ScopeLookup};
use tinyedge_hub::cloud::scope::{self, Diff, OnDemand, Scope, ScopeDevice};
use tinyedge_platform::fsutil::{self, Access};
use tinyedge_platform::{identity, sas, urlenc, Config, UpstreamSettings};

use crate::failure::Failure;
use crate::plan;

/// One request to the cloud may take this long (edgeHub's `CloudOperationTimeoutSecs`).
pub const FETCH_TIMEOUT: Duration = Duration::from_secs(20);
/// A whole listing (every page) may take this long; CONNECTs of unknown devices wait for it.
const LISTING_TIMEOUT: Duration = Duration::from_secs(60);
/// After a failed refresh, the next one comes this soon (or at the refresh period, if shorter):
/// edgeHub's `initializationRefreshDelay`.
const RETRY_AFTER_FAILURE: Duration = Duration::from_secs(60);
/// Lifetime of the `$edgeHub` token of one request (edgeHub's is an hour).
const TOKEN_TTL_SECS: u64 = 3600;
/// The module whose identity reads the scope.
const EDGE_HUB: &str = "$edgeHub";
/// Bytes of an error answer kept for the log (IoT Hub's error code and message).
const ERROR_EXCERPT_BYTES: usize = 200;

/// Why a request to the cloud failed: the HTTP status, if there was an answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FetchError {
    pub status: Option<u16>,
    pub message: String,
}

impl std::fmt::Display for FetchError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

fn failed(message: impl Into<String>) -> FetchError {
    FetchError { status: None, message: message.into() }
}

/// One GET of a path (with query) on IoT Hub's HTTPS API: the body of a 200 answer.
/// Blocking; run on `smol::unblock`.
pub trait Fetch: Send + Sync + 'static {
    fn get(&self, path: &str) -> Result<Vec<u8>, FetchError>;
}

/// The scope's first page.
fn first_page_path(edge: &str) -> String {
    format!(
        "/devices/{}/modules/{EDGE_HUB}/devicesAndModulesInDeviceScope?deviceCount={}&continuationToken=&api-version={}",
        urlenc::encode(edge),
        scope::PAGE_DEVICES,
        scope::API_VERSION
    )
}

/// Every page of the scope.
#[derive(Debug)]
pub struct Listing {
    /// The devices that may connect, in the cloud's order.
    pub devices: Vec<ScopeDevice>,
    /// Those listed but not kept: (id, why).
    pub skipped: Vec<(String, String)>,
}

/// Fetches every page of the scope.
pub fn fetch_all(fetch: &dyn Fetch, edge: &str) -> Result<Listing, FetchError> {
    let mut devices = Vec::new();
    let mut skipped = Vec::new();
    let mut path = first_page_path(edge);
    let started = Instant::now();
    for page in 0..scope::PAGES_MAX {
        if page > 0 && started.elapsed() > LISTING_TIMEOUT {
            return Err(failed(format!(
                "the device scope took more than {} s to list; not taken",
                LISTING_TIMEOUT.as_secs()
            )));
        }
        let page = scope::parse_page(&fetch.get(&path)?).map_err(failed)?;
        // More than the scope keeps (twice, for the configured ids among them) is not held.
        let room = (2 * scope::SCOPE_DEVICES_MAX).saturating_sub(devices.len());
        devices.extend(page.devices.into_iter().take(room));
        skipped.extend(page.skipped);
        match page.continuation {
            Some(next) => path = next,
            None => return Ok(Listing { devices, skipped }),
        }
    }
    Err(failed(format!("the device scope goes on beyond {} pages; not taken", scope::PAGES_MAX)))
}

/// IoT Hub's HTTPS API through ureq.
struct HttpsFetch {
    agent: ureq::Agent,
    /// `https://host[:port]`.
    base: String,
    /// The SAS audience of `{edge}/$edgeHub`, and its key.
    resource: String,
    key: Vec<u8>,
}

impl HttpsFetch {
    fn new(config: &Config, upstream: &UpstreamSettings, device_key: &[u8]) -> Result<HttpsFetch, String> {
        let tls = ureq::tls::TlsConfig::builder()
            .root_certs(roots(upstream)?)
            .unversioned_rustls_crypto_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .build();
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .https_only(true)
            // A redirect would carry the token elsewhere.
            .max_redirects(0)
            .timeout_global(Some(FETCH_TIMEOUT))
            .tls_config(tls)
            .user_agent(concat!("tinyedge/", env!("CARGO_PKG_VERSION")))
            .build()
            .into();
        Ok(HttpsFetch {
            agent,
            base: upstream.api_url.clone(),
            resource: identity::sas_resource(&config.iothub_hostname, &config.device_id, Some(EDGE_HUB)),
            key: identity::derive_module_key(device_key, EDGE_HUB),
        })
    }
}

/// The system bundle and `[upstream] ca`, as the MQTT link trusts them.
fn roots(upstream: &UpstreamSettings) -> Result<ureq::tls::RootCerts, String> {
    let mut certs = Vec::new();
    let mut add = |pem: &[u8]| {
        let before = certs.len();
        certs.extend(ureq::tls::parse_pem(pem).filter_map(|item| match item {
            Ok(ureq::tls::PemItem::Certificate(cert)) => Some(cert.to_owned()),
            _ => None,
        }));
        certs.len() - before
    };
    if let Ok(pem) = std::fs::read(tinyedge_hub::upstream::config::SYSTEM_CA_BUNDLE) {
        add(&pem);
    }
    if let Some(ca) = &upstream.ca {
        let pem = std::fs::read(ca).map_err(|e| format!("upstream.ca {}: {e}", ca.display()))?;
        if add(&pem) == 0 {
            return Err(format!("upstream.ca {}: no PEM certificate in the file", ca.display()));
        }
    }
    Ok(ureq::tls::RootCerts::new_with_certs(&certs))
}

impl Fetch for HttpsFetch {
    fn get(&self, path: &str) -> Result<Vec<u8>, FetchError> {
        let url = format!("{}{path}", self.base);
        let token = sas::generate(&self.resource, &self.key, unix_now() + TOKEN_TTL_SECS);
        let mut response = self
            .agent
            .get(&url)
            .header("Authorization", &token)
            .header("Accept", "application/json")
            .call()
            .map_err(|e| failed(format!("GET {url}: {e}")))?;
        let status = response.status().as_u16();
        let body = response
            .body_mut()
            .with_config()
            .limit(scope::PAGE_BYTES_MAX as u64)
            .read_to_vec()
            .map_err(|e| FetchError { status: Some(status), message: format!("GET {url}: {status}, body: {e}") })?;
        if status == 200 {
            return Ok(body);
        }
        let excerpt: String = String::from_utf8_lossy(&body).chars().take(ERROR_EXCERPT_BYTES).collect();
        Err(FetchError { status: Some(status), message: format!("GET {url}: {status} {excerpt}") })
    }
}

fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// What a changed scope does to the hub (the broker's authenticator and twins); blocking.
pub type Apply = Arc<dyn Fn(&Scope, &Diff) + Send + Sync>;

/// The device scope: what is cached, the fetches, and what they change.
pub struct DeviceScope {
    fetch: Arc<dyn Fetch>,
    edge: String,
    reserved: Arc<dyn Fn(&str) -> bool + Send + Sync>,
    cache_file: PathBuf,
    apply: Apply,
    refresh_every: Duration,
    state: Mutex<State>,
    /// Held for the whole of a fetch and what it changes: one fetch in flight.
    fetching: smol::lock::Mutex<()>,
    /// Fetches finished (whatever their outcome).
    fetches: AtomicU64,
}

struct State {
    scope: Scope,
    on_demand: OnDemand,
    /// The last refresh failed (its failure was logged as a warning).
    failing: bool,
}

impl DeviceScope {
    /// The scope starting from `cached`, fetched through `fetch`.
    pub fn new(
        fetch: Arc<dyn Fetch>,
        edge: &str,
        reserved: Arc<dyn Fn(&str) -> bool + Send + Sync>,
        cache_file: PathBuf,
        cached: Scope,
        refresh_every: Duration,
        apply: Apply,
    ) -> DeviceScope {
        DeviceScope {
            fetch,
            edge: edge.to_string(),
            reserved,
            cache_file,
            apply,
            refresh_every,
            state: Mutex::new(State {
                scope: cached,
                on_demand: OnDemand::new(scope::ON_DEMAND_INTERVAL),
                failing: false,
            }),
            fetching: smol::lock::Mutex::new(()),
            fetches: AtomicU64::new(0),
        }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The devices cached now.
    #[cfg(test)]
    pub fn scope(&self) -> Scope {
        self.state().scope.clone()
    }

    fn keys_of(&self, id: &str) -> Vec<Vec<u8>> {
        self.state().scope.get(id).map(ScopeDevice::keys).unwrap_or_default()
    }

    /// The keys of `identity` in the scope; for an unknown device the scope is fetched again
    /// first (rate-limited). Modules, the edge device and configured devices are never in it.
    pub async fn lookup(&self, identity: &Identity) -> Vec<Vec<u8>> {
        let id = &identity.device_id;
        if identity.module_id.is_some() || (self.reserved)(id) {
            return Vec::new();
        }
        let seen = self.fetches.load(Ordering::SeqCst);
        let keys = self.keys_of(id);
        if !keys.is_empty() {
            return keys;
        }
        let _one = self.fetching.lock().await;
        if self.fetches.load(Ordering::SeqCst) != seen {
            // A fetch finished while this one waited: its answer is the answer.
            return self.keys_of(id);
        }
        let now = Instant::now();
        {
            let mut state = self.state();
            if !state.on_demand.try_start(now) {
                log::debug!(
                    "device scope: {id} is unknown; not asking the cloud again for {} s",
                    state.on_demand.wait(now).as_secs()
                );
                return Vec::new();
            }
        }
        let fetched = self.refresh_held().await;
        let took = now.elapsed().as_millis();
        let keys = self.keys_of(id);
        match fetched {
            Ok(()) if keys.is_empty() => {
                log::info!("device scope: {id} is not in the cloud's device scope (fetched in {took} ms)")
            }
            Ok(()) => log::info!("device scope: {id} is in the cloud's device scope (fetched in {took} ms)"),
            Err(e) => log::warn!("device scope: {id} is unknown and the scope could not be fetched: {e}"),
        }
        keys
    }

    /// Fetches the whole scope and takes it.
    pub async fn refresh(&self) -> Result<(), FetchError> {
        let _one = self.fetching.lock().await;
        self.refresh_held().await
    }

    /// [`DeviceScope::refresh`] with `fetching` held.
    async fn refresh_held(&self) -> Result<(), FetchError> {
        let (fetch, edge) = (self.fetch.clone(), self.edge.clone());
        let started = Instant::now();
        let listing = smol::unblock(move || fetch_all(&*fetch, &edge)).await;
        self.fetches.fetch_add(1, Ordering::SeqCst);
        let Listing { devices, skipped } = listing?;
        let (new, dropped) = Scope::from_listing(devices, &*self.reserved);
        for (id, why) in &skipped {
            log::debug!("device scope: {id} not admitted: {why}");
        }
        if dropped.over_limit > 0 {
            log::warn!(
                "device scope: {} device(s) beyond the first {} not admitted",
                dropped.over_limit,
                scope::SCOPE_DEVICES_MAX
            );
        }
        log::debug!(
            "device scope: {} device(s) in {} ms ({} skipped, {} configured here)",
            new.len(),
            started.elapsed().as_millis(),
            skipped.len(),
            dropped.reserved
        );
        self.replace(new).await;
        Ok(())
    }

    /// Takes `new` as the scope: the cache file first (so a restart, and a deployment applied
    /// meanwhile, read it), then the hub. Called with `fetching` held.
    async fn replace(&self, new: Scope) {
        let diff = self.state().scope.diff(&new);
        // Logged once the hub applies it (below): a device the line says removed is refused.
        let summary = (!diff.is_empty()).then(|| format!("device scope: {} device(s): {diff}", new.len()));
        if !diff.is_empty() {
            let bytes = scope::encode_cache(&self.edge, unix_now(), &new);
            let path = self.cache_file.clone();
            let written = smol::unblock(move || fsutil::write_atomic(&path, &bytes, Access::OwnerOnly)).await;
            if let Err(e) = written {
                log::warn!(
                    "device scope: cache {} not written ({e}); a restart without the cloud uses the previous one",
                    self.cache_file.display()
                );
            }
        }
        // Applied after every fetch, changed or not: a deployment applied while the cache was
        // being written may have read the previous one.
        let apply = self.apply.clone();
        let (applied, for_apply) = (new.clone(), diff);
        smol::unblock(move || apply(&applied, &for_apply)).await;
        self.state().scope = new;
        if let Some(summary) = summary {
            log::info!("{summary}");
        }
    }

    /// Refreshes now and every `refresh_every`; after a failure within a minute.
    pub async fn run(self: Arc<Self>) {
        loop {
            let wait = match self.refresh().await {
                Ok(()) => {
                    let mut state = self.state();
                    if std::mem::take(&mut state.failing) {
                        log::info!("device scope: read from the cloud again ({} device(s))", state.scope.len());
                    }
                    self.refresh_every
                }
                Err(e) => {
                    let mut state = self.state();
                    let level = if state.failing { log::Level::Debug } else { log::Level::Warn };
                    log::log!(
                        level,
                        "device scope: refresh failed ({e}); the {} cached device(s) stay admitted",
                        state.scope.len()
                    );
                    state.failing = true;
                    self.refresh_every.min(RETRY_AFTER_FAILURE)
                }
            };
            smol::Timer::after(wait).await;
        }
    }
}

/// The hook the broker asks (see [`ScopeLookup`]).
struct Lookup(Arc<DeviceScope>);

impl ScopeLookup for Lookup {
    fn lookup(&self, identity: &Identity) -> std::pin::Pin<Box<dyn std::future::Future<Output = Vec<Vec<u8>>> + Send>> {
        let (scope, identity) = (self.0.clone(), identity.clone());
        Box::pin(async move { scope.lookup(&identity).await })
    }
}

/// Brings the broker in line with `scope`: its devices are allowed to connect with their
/// primary keys (the secondary ones through [`ScopeLookup`]) and have twins; devices that left
/// it are refused and disconnected.
fn apply_to_broker(broker: &Broker, scope: &Scope, diff: &Diff) {
    let current = broker.authenticator();
    let stale = diff.removed.iter().any(|id| current.knows(&Identity::device(id)))
        || scope.devices().any(|d| current.key_of(&Identity::device(&d.id)) != Some(d.primary_key.as_slice()));
    if stale {
        broker.update_authenticator(|auth| {
            for id in &diff.removed {
                auth.remove(&Identity::device(id));
            }
            for device in scope.devices() {
                auth.insert(Identity::device(&device.id), device.primary_key.clone());
            }
        });
    }
    let mut twins = broker.twins.identities();
    let before = twins.len();
    twins.retain(|id| !diff.removed.contains(id));
    let mut changed = twins.len() != before;
    for device in scope.devices() {
        if twins.len() >= tinyedge_hub::twin::TWINS_MAX {
            log::warn!(
                "device scope: no room for more twins ({}); {} has none",
                tinyedge_hub::twin::TWINS_MAX,
                device.id
            );
            break;
        }
        if !twins.contains(&device.id) {
            twins.push(device.id.clone());
            changed = true;
        }
    }
    if changed {
        if let Err(e) = broker.twins.set_identities(&twins) {
            log::warn!("device scope: twins: {e}");
        }
    }
    for id in &diff.removed {
        let slot = broker.sessions.slot(id);
        let state = slot.state();
        if let Some(owner) = &state.owner {
            log::info!("device scope: {id} left the device scope; closing its connection");
            owner.kick.fire();
        }
    }
}

/// Starts the device scope when `[upstream]` speaks IoT Hub's contract: the cache as the hub
/// already admits it (`plan`), a refresh now and periodically, lookups on CONNECT.
pub fn start(config: &Config, device_key: &[u8], broker: &Arc<Broker>) -> Result<Option<Arc<DeviceScope>>, Failure> {
    let Some(upstream) = config.upstream.as_ref().filter(|_| plan::uses_scope(config)) else {
        return Ok(None);
    };
    let fetch = HttpsFetch::new(config, upstream, device_key).map_err(Failure::Config)?;
    let (cached, damage) = plan::cached_scope(config);
    match damage {
        Some(why) => log::warn!("device scope: cache not used ({why}); waiting for the cloud"),
        None => log::info!("device scope: {} cached device(s)", cached.len()),
    }
    let weak: Weak<Broker> = Arc::downgrade(broker);
    let apply: Apply = Arc::new(move |scope, diff| {
        if let Some(broker) = weak.upgrade() {
            apply_to_broker(&broker, scope, diff);
        }
    });
    let scope = Arc::new(DeviceScope::new(
        Arc::new(fetch),
        &config.device_id,
        Arc::new(plan::scope_reserved(config)),
        plan::scope_file(config),
        cached,
        Duration::from_secs(upstream.scope_refresh_secs),
        apply,
    ));
    broker.set_scope(Arc::new(Lookup(scope.clone())));
    tinyedge_platform::rt::spawn(scope.clone().run()).detach();
    log::info!(
        "device scope: read from {} every {} s (and on demand for unknown devices)",
        upstream.api_url,
        upstream.scope_refresh_secs
    );
    Ok(Some(scope))
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine as _;
    use serde_json::{json, Value};

    const KEY_A: &[u8] = b"0123456789abcdef0123456789abcdef";
    const KEY_B: &[u8] = b"fedcba9876543210fedcba9876543210";

    fn b64(key: &[u8]) -> String {
        base64::engine::general_purpose::STANDARD.encode(key)
    }

    fn entry(id: &str, key: &[u8]) -> Value {
        json!({"deviceId": id, "generationId": "1", "status": "enabled",
               "authentication": {"type": "sas", "symmetricKey": {"primaryKey": b64(key), "secondaryKey": b64(KEY_B)}}})
    }

    /// A scripted cloud: the devices in scope, pages of `page` devices, every path asked.
    struct FakeCloud {
        devices: Mutex<Vec<(String, Vec<u8>)>>,
        page: usize,
        down: std::sync::atomic::AtomicBool,
        asked: Mutex<Vec<String>>,
    }

    impl FakeCloud {
        fn new(devices: &[(&str, &[u8])], page: usize) -> Arc<FakeCloud> {
            Arc::new(FakeCloud {
                devices: Mutex::new(devices.iter().map(|(id, key)| (id.to_string(), key.to_vec())).collect()),
                page,
                down: std::sync::atomic::AtomicBool::new(false),
                asked: Mutex::new(Vec::new()),
            })
        }

        fn asked(&self) -> Vec<String> {
            self.asked.lock().unwrap_or_else(PoisonError::into_inner).clone()
        }
    }

    impl Fetch for FakeCloud {
        fn get(&self, path: &str) -> Result<Vec<u8>, FetchError> {
            self.asked.lock().unwrap_or_else(PoisonError::into_inner).push(path.to_string());
            if self.down.load(Ordering::SeqCst) {
                return Err(failed("connection refused"));
            }
            let devices = self.devices.lock().unwrap_or_else(PoisonError::into_inner).clone();
            let query = path.split_once('?').map_or("", |(_, q)| q);
            let param = |name: &str| {
                query.split('&').find_map(|kv| kv.strip_prefix(name).and_then(|v| v.strip_prefix('='))).unwrap_or("")
            };
            let offset: usize = param("continuationToken").parse().unwrap_or(0);
            let end = (offset + self.page).min(devices.len());
            let listed: Vec<Value> = devices[offset..end].iter().map(|(id, k)| entry(id, k)).collect();
            let next = (end < devices.len()).then(|| {
                format!("/devices/gw/modules/%24edgeHub/devicesAndModulesInDeviceScope?deviceCount={}&continuationToken={end}&api-version=2018-08-30-preview", self.page)
            });
            Ok(json!({"devices": listed, "modules": [], "continuationLink": next}).to_string().into_bytes())
        }
    }

    struct Dir(PathBuf);

    impl Dir {
        fn new(name: &str) -> Dir {
            let path = std::env::temp_dir().join(format!("tinyedge-scope-{name}-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&path);
            std::fs::create_dir_all(&path).expect("temp dir");
            Dir(path)
        }
    }

    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    type Applied = Arc<Mutex<Vec<(Vec<String>, Diff)>>>;

    fn scope_over(cloud: &Arc<FakeCloud>, dir: &Dir, cached: Scope) -> (Arc<DeviceScope>, Applied) {
        let applied: Applied = Arc::default();
        let record = applied.clone();
        let apply: Apply = Arc::new(move |scope: &Scope, diff: &Diff| {
            let ids = scope.devices().map(|d| d.id.clone()).collect();
            record.lock().unwrap_or_else(PoisonError::into_inner).push((ids, diff.clone()));
        });
        let reserved: Arc<dyn Fn(&str) -> bool + Send + Sync> = Arc::new(|id: &str| id == "gw" || id == "configured");
        let fetch: Arc<dyn Fetch> = cloud.clone();
        let scope =
            DeviceScope::new(fetch, "gw", reserved, dir.0.join("scope.json"), cached, Duration::from_secs(3600), apply);
        (Arc::new(scope), applied)
    }

    #[test]
    fn paths_are_edgehubs() {
        assert_eq!(
            first_page_path("gw"),
            "/devices/gw/modules/$edgeHub/devicesAndModulesInDeviceScope?deviceCount=100&continuationToken=&api-version=2018-08-30-preview"
        );
        assert!(first_page_path("gw:1 x").starts_with("/devices/gw%3A1%20x/modules/$edgeHub/"));
    }

    #[test]
    fn a_refresh_follows_every_page_and_the_config_wins() {
        let cloud =
            FakeCloud::new(&[("gw", KEY_A), ("a", KEY_A), ("configured", KEY_A), ("b", KEY_B), ("c", KEY_A)], 2);
        let dir = Dir::new("pages");
        let (scope, applied) = scope_over(&cloud, &dir, Scope::default());
        smol::block_on(scope.refresh()).expect("refreshed");
        assert_eq!(cloud.asked().len(), 3, "{:?}", cloud.asked());
        assert!(cloud.asked()[1].ends_with("continuationToken=2&api-version=2018-08-30-preview"));
        let ids: Vec<String> = scope.scope().devices().map(|d| d.id.clone()).collect();
        assert_eq!(ids, ["a", "b", "c"]);
        let applied = applied.lock().unwrap_or_else(PoisonError::into_inner).clone();
        assert_eq!(applied.len(), 1);
        assert_eq!(applied[0].1.added, ["a", "b", "c"]);
        // The cache holds what was taken.
        let bytes = std::fs::read(dir.0.join("scope.json")).expect("cache written");
        let (cached, _) = scope::decode_cache(&bytes, "gw").expect("valid cache");
        assert_eq!(cached, scope.scope());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            let mode = std::fs::metadata(dir.0.join("scope.json")).expect("metadata").permissions().mode();
            assert_eq!(mode & 0o777, 0o600, "the cache holds keys");
        }
    }

    #[test]
    fn removed_devices_are_dropped_on_refresh_and_a_failed_refresh_keeps_the_cache() {
        let cloud = FakeCloud::new(&[("a", KEY_A), ("b", KEY_A)], 100);
        let dir = Dir::new("removed");
        let (scope, applied) = scope_over(&cloud, &dir, Scope::default());
        smol::block_on(scope.refresh()).expect("refreshed");
        cloud.down.store(true, Ordering::SeqCst);
        assert!(smol::block_on(scope.refresh()).is_err());
        assert_eq!(scope.scope().len(), 2, "the cloud being away changes nothing");
        cloud.down.store(false, Ordering::SeqCst);
        cloud.devices.lock().unwrap_or_else(PoisonError::into_inner).retain(|(id, _)| id != "a");
        smol::block_on(scope.refresh()).expect("refreshed");
        assert!(scope.scope().get("a").is_none());
        let applied = applied.lock().unwrap_or_else(PoisonError::into_inner).clone();
        assert_eq!(applied.last().expect("applied").1.removed, ["a"]);
        assert!(smol::block_on(scope.lookup(&Identity::device("b"))).len() == 2, "primary and secondary");
    }

    #[test]
    fn unknown_devices_fetch_the_scope_at_most_once_per_interval() {
        let cloud = FakeCloud::new(&[("early", KEY_A)], 100);
        let dir = Dir::new("on-demand");
        let (scope, _) = scope_over(&cloud, &dir, Scope::default());
        smol::block_on(scope.refresh()).expect("refreshed");
        cloud.devices.lock().unwrap_or_else(PoisonError::into_inner).push(("late".into(), KEY_A.to_vec()));
        // A device that joined the scope after the last refresh: fetched, admitted.
        let keys = smol::block_on(scope.lookup(&Identity::device("late")));
        assert_eq!(keys, vec![KEY_A.to_vec(), KEY_B.to_vec()]);
        assert_eq!(cloud.asked().len(), 2, "{:?}", cloud.asked());
        // Cached now: no request.
        assert_eq!(smol::block_on(scope.lookup(&Identity::device("late"))).len(), 2);
        // A flood of unknown ids within the interval: no further request.
        for i in 0..50 {
            assert!(smol::block_on(scope.lookup(&Identity::device(&format!("bogus-{i}")))).is_empty());
        }
        assert_eq!(cloud.asked().len(), 2, "{:?}", cloud.asked());
        // Modules, the edge device and configured devices never ask the cloud.
        for identity in [Identity::module("gw", "m"), Identity::device("gw"), Identity::device("configured")] {
            assert!(smol::block_on(scope.lookup(&identity)).is_empty());
        }
        assert_eq!(cloud.asked().len(), 2);
    }

    #[test]
    fn concurrent_unknown_devices_share_one_fetch() {
        let cloud = FakeCloud::new(&[("x", KEY_A)], 100);
        let dir = Dir::new("concurrent");
        let (scope, _) = scope_over(&cloud, &dir, Scope::default());
        let answers = smol::block_on(async {
            let lookups: Vec<_> = (0..8)
                .map(|i| {
                    let scope = scope.clone();
                    smol::spawn(async move { scope.lookup(&Identity::device(if i == 0 { "x" } else { "y" })).await })
                })
                .collect();
            let mut answers = Vec::new();
            for lookup in lookups {
                answers.push(lookup.await);
            }
            answers
        });
        assert_eq!(cloud.asked().len(), 1, "one fetch for all of them: {:?}", cloud.asked());
        assert_eq!(answers[0].len(), 2, "x is in the scope");
        assert!(answers[1..].iter().all(Vec::is_empty), "y is not");
    }

    #[test]
    fn a_cached_scope_answers_while_the_cloud_is_down() {
        let cloud = FakeCloud::new(&[], 100);
        cloud.down.store(true, Ordering::SeqCst);
        let dir = Dir::new("offline");
        let device = ScopeDevice {
            id: "kept".into(),
            generation_id: "1".into(),
            primary_key: KEY_A.to_vec(),
            secondary_key: Vec::new(),
        };
        let (cached, _) = Scope::from_listing([device], |_| false);
        let (scope, _) = scope_over(&cloud, &dir, cached);
        assert!(smol::block_on(scope.refresh()).is_err());
        assert_eq!(smol::block_on(scope.lookup(&Identity::device("kept"))), vec![KEY_A.to_vec()]);
        assert!(
            cloud.asked().iter().all(|p| p.contains("devicesAndModulesInDeviceScope")),
            "no lookup for a cached device"
        );
    }

    #[test]
    fn an_unknown_device_is_refused_while_the_cloud_is_down() {
        let cloud = FakeCloud::new(&[("a", KEY_A)], 100);
        cloud.down.store(true, Ordering::SeqCst);
        let dir = Dir::new("down");
        let (scope, applied) = scope_over(&cloud, &dir, Scope::default());
        assert!(smol::block_on(scope.lookup(&Identity::device("a"))).is_empty());
        assert!(applied.lock().unwrap_or_else(PoisonError::into_inner).is_empty(), "nothing changed");
        assert!(!dir.0.join("scope.json").exists());
    }

    #[test]
    fn an_endless_scope_is_refused() {
        struct Endless;
        impl Fetch for Endless {
            fn get(&self, _path: &str) -> Result<Vec<u8>, FetchError> {
                Ok(br#"{"devices":[],"modules":[],"continuationLink":"/devices/gw/next"}"#.to_vec())
            }
        }
        let error = fetch_all(&Endless, "gw").expect_err("endless");
        assert!(error.message.contains("pages"), "{error}");
    }

    #[test]
    fn a_token_signed_with_the_secondary_key_is_accepted() {
        let auth = tinyedge_hub::auth::Authenticator::new("hub.example.net", "gateway.local");
        let token = sas::generate("hub.example.net/devices/leaf", KEY_B, 2_000_000_000);
        let keys = [KEY_A.to_vec(), KEY_B.to_vec()];
        let identity = Identity::device("leaf");
        assert!(auth.authenticate_with_keys(&identity, &token, &keys, 1_900_000_000).is_ok());
        assert!(auth.authenticate_with_keys(&identity, &token, &keys[..1], 1_900_000_000).is_err());
        assert!(auth.authenticate_with_keys(&identity, &token, &keys, 2_000_000_001).is_err(), "expired");
        let other = sas::generate("hub.example.net/devices/other", KEY_B, 2_000_000_000);
        assert!(auth.authenticate_with_keys(&identity, &other, &keys, 1_900_000_000).is_err(), "audience");
    }
}
