//! # Twins
//!
//! The protocol-neutral twin core: the device and module twins the hub serves from its own
//! disk, answered at once whether or not the cloud is reachable. Protocol adapters (MQTT
//! `$iothub/twin/...`, AMQP twin links) and the cloud sync call into [`Twins`]; the JSON
//! helpers ([`merge_patch`], [`diff`], [`parse_patch`], [`validate_reported_patch`]) are pure.
//!
//! - **Shape.** A GET body is IoT Hub's device-side one,
//!   `{"desired":{…,"$version":n},"reported":{…,"$version":m}}`, without `$metadata`. A new
//!   twin starts empty at version 1 in both sections; a listed identity is never served an
//!   empty twin because nothing was fetched.
//! - **Versions.** Each section's `$version` grows by one per change that changes the document
//!   (a patch or deployment that changes nothing changes no version). Versions survive
//!   restarts, and never go back: a twin whose file is damaged restarts above any version it
//!   had (the `versions` file keeps a ceiling above every version on disk).
//! - **Limits.** IoT Hub's ([`limits`]): patches and documents 32 KiB, depth 10, names 1 KiB,
//!   strings 4 KiB, integers ±2^52, no null in arrays, at most [`TWINS_MAX`] twins.
//! - **Desired deliveries.** Per twin the hub keeps the desired document the client last
//!   received, so a client that (re)subscribes gets one exact patch from there
//!   ([`Twins::pending_desired`]), even if it never did a GET.
//! - **Persistence.** One file per identity, replaced atomically (temporary file, fsync,
//!   rename, directory fsync) before a change is served, so a crash leaves the previous or the
//!   new twin; a leftover temporary file is removed on open; a damaged file is reported, kept
//!   aside as `*.damaged`, and costs only its own twin ([`file`] has the format).
//!
//! Calls block on disk writes (a change costs two fsyncs, file and directory, under one lock):
//! async callers run them where blocking is allowed.
//!
//! # Layout
//! - [`json`]: merge patch, diff, patch parsing (pure);
//! - [`validate`]: IoT Hub's rules for property names and values (pure);
//! - [`limits`]: every bound, with where its number comes from;
//! - `model`: one twin and the operations on it (pure);
//! - [`file`]: file names and the file format (pure);
//! - `state`, `listing`, `load`: the twins behind the lock, which identities have one, and
//!   opening the directory;
//! - `disk`, `error`: file operations and [`TwinError`].

pub mod file;
pub mod json;
pub mod limits;
pub mod validate;

mod disk;
mod error;
mod listing;
mod load;
mod model;
mod state;

#[cfg(test)]
mod tests;

use std::path::PathBuf;
use std::sync::{Mutex, MutexGuard, PoisonError};

use serde_json::Value;

pub use self::error::TwinError;
pub use self::json::{diff, merge_patch, parse_patch};
pub use self::limits::TWINS_MAX;
pub use self::listing::check_identity;
pub use self::load::{DamagedFile, TwinsReport, VersionsLoad};
pub use self::validate::validate_reported_patch;

pub use self::state::CloudPatch;
use self::state::State;

/// The twins of every identity the hub serves, and their files. Shared as `Arc<Twins>`.
#[derive(Debug)]
pub struct Twins {
    state: Mutex<State>,
}

const _: fn() = || {
    fn shared<T: Send + Sync>() {}
    shared::<Twins>();
};

impl Twins {
    /// Opens (creating) `dir`, e.g. `{data_dir}/twins`, and loads every twin in it. Damaged
    /// files are logged, listed in the report and moved aside; the others load regardless.
    /// No twin is served until [`Twins::set_identities`] lists its identity.
    pub fn open(dir: PathBuf) -> Result<(Twins, TwinsReport), TwinError> {
        let (state, report) = State::open(dir)?;
        Ok((Twins { state: Mutex::new(state) }, report))
    }

    /// Serves the twins of exactly `ids`: `"{device}/{module}"` for every module of the
    /// deployment (`$edgeAgent` and `$edgeHub` included) and `"{device}"` for the edge device
    /// and every configured leaf device. Twins of identities no longer listed are kept (not
    /// served) and come back if listed again, until room is needed for new ones. Refuses,
    /// changing nothing, more than [`TWINS_MAX`] identities or a malformed one; on `Io` the
    /// listing is applied.
    pub fn set_identities(&self, ids: &[String]) -> Result<(), TwinError> {
        self.lock().set_identities(ids)
    }

    /// The identities served, in order.
    pub fn identities(&self) -> Vec<String> {
        self.lock().identities()
    }

    /// The GET body: `{"desired":{…,"$version":n},"reported":{…,"$version":m}}`.
    pub fn get(&self, id: &str) -> Result<Value, TwinError> {
        Ok(self.lock().served(id)?.body())
    }

    /// Merges a JSON merge patch (`null` deletes) into the reported properties, after checking
    /// it against IoT Hub's limits (and the merged document against 32 KiB); written before
    /// it returns the new reported `$version` (the current one if nothing changed).
    pub fn patch_reported(&self, id: &str, patch: &[u8]) -> Result<u64, TwinError> {
        self.lock().patch_reported(id, patch)
    }

    /// Sets the desired properties from the deployment (`$version`/`$metadata` in them are
    /// ignored). If they differ from the current ones, the version is bumped, the twin written,
    /// and the patch returned: changed and added keys (recursively), `null` for removed ones,
    /// and `"$version"`, the new version.
    pub fn set_desired(&self, id: &str, desired: &Value) -> Result<Option<Value>, TwinError> {
        self.lock().set_desired(id, desired)
    }

    /// For a client (re)subscribing to desired patches: the one patch that brings the desired
    /// properties it last received (see [`Twins::mark_delivered`]; none if it never received
    /// any) up to the current ones, with `"$version"`, or `None` if it is up to date.
    pub fn pending_desired(&self, id: &str) -> Option<Value> {
        self.lock().served(id).ok()?.pending()
    }

    /// Records that the client received desired version `version` (in a GET body or a patch).
    /// An older delivery than one already recorded changes nothing; so does a version other
    /// than the current one or the one before it (a later patch records the client's state).
    pub fn mark_delivered(&self, id: &str, version: u64) -> Result<(), TwinError> {
        self.lock().mark_delivered(id, version)
    }

    /// Keeps every reported patch also as a change for the cloud (the upstream twin sync turns
    /// this on); [`Twins::pending_up`] gives it, [`Twins::clear_pending_up`] ends it.
    pub fn track_upstream(&self, on: bool) {
        self.lock().track_upstream = on;
    }

    /// The reported changes of `id` the cloud has not acknowledged (one merged patch).
    pub fn pending_up(&self, id: &str) -> Option<Value> {
        self.lock().pending_up(id)
    }

    /// The cloud acknowledged `sent`; cleared unless more came meanwhile.
    pub fn clear_pending_up(&self, id: &str, sent: &Value) -> Result<(), TwinError> {
        self.lock().clear_pending_up(id, sent)
    }

    /// Identities whose reported changes wait for the cloud.
    pub fn ids_with_pending_up(&self) -> Vec<String> {
        self.lock().with_pending_up()
    }

    /// Takes the cloud's twin (a GET body): its desired properties and versions win; changes
    /// not yet sent stay on top of its reported properties. `true` if the desired changed.
    pub fn apply_cloud(&self, id: &str, body: &Value) -> Result<bool, TwinError> {
        self.lock().apply_cloud(id, body)
    }

    /// Merges a desired patch the cloud pushed (see [`CloudPatch`]).
    pub fn apply_cloud_patch(&self, id: &str, patch: &Value, version: u64) -> Result<CloudPatch, TwinError> {
        self.lock().apply_cloud_patch(id, patch, version)
    }

    /// Whether `id` has a served twin.
    pub fn serves(&self, id: &str) -> bool {
        self.lock().served(id).is_ok()
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // Every change is applied in one assignment after its write, so a panic elsewhere
        // cannot leave the state half-changed: a poisoned lock is used as is.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}
