//! The top-level keys of Docker's `ContainerCreate` body.
//!
//! Translated: `Env`, `Cmd`, `Entrypoint`, `WorkingDir`, `User`, `Labels`, `Healthcheck` and
//! `HostConfig`. Every other key is recorded in `unsupported` with the reason it has no effect,
//! because a module author who wrote it expected something to happen.

use std::path::Path;

use serde_json::Value;

use super::json::{self, Object};
use super::{env, health, host_config, ContainerConfig, CreateOptionsError, ARGS_MAX, LABELS_MAX};

/// Applies every key of the createOptions object to `config`; the `Env` entries go to
/// `create_env`, to be merged with the manifest and IoT Edge env afterwards.
pub(crate) fn apply(
    root: &Object,
    volumes_dir: &Path,
    config: &mut ContainerConfig,
    create_env: &mut Vec<(String, String)>,
) -> Result<(), CreateOptionsError> {
    for (key, value) in root {
        if value.is_null() {
            continue;
        }
        let path = json::child("", key);
        match key.as_str() {
            "Env" => *create_env = env::parse(value, &path, &mut config.unsupported)?,
            "Cmd" => config.cmd = Some(json::string_or_list(value, &path, ARGS_MAX)?),
            "Entrypoint" => config.entrypoint = Some(entrypoint(value, &path)?),
            "WorkingDir" => config.working_dir = working_dir(value, &path)?,
            "User" => config.user = Some(json::string(value, &path)?).filter(|u| !u.is_empty()),
            "Labels" => config.labels = labels(value, &path)?,
            "Healthcheck" => {
                config.healthcheck = health::parse(value, &path, &mut config.unsupported)?;
            }
            "HostConfig" => host_config::apply(value, &path, volumes_dir, config)?,
            _ => config.unsupported.push(format!("{path}: {}", ignored_reason(key))),
        }
    }
    Ok(())
}

/// Why a top-level key has no effect under tinyedge.
fn ignored_reason(key: &str) -> &'static str {
    match key {
        "ExposedPorts" => "ignored: informational only, modules use the host's ports",
        "Image" => "ignored: settings.image names the image",
        "NetworkingConfig" | "MacAddress" | "NetworkDisabled" => {
            "not translated: there are no container networks, modules use the host network"
        }
        "Hostname" | "Domainname" => "not translated: modules share the host's network identity",
        "Volumes" => "not translated: anonymous volumes are not created, use HostConfig.Mounts",
        "Tty" | "OpenStdin" | "StdinOnce" | "AttachStdin" | "AttachStdout" | "AttachStderr" => {
            "ignored: modules run detached, without a terminal"
        }
        "StopSignal" | "StopTimeout" | "Shell" | "OnBuild" | "ArgsEscaped" => "not translated",
        _ => "unknown key, not translated",
    }
}

/// `Entrypoint`; `[""]` is how Docker's CLI says "no entrypoint", the same as `[]`.
fn entrypoint(value: &Value, path: &str) -> Result<Vec<String>, CreateOptionsError> {
    let entrypoint = json::string_or_list(value, path, ARGS_MAX)?;
    if entrypoint.len() == 1 && entrypoint[0].is_empty() {
        return Ok(Vec::new());
    }
    Ok(entrypoint)
}

/// `WorkingDir`: empty keeps the image's; otherwise it must be absolute (Docker refuses a
/// relative one too).
fn working_dir(value: &Value, path: &str) -> Result<Option<String>, CreateOptionsError> {
    if value.as_str().is_some_and(str::is_empty) {
        return Ok(None);
    }
    json::absolute_path(value, path).map(Some)
}

/// `Labels`: an object of strings, sorted by name (serde_json keeps object keys sorted).
fn labels(value: &Value, path: &str) -> Result<Vec<(String, String)>, CreateOptionsError> {
    let map = json::object(value, path)?;
    if map.len() > LABELS_MAX {
        return Err(json::error(path, format!("{} labels, at most {LABELS_MAX} are allowed", map.len())));
    }
    map.iter()
        .map(|(name, label)| {
            let label_path = json::child(path, name);
            if name.contains('\0') {
                return Err(json::error(&label_path, "label name contains a NUL character"));
            }
            Ok((name.clone(), json::string(label, &label_path)?))
        })
        .collect()
}
