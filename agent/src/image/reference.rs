//! Image references as Docker and IoT Edge deployments write them, normalized the way
//! containerd and Docker name images.
//!
//! `busybox` → registry `docker.io`, repository `library/busybox`, tag `latest`;
//! `localhost:5000/tests/busybox:v1`; `mcr.microsoft.com/azureiotedge-simulated-temperature-sensor:1.0`;
//! `host/repo@sha256:<64 hex>` (a pin: only content with that digest is accepted).
//! Rules follow `github.com/distribution/reference` (normalize.go): the first path component is a
//! registry when it contains `.` or `:` or is `localhost`; Docker Hub is `registry-1.docker.io`
//! on the wire and `docker.io` in names.

use std::fmt;

/// Longest reference accepted (distribution's `NameTotalLengthMax` is 255 for the name; a tag
/// adds up to 128 and a digest 71).
pub const REFERENCE_BYTES_MAX: usize = 512;

/// A parsed, normalized image reference.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reference {
    /// Registry host (with port), as in names: `docker.io`, `localhost:5000`.
    pub registry: String,
    /// Repository path: `library/busybox`.
    pub repository: String,
    /// Tag; `latest` when neither tag nor digest is given; `None` with a digest only.
    pub tag: Option<String>,
    /// `sha256:<64 hex>` when the reference pins the manifest.
    pub digest: Option<String>,
}

/// Why a reference is not valid.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReferenceError(pub String);

impl fmt::Display for ReferenceError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ReferenceError {}

fn err(text: &str, why: impl fmt::Display) -> ReferenceError {
    ReferenceError(format!("image reference {text:?}: {why}"))
}

/// Checks `sha256:<64 lowercase hex>`, the only digest algorithm accepted.
pub fn valid_digest(digest: &str) -> bool {
    digest
        .strip_prefix("sha256:")
        .is_some_and(|hex| hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)))
}

impl Reference {
    /// Parses and normalizes `text`.
    ///
    /// # Errors
    /// Empty, too long, upper-case or otherwise invalid repository components, a bad tag, or a
    /// digest that is not `sha256:` + 64 lowercase hex digits.
    pub fn parse(text: &str) -> Result<Reference, ReferenceError> {
        if text.is_empty() {
            return Err(err(text, "empty"));
        }
        if text.len() > REFERENCE_BYTES_MAX {
            return Err(err(text, format!("longer than {REFERENCE_BYTES_MAX} bytes")));
        }
        let (rest, digest) = match text.split_once('@') {
            Some((rest, digest)) => {
                if !valid_digest(digest) {
                    return Err(err(text, "the digest must be sha256: followed by 64 lowercase hex digits"));
                }
                (rest, Some(digest.to_owned()))
            }
            None => (text, None),
        };
        // A tag is after the last ':' that comes after the last '/' (a ':' before is a port).
        let last_slash = rest.rfind('/').map_or(0, |i| i + 1);
        let (name, tag) = match rest[last_slash..].find(':') {
            Some(i) => (&rest[..last_slash + i], Some(&rest[last_slash + i + 1..])),
            None => (rest, None),
        };
        if let Some(tag) = tag {
            let ok = !tag.is_empty()
                && tag.len() <= 128
                && tag.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'.' || b == b'-')
                && !tag.starts_with(['.', '-']);
            if !ok {
                return Err(err(text, format!("invalid tag {tag:?}")));
            }
        }
        let (registry, repository) = match name.split_once('/') {
            Some((first, rest)) if first.contains(['.', ':']) || first == "localhost" => {
                (first.to_owned(), rest.to_owned())
            }
            _ => ("docker.io".to_owned(), name.to_owned()),
        };
        let registry = if registry == "index.docker.io" { "docker.io".to_owned() } else { registry };
        let repository = if registry == "docker.io" && !repository.contains('/') {
            format!("library/{repository}")
        } else {
            repository
        };
        if registry.is_empty() || !registry.bytes().all(|b| b.is_ascii_alphanumeric() || b".-:[]".contains(&b)) {
            return Err(err(text, format!("invalid registry {registry:?}")));
        }
        for component in repository.split('/') {
            let ok = !component.is_empty()
                && component
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'.' || b == b'_' || b == b'-')
                && component.as_bytes()[0].is_ascii_alphanumeric()
                && component.as_bytes()[component.len() - 1].is_ascii_alphanumeric();
            if !ok {
                return Err(err(
                    text,
                    format!("invalid repository component {component:?} (lowercase letters, digits, . _ -)"),
                ));
            }
        }
        let tag = match (tag, &digest) {
            (Some(tag), _) => Some(tag.to_owned()),
            (None, Some(_)) => None,
            (None, None) => Some("latest".to_owned()),
        };
        Ok(Reference { registry, repository, tag, digest })
    }

    /// The name containerd stores the image under (what `ctr images ls` shows):
    /// `docker.io/library/busybox:latest`, or `…@sha256:…` for a pin.
    pub fn name(&self) -> String {
        match (&self.digest, &self.tag) {
            (Some(digest), _) => format!("{}/{}@{digest}", self.registry, self.repository),
            (None, Some(tag)) => format!("{}/{}:{tag}", self.registry, self.repository),
            (None, None) => format!("{}/{}", self.registry, self.repository),
        }
    }

    /// What to ask the registry's manifest endpoint for: the digest when pinned, else the tag.
    pub fn manifest_ref(&self) -> &str {
        self.digest.as_deref().or(self.tag.as_deref()).unwrap_or("latest")
    }

    /// Host to connect to: Docker Hub's API lives at `registry-1.docker.io`.
    pub fn api_host(&self) -> &str {
        if self.registry == "docker.io" {
            "registry-1.docker.io"
        } else {
            &self.registry
        }
    }
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn docker_hub_short_names_are_normalized() {
        let r = Reference::parse("busybox").unwrap();
        assert_eq!(r.name(), "docker.io/library/busybox:latest");
        assert_eq!(r.api_host(), "registry-1.docker.io");
        assert_eq!(Reference::parse("user/app:1.0").unwrap().name(), "docker.io/user/app:1.0");
    }

    #[test]
    fn registries_ports_tags_and_digests() {
        let r = Reference::parse("localhost:5000/tests/busybox:v1").unwrap();
        assert_eq!(
            (r.registry.as_str(), r.repository.as_str(), r.tag.as_deref()),
            ("localhost:5000", "tests/busybox", Some("v1"))
        );
        let r = Reference::parse("mcr.microsoft.com/azureiotedge-simulated-temperature-sensor:1.0").unwrap();
        assert_eq!(r.registry, "mcr.microsoft.com");
        assert_eq!(r.manifest_ref(), "1.0");
        let pin = format!("127.0.0.1:5000/a/b@sha256:{}", "a".repeat(64));
        let r = Reference::parse(&pin).unwrap();
        assert_eq!(r.tag, None);
        assert_eq!(r.manifest_ref(), format!("sha256:{}", "a".repeat(64)));
        assert_eq!(r.name(), pin);
        let r = Reference::parse("localhost:5000/a:v2").unwrap();
        assert_eq!((r.registry.as_str(), r.repository.as_str()), ("localhost:5000", "a"));
    }

    #[test]
    fn invalid_references_name_the_problem() {
        for (text, needle) in [
            ("", "empty"),
            ("Busybox", "invalid repository component"),
            ("a/b:", "invalid tag"),
            ("a@sha256:abc", "digest"),
            ("a@md5:00", "digest"),
            ("a//b", "invalid repository component"),
            ("a:-x", "invalid tag"),
        ] {
            let e = Reference::parse(text).unwrap_err();
            assert!(e.to_string().contains(needle), "{text}: {e}");
        }
        assert!(Reference::parse(&"a".repeat(600)).unwrap_err().to_string().contains("longer"));
    }
}
