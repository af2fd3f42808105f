//! Twins kept in sync with the cloud, per identity:
//!
//! 1. on every connection of an identity's link, however short the outage was: its reported
//!    changes that wait (on disk, across restarts) are sent, then the cloud twin is fetched;
//!    the cloud's desired document and versions win, and a client subscribed to desired
//!    patches gets one patch with the difference (unlike edgeHub, which resyncs only after a
//!    5-minute connectivity check noticed the outage, and only for connected clients);
//! 2. a desired patch the cloud pushes is merged if its version is the next one, else the twin
//!    is fetched again;
//! 3. a reported patch a client makes is sent as soon as its link is up; retried every few
//!    seconds while it waits.
//!
//! A malformed answer from the cloud is logged and changes nothing; the request is made again
//! on the next connection (or the next retry).

use bytes::Bytes;
use serde_json::Value;

use crate::twin::CloudPatch;
use crate::upstream::Link;

use super::Cloud;

/// A connection of `id`'s link came up (number `connection`).
pub async fn on_connect(cloud: &Cloud, id: &str, connection: u64) {
    let Some(link) = cloud.link_of(id) else { return };
    let lock = cloud.sync_lock(id);
    let _one_at_a_time = lock.lock().await;
    push(cloud, id, &link).await;
    if link.connection() != connection {
        return;
    }
    let wants_twin = super::lock(&cloud.links).get(id).is_some_and(|e| e.interest.twin || e.interest.pinned);
    if wants_twin {
        fetch(cloud, id, &link).await;
    }
}

/// Sends `id`'s waiting reported changes, unless another twin operation of `id` runs (it
/// pushes them, or housekeeping does within seconds): one push in flight per identity.
pub async fn push_reported(cloud: &Cloud, id: &str, link: &Link) {
    let lock = cloud.sync_lock(id);
    let Some(_one_at_a_time) = lock.try_lock() else { return };
    push(cloud, id, link).await;
}

/// Sends `id`'s waiting reported changes and clears them once the cloud acknowledged them.
async fn push(cloud: &Cloud, id: &str, link: &Link) {
    let twins = cloud.broker.twins.clone();
    let Some(pending) = twins.pending_up(id) else { return };
    let body = Bytes::from(pending.to_string());
    match cloud.request(link, crate::topic::reported_patch_topic, body).await {
        Some((204 | 200, _, _)) => {
            cloud.count(|s| s.reported_sent += 1);
            let id = id.to_string();
            let cleared = smol::unblock(move || twins.clear_pending_up(&id, &pending).map_err(|e| (id, e))).await;
            if let Err((id, error)) = cleared {
                log::warn!("cloud: twin of {id}: {error}");
            }
        }
        Some((status @ 400..=499, _, body)) if status != 429 => {
            // The cloud will never take it: keeping it would block every later change.
            log::warn!(
                "cloud: the cloud refused the reported properties of {id} ({status}: {}); they are dropped",
                String::from_utf8_lossy(&body)
            );
            let id = id.to_string();
            let _ = smol::unblock(move || twins.clear_pending_up(&id, &pending)).await;
        }
        Some((status, _, _)) => log::info!("cloud: reported properties of {id} not taken ({status}); kept for a retry"),
        None => log::info!("cloud: reported properties of {id} not acknowledged in time; kept for a retry"),
    }
}

/// Fetches `id`'s twin from the cloud and takes it; tells the client what changed. A failed
/// fetch is tried again by housekeeping (every few seconds) while the link is up.
async fn fetch(cloud: &Cloud, id: &str, link: &Link) {
    let unsynced = || {
        super::lock(&cloud.unsynced).insert(id.to_string());
    };
    let Some((status, _, body)) = cloud.request(link, crate::topic::twin_get_topic, Bytes::new()).await else {
        log::info!("cloud: the twin of {id} was not fetched (no answer in time)");
        unsynced();
        return;
    };
    if status != 200 {
        log::warn!("cloud: fetching the twin of {id} failed with {status}: {}", String::from_utf8_lossy(&body));
        unsynced();
        return;
    }
    let document: Value = match serde_json::from_slice(&body) {
        Ok(document) => document,
        Err(error) => {
            cloud.count(|s| s.refused_from_cloud += 1);
            log::warn!("cloud: the twin of {id} from the cloud is not JSON ({error}); the local twin is kept");
            unsynced();
            return;
        }
    };
    let (twins, twin_id) = (cloud.broker.twins.clone(), id.to_string());
    match smol::unblock(move || twins.apply_cloud(&twin_id, &document)).await {
        Ok(changed) => {
            cloud.count(|s| s.twin_syncs += 1);
            if changed {
                log::info!("cloud: twin of {id} updated from the cloud");
            }
            // Watchers (deployments) hear of the first sync even when nothing changed.
            if changed || cloud.is_watched(id) {
                cloud.desired_changed(id);
            }
        }
        Err(error) => {
            cloud.count(|s| s.refused_from_cloud += 1);
            log::warn!("cloud: the twin of {id} from the cloud is refused: {error}; the local twin is kept");
            unsynced();
        }
    }
}

/// A desired patch the cloud pushed for `id` (after any twin operation of `id` in progress).
pub async fn desired_patch(cloud: &Cloud, id: &str, version: Option<u64>, payload: &[u8]) {
    let lock = cloud.sync_lock(id);
    let _one_at_a_time = lock.lock().await;
    let patch: Value = match serde_json::from_slice(payload) {
        Ok(patch @ Value::Object(_)) => patch,
        _ => {
            cloud.count(|s| s.refused_from_cloud += 1);
            log::warn!("cloud: a desired patch for {id} is not a JSON object; fetching the twin instead");
            if let Some(link) = cloud.link_of(id) {
                fetch(cloud, id, &link).await;
            }
            return;
        }
    };
    let version = version.or_else(|| patch.get("$version").and_then(Value::as_u64));
    let Some(version) = version else {
        if let Some(link) = cloud.link_of(id) {
            fetch(cloud, id, &link).await;
        }
        return;
    };
    let (twins, twin_id) = (cloud.broker.twins.clone(), id.to_string());
    match smol::unblock(move || twins.apply_cloud_patch(&twin_id, &patch, version)).await {
        Ok(CloudPatch::Applied) => cloud.desired_changed(id),
        Ok(CloudPatch::Stale) => {}
        Ok(CloudPatch::Gap) => {
            if let Some(link) = cloud.link_of(id) {
                fetch(cloud, id, &link).await;
            }
        }
        Err(error) => {
            cloud.count(|s| s.refused_from_cloud += 1);
            log::warn!("cloud: a desired patch for {id} is refused: {error}; fetching the twin instead");
            if let Some(link) = cloud.link_of(id) {
                fetch(cloud, id, &link).await;
            }
        }
    }
}
