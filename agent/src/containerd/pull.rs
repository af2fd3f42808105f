//! Client-side image pull and unpack into containerd (containerd 1.6 has no transfer service):
//! resolve the reference at the registry, pick the host's platform from an index, download and
//! verify every blob, write it to containerd's content store under a lease, unpack the layers
//! into snapshots named by chain ID through the diff service, and register the image.
//!
//! Labels follow containerd's own unpacker, so `ctr`/`nerdctl` see a normal image and
//! containerd's garbage collector keeps what the image references: `containerd.io/uncompressed`
//! on layers, `containerd.io/gc.ref.snapshot.overlayfs` on the config, and
//! `containerd.io/gc.ref.content.*` from index to manifest to config and layers.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use containerd_client::types::Descriptor as CtrDescriptor;

use super::client::{now_ms, Containerd, CtrError, SNAPSHOTTER};
use crate::image::oci::{self, Descriptor, ImageConfig, Manifest, DOCUMENT_BYTES_MAX};
use crate::image::reference::Reference;
use crate::image::registry::{Credentials, Repository};

/// An image ready to run: its config and the snapshot its containers start from.
#[derive(Debug, Clone)]
pub struct ReadyImage {
    /// containerd's name for it.
    pub name: String,
    pub config: ImageConfig,
    /// Chain ID of the top layer: the parent of a container's rootfs snapshot.
    pub top_snapshot: String,
    /// Digest of the manifest (the platform's, not the index).
    pub manifest_digest: String,
}

fn ctr_descriptor(d: &Descriptor) -> CtrDescriptor {
    CtrDescriptor {
        media_type: d.media_type.clone(),
        digest: d.digest.clone(),
        size: d.size as i64,
        annotations: HashMap::new(),
    }
}

fn err(reference: &Reference, why: impl std::fmt::Display) -> CtrError {
    CtrError::other(format!("pull {reference}: {why}"))
}

/// A temporary file under the agent's download directory, removed on drop.
struct TempFile(PathBuf);

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Writes in-memory bytes (a verified document) to the content store.
async fn write_document(
    ctr: &Containerd,
    dir: &Path,
    bytes: &[u8],
    digest: &str,
    labels: HashMap<String, String>,
    lease: &str,
) -> Result<(), CtrError> {
    let temp = TempFile(dir.join(format!("doc-{}", digest.trim_start_matches("sha256:"))));
    std::fs::write(&temp.0, bytes).map_err(|e| CtrError::other(format!("{}: {e}", temp.0.display())))?;
    ctr.write_content(&temp.0, digest, bytes.len() as u64, labels, lease).await
}

/// Pulls `reference` from its registry into containerd and unpacks it.
///
/// # Errors
/// Registry failures (auth, not found, no manifest for this platform), digest or size
/// mismatches of any blob, and containerd failures, each naming the image and the blob.
pub async fn pull(
    ctr: &Containerd,
    reference: &Reference,
    credentials: Option<Credentials>,
    insecure: &[String],
    download_dir: &Path,
) -> Result<ReadyImage, CtrError> {
    std::fs::create_dir_all(download_dir).map_err(|e| err(reference, format!("{}: {e}", download_dir.display())))?;
    let lease = format!("tinyedge-pull-{}", now_ms());
    ctr.create_lease(&lease).await?;
    let result = pull_leased(ctr, reference, credentials, insecure, download_dir, &lease).await;
    if let Err(e) = ctr.delete_lease(&lease).await {
        log::warn!("{e}");
    }
    result
}

async fn pull_leased(
    ctr: &Containerd,
    reference: &Reference,
    credentials: Option<Credentials>,
    insecure: &[String],
    dir: &Path,
    lease: &str,
) -> Result<ReadyImage, CtrError> {
    let wanted = reference.manifest_ref().to_owned();
    let (for_repo, insecure) = (reference.clone(), insecure.to_vec());
    // Made off the executor: it reads and parses the system CA bundle.
    let (mut repo, top) = smol::unblock(move || {
        let mut repo = Repository::new(&for_repo, credentials, &insecure);
        let top = repo.manifest(&wanted);
        (repo, top)
    })
    .await;
    let top = top.map_err(|e| err(reference, e))?;
    let mut index: Option<(oci::Descriptor, Vec<u8>)> = None;
    let (manifest_bytes, manifest_desc) = match oci::parse_manifest(&top.bytes, &top.media_type)
        .map_err(|e| err(reference, e))?
    {
        Manifest::Index(entries) => {
            let host = oci::host_platform();
            let entry = oci::select_platform(&entries, &host)
                .ok_or_else(|| err(reference, format!("the image has no manifest for {host}")))?
                .clone();
            let digest = entry.digest.clone();
            let (back, fetched) = smol::unblock(move || {
                let mut repo = repo;
                let fetched = repo.manifest(&digest);
                (repo, fetched)
            })
            .await;
            repo = back;
            let fetched = fetched.map_err(|e| err(reference, e))?;
            let media_type = if top.media_type.is_empty() { oci::OCI_INDEX.to_owned() } else { top.media_type.clone() };
            index = Some((
                Descriptor { media_type, digest: top.digest.clone(), size: top.bytes.len() as u64, platform: None },
                top.bytes,
            ));
            (
                fetched.bytes,
                Descriptor { media_type: entry.media_type, digest: entry.digest, size: entry.size, platform: None },
            )
        }
        Manifest::Image { .. } => {
            let media_type =
                if top.media_type.is_empty() { oci::OCI_MANIFEST.to_owned() } else { top.media_type.clone() };
            let size = top.bytes.len() as u64;
            (top.bytes, Descriptor { media_type, digest: top.digest, size, platform: None })
        }
    };
    let Manifest::Image { config, layers } =
        oci::parse_manifest(&manifest_bytes, &manifest_desc.media_type).map_err(|e| err(reference, e))?
    else {
        return Err(err(reference, "an index entry points at another index"));
    };
    if config.size > DOCUMENT_BYTES_MAX as u64 {
        return Err(err(
            reference,
            format!("config {} is {} bytes, at most {DOCUMENT_BYTES_MAX}", config.digest, config.size),
        ));
    }
    let config_desc = config.clone();
    let (back, config_bytes) = smol::unblock(move || {
        let mut repo = repo;
        let mut bytes = Vec::new();
        let result = repo.blob(&config_desc, &mut bytes).map(|()| bytes);
        (repo, result)
    })
    .await;
    repo = back;
    let config_bytes = config_bytes.map_err(|e| err(reference, e))?;
    let image_config = oci::parse_config(&config_bytes).map_err(|e| err(reference, e))?;
    if image_config.diff_ids.len() != layers.len() {
        return Err(err(
            reference,
            format!("{} layers but {} diff IDs in the config", layers.len(), image_config.diff_ids.len()),
        ));
    }
    let chain = oci::chain_ids(&image_config.diff_ids);

    for (layer, diff_id) in layers.iter().zip(&image_config.diff_ids) {
        if ctr.content_exists(&layer.digest).await? {
            continue;
        }
        let temp = TempFile(dir.join(format!("blob-{}", layer.digest.trim_start_matches("sha256:"))));
        let path = temp.0.clone();
        let descriptor = layer.clone();
        let (back, downloaded) = smol::unblock(move || {
            let mut repo = repo;
            let result = std::fs::File::create(&path)
                .map_err(|e| crate::image::registry::RegistryError(format!("{}: {e}", path.display())))
                .and_then(|file| {
                    let mut out = std::io::BufWriter::new(file);
                    repo.blob(&descriptor, &mut out)?;
                    use std::io::Write as _;
                    out.flush().map_err(|e| crate::image::registry::RegistryError(format!("{}: {e}", path.display())))
                });
            (repo, result)
        })
        .await;
        repo = back;
        downloaded.map_err(|e| err(reference, e))?;
        let labels = HashMap::from([("containerd.io/uncompressed".to_owned(), diff_id.clone())]);
        ctr.write_content(&temp.0, &layer.digest, layer.size, labels, lease).await?;
        log::info!("pull {reference}: layer {} ({} bytes) verified and stored", layer.digest, layer.size);
    }
    drop(repo);

    let top_chain = chain.last().cloned().unwrap_or_default();
    let labels = HashMap::from([(format!("containerd.io/gc.ref.snapshot.{SNAPSHOTTER}"), top_chain.clone())]);
    write_document(ctr, dir, &config_bytes, &config.digest, labels, lease).await?;
    let mut labels = HashMap::from([("containerd.io/gc.ref.content.config".to_owned(), config.digest.clone())]);
    for (i, layer) in layers.iter().enumerate() {
        labels.insert(format!("containerd.io/gc.ref.content.l.{i}"), layer.digest.clone());
    }
    write_document(ctr, dir, &manifest_bytes, &manifest_desc.digest, labels, lease).await?;
    let target = match &index {
        Some((index_desc, index_bytes)) => {
            let labels = HashMap::from([("containerd.io/gc.ref.content.m.0".to_owned(), manifest_desc.digest.clone())]);
            write_document(ctr, dir, index_bytes, &index_desc.digest, labels, lease).await?;
            index_desc.clone()
        }
        None => manifest_desc.clone(),
    };

    unpack(ctr, reference, &layers, &image_config.diff_ids, &chain, lease).await?;
    let name = reference.name();
    ctr.put_image(&name, ctr_descriptor(&target), lease).await?;
    log::info!("pull {reference}: image {} ready ({} layers)", target.digest, layers.len());
    Ok(ReadyImage { name, config: image_config, top_snapshot: top_chain, manifest_digest: manifest_desc.digest })
}

/// Unpacks layers that have no snapshot yet, bottom up, checking each applied layer's
/// uncompressed digest against the config's diff ID.
async fn unpack(
    ctr: &Containerd,
    reference: &Reference,
    layers: &[Descriptor],
    diff_ids: &[String],
    chain: &[String],
    lease: &str,
) -> Result<(), CtrError> {
    let mut parent = String::new();
    for ((layer, diff_id), chain_id) in layers.iter().zip(diff_ids).zip(chain) {
        if !ctr.snapshot_exists(chain_id).await? {
            let key = format!("tinyedge-extract-{}-{chain_id}", now_ms());
            let mounts = ctr.prepare(&key, &parent, Some(lease)).await?;
            let applied = match ctr.apply(ctr_descriptor(layer), mounts).await {
                Ok(applied) => applied,
                Err(e) => {
                    let _ = ctr.remove_snapshot(&key).await;
                    return Err(e);
                }
            };
            if applied.digest != *diff_id {
                let _ = ctr.remove_snapshot(&key).await;
                return Err(err(
                    reference,
                    format!("layer {} unpacks to {}, the config says {diff_id}; refused", layer.digest, applied.digest),
                ));
            }
            ctr.commit(chain_id, &key, lease).await?;
        }
        parent.clone_from(chain_id);
    }
    Ok(())
}

/// The image as containerd already has it (`imagePullPolicy: never`, adoption, restarts):
/// `None` when containerd has no image of that name. Layers whose snapshots are gone are
/// unpacked again from the content store.
///
/// # Errors
/// Unreadable documents, no manifest for this platform, or containerd failures.
pub async fn local(ctr: &Containerd, reference: &Reference) -> Result<Option<ReadyImage>, CtrError> {
    let name = reference.name();
    let Some(target) = ctr.image(&name).await? else { return Ok(None) };
    let bytes = ctr.read_content(&target.digest, DOCUMENT_BYTES_MAX).await?;
    let (manifest_digest, manifest) =
        match oci::parse_manifest(&bytes, &target.media_type).map_err(|e| err(reference, e))? {
            Manifest::Index(entries) => {
                let host = oci::host_platform();
                let entry = oci::select_platform(&entries, &host)
                    .ok_or_else(|| err(reference, format!("the image has no manifest for {host}")))?;
                let bytes = ctr.read_content(&entry.digest, DOCUMENT_BYTES_MAX).await?;
                (entry.digest.clone(), oci::parse_manifest(&bytes, &entry.media_type).map_err(|e| err(reference, e))?)
            }
            image => (target.digest.clone(), image),
        };
    let Manifest::Image { config, layers } = manifest else {
        return Err(err(reference, "an index entry points at another index"));
    };
    let config_bytes = ctr.read_content(&config.digest, DOCUMENT_BYTES_MAX).await?;
    let image_config = oci::parse_config(&config_bytes).map_err(|e| err(reference, e))?;
    let chain = oci::chain_ids(&image_config.diff_ids);
    let top = chain.last().cloned().unwrap_or_default();
    if !top.is_empty() && !ctr.snapshot_exists(&top).await? {
        let lease = format!("tinyedge-unpack-{}", now_ms());
        ctr.create_lease(&lease).await?;
        let result = unpack(ctr, reference, &layers, &image_config.diff_ids, &chain, &lease).await;
        let _ = ctr.delete_lease(&lease).await;
        result?;
    }
    Ok(Some(ReadyImage { name, config: image_config, top_snapshot: top, manifest_digest }))
}
