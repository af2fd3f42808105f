//! The twins of all identities, their files, and the version ceiling: every change is written
//! (atomically) before it is applied in memory, so what is served is what is on disk.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

use serde_json::Value;

use super::disk;
use super::error::TwinError;
use super::file::{encode_twin, encode_versions, file_stem, TWIN_SUFFIX, VERSIONS_FILE};
use std::sync::Arc;

use super::json::{document_from, kind, merge_members, parse_patch, Document};
use super::limits::VERSION_LEASE;
use super::limits::VERSION_MAX;
use super::model::Twin;
use super::validate::{validate_desired, validate_reported_patch};

/// A twin and whether it is served.
#[derive(Debug)]
pub struct Entry {
    pub twin: Twin,
    /// Listed by the last `set_identities`: served. An unlisted twin is retired: kept (in
    /// memory and on disk) until room is needed, and served again if listed again.
    pub listed: bool,
    /// The `set_identities` generation that retired it (0: unlisted since open).
    pub retired_at: u64,
    /// Whether its file exists: a new twin is written at its first change.
    pub persisted: bool,
}

/// Everything behind the [`Twins`](super::Twins) lock.
#[derive(Debug)]
pub struct State {
    pub dir: PathBuf,
    pub twins: BTreeMap<String, Entry>,
    /// Stems of twin files found damaged, now or on an earlier open (a `.damaged` copy and no
    /// valid file): the identity with one of them is recreated at the ceiling.
    pub lost: BTreeSet<String>,
    /// Every version in a twin file is below it; raised (written) before a file may hold one
    /// at or above it.
    pub ceiling: u64,
    /// Counts `set_identities` calls, to retire twins oldest first.
    pub generation: u64,
    /// Reported patches are also kept for the cloud (see [`Twin::pending_up`]).
    pub track_upstream: bool,
}

/// What a desired patch from the cloud came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CloudPatch {
    /// Merged: the next version after the local one.
    Applied,
    /// Already held (a repeat of the current version or an older one).
    Stale,
    /// A version was skipped (or the twin was never synced): a full GET must resync it.
    Gap,
}

impl State {
    /// The twin of a listed identity.
    pub fn served(&self, id: &str) -> Result<&Twin, TwinError> {
        match self.twins.get(id) {
            Some(entry) if entry.listed => Ok(&entry.twin),
            _ => Err(TwinError::NotFound(id.to_string())),
        }
    }

    pub fn patch_reported(&mut self, id: &str, bytes: &[u8]) -> Result<u64, TwinError> {
        let twin = self.served(id)?;
        let patch = parse_patch(bytes).map_err(|error| match error {
            TwinError::Invalid(reason) => TwinError::Invalid(format!("reported {reason}")),
            other => other,
        })?;
        validate_reported_patch(&patch).map_err(TwinError::Invalid)?;
        let Value::Object(members) = &patch else {
            return Err(TwinError::Invalid(format!("reported patch must be a JSON object, got {}", kind(&patch))));
        };
        let changed = twin.with_reported_patch(id, members).map_err(TwinError::Invalid)?;
        let version = changed.as_ref().map_or(twin.reported_version, |next| next.reported_version);
        let next = if self.track_upstream {
            let base = changed.as_ref().unwrap_or(twin);
            base.with_pending_up(members).or(changed)
        } else {
            changed
        };
        if let Some(next) = next {
            self.commit(id, next)?;
        }
        Ok(version)
    }

    pub fn set_desired(&mut self, id: &str, desired: &Value) -> Result<Option<Value>, TwinError> {
        let twin = self.served(id)?;
        let label = format!("desired properties of {id:?}");
        let Value::Object(properties) = desired else {
            return Err(TwinError::Invalid(format!("{label} must be a JSON object, got {}", kind(desired))));
        };
        let document = document_from(properties);
        validate_desired(&label, &document).map_err(TwinError::Invalid)?;
        let Some((next, patch)) = twin.with_desired(id, document).map_err(TwinError::Invalid)? else {
            return Ok(None);
        };
        self.commit(id, next)?;
        Ok(Some(patch))
    }

    pub fn mark_delivered(&mut self, id: &str, version: u64) -> Result<(), TwinError> {
        let twin = self.served(id)?;
        if version == 0 || version > twin.desired_version {
            return Err(TwinError::Invalid(format!(
                "desired version {version} of {id:?} was never sent: the current one is {}",
                twin.desired_version
            )));
        }
        match twin.with_delivered(version) {
            Some(next) => self.commit(id, next),
            None => {
                if twin.delivered.as_ref().is_none_or(|seen| seen.version < version) {
                    log::debug!("twin {id}: delivery of desired version {version} not recorded: no longer held");
                }
                Ok(())
            }
        }
    }

    /// Replaces the twin of `id` by the cloud's GET body (`{"desired":…,"reported":…}` with
    /// `$version`s); returns whether the desired document or version changed.
    pub fn apply_cloud(&mut self, id: &str, body: &Value) -> Result<bool, TwinError> {
        let twin = self.served(id)?;
        let section = |name: &str| -> Result<(Document, u64), TwinError> {
            let Some(Value::Object(members)) = body.get(name) else {
                return Err(TwinError::Invalid(format!("the cloud's twin of {id:?} has no {name} object")));
            };
            let version = members.get("$version").and_then(Value::as_u64).unwrap_or(0);
            if !(1..=VERSION_MAX).contains(&version) {
                return Err(TwinError::Invalid(format!("the cloud's twin of {id:?} has no valid {name} $version")));
            }
            let document = document_from(members);
            validate_desired(&format!("the cloud's {name} properties of {id:?}"), &document)
                .map_err(TwinError::Invalid)?;
            Ok((document, version))
        };
        let (desired, desired_version) = section("desired")?;
        let (reported, reported_version) = section("reported")?;
        let desired_changed = *twin.desired != desired || twin.desired_version != desired_version;
        let next = twin.with_cloud(desired, desired_version, reported, reported_version);
        if desired_changed || next.reported != twin.reported || next.reported_version != twin.reported_version {
            self.commit(id, next)?;
        }
        Ok(desired_changed)
    }

    /// Merges a desired patch the cloud pushed with `version`, if it is the next version.
    pub fn apply_cloud_patch(&mut self, id: &str, patch: &Value, version: u64) -> Result<CloudPatch, TwinError> {
        let twin = self.served(id)?;
        if version <= twin.desired_version {
            return Ok(CloudPatch::Stale);
        }
        if version != twin.desired_version + 1 || version > VERSION_MAX {
            return Ok(CloudPatch::Gap);
        }
        let Value::Object(members) = patch else {
            return Err(TwinError::Invalid(format!("a desired patch must be a JSON object, got {}", kind(patch))));
        };
        let mut desired = Document::clone(&twin.desired);
        let members: Document =
            members.iter().filter(|(k, _)| !k.starts_with('$')).map(|(k, v)| (k.clone(), v.clone())).collect();
        merge_members(&mut desired, &members);
        validate_desired(&format!("desired properties of {id:?}"), &desired).map_err(TwinError::Invalid)?;
        let reported = Document::clone(&twin.reported);
        let (reported_version, previous_pending) = (twin.reported_version, twin.pending_up.clone());
        let mut next = twin.with_cloud(desired, version, reported, reported_version);
        // `with_cloud` merged the pending changes into reported again: they are there already.
        next.reported = Arc::clone(&twin.reported);
        next.pending_up = previous_pending;
        self.commit(id, next)?;
        Ok(CloudPatch::Applied)
    }

    /// The reported changes waiting for the cloud.
    pub fn pending_up(&self, id: &str) -> Option<Value> {
        let twin = &self.twins.get(id)?.twin;
        twin.pending_up.as_deref().map(|p| Value::Object(Document::clone(p)))
    }

    /// The cloud acknowledged `sent` (what [`State::pending_up`] gave): cleared unless more
    /// changes came meanwhile (then the whole merged patch goes again: applying a value twice
    /// is harmless).
    pub fn clear_pending_up(&mut self, id: &str, sent: &Value) -> Result<(), TwinError> {
        let Some(entry) = self.twins.get(id) else { return Ok(()) };
        let twin = &entry.twin;
        let same = match (twin.pending_up.as_deref(), sent) {
            (Some(pending), Value::Object(sent)) => pending == sent,
            _ => false,
        };
        if !same {
            return Ok(());
        }
        let next = Twin { pending_up: None, ..twin.clone() };
        self.commit(id, next)
    }

    /// Identities with reported changes waiting for the cloud.
    pub fn with_pending_up(&self) -> Vec<String> {
        self.twins.iter().filter(|(_, e)| e.twin.pending_up.is_some()).map(|(id, _)| id.clone()).collect()
    }

    /// Writes `twin` as the twin of `id`, then serves it.
    pub fn commit(&mut self, id: &str, twin: Twin) -> Result<(), TwinError> {
        self.reserve(twin.version_max())?;
        let stem = file_stem(id);
        disk::replace_atomically(&self.dir, &format!("{stem}{TWIN_SUFFIX}"), &encode_twin(id, &twin))?;
        self.lost.remove(&stem);
        if let Some(entry) = self.twins.get_mut(id) {
            entry.twin = twin;
            entry.persisted = true;
        }
        Ok(())
    }

    /// Makes sure the ceiling is above `version`, writing a new one if it is not.
    pub fn reserve(&mut self, version: u64) -> Result<(), TwinError> {
        if version < self.ceiling {
            return Ok(());
        }
        // Versions are at most VERSION_MAX, far below u64::MAX - VERSION_LEASE.
        let ceiling = version.saturating_add(VERSION_LEASE);
        disk::replace_atomically(&self.dir, VERSIONS_FILE, &encode_versions(ceiling))?;
        self.ceiling = ceiling;
        Ok(())
    }
}
