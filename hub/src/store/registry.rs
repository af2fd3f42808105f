//! The endpoint registry: endpoint names ("$upstream", "module:filter/input1") to the `u16`
//! ids records carry. Ids are handed out in order and never reused, and a new id is returned
//! only after the registry file naming it is durable, so no record on disk ever carries an id
//! that a restart could not map back to its name.
//!
//! File `endpoints.reg`: magic `TERG`, version u16, count u16, count × (name len u16, UTF-8
//! name), CRC-32C u32 of everything before it. Replaced atomically on every registration.

use std::collections::HashMap;
use std::path::Path;

use super::crc32c;
use super::error::StoreError;
use super::fsio;

/// Most endpoints: ids index fixed per-endpoint tables (checkpoints, segment endpoint sets), so
/// the count is bounded. A gateway's routes name a few dozen module inputs plus `$upstream`.
pub const ENDPOINTS_MAX: usize = 1024;
/// Longest endpoint name: "module:{module id ≤ 64}/{input name}" with room to spare.
pub const ENDPOINT_NAME_BYTES_MAX: usize = 256;
/// The registry's file name in the store directory.
pub const REGISTRY_FILE: &str = "endpoints.reg";

const MAGIC: &[u8; 4] = b"TERG";
const VERSION: u16 = 1;
/// Largest valid registry file, checked before reading it.
const FILE_BYTES_MAX: usize = 4 + 2 + 2 + ENDPOINTS_MAX * (2 + ENDPOINT_NAME_BYTES_MAX) + 4;

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
    /// The file was unreadable; a new registry was started (the reason says why).
    Reset(String),
}

/// Endpoint names and their ids (the index in `names`).
#[derive(Debug, Default)]
pub struct Registry {
    names: Vec<String>,
    ids: HashMap<String, u16>,
}

impl Registry {
    /// Reads the registry in `dir`; a missing or unreadable file gives an empty registry.
    pub fn load(dir: &Path) -> Result<(Registry, RegistryLoad), StoreError> {
        match fsio::read_bounded(&dir.join(REGISTRY_FILE), FILE_BYTES_MAX)? {
            None => Ok((Registry::default(), RegistryLoad::Created)),
            Some(bytes) => match Registry::decode(&bytes) {
                Ok(registry) => {
                    let endpoints = registry.len();
                    Ok((registry, RegistryLoad::Loaded { endpoints }))
                }
                Err(reason) => Ok((Registry::default(), RegistryLoad::Reset(reason.to_string()))),
            },
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

    /// The id of `name`, registering it (durably, in `dir`) if it is new.
    pub fn register(&mut self, dir: &Path, name: &str) -> Result<u16, StoreError> {
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
        if let Err(error) = fsio::replace_atomically(dir, REGISTRY_FILE, &self.encode()) {
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
        let mut registry = Registry::default();
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
