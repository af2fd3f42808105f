//! The images modules run from: a module's reference (with its pinned digest), the registry
//! credentials of the deployment, pulls ([`Agent::pull`]), images already on the device, and
//! deleting the images this agent pulled once no module uses them ([`Agent::collect_images`]).

use std::collections::HashSet;

use super::bookkeeping::{Module, Override};
use super::Agent;
use crate::containerd::client::{Containerd, CtrError};
use crate::containerd::pull::{self, ReadyImage};
use crate::image::reference::Reference;
use crate::image::registry::Credentials;
use crate::manifest::{self, ModuleSpec, RegistryCredential};

impl Agent {
    /// The image of `spec` as the agent pulls it: the deployment's digest, when it pins one,
    /// replaces the tag.
    pub(super) fn reference(&self, spec: &ModuleSpec) -> Result<Reference, CtrError> {
        let mut reference = Reference::parse(&spec.image).map_err(|e| CtrError::other(e.to_string()))?;
        if let Some(digest) = &spec.digest {
            reference.digest = Some(digest.clone());
            reference.tag = None;
        }
        Ok(reference)
    }

    fn credentials(&self, reference: &Reference) -> Option<Credentials> {
        let creds: &[RegistryCredential] =
            self.deployment.as_ref().map(|d| d.agent.registry_credentials.as_slice()).unwrap_or_default();
        creds
            .iter()
            .find(|c| {
                let address =
                    c.address.trim_start_matches("https://").trim_start_matches("http://").trim_end_matches('/');
                address == reference.registry || address == reference.api_host()
            })
            .map(|c| Credentials { username: c.username.clone(), password: c.password.clone() })
    }

    /// The images of the `never`-pull modules that containerd has, by the deployment's image
    /// text (what the planner asks about).
    pub(super) async fn present_images(&self, ctr: &Containerd, desired: &[ModuleSpec]) -> HashSet<String> {
        let mut present = HashSet::new();
        for spec in desired.iter().filter(|s| s.image_pull_policy == manifest::ImagePullPolicy::Never) {
            if let Ok(reference) = self.reference(spec) {
                if matches!(ctr.image(&reference.name()).await, Ok(Some(_))) {
                    present.insert(spec.image.clone());
                }
            }
        }
        present
    }

    /// The image of `spec` if it is on the device (resolved once per process).
    pub(super) async fn resolve_local(&mut self, spec: &ModuleSpec) -> Result<Option<ReadyImage>, CtrError> {
        let reference = self.reference(spec)?;
        if let Some(image) = self.images.get(&reference.name()) {
            return Ok(Some(image.clone()));
        }
        let Some(ctr) = self.ctr.clone() else { return Ok(None) };
        let image = pull::local(&ctr, &reference).await?;
        if let Some(image) = &image {
            self.images.insert(image.name.clone(), image.clone());
        }
        Ok(image)
    }

    /// The `Pull` command: the module reports `downloading` until it is done.
    pub(super) async fn pull(&mut self, ctr: &Containerd, name: &str) -> Result<(), CtrError> {
        let spec = self.spec(name).ok_or_else(|| CtrError::other("not in the deployment"))?;
        let reference = self.reference(&spec)?;
        let m = self.modules.entry(name.to_owned()).or_insert_with(|| Module::new(name));
        m.over = Some(Override::Downloading);
        self.publish();
        let started = std::time::Instant::now();
        let image = pull::pull(
            ctr,
            &reference,
            self.credentials(&reference),
            &self.settings.insecure_registries,
            &self.settings.downloads_dir(),
        )
        .await?;
        log::info!("module {name}: image {} pulled in {} ms", reference, started.elapsed().as_millis());
        self.managed_images.insert(image.name.clone());
        self.images.insert(image.name.clone(), image);
        if let Some(m) = self.modules.get_mut(name) {
            m.over = None;
        }
        Ok(())
    }

    /// Deletes the images this agent pulled that no container and no desired module uses any
    /// more (a module removed, or recreated from a new image), so the disk does not fill up
    /// with every image ever deployed. containerd's garbage collector frees their layers.
    /// Images put into the namespace by other means and never run by a module are left alone.
    pub(super) async fn collect_images(&mut self, ctr: &Containerd, desired: &[ModuleSpec]) {
        let mut used: HashSet<String> =
            self.modules.values().filter(|m| m.exists).map(|m| m.state.image.clone()).collect();
        for spec in desired {
            if let Ok(reference) = self.reference(spec) {
                used.insert(reference.name());
            }
        }
        let unused: Vec<String> = self.managed_images.iter().filter(|name| !used.contains(*name)).cloned().collect();
        for name in unused {
            match ctr.delete_image(&name).await {
                Ok(()) => {
                    log::info!("image {name}: no module uses it any more; deleted");
                    self.images.remove(&name);
                    self.managed_images.remove(&name);
                }
                Err(e) => log::warn!("{e}"),
            }
        }
    }
}
