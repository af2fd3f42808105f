//! The endpoint registry: endpoint names ("$upstream", "module:filter/input1") to the `u16`
//! ids records carry. Ids are handed out in order and never reused, and a new id is returned
//! only after the registry file naming it is durable, so no record on disk ever carries an id
//! that a restart could not map back to its name.
//!
//! Content: magic `TERG`, version u16, count u16, count × (name len u16, UTF-8 name), CRC-32C
//! u32 of everything before it. Kept in `endpoints.reg` as two checksummed copies ([`meta`]),
//! so a damaged copy is repaired from the other. (A file holding the content alone is the
//! format before copies; it is converted on open.) If both copies are lost, the ids found in
//! the segments get placeholder names (`lost-endpoint-{id}`): their records are kept and
//! counted, never discarded because a name is missing.
//!
//! [`meta`]: super::meta

use std::collections::HashMap;
use std::path::Path;

use super::crc32c;
use super::error::StoreError;
use super::meta::{SlotFile, SlotLoad, SLOT_OVERHEAD_BYTES};

/// Most endpoints: ids index fixed per-endpoint tables (checkpoints, segment endpoint sets), so
/// the count is bounded. A gateway's routes name a few dozen module inputs plus `$upstream`.
pub const ENDPOINTS_MAX: usize = 1024;
/// Longest endpoint name: "module:{module id ≤ 64}/{input name}" with room to spare.
pub const ENDPOINT_NAME_BYTES_MAX: usize = 256;
/// The registry's file name in the store directory.
pub const REGISTRY_FILE: &str = "endpoints.reg";

const MAGIC: &[u8; 4] = b"TERG";
const VERSION: u16 = 1;
/// Largest valid registry content, checked before reading it.
const FILE_BYTES_MAX: usize = 4 + 2 + 2 + ENDPOINTS_MAX * (2 + ENDPOINT_NAME_BYTES_MAX) + 4;
/// Slot size of a new registry file: a few dozen endpoints; grows (doubling) when outgrown.
const SLOT_BYTES_MIN: usize = 4096;
/// Largest slot: the largest content.
const SLOT_BYTES_MAX: usize = (FILE_BYTES_MAX + SLOT_OVERHEAD_BYTES).next_power_of_two();
/// Name given to an endpoint id whose name was lost with both copies of the registry.
pub const PLACEHOLDER_PREFIX: &str = "lost-endpoint-";

const _: () = assert!(ENDPOINTS_MAX <= u16::MAX as usize + 1);
const _: () = assert!(ENDPOINT_NAME_BYTES_MAX <= u16::MAX as usize);

/// How the registry was found on open.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum RegistryLoad {
    /// Read back, with this many endpoints.
    Loaded { endpoints: usize },
    /// No file: a new store.
    #[default]
    Created,
    /// One copy was damaged and was repaired from the other (the reason says how).
    Repaired { endpoints: usize, reason: String },
    /// Both copies were unreadable (the reason says why): the ids found in the segments got
    /// placeholder names, so their records are kept but cannot be delivered.
    Lost { placeholders: usize, reason: String },
}

/// Endpoint names and their ids (the index in `names`), and the file that keeps them.
#[derive(Debug, Default)]
pub struct Registry {
    names: Vec<String>,
    ids: HashMap<String, u16>,
    file: Option<SlotFile>,
}

impl Registry {
    /// Reads the registry in `dir`, creating the file if it is missing. If both copies are
    /// lost the registry starts empty; call [`Registry::fill_placeholders`] once the segments
    /// have told which ids exist.
    pub fn load(dir: &Path) -> Result<(Registry, RegistryLoad), StoreError> {
        let legacy = |bytes: &[u8]| Registry::decode(bytes).ok().map(|_| bytes.to_vec());
        let (file, content, load) = SlotFile::open(dir, REGISTRY_FILE, SLOT_BYTES_MIN, SLOT_BYTES_MAX, legacy)?;
        let decoded = content.map(|bytes| Registry::decode(&bytes));
        let (mut registry, load) = match (decoded, load) {
            (None, SlotLoad::Lost(reason)) => (Registry::default(), RegistryLoad::Lost { placeholders: 0, reason }),
            (None, _) => (Registry::default(), RegistryLoad::Created),
            // Both copies passed their checksums but the content does not parse: a bug or a
            // file from a newer version, not damage; treated as lost so nothing is discarded.
            (Some(Err(reason)), _) => {
                (Registry::default(), RegistryLoad::Lost { placeholders: 0, reason: reason.to_string() })
            }
            (Some(Ok(registry)), SlotLoad::Repaired(reason)) => {
                let endpoints = registry.len();
                (registry, RegistryLoad::Repaired { endpoints, reason })
            }
            (Some(Ok(registry)), _) => {
                let endpoints = registry.len();
                (registry, RegistryLoad::Loaded { endpoints })
            }
        };
        registry.file = Some(file);
        Ok((registry, load))
    }

    /// Names ids `0..count` that have no name with placeholders (after both registry copies
    /// were lost), and writes the registry; returns how many it named.
    pub fn fill_placeholders(&mut self, count: usize) -> Result<usize, StoreError> {
        let before = self.names.len();
        while self.names.len() < count.min(ENDPOINTS_MAX) {
            let id = u16::try_from(self.names.len()).map_err(|_| StoreError::TooManyEndpoints)?;
            let name = format!("{PLACEHOLDER_PREFIX}{id}");
            self.ids.insert(name.clone(), id);
            self.names.push(name);
        }
        if self.names.len() > before {
            self.persist()?;
        }
        Ok(self.names.len() - before)
    }

    fn persist(&mut self) -> Result<(), StoreError> {
        let content = self.encode();
        match self.file.as_mut() {
            // Both copies: a fallback to the previous content would lose the newest name.
            Some(file) => file.write_both(&content),
            None => Ok(()),
        }
    }

    pub fn len(&self) -> usize {
        self.names.len()
    }

    pub fn lookup(&self, name: &str) -> Option<u16> {
        self.ids.get(name).copied()
    }

    pub fn name(&self, id: u16) -> Option<&str> {
        self.names.get(usize::from(id)).map(String::as_str)
    }

    /// The id of `name`, registering it (durably) if it is new.
    pub fn register(&mut self, name: &str) -> Result<u16, StoreError> {
        if let Some(id) = self.lookup(name) {
            return Ok(id);
        }
        if name.is_empty() || name.len() > ENDPOINT_NAME_BYTES_MAX {
            return Err(StoreError::BadEndpointName(name.chars().take(ENDPOINT_NAME_BYTES_MAX).collect()));
        }
        if self.names.len() >= ENDPOINTS_MAX {
            return Err(StoreError::TooManyEndpoints);
        }
        let id = u16::try_from(self.names.len()).map_err(|_| StoreError::TooManyEndpoints)?;
        self.names.push(name.to_string());
        if let Err(error) = self.persist() {
            self.names.pop();
            return Err(error);
        }
        self.ids.insert(name.to_string(), id);
        Ok(id)
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(16 + self.names.iter().map(|name| 2 + name.len()).sum::<usize>());
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&VERSION.to_le_bytes());
        out.extend_from_slice(&u16::try_from(self.names.len()).unwrap_or(u16::MAX).to_le_bytes());
        for name in &self.names {
            out.extend_from_slice(&u16::try_from(name.len()).unwrap_or(u16::MAX).to_le_bytes());
            out.extend_from_slice(name.as_bytes());
        }
        let crc = crc32c::checksum(&out);
        out.extend_from_slice(&crc.to_le_bytes());
        out
    }

    pub fn decode(bytes: &[u8]) -> Result<Registry, &'static str> {
        if bytes.len() > FILE_BYTES_MAX {
            return Err("registry file too large");
        }
        let Some(split) = bytes.len().checked_sub(4) else {
            return Err("registry file truncated");
        };
        let (content, crc) = bytes.split_at(split);
        if crc32c::checksum(content) != u32::from_le_bytes([crc[0], crc[1], crc[2], crc[3]]) {
            return Err("registry checksum mismatch");
        }
        let mut rest = content;
        if take(&mut rest, 4)? != MAGIC {
            return Err("registry: bad magic");
        }
        if read_u16(&mut rest)? != VERSION {
            return Err("registry: unknown version");
        }
        let count = usize::from(read_u16(&mut rest)?);
        if count > ENDPOINTS_MAX {
            return Err("registry: too many endpoints");
        }
        let mut registry = Registry { names: Vec::with_capacity(count), ..Registry::default() };
        for id in 0..count {
            let len = usize::from(read_u16(&mut rest)?);
            if len == 0 || len > ENDPOINT_NAME_BYTES_MAX {
                return Err("registry: bad name length");
            }
            let name = std::str::from_utf8(take(&mut rest, len)?).map_err(|_| "registry: name not UTF-8")?;
            let id = u16::try_from(id).map_err(|_| "registry: too many endpoints")?;
            if registry.ids.insert(name.to_string(), id).is_some() {
                return Err("registry: duplicate name");
            }
            registry.names.push(name.to_string());
        }
        if !rest.is_empty() {
            return Err("registry: bytes after the last name");
        }
        Ok(registry)
    }
}

fn take<'a>(rest: &mut &'a [u8], count: usize) -> Result<&'a [u8], &'static str> {
    if rest.len() < count {
        return Err("registry file truncated");
    }
    let (taken, remaining) = rest.split_at(count);
    *rest = remaining;
    Ok(taken)
}

fn read_u16(rest: &mut &[u8]) -> Result<u16, &'static str> {
    let bytes = take(rest, 2)?;
    Ok(u16::from_le_bytes([bytes[0], bytes[1]]))
}
