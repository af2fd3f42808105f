//! OCI and Docker image documents: indexes (multi-arch lists), manifests and image configs,
//! read into typed values (pure code), plus the platform choice and the snapshot chain IDs.
//!
//! Both OCI (`application/vnd.oci.image.*`) and Docker schema 2
//! (`application/vnd.docker.distribution.manifest.*`) media types are accepted; Docker schema 1
//! (signed manifests, long deprecated) is refused with a clear error.

use std::fmt;

use serde_json::Value;

/// Largest manifest, index or config accepted, in bytes (containerd's `MaxManifestSize` is
/// 4 MiB; real ones are a few KiB).
pub const DOCUMENT_BYTES_MAX: usize = 4 * 1024 * 1024;
/// Most layers in one image (Docker's limit is 127 on overlayfs).
pub const LAYERS_MAX: usize = 128;
/// Most entries of an index.
pub const INDEX_ENTRIES_MAX: usize = 256;

pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
pub const OCI_LAYER: &str = "application/vnd.oci.image.layer.v1.tar";
pub const OCI_LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
pub const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub const DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";
pub const DOCKER_LAYER_GZIP: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";

/// The `Accept` header for manifest requests: every manifest type we can read.
pub const MANIFEST_ACCEPT: &str = "application/vnd.oci.image.index.v1+json, \
application/vnd.oci.image.manifest.v1+json, \
application/vnd.docker.distribution.manifest.list.v2+json, \
application/vnd.docker.distribution.manifest.v2+json";

/// Layer media types the diff service can apply (containerd's walking differ: tar, gzip, zstd).
const LAYER_TYPES: &[&str] = &[
    OCI_LAYER,
    OCI_LAYER_GZIP,
    "application/vnd.oci.image.layer.v1.tar+zstd",
    DOCKER_LAYER_GZIP,
    "application/vnd.docker.image.rootfs.diff.tar",
];

/// A content descriptor: what a document points at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Descriptor {
    pub media_type: String,
    pub digest: String,
    pub size: u64,
    pub platform: Option<Platform>,
}

/// An OS/architecture pair, with the variant for ARM (`v6`, `v7`, `v8`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Platform {
    pub os: String,
    pub architecture: String,
    pub variant: Option<String>,
}

impl fmt::Display for Platform {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.os, self.architecture)?;
        match &self.variant {
            Some(variant) => write!(f, "/{variant}"),
            None => Ok(()),
        }
    }
}

/// The platform this binary runs on, in OCI's spelling (Go's GOARCH).
pub fn host_platform() -> Platform {
    let (architecture, variant) = match std::env::consts::ARCH {
        "x86_64" => ("amd64", None),
        "aarch64" => ("arm64", None),
        "arm" => ("arm", Some("v7")),
        "x86" => ("386", None),
        other => (other, None),
    };
    Platform { os: "linux".to_owned(), architecture: architecture.to_owned(), variant: variant.map(str::to_owned) }
}

/// A manifest document: an index of per-platform manifests, or one image's manifest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Manifest {
    Index(Vec<Descriptor>),
    Image { config: Descriptor, layers: Vec<Descriptor> },
}

/// What an image's config says about how to run it, and its layers' uncompressed digests.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ImageConfig {
    pub architecture: String,
    pub os: String,
    pub entrypoint: Vec<String>,
    pub cmd: Vec<String>,
    pub env: Vec<(String, String)>,
    pub working_dir: Option<String>,
    pub user: Option<String>,
    /// `rootfs.diff_ids`: sha256 of each layer uncompressed, base first.
    pub diff_ids: Vec<String>,
}

/// Why a document could not be read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DocumentError(pub String);

impl fmt::Display for DocumentError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for DocumentError {}

fn doc_err(what: &str, why: impl fmt::Display) -> DocumentError {
    DocumentError(format!("{what}: {why}"))
}

fn parse_json(what: &str, bytes: &[u8]) -> Result<serde_json::Map<String, Value>, DocumentError> {
    if bytes.len() > DOCUMENT_BYTES_MAX {
        return Err(doc_err(what, format!("{} bytes, at most {DOCUMENT_BYTES_MAX}", bytes.len())));
    }
    match serde_json::from_slice(bytes) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(_) => Err(doc_err(what, "not a JSON object")),
        Err(e) => Err(doc_err(what, format!("invalid JSON: {e}"))),
    }
}

fn string(map: &serde_json::Map<String, Value>, key: &str, what: &str) -> Result<String, DocumentError> {
    match map.get(key) {
        Some(Value::String(s)) => Ok(s.clone()),
        Some(_) => Err(doc_err(what, format!("{key} is not a string"))),
        None => Err(doc_err(what, format!("{key} is missing"))),
    }
}

fn descriptor(value: &Value, what: &str) -> Result<Descriptor, DocumentError> {
    let Value::Object(map) = value else { return Err(doc_err(what, "descriptor is not an object")) };
    let media_type = string(map, "mediaType", what)?;
    let digest = string(map, "digest", what)?;
    if !super::reference::valid_digest(&digest) {
        return Err(doc_err(what, format!("digest {digest:?} is not sha256:<64 hex>")));
    }
    let size = map.get("size").and_then(Value::as_u64).ok_or_else(|| doc_err(what, "size is missing"))?;
    let platform = match map.get("platform") {
        Some(Value::Object(p)) => Some(Platform {
            os: string(p, "os", what)?,
            architecture: string(p, "architecture", what)?,
            variant: p.get("variant").and_then(Value::as_str).map(str::to_owned),
        }),
        _ => None,
    };
    Ok(Descriptor { media_type, digest, size, platform })
}

/// Reads a manifest or index. `content_type` is the registry's `Content-Type` (or the
/// descriptor's media type); the document's own `mediaType` wins when present.
///
/// # Errors
/// Invalid JSON, an unknown or schema-1 media type, missing fields, bad digests, too many
/// entries, or a layer type the diff service cannot apply.
pub fn parse_manifest(bytes: &[u8], content_type: &str) -> Result<Manifest, DocumentError> {
    let what = "manifest";
    let map = parse_json(what, bytes)?;
    let media_type = map.get("mediaType").and_then(Value::as_str).unwrap_or(content_type).to_owned();
    let media_type = if media_type.is_empty() {
        // OCI allows omitting mediaType: an index has `manifests`, a manifest `config`.
        if map.contains_key("manifests") {
            OCI_INDEX.to_owned()
        } else {
            OCI_MANIFEST.to_owned()
        }
    } else {
        media_type
    };
    match media_type.as_str() {
        OCI_INDEX | DOCKER_LIST => {
            let Some(Value::Array(entries)) = map.get("manifests") else {
                return Err(doc_err("index", "manifests is missing"));
            };
            if entries.len() > INDEX_ENTRIES_MAX {
                return Err(doc_err("index", format!("{} entries, at most {INDEX_ENTRIES_MAX}", entries.len())));
            }
            entries.iter().map(|e| descriptor(e, "index")).collect::<Result<_, _>>().map(Manifest::Index)
        }
        OCI_MANIFEST | DOCKER_MANIFEST => {
            let config = descriptor(map.get("config").unwrap_or(&Value::Null), "manifest config")?;
            let Some(Value::Array(layers)) = map.get("layers") else {
                return Err(doc_err(what, "layers is missing"));
            };
            if layers.len() > LAYERS_MAX {
                return Err(doc_err(what, format!("{} layers, at most {LAYERS_MAX}", layers.len())));
            }
            let layers: Vec<Descriptor> =
                layers.iter().map(|l| descriptor(l, "manifest layer")).collect::<Result<_, _>>()?;
            if let Some(layer) = layers.iter().find(|l| !LAYER_TYPES.contains(&l.media_type.as_str())) {
                return Err(doc_err(
                    what,
                    format!("layer {} has unsupported media type {}", layer.digest, layer.media_type),
                ));
            }
            Ok(Manifest::Image { config, layers })
        }
        other if other.contains("manifest.v1") => Err(doc_err(
            what,
            format!("Docker schema 1 ({other}) is not supported; push the image again with a current client"),
        )),
        other => Err(doc_err(what, format!("unsupported media type {other:?}"))),
    }
}

/// Picks the entry for `host` from an index: same OS and architecture, and the same variant
/// when both say one (an entry without variant matches any; `arm64` treats `v8` as none).
pub fn select_platform<'a>(entries: &'a [Descriptor], host: &Platform) -> Option<&'a Descriptor> {
    let variant_ok = |p: &Platform| match (&p.variant, &host.variant) {
        (Some(a), Some(b)) => a == b,
        (Some(v), None) => host.architecture == "arm64" && v == "v8",
        _ => true,
    };
    entries.iter().find(|d| {
        d.platform.as_ref().is_some_and(|p| p.os == host.os && p.architecture == host.architecture && variant_ok(p))
    })
}

fn strings(value: Option<&Value>) -> Vec<String> {
    match value {
        Some(Value::Array(items)) => items.iter().filter_map(Value::as_str).map(str::to_owned).collect(),
        Some(Value::String(s)) => vec!["/bin/sh".to_owned(), "-c".to_owned(), s.clone()],
        _ => Vec::new(),
    }
}

/// Reads an image config.
///
/// # Errors
/// Invalid JSON, missing `rootfs.diff_ids`, or a diff ID that is not a sha256 digest.
pub fn parse_config(bytes: &[u8]) -> Result<ImageConfig, DocumentError> {
    let what = "image config";
    let map = parse_json(what, bytes)?;
    let run = match map.get("config") {
        Some(Value::Object(c)) => c.clone(),
        _ => serde_json::Map::new(),
    };
    let diff_ids: Vec<String> = match map.get("rootfs").and_then(|r| r.get("diff_ids")) {
        Some(Value::Array(ids)) => ids.iter().filter_map(Value::as_str).map(str::to_owned).collect(),
        _ => return Err(doc_err(what, "rootfs.diff_ids is missing")),
    };
    if let Some(bad) = diff_ids.iter().find(|d| !super::reference::valid_digest(d)) {
        return Err(doc_err(what, format!("diff ID {bad:?} is not sha256:<64 hex>")));
    }
    let env = strings(run.get("Env"))
        .into_iter()
        .map(|e| match e.split_once('=') {
            Some((k, v)) => (k.to_owned(), v.to_owned()),
            None => (e, String::new()),
        })
        .collect();
    let text = |key: &str| run.get(key).and_then(Value::as_str).filter(|s| !s.is_empty()).map(str::to_owned);
    Ok(ImageConfig {
        architecture: map.get("architecture").and_then(Value::as_str).unwrap_or_default().to_owned(),
        os: map.get("os").and_then(Value::as_str).unwrap_or_default().to_owned(),
        entrypoint: strings(run.get("Entrypoint")),
        cmd: strings(run.get("Cmd")),
        env,
        working_dir: text("WorkingDir"),
        user: text("User"),
        diff_ids,
    })
}

/// `sha256:<hex>` of `bytes`.
pub fn sha256_digest(bytes: &[u8]) -> String {
    format!("sha256:{}", hex(ring::digest::digest(&ring::digest::SHA256, bytes).as_ref()))
}

/// Lowercase hex.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// containerd's snapshot names for an image's layers: `chainID(L0) = diffID(L0)`,
/// `chainID(Ln) = sha256(chainID(Ln-1) + " " + diffID(Ln))` (OCI image spec, config.md).
pub fn chain_ids(diff_ids: &[String]) -> Vec<String> {
    let mut chain: Vec<String> = Vec::with_capacity(diff_ids.len());
    for diff_id in diff_ids {
        let next = match chain.last() {
            None => diff_id.clone(),
            Some(parent) => sha256_digest(format!("{parent} {diff_id}").as_bytes()),
        };
        chain.push(next);
    }
    chain
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(n: char) -> String {
        format!("sha256:{}", n.to_string().repeat(64))
    }

    #[test]
    fn index_and_platform_choice() {
        let doc = format!(
            r#"{{"schemaVersion":2,"mediaType":"{OCI_INDEX}","manifests":[
            {{"mediaType":"{OCI_MANIFEST}","digest":"{}","size":10,"platform":{{"os":"linux","architecture":"arm","variant":"v6"}}}},
            {{"mediaType":"{OCI_MANIFEST}","digest":"{}","size":10,"platform":{{"os":"linux","architecture":"arm","variant":"v7"}}}},
            {{"mediaType":"{OCI_MANIFEST}","digest":"{}","size":10,"platform":{{"os":"linux","architecture":"arm64","variant":"v8"}}}},
            {{"mediaType":"{OCI_MANIFEST}","digest":"{}","size":10,"platform":{{"os":"linux","architecture":"amd64"}}}}]}}"#,
            d('1'),
            d('2'),
            d('3'),
            d('4')
        );
        let Manifest::Index(entries) = parse_manifest(doc.as_bytes(), "").unwrap() else { panic!("not an index") };
        let pick = |arch: &str, variant: Option<&str>| {
            let host = Platform { os: "linux".into(), architecture: arch.into(), variant: variant.map(Into::into) };
            select_platform(&entries, &host).map(|e| e.digest.clone())
        };
        assert_eq!(pick("arm", Some("v7")), Some(d('2')));
        assert_eq!(pick("arm64", None), Some(d('3')));
        assert_eq!(pick("amd64", None), Some(d('4')));
        assert_eq!(pick("riscv64", None), None);
    }

    #[test]
    fn manifest_and_config() {
        let doc = format!(
            r#"{{"schemaVersion":2,"mediaType":"{DOCKER_MANIFEST}","config":{{"mediaType":"{DOCKER_CONFIG}","digest":"{}","size":5}},
            "layers":[{{"mediaType":"{DOCKER_LAYER_GZIP}","digest":"{}","size":7}}]}}"#,
            d('a'),
            d('b')
        );
        let Manifest::Image { config, layers } = parse_manifest(doc.as_bytes(), DOCKER_MANIFEST).unwrap() else {
            panic!("not a manifest")
        };
        assert_eq!((config.digest, layers.len(), layers[0].size), (d('a'), 1, 7));
        let cfg = format!(
            r#"{{"architecture":"amd64","os":"linux","config":{{"Env":["PATH=/bin","X=a=b"],"Cmd":["sh"],"WorkingDir":"/w"}},"rootfs":{{"type":"layers","diff_ids":["{}","{}"]}}}}"#,
            d('c'),
            d('d')
        );
        let c = parse_config(cfg.as_bytes()).unwrap();
        assert_eq!(c.env[1], ("X".to_owned(), "a=b".to_owned()));
        assert_eq!((c.cmd.clone(), c.working_dir.as_deref()), (vec!["sh".to_owned()], Some("/w")));
        let chain = chain_ids(&c.diff_ids);
        assert_eq!(chain[0], d('c'));
        assert_eq!(chain[1], sha256_digest(format!("{} {}", d('c'), d('d')).as_bytes()));
    }

    #[test]
    fn bad_documents_are_named() {
        for (doc, needle) in [
            ("[]", "not a JSON object"),
            ("{", "invalid JSON"),
            (r#"{"mediaType":"application/vnd.docker.distribution.manifest.v1+prettyjws"}"#, "schema 1"),
            (
                r#"{"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"x","digest":"sha256:1","size":1},"layers":[]}"#,
                "digest",
            ),
            (r#"{"mediaType":"text/plain"}"#, "unsupported media type"),
        ] {
            let e = parse_manifest(doc.as_bytes(), "").unwrap_err();
            assert!(e.to_string().contains(needle), "{doc}: {e}");
        }
        let layer = format!(
            r#"{{"mediaType":"{OCI_MANIFEST}","config":{{"mediaType":"{OCI_CONFIG}","digest":"{}","size":1}},"layers":[{{"mediaType":"application/x-foo","digest":"{}","size":1}}]}}"#,
            d('1'),
            d('2')
        );
        assert!(parse_manifest(layer.as_bytes(), "").unwrap_err().to_string().contains("unsupported media type"));
        assert!(parse_config(b"{}").unwrap_err().to_string().contains("diff_ids"));
    }
}
