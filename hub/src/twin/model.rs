//! One twin in memory and the pure operations on it: the GET body, a reported patch, a new
//! desired document, the patch a client still needs, a delivery to remember.

use std::sync::Arc;

use serde_json::{Map, Value};

use super::json::{diff_members, merge_keeping_nulls, merge_members, with_version, Document};
use super::limits::VERSION_MAX;
use super::validate::validate_document_size;

/// A desired document as a client saw it, with its version.
#[derive(Debug, Clone)]
pub struct Snapshot {
    pub version: u64,
    pub desired: Arc<Document>,
}

/// One identity's twin.
#[derive(Debug, Clone)]
pub struct Twin {
    pub desired: Arc<Document>,
    pub desired_version: u64,
    pub reported: Arc<Document>,
    pub reported_version: u64,
    /// The desired document the client last received (persisted).
    pub delivered: Option<Snapshot>,
    /// The desired document before the last change (memory only), so that a delivery of it
    /// marked after the change still records exactly what the client holds.
    pub previous: Option<Snapshot>,
    /// Reported changes the cloud has not acknowledged yet, merged into one patch (`null`
    /// members kept: they delete in the cloud); persisted, so a restart sends them too.
    pub pending_up: Option<Arc<Document>>,
}

impl Twin {
    /// An empty twin whose sections both start at `version`: 1 for a new identity, above any
    /// version ever written for one whose file was damaged.
    pub fn new(version: u64) -> Twin {
        Twin {
            desired: Arc::new(Map::new()),
            desired_version: version,
            reported: Arc::new(Map::new()),
            reported_version: version,
            delivered: None,
            previous: None,
            pending_up: None,
        }
    }

    /// The GET body: `{"desired":{…,"$version":n},"reported":{…,"$version":m}}`.
    pub fn body(&self) -> Value {
        let mut body = Map::new();
        body.insert("desired".to_string(), with_version(&self.desired, self.desired_version));
        body.insert("reported".to_string(), with_version(&self.reported, self.reported_version));
        Value::Object(body)
    }

    /// The twin after merging a (validated) reported patch, or `None` if the patch changes
    /// nothing. Refuses a result over the document limit.
    pub fn with_reported_patch(&self, id: &str, patch: &Document) -> Result<Option<Twin>, String> {
        let mut reported = Document::clone(&self.reported);
        merge_members(&mut reported, patch);
        if reported == *self.reported {
            return Ok(None);
        }
        validate_document_size(&format!("the reported properties of {id:?}"), &reported)?;
        let reported_version = next_version(id, self.reported_version)?;
        Ok(Some(Twin { reported: Arc::new(reported), reported_version, ..self.clone() }))
    }

    /// The twin with a new desired document and the patch from the old one (with its
    /// `$version`), or `None` if the document is unchanged.
    pub fn with_desired(&self, id: &str, desired: Document) -> Result<Option<(Twin, Value)>, String> {
        let patch = diff_members(&self.desired, &desired);
        if patch.is_empty() {
            return Ok(None);
        }
        let desired_version = next_version(id, self.desired_version)?;
        let previous = Snapshot { version: self.desired_version, desired: Arc::clone(&self.desired) };
        let twin = Twin { desired: Arc::new(desired), desired_version, previous: Some(previous), ..self.clone() };
        Ok(Some((twin, with_version(&patch, desired_version))))
    }

    /// The one patch that brings what the client last received up to the current desired
    /// document, or `None` if it holds the current version (or never received anything and
    /// there is nothing to receive).
    pub fn pending(&self) -> Option<Value> {
        let patch = match &self.delivered {
            Some(seen) if seen.version == self.desired_version && *seen.desired == *self.desired => return None,
            Some(seen) => diff_members(&seen.desired, &self.desired),
            None if self.desired.is_empty() => return None,
            None => diff_members(&Map::new(), &self.desired),
        };
        Some(with_version(&patch, self.desired_version))
    }

    /// The twin remembering that the client received desired version `version`, `None` if
    /// that changes nothing (an older or the same delivery, or a version no longer held).
    pub fn with_delivered(&self, version: u64) -> Option<Twin> {
        // A version already recorded changes nothing, unless the cloud replaced the document
        // under the same (or a lower) version number: then the current one is recorded.
        let replaced = |seen: &Snapshot| version == self.desired_version && *seen.desired != *self.desired;
        if self.delivered.as_ref().is_some_and(|seen| seen.version >= version && !replaced(seen)) {
            return None;
        }
        let snapshot = if version == self.desired_version {
            Snapshot { version, desired: Arc::clone(&self.desired) }
        } else {
            self.previous.as_ref().filter(|previous| previous.version == version)?.clone()
        };
        Some(Twin { delivered: Some(snapshot), ..self.clone() })
    }

    /// The twin with `patch` (a validated reported patch) merged into the changes waiting for
    /// the cloud, or `None` if they already hold it.
    pub fn with_pending_up(&self, patch: &Document) -> Option<Twin> {
        let mut pending = self.pending_up.as_deref().cloned().unwrap_or_default();
        merge_keeping_nulls(&mut pending, patch);
        if super::json::document_len(&pending) > super::limits::DOCUMENT_BYTES_MAX {
            // Deleted keys pile up as nulls: send the whole reported document instead (within
            // the limit; keys deleted meanwhile may then linger in the cloud's twin).
            pending = Document::clone(&self.reported);
        }
        if self.pending_up.as_deref() == Some(&pending) {
            return None;
        }
        Some(Twin { pending_up: Some(Arc::new(pending)), ..self.clone() })
    }

    /// The twin as the cloud holds it: its desired document and version win, and its reported
    /// properties with the changes not yet acknowledged merged on top (they are on their way).
    pub fn with_cloud(
        &self,
        desired: Document,
        desired_version: u64,
        reported: Document,
        reported_version: u64,
    ) -> Twin {
        let mut merged = reported;
        if let Some(pending) = &self.pending_up {
            merge_members(&mut merged, pending);
        }
        let previous = if desired == *self.desired && desired_version == self.desired_version {
            self.previous.clone()
        } else {
            Some(Snapshot { version: self.desired_version, desired: Arc::clone(&self.desired) })
        };
        Twin {
            desired: Arc::new(desired),
            desired_version,
            reported: Arc::new(merged),
            reported_version,
            previous,
            ..self.clone()
        }
    }

    /// The highest version this twin holds.
    pub fn version_max(&self) -> u64 {
        self.desired_version.max(self.reported_version)
    }
}

fn next_version(id: &str, version: u64) -> Result<u64, String> {
    match version.checked_add(1).filter(|next| *next <= VERSION_MAX) {
        Some(next) => Ok(next),
        None => Err(format!("the twin of {id:?} has reached the highest version, {VERSION_MAX}; it cannot change")),
    }
}
