//! Wiring of the store and the upstream link: their configuration from `[store]`, `[upstream]`
//! and the deployment's `$edgeHub`, and their part of the status file.

use std::path::PathBuf;
use std::sync::Arc;

use serde_json::{json, Value};
use tinyedge_agent::manifest::Deployment;
use tinyedge_hub::broker::outbox::StoreOutbox;
use tinyedge_hub::broker::Broker;
use tinyedge_hub::cloud::{Cloud, CloudConfig};
use tinyedge_hub::route::Endpoint;
use tinyedge_hub::store::{CheckpointLoad, FsyncPolicy, FullPolicy, RecoveryReport, RegistryLoad, Store, StoreConfig};
use tinyedge_hub::upstream::{Link, LinkStatus, UpstreamConfig};
use tinyedge_platform::config::DEFAULT_STORE_MAX_BYTES;
use tinyedge_platform::{Config, FsyncSetting, WhenFull};

use crate::failure::Failure;

/// The edgeHub environment variable IoT Edge reads its store folder from (set through the
/// `$edgeAgent` deployment's `systemModules.edgeHub.env`).
const STORAGE_FOLDER_ENV: &str = "storageFolder";

/// `[store]`, overridden where IoT Edge lets the deployment decide: `storeLimits.maxSizeBytes`
/// (unless `[store] max_bytes` is set), `timeToLiveSecs`, and the edgeHub's `storageFolder`
/// (unless `[store] dir` is set).
pub fn store_config(config: &Config, deployment: Option<&Deployment>) -> StoreConfig {
    let hub_desired = deployment.map(|d| &d.hub.store_and_forward);
    let storage_folder = deployment.and_then(|d| {
        d.agent.system_modules.iter().find(|m| m.name == "edgeHub").and_then(|m| {
            m.env.iter().find(|(k, _)| k.eq_ignore_ascii_case(STORAGE_FOLDER_ENV)).map(|(_, v)| PathBuf::from(v))
        })
    });
    let dir = config.store.dir.clone().or(storage_folder).unwrap_or_else(|| config.data_dir.join("store"));
    let mut store = StoreConfig::new(dir);
    store.max_bytes = config
        .store
        .max_bytes
        .or_else(|| hub_desired.and_then(|s| s.max_size_bytes))
        .unwrap_or(DEFAULT_STORE_MAX_BYTES);
    store.fsync = match config.store.fsync {
        FsyncSetting::Always => FsyncPolicy::Always,
        FsyncSetting::Background(ms) => FsyncPolicy::Background(ms),
        FsyncSetting::Never => FsyncPolicy::Never,
    };
    store.when_full = match config.store.when_full {
        WhenFull::DropOldest => FullPolicy::DropOldest,
        WhenFull::RejectNew => FullPolicy::RejectNew,
    };
    if let Some(saf) = hub_desired {
        store.default_ttl_secs = saf.time_to_live_secs;
    }
    store
}

fn log_recovery(dir: &std::path::Path, report: &RecoveryReport) {
    log::info!(
        "store {}: {} record(s) in {} segment(s), {} bytes; next seq {}",
        dir.display(),
        report.records,
        report.segments,
        report.bytes,
        report.next_seq
    );
    if report.truncated_bytes > 0 || report.records_lost > 0 || report.damage_count > 0 {
        log::warn!(
            "store recovery: lost {} record(s) in {} damaged region(s) (truncated {} byte(s) at the end)",
            report.records_lost,
            report.damage_count,
            report.truncated_bytes,
        );
    }
}

pub fn open_store(store_config: StoreConfig) -> Result<Arc<Store>, Failure> {
    let dir = store_config.dir.clone();
    let (store, report) = Store::open(store_config).map_err(|e| Failure::Runtime(e.to_string()))?;
    log_recovery(&dir, &report);
    Ok(Arc::new(store))
}

/// The cloud side as `[upstream] protocol` chose it.
#[derive(Clone)]
pub enum Upstream {
    /// `"mqtt"`: one connection as the edge device, telemetry only.
    Single(Arc<Link>),
    /// `"iothub"`: one connection per identity, twins, methods and C2D.
    PerIdentity(Arc<Cloud>),
}

impl Upstream {
    /// The link's status, or all identity links' together.
    pub fn status(&self) -> LinkStatus {
        match self {
            Upstream::Single(link) => link.status(),
            Upstream::PerIdentity(cloud) => cloud.status(),
        }
    }

    pub fn target(&self) -> String {
        match self {
            Upstream::Single(link) => link.target().to_string(),
            Upstream::PerIdentity(cloud) => cloud.target().to_string(),
        }
    }

    pub fn cloud(&self) -> Option<&Arc<Cloud>> {
        match self {
            Upstream::PerIdentity(cloud) => Some(cloud),
            Upstream::Single(_) => None,
        }
    }
}

/// Starts the cloud side when `[upstream]` is configured; without one, `$upstream` messages
/// stay in the store (bounded) until one is.
pub fn start_upstream(config: &Config, device_key: &[u8], broker: &Arc<Broker>) -> Result<Option<Upstream>, Failure> {
    let Some(settings) = &config.upstream else {
        log::info!("no [upstream] configured: $upstream messages are kept in the store");
        return Ok(None);
    };
    let queues = broker.router.queues_of(&Endpoint::Upstream).map_err(|e| Failure::Runtime(e.to_string()))?;
    let outbox = Arc::new(StoreOutbox::new(broker.router.store().clone(), &queues));
    let mut upstream = UpstreamConfig::new(
        settings.url.clone(),
        config.iothub_hostname.clone(),
        config.device_id.clone(),
        device_key.to_vec(),
    );
    upstream.ca = settings.ca.clone();
    upstream.backoff_max = std::time::Duration::from_secs(settings.backoff_max_secs);
    upstream.backoff_min = upstream.backoff_min.min(upstream.backoff_max);
    if settings.protocol == "mqtt" {
        let link = Link::new(upstream, outbox).map_err(|e| Failure::Config(format!("upstream: {e}")))?;
        tinyedge_platform::rt::spawn(link.clone().run()).detach();
        log::info!("upstream link to {} started (one connection as {})", link.target(), config.device_id);
        return Ok(Some(Upstream::Single(link)));
    }
    let mut cloud = CloudConfig::new(upstream);
    cloud.max_links = settings.max_connections;
    cloud.idle_timeout = std::time::Duration::from_secs(settings.idle_timeout_secs);
    let cloud = Cloud::start(broker.clone(), cloud, outbox).map_err(|e| Failure::Config(format!("upstream: {e}")))?;
    // Leaf devices of the cloud's device scope, cached for offline use.
    crate::scope::start(config, device_key, broker)?;
    // The edge hub's own identity is always connected: its twin carries the routes and the
    // store settings, and edgeHub keeps its connection open.
    let hub_twin = format!("{}/$edgeHub", config.device_id);
    cloud.want(&hub_twin, tinyedge_hub::cloud::Interest { twin: true, pinned: true, ..Default::default() });
    Ok(Some(Upstream::PerIdentity(cloud)))
}

pub fn store_status(store: &Store) -> Value {
    let stats = store.stats();
    let endpoints: serde_json::Map<String, Value> = stats
        .endpoints
        .iter()
        .map(|e| (e.name.clone(), json!({"checkpoint": e.checkpoint, "persisted_checkpoint": e.persisted_checkpoint, "pending_estimate": e.pending_estimate})))
        .collect();
    json!({
        "bytes_on_disk": stats.bytes_on_disk,
        "segments": stats.segments,
        "records_appended": stats.records_appended,
        "records_stored": stats.records_stored,
        "dropped_full": stats.dropped_full,
        "rejected_full": stats.rejected_full,
        "rejected_no_space": stats.rejected_no_space,
        "expired_skipped": stats.expired_skipped,
        "reclaimed_segments": stats.reclaimed_segments,
        "fsyncs": stats.fsyncs,
        "first_seq": stats.first_seq,
        "last_seq": stats.last_seq,
        "durable_seq": stats.durable_seq,
        "endpoints": endpoints,
        "recovery": recovery_status(store.recovery_report()),
    })
}

/// What the store's recovery found at start, for `tinyedge store stats`.
fn recovery_status(report: &RecoveryReport) -> Value {
    let registry = match &report.registry {
        RegistryLoad::Loaded { .. } => "loaded".to_string(),
        RegistryLoad::Created => "created".to_string(),
        RegistryLoad::Repaired { reason, .. } => format!("repaired: {reason}"),
        RegistryLoad::Lost { placeholders, reason } => format!("lost ({reason}); {placeholders} placeholder names"),
    };
    let checkpoints = match &report.checkpoints {
        CheckpointLoad::Loaded { .. } => "loaded".to_string(),
        CheckpointLoad::Missing => "missing".to_string(),
        CheckpointLoad::Repaired { reason, .. } => format!("repaired: {reason}"),
        CheckpointLoad::Corrupt(reason) => format!("unreadable ({reason}); endpoints restarted from the oldest record"),
    };
    json!({
        "records_lost": report.records_lost,
        "damage_count": report.damage_count,
        "truncated_bytes": report.truncated_bytes,
        "deliveries_unattributable": report.deliveries_unattributable,
        "registry": registry,
        "checkpoints": checkpoints,
    })
}

pub fn upstream_status(link: Option<&Upstream>) -> Value {
    match link {
        None => json!({"configured": false}),
        Some(link) => {
            let s = link.status();
            let links: Vec<Value> = link.cloud().map_or_else(Vec::new, |cloud| {
                cloud
                    .links()
                    .into_iter()
                    .map(|(id, s)| json!({"identity": id, "connected": s.connected, "acked": s.acked, "last_error": s.last_error}))
                    .collect()
            });
            json!({
                "configured": true,
                "protocol": if link.cloud().is_some() { "iothub" } else { "mqtt" },
                "links": links,
                "target": link.target(),
                "connected": s.connected,
                "since_unix_ms": s.since_unix_ms,
                "last_error": s.last_error,
                "reconnects": s.reconnects,
                "published": s.published,
                "acked": s.acked,
                "dropped": s.dropped,
            })
        }
    }
}
