//! Which identities have twins: listing new ones, retiring and evicting old ones.
//!
//! An identity is `"{device}"` or `"{device}/{module}"`. A listed identity without a twin gets
//! an empty one at version 1 (written at its first change), or, if its file was found
//! damaged, one at the version ceiling, so its versions never go back. An identity no longer
//! listed is retired: its twin is kept, not served, and comes back as it was if the identity
//! is listed again; retired twins are deleted, longest retired first, only when the
//! [`TWINS_MAX`] twins held would otherwise be exceeded.

use std::collections::{BTreeSet, HashMap};

use super::disk;
use super::error::TwinError;
use super::file::{file_stem, TWIN_SUFFIX};
use super::limits::{ID_PART_BYTES_MAX, TWINS_MAX};
use super::model::Twin;
use super::state::{Entry, State};

/// Checks an identity: `device` or `device/module`, each part 1 to [`ID_PART_BYTES_MAX`]
/// bytes without control characters.
pub fn check_identity(id: &str) -> Result<(), String> {
    let mut parts = id.split('/');
    let device = parts.next().unwrap_or_default();
    let module = parts.next();
    if parts.next().is_some() {
        return Err(format!("identity {id:?} has more than one '/': expected \"device\" or \"device/module\""));
    }
    check_part(id, "device id", device)?;
    module.map_or(Ok(()), |module| check_part(id, "module id", module))
}

fn check_part(id: &str, what: &str, part: &str) -> Result<(), String> {
    if part.is_empty() {
        return Err(format!("identity {id:?} has an empty {what}"));
    }
    if part.len() > ID_PART_BYTES_MAX {
        return Err(format!("identity {id:?}: the {what} is {} bytes, over {ID_PART_BYTES_MAX}", part.len()));
    }
    if part.chars().any(char::is_control) {
        return Err(format!("identity {id:?}: the {what} contains a control character"));
    }
    Ok(())
}

impl State {
    /// Serves exactly `ids`. Refuses (changing nothing) more than [`TWINS_MAX`] identities or
    /// a malformed one. On `Io` the listing is applied; the error names the file not written.
    pub fn set_identities(&mut self, ids: &[String]) -> Result<(), TwinError> {
        let wanted: BTreeSet<&str> = ids.iter().map(String::as_str).collect();
        if wanted.len() > TWINS_MAX {
            return Err(TwinError::TooMany { identities: wanted.len() });
        }
        for id in &wanted {
            check_identity(id).map_err(TwinError::Invalid)?;
        }
        let clashing = self.stem_clashes(&wanted)?;
        self.generation += 1;
        for (id, entry) in &mut self.twins {
            let listed = wanted.contains(id.as_str());
            if entry.listed && !listed {
                entry.retired_at = self.generation;
            }
            entry.listed = listed;
        }
        let new: Vec<&str> = wanted.iter().copied().filter(|id| !self.twins.contains_key(*id)).collect();
        let mut result = self.evict(clashing, new.len());
        for id in new {
            result = result.and(self.add(id));
        }
        result
    }

    /// The listed identities, in order.
    pub fn identities(&self) -> Vec<String> {
        self.twins.iter().filter(|(_, entry)| entry.listed).map(|(id, _)| id.clone()).collect()
    }

    /// Retired identities whose file name is the one a wanted identity needs (only possible
    /// for hashed names); refuses two wanted identities with the same file name.
    fn stem_clashes(&self, wanted: &BTreeSet<&str>) -> Result<Vec<String>, TwinError> {
        let mut stems: HashMap<String, &str> = HashMap::with_capacity(wanted.len());
        for id in wanted {
            if let Some(other) = stems.insert(file_stem(id), id) {
                return Err(TwinError::Invalid(format!("identities {other:?} and {id:?} would share a twin file")));
            }
        }
        let clashing = self.twins.keys().filter(|id| !wanted.contains(id.as_str()));
        Ok(clashing.filter(|id| stems.contains_key(&file_stem(id))).cloned().collect())
    }

    /// Deletes the twins in `clashing`, then retired twins, longest retired first, until
    /// `adding` more fit within [`TWINS_MAX`].
    fn evict(&mut self, clashing: Vec<String>, adding: usize) -> Result<(), TwinError> {
        let mut victims = clashing;
        let mut retired: Vec<(u64, &String)> = (self.twins.iter())
            .filter(|(id, entry)| !entry.listed && !victims.contains(id))
            .map(|(id, entry)| (entry.retired_at, id))
            .collect();
        retired.sort();
        let excess = (self.twins.len() - victims.len() + adding).saturating_sub(TWINS_MAX);
        victims.extend(retired.into_iter().take(excess).map(|(_, id)| id.clone()));
        let mut result = Ok(());
        for id in &victims {
            if self.twins.remove(id).is_some_and(|entry| entry.persisted) {
                log::info!("twin of {id}, retired, deleted to make room for new identities");
                result = result.and(disk::remove(&self.dir, &format!("{}{TWIN_SUFFIX}", file_stem(id))));
            }
        }
        if victims.is_empty() {
            return result;
        }
        result.and(disk::sync_dir(&self.dir))
    }

    /// Gives a newly listed identity its twin.
    fn add(&mut self, id: &str) -> Result<(), TwinError> {
        let lost = self.lost.contains(&file_stem(id));
        let version = if lost { self.ceiling.max(1) } else { 1 };
        self.twins
            .insert(id.to_string(), Entry { twin: Twin::new(version), listed: true, retired_at: 0, persisted: false });
        if !lost {
            return Ok(());
        }
        log::warn!("twin of {id}: its file was damaged; it starts empty at version {version}");
        self.reserve(version)
    }
}
