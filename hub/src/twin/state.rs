//! The twins of all identities, their files, and the version ceiling: every change is written
//! (atomically) before it is applied in memory, so what is served is what is on disk.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

use serde_json::Value;

use super::disk;
use super::error::TwinError;
use super::file::{encode_twin, encode_versions, file_stem, TWIN_SUFFIX, VERSIONS_FILE};
use super::json::{document_from, kind, parse_patch};
use super::limits::VERSION_LEASE;
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
        match twin.with_reported_patch(id, members).map_err(TwinError::Invalid)? {
            None => Ok(twin.reported_version),
            Some(next) => {
                let version = next.reported_version;
                self.commit(id, next)?;
                Ok(version)
            }
        }
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
