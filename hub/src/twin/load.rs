//! Opening the twin directory: leftover temporary files removed, every twin file loaded, damaged
//! ones moved aside, and the version ceiling read or rebuilt.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::fs;
use std::path::{Path, PathBuf};

use super::disk;
use super::error::TwinError;
use super::file::{decode_twin, decode_versions, file_stem, DAMAGED_SUFFIX, TEMP_SUFFIX, TWIN_SUFFIX, VERSIONS_FILE};
use super::limits::{DIR_ENTRIES_MAX, TWINS_MAX, TWIN_FILE_BYTES_MAX};
use super::model::Twin;
use super::state::{Entry, State};

/// Bytes of a valid `versions` file, with room to spare.
const VERSIONS_FILE_BYTES_MAX: usize = 256;

/// What opening the twin directory found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TwinsReport {
    /// Twins read back intact.
    pub loaded: usize,
    /// Twin files that could not be read back, now renamed `*.twin.damaged`: the twin of
    /// their identity starts empty at the version ceiling (above any version it had).
    pub damaged: Vec<DamagedFile>,
    /// Identities whose twin will be recreated that way when listed (damaged now or earlier).
    pub lost: usize,
    /// Temporary files of interrupted writes, removed (the previous file is intact).
    pub temp_files_removed: usize,
    /// Files not loaded: twin files beyond [`TWINS_MAX`], names the hub does not write.
    pub skipped: Vec<String>,
    /// Directory entries beyond [`DIR_ENTRIES_MAX`], not looked at.
    pub unread_entries: usize,
    pub versions: VersionsLoad,
}

/// One damaged twin file and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DamagedFile {
    pub file: String,
    pub reason: String,
}

/// How the version ceiling was found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum VersionsLoad {
    /// Read back.
    Intact,
    /// No file and no twins: a new directory.
    #[default]
    Created,
    /// Missing or damaged (the reason says how) with twins present: rebuilt from the twins
    /// read back. A twin recreated from a damaged file may then repeat versions it had.
    Rebuilt(String),
}

impl fmt::Display for TwinsReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "twins: {} loaded, {} damaged", self.loaded, self.damaged.len())?;
        for damaged in &self.damaged {
            write!(f, " ({}: {})", damaged.file, damaged.reason)?;
        }
        write!(f, ", {} to recreate, {} temporary files removed", self.lost, self.temp_files_removed)?;
        write!(f, ", {} files skipped, {} entries unread", self.skipped.len(), self.unread_entries)?;
        match &self.versions {
            VersionsLoad::Intact => write!(f, ", versions intact"),
            VersionsLoad::Created => write!(f, ", new directory"),
            VersionsLoad::Rebuilt(reason) => write!(f, ", versions rebuilt ({reason})"),
        }
    }
}

impl State {
    /// Opens (creating) `dir` and loads it.
    pub fn open(dir: PathBuf) -> Result<(State, TwinsReport), TwinError> {
        disk::create_dir(&dir)?;
        let mut report = TwinsReport::default();
        let names = list_names(&dir, &mut report)?;
        let mut state = State {
            dir,
            twins: BTreeMap::new(),
            lost: BTreeSet::new(),
            ceiling: 1,
            generation: 0,
            track_upstream: false,
        };
        state.remove_temp_files(&names, &mut report)?;
        let versions = state.read_versions();
        for name in &names {
            if let Some(stem) = name.strip_suffix(TWIN_SUFFIX) {
                state.load_twin(name, stem, &mut report);
            } else if !name.ends_with(DAMAGED_SUFFIX) && !name.ends_with(TEMP_SUFFIX) && name != VERSIONS_FILE {
                report.skipped.push(name.clone());
            }
        }
        state.note_lost(&names, &mut report);
        state.settle_ceiling(versions, &mut report)?;
        Ok((state, report))
    }

    fn remove_temp_files(&self, names: &[String], report: &mut TwinsReport) -> Result<(), TwinError> {
        for name in names.iter().filter(|name| name.ends_with(TEMP_SUFFIX)) {
            disk::remove(&self.dir, name)?;
            report.temp_files_removed += 1;
        }
        if report.temp_files_removed > 0 {
            disk::sync_dir(&self.dir)?;
        }
        Ok(())
    }

    /// The ceiling in the `versions` file: `Ok(None)` if there is none, `Err` if it is damaged.
    fn read_versions(&self) -> Result<Option<u64>, String> {
        match disk::read_bounded(&self.dir.join(VERSIONS_FILE), VERSIONS_FILE_BYTES_MAX) {
            Ok(None) => Ok(None),
            Ok(Some(bytes)) => decode_versions(&bytes).map(Some),
            Err(error) => Err(error.to_string()),
        }
    }

    fn load_twin(&mut self, name: &str, stem: &str, report: &mut TwinsReport) {
        if self.twins.len() >= TWINS_MAX {
            report.skipped.push(name.to_string());
            return;
        }
        match read_twin(&self.dir.join(name), stem) {
            Ok((id, twin)) => {
                self.twins.insert(id, Entry { twin, listed: false, retired_at: 0, persisted: true });
                report.loaded += 1;
            }
            Err(reason) => {
                log::warn!(
                    "twin file {name} is damaged ({reason}): kept as {name}{DAMAGED_SUFFIX}, the twin starts empty"
                );
                report.damaged.push(DamagedFile { file: name.to_string(), reason });
                self.lost.insert(stem.to_string());
                // Not fatal: the twin's next write replaces the damaged file anyway.
                if let Err(error) = disk::rename(&self.dir, name, &format!("{name}{DAMAGED_SUFFIX}")) {
                    log::warn!("{error}");
                }
            }
        }
    }

    /// Stems with a damaged copy left by an earlier open and still no valid file.
    fn note_lost(&mut self, names: &[String], report: &mut TwinsReport) {
        let loaded: BTreeSet<String> = self.twins.keys().map(|id| file_stem(id)).collect();
        let damaged = names.iter().filter_map(|name| name.strip_suffix(DAMAGED_SUFFIX)?.strip_suffix(TWIN_SUFFIX));
        for stem in damaged.filter(|stem| !loaded.contains(*stem)) {
            self.lost.insert(stem.to_string());
        }
        report.lost = self.lost.len();
    }

    /// Sets the ceiling above every version read back, writing it if the file was wrong.
    fn settle_ceiling(
        &mut self,
        versions: Result<Option<u64>, String>,
        report: &mut TwinsReport,
    ) -> Result<(), TwinError> {
        let highest = self.twins.values().map(|entry| entry.twin.version_max()).max();
        report.versions = match (versions, highest) {
            (Ok(Some(ceiling)), _) => {
                self.ceiling = ceiling;
                VersionsLoad::Intact
            }
            (Ok(None), None) if self.lost.is_empty() => VersionsLoad::Created,
            (Ok(None), _) => VersionsLoad::Rebuilt("the versions file is missing".to_string()),
            (Err(reason), _) => VersionsLoad::Rebuilt(format!("the versions file is damaged: {reason}")),
        };
        if let VersionsLoad::Rebuilt(reason) = &report.versions {
            log::warn!("twins: {reason}; versions continue above those of the twins read back");
        }
        match highest {
            Some(highest) => self.reserve(highest),
            None => Ok(()),
        }
    }
}

/// The names in `dir` the hub may have written (UTF-8), sorted, at most [`DIR_ENTRIES_MAX`].
fn list_names(dir: &Path, report: &mut TwinsReport) -> Result<Vec<String>, TwinError> {
    let entries = fs::read_dir(dir).map_err(|error| TwinError::io("list", dir, error))?;
    let mut names = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|error| TwinError::io("list", dir, error))?;
        if names.len() >= DIR_ENTRIES_MAX {
            report.unread_entries += 1;
            continue;
        }
        match entry.file_name().into_string() {
            Ok(name) => names.push(name),
            Err(name) => report.skipped.push(name.to_string_lossy().into_owned()),
        }
    }
    names.sort();
    Ok(names)
}

/// One twin file read and checked: it must decode and be the file of the identity it names.
fn read_twin(path: &Path, stem: &str) -> Result<(String, Twin), String> {
    let bytes = match disk::read_bounded(path, TWIN_FILE_BYTES_MAX) {
        Ok(Some(bytes)) if bytes.len() <= TWIN_FILE_BYTES_MAX => bytes,
        Ok(Some(_)) => return Err(format!("over {TWIN_FILE_BYTES_MAX} bytes")),
        Ok(None) => return Err("vanished while the directory was read".to_string()),
        Err(error) => return Err(error.to_string()),
    };
    let (id, twin) = decode_twin(&bytes)?;
    if file_stem(&id) != stem {
        return Err(format!("it holds the twin of {id:?}, whose file has another name"));
    }
    Ok((id, twin))
}
