//! The outputs every action gives about an image: `digest`, `media_type`, `platforms`,
//! `size`, `url` and `id`.

use baton_core::AdapterError;
use serde_json::{Map, Value, json};

use crate::client::Registry;
use crate::manifest::{Content, Manifest, Platform};

/// The largest image config read for its platform.
const CONFIG_LIMIT: usize = 1 << 20;

/// Describes `manifest`, found in `repository` of `registry`.
///
/// `size` is the bytes of the manifest and of every blob it names; for an index, the
/// index's own bytes plus that sum over every child. `platforms` lists an index's children
/// as the index states them, and a single image's platform as its config blob states it.
pub(crate) async fn describe(
    registry: &Registry,
    repository: &str,
    manifest: &Manifest,
) -> Result<Map<String, Value>, AdapterError> {
    let (platforms, size) = match &manifest.content {
        Content::Index(children) => {
            let mut size = manifest.bytes.len() as u64;
            for child in children {
                let fetched = registry
                    .child_manifest(repository, &manifest.digest, &child.digest)
                    .await?;
                size += fetched.own_size();
            }
            let platforms: Vec<String> = children
                .iter()
                .filter_map(|c| c.platform.as_ref().map(Platform::label))
                .collect();
            (platforms, size)
        }
        Content::Image { config, .. } => {
            let bytes = registry
                .small_blob(repository, &config.digest, CONFIG_LIMIT)
                .await?;
            let platform: Platform = serde_json::from_slice(&bytes).map_err(|e| {
                AdapterError::Protocol(format!(
                    "the config blob {} of {} is not an image config ({e})",
                    config.digest, manifest.digest
                ))
            })?;
            (config_platforms(&platform), manifest.own_size())
        }
    };
    let url = registry.url(&format!("{repository}/manifests/{}", manifest.digest));
    let Value::Object(map) = json!({
        "digest": manifest.digest,
        "media_type": manifest.media_type,
        "platforms": platforms,
        "size": size,
        "url": url.as_str(),
        "id": manifest.digest,
    }) else {
        unreachable!("a json! object is an object")
    };
    Ok(map)
}

/// The platform an image config states, if it states one.
fn config_platforms(platform: &Platform) -> Vec<String> {
    if platform.os.is_empty() && platform.architecture.is_empty() {
        Vec::new()
    } else {
        vec![platform.label()]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_config_without_a_platform_states_none() {
        let of = |json: Value| config_platforms(&serde_json::from_value(json).unwrap());
        assert!(of(json!({})).is_empty());
        assert_eq!(of(json!({"os": "linux"})), ["linux/"]);
        assert_eq!(of(json!({"architecture": "arm64"})), ["/arm64"]);
        assert_eq!(
            of(json!({"os": "linux", "architecture": "arm", "variant": "v6"})),
            ["linux/arm/v6"]
        );
    }
}
