//! Container images: references, registry documents and the registry client.
//!
//! - [`reference`]: `registry/repository:tag@digest` parsed and normalized (pure).
//! - [`oci`]: index, manifest and config documents; platform choice; chain IDs (pure).
//! - [`registry`]: the distribution API client with token auth and blob verification (IO).

pub mod oci;
pub mod reference;
pub mod registry;
