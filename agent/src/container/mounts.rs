//! `HostConfig.Binds` and `HostConfig.Mounts`: what the container sees of the host's files.
//!
//! As in Docker, a bind source that is not an absolute path is a named volume (`name:/data`);
//! volumes are plain directories under the agent's volumes directory, so they survive the
//! container being recreated on a new deployment. A source that is neither (`./data`,
//! `data/sub`) is refused: a relative host path has no meaning for a daemon.

use std::path::Path;

use serde_json::Value;

use super::json;
use super::{ContainerConfig, CreateOptionsError, Mount, MountKind, MOUNTS_MAX};

/// Longest volume name; it becomes one directory name, and Linux allows 255 bytes.
const VOLUME_NAME_BYTES_MAX: usize = 255;

/// Appends `Binds` (`["src:dst[:options]"]`) to `config.mounts`.
pub(crate) fn binds(
    value: &Value,
    path: &str,
    volumes_dir: &Path,
    config: &mut ContainerConfig,
) -> Result<(), CreateOptionsError> {
    let items = json::array(value, path, MOUNTS_MAX)?;
    for (position, item) in items.iter().enumerate() {
        let item_path = json::index(path, position);
        let bind = json::string(item, &item_path)?;
        let mount = parse_bind(&bind, &item_path, volumes_dir, &mut config.unsupported)?;
        push(config, mount, path)?;
    }
    Ok(())
}

/// One bind, `source:target[:option,option…]`.
fn parse_bind(
    bind: &str,
    path: &str,
    volumes_dir: &Path,
    unsupported: &mut Vec<String>,
) -> Result<Mount, CreateOptionsError> {
    let parts: Vec<&str> = bind.split(':').collect();
    let (source, target, options) = match parts.as_slice() {
        [source, target] => (*source, *target, ""),
        [source, target, options] => (*source, *target, *options),
        _ => return Err(json::error(path, format!("expected \"source:target[:ro|rw]\", got {}", json::quote(bind)))),
    };
    let (source, kind) = bind_source(source, path, volumes_dir)?;
    if !target.starts_with('/') {
        return Err(json::error(path, format!("the target must be an absolute path, got {}", json::quote(target))));
    }
    let mut read_only = None;
    for option in options.split(',').filter(|option| !option.is_empty()) {
        let wanted = match option {
            "ro" => true,
            "rw" => false,
            "z" | "Z" | "nocopy" | "private" | "rprivate" | "shared" | "rshared" | "slave" | "rslave" => {
                unsupported.push(format!("{path}: option {} not translated", json::quote(option)));
                continue;
            }
            _ => return Err(json::error(path, format!("unknown option {} (expected ro or rw)", json::quote(option)))),
        };
        if read_only.is_some_and(|before| before != wanted) {
            return Err(json::error(path, "both ro and rw are given"));
        }
        read_only = Some(wanted);
    }
    Ok(Mount { source, target: target.to_owned(), read_only: read_only.unwrap_or(false), kind })
}

/// An absolute host path (a bind) or a volume name (a volume under `volumes_dir`).
fn bind_source(source: &str, path: &str, volumes_dir: &Path) -> Result<(String, MountKind), CreateOptionsError> {
    if source.starts_with('/') {
        return Ok((source.to_owned(), MountKind::Bind));
    }
    if is_volume_name(source) {
        return Ok((volume_source(volumes_dir, source), MountKind::Volume));
    }
    Err(json::error(
        path,
        format!("the source must be an absolute host path or a volume name, got {}", json::quote(source)),
    ))
}

/// Docker's volume name rule, `[a-zA-Z0-9][a-zA-Z0-9_.-]+`: one path component that cannot be
/// `.` or `..`, so joining it to the volumes directory cannot leave it.
fn is_volume_name(name: &str) -> bool {
    let mut characters = name.chars();
    name.len() >= 2
        && name.len() <= VOLUME_NAME_BYTES_MAX
        && characters.next().is_some_and(|c| c.is_ascii_alphanumeric())
        && characters.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
}

fn volume_source(volumes_dir: &Path, name: &str) -> String {
    volumes_dir.join(name).to_string_lossy().into_owned()
}

/// Appends `Mounts` (`[{Type, Source, Target, ReadOnly}]`) to `config.mounts`.
pub(crate) fn mounts(
    value: &Value,
    path: &str,
    volumes_dir: &Path,
    config: &mut ContainerConfig,
) -> Result<(), CreateOptionsError> {
    let items = json::array(value, path, MOUNTS_MAX)?;
    for (position, item) in items.iter().enumerate() {
        let item_path = json::index(path, position);
        let mount = parse_mount(item, &item_path, volumes_dir, &mut config.unsupported)?;
        push(config, mount, path)?;
    }
    Ok(())
}

/// One `Mounts` entry. `BindOptions`, `VolumeOptions`, `TmpfsOptions` and `Consistency` are
/// reported, not translated.
fn parse_mount(
    value: &Value,
    path: &str,
    volumes_dir: &Path,
    unsupported: &mut Vec<String>,
) -> Result<Mount, CreateOptionsError> {
    let map = json::object(value, path)?;
    let (mut kind, mut source, mut target, mut read_only) = (None, String::new(), None, false);
    for (key, field) in map {
        if field.is_null() {
            continue;
        }
        let field_path = json::child(path, key);
        match key.as_str() {
            "Type" => kind = Some(mount_kind(field, &field_path)?),
            "Source" => source = json::string(field, &field_path)?,
            "Target" => target = Some(json::absolute_path(field, &field_path)?),
            "ReadOnly" => read_only = json::boolean(field, &field_path)?,
            _ => unsupported.push(format!("{field_path}: not translated")),
        }
    }
    let kind = kind.ok_or_else(|| json::error(&json::child(path, "Type"), "is required"))?;
    let target = target.ok_or_else(|| json::error(&json::child(path, "Target"), "is required"))?;
    let source_path = json::child(path, "Source");
    let source = match kind {
        MountKind::Bind if source.starts_with('/') => source,
        MountKind::Bind => {
            return Err(json::error(
                &source_path,
                format!("a bind needs an absolute host path, got {}", json::quote(&source)),
            ))
        }
        MountKind::Volume if is_volume_name(&source) => volume_source(volumes_dir, &source),
        MountKind::Volume => {
            return Err(json::error(
                &source_path,
                format!(
                    "a volume needs a name like \"my-data\" (anonymous volumes are not created), got {}",
                    json::quote(&source)
                ),
            ))
        }
        MountKind::Tmpfs if source.is_empty() => "tmpfs".to_owned(),
        MountKind::Tmpfs => return Err(json::error(&source_path, "a tmpfs mount takes no source")),
    };
    Ok(Mount { source, target, read_only, kind })
}

fn mount_kind(value: &Value, path: &str) -> Result<MountKind, CreateOptionsError> {
    let text = json::string(value, path)?;
    match text.as_str() {
        "bind" => Ok(MountKind::Bind),
        "volume" => Ok(MountKind::Volume),
        "tmpfs" => Ok(MountKind::Tmpfs),
        _ => Err(json::error(path, format!("expected \"bind\", \"volume\" or \"tmpfs\", got {}", json::quote(&text)))),
    }
}

/// Appends `mount`, keeping `Binds` and `Mounts` together under [`MOUNTS_MAX`].
fn push(config: &mut ContainerConfig, mount: Mount, path: &str) -> Result<(), CreateOptionsError> {
    if config.mounts.len() >= MOUNTS_MAX {
        return Err(json::error(path, format!("more than {MOUNTS_MAX} mounts in Binds and Mounts")));
    }
    config.mounts.push(mount);
    Ok(())
}
