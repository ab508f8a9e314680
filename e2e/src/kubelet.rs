//! Just enough of a kubelet to run one container of a pod spec as a local
//! process: the container's own arguments and environment, its volume mounts
//! materialised from the Secrets and ConfigMaps they name, and the credentials
//! of the pod's ServiceAccount. Nothing is added that the pod spec does not say,
//! so a process gets exactly what it would get in a cluster.
//!
//! Three things differ, by necessity, and each is explicit: mount paths are
//! directories under the harness's work directory (paths in arguments and
//! environment are rewritten to match), every listen address becomes a free
//! loopback port, and the in-cluster service-account credentials become a
//! kubeconfig (`KUBECONFIG`) holding the same kind of token.
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::{Api, Client};
use serde_json::Value;

use crate::identity::{kubeconfig_with_token, service_account_token};
use crate::process::free_port;

/// A container ready to start locally.
#[derive(Debug, Clone)]
pub struct Launch {
    /// Arguments after the `policybind` binary.
    pub args: Vec<String>,
    /// Environment, with `KUBECONFIG` set to the ServiceAccount's credentials.
    pub env: Vec<(String, String)>,
    /// Every listen address in the spec, mapped to the loopback one it got.
    pub listens: BTreeMap<String, String>,
}

impl Launch {
    /// The loopback address that replaced `original` (e.g. `0.0.0.0:8080`).
    pub fn listen(&self, original: &str) -> Result<&str> {
        self.listens
            .get(original)
            .map(String::as_str)
            .with_context(|| format!("the container does not listen on {original}"))
    }

    /// Set or replace an environment variable.
    pub fn set_env(&mut self, key: &str, value: impl Into<String>) {
        self.env.retain(|(k, _)| k != key);
        self.env.push((key.to_string(), value.into()));
    }
}

/// The pod a container belongs to.
pub struct PodRef<'a> {
    pub namespace: &'a str,
    pub name: &'a str,
    /// The pod object's uid, when the pod exists (tokens are then bound to it).
    pub uid: Option<&'a str>,
    /// `spec` of the pod (or pod template) as JSON.
    pub spec: &'a Value,
}

/// Prepare `container` of `pod` to run under the pod's ServiceAccount.
pub async fn prepare(
    admin: &Client,
    pod: &PodRef<'_>,
    container: &str,
    dir: &Path,
) -> Result<Launch> {
    let spec = container_spec(pod.spec, container)?;
    std::fs::create_dir_all(dir)?;
    let mounts = materialise_mounts(admin, pod, &spec, dir).await?;
    let rewrite = |text: &str| rewrite_paths(text, &mounts);
    let mut listens = BTreeMap::new();
    let mut args = vec![];
    let command: Vec<String> = strings(&spec["command"]);
    // `command: [policybind, controller]` or `args: [controller, ...]`: skip the binary.
    args.extend(command.iter().skip(1).cloned());
    args.extend(strings(&spec["args"]));
    let args = args
        .into_iter()
        .map(|arg| localise_listen_arg(&rewrite(&arg), &mut listens))
        .collect::<Result<Vec<_>>>()?;
    let mut env = vec![];
    for variable in spec["env"].as_array().into_iter().flatten() {
        let name = variable["name"].as_str().context("env without name")?;
        let value = env_value(admin, pod, variable).await?;
        let value = if name.ends_with("_LISTEN") {
            localise_address(&value, &mut listens)?
        } else {
            rewrite(&value)
        };
        env.push((name.to_string(), value));
    }
    let service_account = pod.spec["serviceAccountName"].as_str().unwrap_or("default");
    let token = service_account_token(
        admin,
        pod.namespace,
        service_account,
        pod.uid.map(|uid| (pod.name, uid)),
        Duration::from_secs(3600),
    )
    .await?;
    let kubeconfig = kubeconfig_with_token(&token, &dir.join("kubeconfig"))?;
    env.push(("KUBECONFIG".into(), kubeconfig.display().to_string()));
    Ok(Launch { args, env, listens })
}

fn strings(value: &Value) -> Vec<String> {
    value
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|v| v.as_str().map(str::to_string))
        .collect()
}

/// The container (regular or init) named `name`.
fn container_spec(pod_spec: &Value, name: &str) -> Result<Value> {
    ["containers", "initContainers"]
        .iter()
        .flat_map(|key| pod_spec[key].as_array().cloned().unwrap_or_default())
        .find(|c| c["name"] == name)
        .with_context(|| format!("the pod has no container {name}"))
}

/// Write every volume the container mounts into `dir/<volume>`; returns
/// (mount path, local directory) pairs, longest mount path first.
async fn materialise_mounts(
    admin: &Client,
    pod: &PodRef<'_>,
    container: &Value,
    dir: &Path,
) -> Result<Vec<(String, PathBuf)>> {
    let mut mounts = vec![];
    for mount in container["volumeMounts"].as_array().into_iter().flatten() {
        let volume_name = mount["name"].as_str().context("volumeMount without name")?;
        let mount_path = mount["mountPath"]
            .as_str()
            .context("volumeMount without mountPath")?;
        let volume = pod.spec["volumes"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|v| v["name"] == volume_name)
            .with_context(|| format!("volumeMount {volume_name} names no volume"))?;
        let local = dir.join("volumes").join(volume_name);
        std::fs::create_dir_all(&local)?;
        write_volume(admin, pod, volume, &local).await?;
        let local = match mount["subPath"].as_str() {
            Some(sub) => local.join(sub),
            None => local,
        };
        mounts.push((mount_path.trim_end_matches('/').to_string(), local));
    }
    mounts.sort_by_key(|(path, _)| std::cmp::Reverse(path.len()));
    Ok(mounts)
}

async fn write_volume(
    admin: &Client,
    pod: &PodRef<'_>,
    volume: &Value,
    local: &Path,
) -> Result<()> {
    if let Some(secret) = volume.get("secret") {
        let name = secret["secretName"]
            .as_str()
            .context("secret volume without secretName")?;
        let optional = secret["optional"].as_bool().unwrap_or(false);
        write_secret(
            admin,
            pod.namespace,
            name,
            &secret["items"],
            optional,
            local,
        )
        .await?;
    } else if let Some(config_map) = volume.get("configMap") {
        let name = config_map["name"]
            .as_str()
            .context("configMap volume without name")?;
        let optional = config_map["optional"].as_bool().unwrap_or(false);
        write_config_map(
            admin,
            pod.namespace,
            name,
            &config_map["items"],
            optional,
            local,
        )
        .await?;
    } else if let Some(projected) = volume.get("projected") {
        for source in projected["sources"].as_array().into_iter().flatten() {
            if let Some(secret) = source.get("secret") {
                let name = secret["name"]
                    .as_str()
                    .context("projected secret without name")?;
                let optional = secret["optional"].as_bool().unwrap_or(false);
                write_secret(
                    admin,
                    pod.namespace,
                    name,
                    &secret["items"],
                    optional,
                    local,
                )
                .await?;
            } else if let Some(config_map) = source.get("configMap") {
                let name = config_map["name"]
                    .as_str()
                    .context("projected configMap without name")?;
                let optional = config_map["optional"].as_bool().unwrap_or(false);
                write_config_map(
                    admin,
                    pod.namespace,
                    name,
                    &config_map["items"],
                    optional,
                    local,
                )
                .await?;
            } else if let Some(token) = source.get("serviceAccountToken") {
                let path = token["path"].as_str().unwrap_or("token");
                let account = pod.spec["serviceAccountName"].as_str().unwrap_or("default");
                let value = service_account_token(
                    admin,
                    pod.namespace,
                    account,
                    pod.uid.map(|uid| (pod.name, uid)),
                    Duration::from_secs(token["expirationSeconds"].as_u64().unwrap_or(3600)),
                )
                .await?;
                std::fs::write(local.join(path), value)?;
            }
        }
    } else if volume.get("emptyDir").is_none() {
        bail!(
            "volume {} is of a kind the e2e kubelet does not provide",
            volume["name"]
        );
    }
    Ok(())
}

/// Keys to write: every key, or the `items` mapping key -> path.
fn selected<'a>(
    data: impl Iterator<Item = (&'a String, Vec<u8>)>,
    items: &Value,
) -> Vec<(String, Vec<u8>)> {
    let data: BTreeMap<&String, Vec<u8>> = data.collect();
    match items.as_array() {
        Some(items) => items
            .iter()
            .filter_map(|item| {
                let key = item["key"].as_str()?;
                let path = item["path"].as_str().unwrap_or(key);
                data.get(&key.to_string())
                    .map(|v| (path.to_string(), v.clone()))
            })
            .collect(),
        None => data.into_iter().map(|(k, v)| (k.clone(), v)).collect(),
    }
}

async fn write_secret(
    admin: &Client,
    namespace: &str,
    name: &str,
    items: &Value,
    optional: bool,
    local: &Path,
) -> Result<()> {
    let api: Api<Secret> = Api::namespaced(admin.clone(), namespace);
    let Some(secret) = api.get_opt(name).await? else {
        if optional {
            return Ok(());
        }
        bail!("Secret {namespace}/{name} does not exist (a kubelet would keep the pod waiting)");
    };
    let data = secret.data.unwrap_or_default();
    for (path, bytes) in selected(data.iter().map(|(k, v)| (k, v.0.clone())), items) {
        std::fs::write(local.join(path), bytes)?;
    }
    Ok(())
}

async fn write_config_map(
    admin: &Client,
    namespace: &str,
    name: &str,
    items: &Value,
    optional: bool,
    local: &Path,
) -> Result<()> {
    let api: Api<ConfigMap> = Api::namespaced(admin.clone(), namespace);
    let Some(config_map) = api.get_opt(name).await? else {
        if optional {
            return Ok(());
        }
        bail!("ConfigMap {namespace}/{name} does not exist");
    };
    let data = config_map.data.unwrap_or_default();
    for (path, bytes) in selected(data.iter().map(|(k, v)| (k, v.clone().into_bytes())), items) {
        std::fs::write(local.join(path), bytes)?;
    }
    Ok(())
}

/// An environment variable's value, resolved as the kubelet does.
async fn env_value(admin: &Client, pod: &PodRef<'_>, variable: &Value) -> Result<String> {
    if let Some(value) = variable["value"].as_str() {
        return Ok(value.to_string());
    }
    let from = &variable["valueFrom"];
    if let Some(field) = from["fieldRef"]["fieldPath"].as_str() {
        return Ok(match field {
            "metadata.name" => pod.name.to_string(),
            "metadata.namespace" => pod.namespace.to_string(),
            "metadata.uid" => pod.uid.unwrap_or_default().to_string(),
            "spec.serviceAccountName" => pod.spec["serviceAccountName"]
                .as_str()
                .unwrap_or("default")
                .to_string(),
            "status.podIP" | "status.hostIP" => "127.0.0.1".to_string(),
            "spec.nodeName" => "e2e-node".to_string(),
            other => bail!("fieldRef {other} is not provided by the e2e kubelet"),
        });
    }
    if let Some(key) = from["secretKeyRef"]["key"].as_str() {
        let name = from["secretKeyRef"]["name"]
            .as_str()
            .context("secretKeyRef name")?;
        let api: Api<Secret> = Api::namespaced(admin.clone(), pod.namespace);
        let secret = api.get(name).await?;
        let bytes = secret
            .data
            .and_then(|d| d.get(key).cloned())
            .with_context(|| format!("Secret {name} has no key {key}"))?;
        return Ok(String::from_utf8(bytes.0)?);
    }
    if let Some(key) = from["configMapKeyRef"]["key"].as_str() {
        let name = from["configMapKeyRef"]["name"]
            .as_str()
            .context("configMapKeyRef name")?;
        let api: Api<ConfigMap> = Api::namespaced(admin.clone(), pod.namespace);
        let config_map = api.get(name).await?;
        return config_map
            .data
            .and_then(|d| d.get(key).cloned())
            .with_context(|| format!("ConfigMap {name} has no key {key}"));
    }
    if from["resourceFieldRef"].is_object() {
        return Ok("0".into());
    }
    bail!(
        "env {} has a source the e2e kubelet does not provide",
        variable["name"]
    )
}

/// Replace a mount path prefix with its local directory.
fn rewrite_paths(text: &str, mounts: &[(String, PathBuf)]) -> String {
    for (mount, local) in mounts {
        if let Some(position) = text.find(mount.as_str()) {
            let rest = &text[position + mount.len()..];
            if rest.is_empty() || rest.starts_with('/') {
                return format!("{}{}{rest}", &text[..position], local.display());
            }
        }
    }
    text.to_string()
}

/// `--listen=0.0.0.0:8443` (any flag ending in `listen`) -> a free loopback port.
fn localise_listen_arg(arg: &str, listens: &mut BTreeMap<String, String>) -> Result<String> {
    match arg.split_once('=') {
        Some((flag, address)) if flag.starts_with("--") && flag.ends_with("listen") => {
            Ok(format!("{flag}={}", localise_address(address, listens)?))
        }
        _ => Ok(arg.to_string()),
    }
}

fn localise_address(address: &str, listens: &mut BTreeMap<String, String>) -> Result<String> {
    if let Some(local) = listens.get(address) {
        return Ok(local.clone());
    }
    let local = format!("127.0.0.1:{}", free_port()?);
    listens.insert(address.to_string(), local.clone());
    Ok(local)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mount_paths_in_arguments_become_local_directories() {
        let mounts = vec![
            (
                "/var/run/policybind/audit-key".to_string(),
                PathBuf::from("/tmp/x/key"),
            ),
            (
                "/var/run/policybind".to_string(),
                PathBuf::from("/tmp/x/all"),
            ),
        ];
        assert_eq!(
            rewrite_paths("/var/run/policybind/audit-key/signing-key", &mounts),
            "/tmp/x/key/signing-key"
        );
        assert_eq!(
            rewrite_paths("--key=/var/run/policybind/other", &mounts),
            "--key=/tmp/x/all/other"
        );
        assert_eq!(
            rewrite_paths("/var/run/policybindx", &mounts),
            "/var/run/policybindx"
        );
    }

    #[test]
    fn listen_flags_get_one_loopback_port_per_address() {
        let mut listens = BTreeMap::new();
        let a = localise_listen_arg("--listen=0.0.0.0:8443", &mut listens).unwrap();
        let b = localise_listen_arg("--health-listen=0.0.0.0:8080", &mut listens).unwrap();
        assert!(a.starts_with("--listen=127.0.0.1:"));
        assert!(b.starts_with("--health-listen=127.0.0.1:"));
        assert_ne!(a, b);
        assert_eq!(
            localise_listen_arg("--namespace=x", &mut listens).unwrap(),
            "--namespace=x"
        );
        assert_eq!(listens.len(), 2);
    }
}
