//! Audit: decisions land as audit segment ConfigMaps; `policybind audit
//! verify` passes on them and fails once one of them is edited.
use policybind_crds::wire::{keys, labels};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{DeleteParams, ListParams, PostParams};
use policybind_e2e::fixtures::MODEL;
use policybind_e2e::flows::serving;
use policybind_e2e::scenario;
use serde_json::Value;

const SEGMENT_LABEL: &str = labels::AUDIT_SEGMENT;

/// Change one decision in a segment document: the first `effect` field found.
fn tamper(segment: &mut Value) -> bool {
    match segment {
        Value::Object(map) => {
            if let Some(effect) = map.get_mut("effect") {
                *effect = Value::String(if effect == "Allow" { "Deny" } else { "Allow" }.into());
                return true;
            }
            map.values_mut().any(tamper)
        }
        Value::Array(items) => items.iter_mut().any(tamper),
        _ => false,
    }
}

#[test]
#[ignore = "e2e: needs a cluster (e2e/run.sh)"]
fn decisions_land_as_audit_configmaps_that_verify_until_edited() {
    scenario("audit-trail", |s| async move {
        let serving = serving(&s).await?;
        for _ in 0..5 {
            serving.sidecar.chat(Some(&serving.token), MODEL).await?;
        }
        serving.sidecar.chat(None, MODEL).await?; // a denial is recorded too
        // Stop the sidecar: on SIGTERM it flushes and seals what it holds, so
        // nothing rewrites the segments while we look at them.
        drop(serving);

        let config_maps = s.api::<ConfigMap>();
        let segments = s
            .wait_for(
                "audit segment ConfigMaps",
                Duration::from_secs(30),
                || async {
                    let list = config_maps
                        .list(&ListParams::default().labels(SEGMENT_LABEL))
                        .await?;
                    Ok((!list.items.is_empty()).then_some(list.items))
                },
            )
            .await?;
        println!("{} audit segment(s) in {}", segments.len(), s.namespace);

        let verified = s.audit_verify().await?;
        if !verified.status.success() {
            bail!(
                "audit verify failed on an untouched trail:\n{}{}",
                String::from_utf8_lossy(&verified.stdout),
                String::from_utf8_lossy(&verified.stderr)
            );
        }

        // Edit one decision. Sealed segments are immutable ConfigMaps, so an
        // attacker with delete+create rights recreates it; an open one is
        // simply updated. Either way verify must notice.
        let mut victim = segments[0].clone();
        let name = victim.metadata.name.clone().context("segment name")?;
        let mut document = segment_document(&victim)
            .with_context(|| format!("segment {name} holds no readable document"))?;
        if !tamper(&mut document) {
            bail!("no decision (`effect`) found in segment {name}");
        }
        store_document(&mut victim, &document)?;
        victim.metadata.resource_version = None;
        victim.metadata.uid = None;
        victim.metadata.creation_timestamp = None;
        victim.metadata.managed_fields = None;
        if victim.immutable == Some(true) {
            config_maps.delete(&name, &DeleteParams::default()).await?;
            s.wait_for("the old segment to go", Duration::from_secs(10), || async {
                Ok(config_maps.get_opt(&name).await?.is_none().then_some(()))
            })
            .await?;
            config_maps.create(&PostParams::default(), &victim).await?;
        } else {
            config_maps
                .replace(&name, &PostParams::default(), &victim)
                .await?;
        }

        let tampered = s.audit_verify().await?;
        let output = format!(
            "{}{}",
            String::from_utf8_lossy(&tampered.stdout),
            String::from_utf8_lossy(&tampered.stderr)
        );
        if tampered.status.success() {
            bail!("audit verify passed after segment {name} was edited:\n{output}");
        }
        if !output.contains(&name) {
            bail!("audit verify failed but does not name the edited segment {name}:\n{output}");
        }
        Ok(())
    });
}

/// The segment document of an audit ConfigMap: gzip JSON under binaryData (what
/// writers store), or plain JSON under data (older writers).
fn segment_document(config_map: &ConfigMap) -> Option<Value> {
    use std::io::Read;
    if let Some(gz) = config_map
        .binary_data
        .as_ref()
        .and_then(|d| d.get(keys::SEGMENT_GZ))
    {
        let mut json = Vec::new();
        flate2::read::MultiGzDecoder::new(gz.0.as_slice())
            .read_to_end(&mut json)
            .ok()?;
        return serde_json::from_slice(&json).ok();
    }
    let text = config_map.data.as_ref()?.get(keys::SEGMENT)?;
    serde_json::from_str(text).ok()
}

/// Writes `document` back where [`segment_document`] found it.
fn store_document(config_map: &mut ConfigMap, document: &Value) -> Result<()> {
    use std::io::Write;
    let json = serde_json::to_vec(document)?;
    if let Some(binary) = config_map.binary_data.as_mut()
        && binary.contains_key(keys::SEGMENT_GZ)
    {
        let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        encoder.write_all(&json)?;
        binary.insert(
            keys::SEGMENT_GZ.to_string(),
            k8s_openapi::ByteString(encoder.finish()?),
        );
        return Ok(());
    }
    config_map
        .data
        .as_mut()
        .context("segment without data")?
        .insert(keys::SEGMENT.to_string(), String::from_utf8(json)?);
    Ok(())
}
