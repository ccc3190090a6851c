//! Manifests as fetched: their exact bytes, their type, and what they point at.

use serde::Deserialize;

/// An OCI image index.
pub(crate) const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
/// An OCI image manifest.
pub(crate) const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
/// A Docker manifest list.
pub(crate) const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
/// A Docker image manifest, schema 2.
pub(crate) const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";

/// The four types every manifest request accepts (api-contracts §6.2).
pub(crate) const ACCEPT_MANIFESTS: [&str; 4] =
    [OCI_INDEX, OCI_MANIFEST, DOCKER_LIST, DOCKER_MANIFEST];

/// A manifest as the registry served it.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Manifest {
    /// The bytes, never re-serialized: they are what the digest is of.
    pub(crate) bytes: Vec<u8>,
    /// The type the registry gave (`Content-Type`, parameters dropped), or the body's
    /// `mediaType` when the header said nothing useful.
    pub(crate) media_type: String,
    /// `sha256:` of the bytes.
    pub(crate) digest: String,
    /// What it points at.
    pub(crate) content: Content,
}

/// What a manifest points at.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Content {
    /// An index: child manifests, each with its platform when the index gives one.
    Index(Vec<Descriptor>),
    /// An image: its config blob, then its layers.
    Image {
        /// The config blob.
        config: Descriptor,
        /// The layers, in order.
        layers: Vec<Descriptor>,
    },
}

/// A pointer to a blob or a manifest.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Descriptor {
    /// Its type.
    #[serde(default)]
    pub(crate) media_type: String,
    /// Its digest.
    pub(crate) digest: String,
    /// Its size in bytes.
    #[serde(default)]
    pub(crate) size: u64,
    /// Where a foreign layer lives instead of the registry (it is not copied).
    #[serde(default)]
    pub(crate) urls: Vec<String>,
    /// The platform of an index's child.
    #[serde(default)]
    pub(crate) platform: Option<Platform>,
}

/// A platform, as an index entry or an image config states it.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub(crate) struct Platform {
    /// `linux`, `windows`, …
    #[serde(default)]
    pub(crate) os: String,
    /// `amd64`, `arm64`, …
    #[serde(default)]
    pub(crate) architecture: String,
    /// `v7`, `v8`, … when there is one.
    #[serde(default)]
    pub(crate) variant: Option<String>,
}

impl Platform {
    /// `os/arch[/variant]`.
    pub(crate) fn label(&self) -> String {
        match self.variant.as_deref().filter(|v| !v.is_empty()) {
            Some(variant) => format!("{}/{}/{variant}", self.os, self.architecture),
            None => format!("{}/{}", self.os, self.architecture),
        }
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Body {
    #[serde(default)]
    media_type: Option<String>,
    #[serde(default)]
    manifests: Option<Vec<Descriptor>>,
    #[serde(default)]
    config: Option<Descriptor>,
    #[serde(default)]
    layers: Option<Vec<Descriptor>>,
}

impl Manifest {
    /// Reads the manifest `bytes` served as `content_type`, whose digest is `digest`.
    pub(crate) fn read(
        bytes: Vec<u8>,
        content_type: String,
        digest: String,
    ) -> Result<Self, String> {
        let body: Body = serde_json::from_slice(&bytes)
            .map_err(|e| format!("the manifest is not JSON of a manifest ({e})"))?;
        let header_type = content_type
            .split(';')
            .next()
            .unwrap_or_default()
            .trim()
            .to_owned();
        let media_type = if ACCEPT_MANIFESTS.contains(&header_type.as_str()) {
            header_type
        } else {
            body.media_type.clone().unwrap_or(header_type)
        };
        let content = match (media_type.as_str(), body) {
            (
                OCI_INDEX | DOCKER_LIST,
                Body {
                    manifests: Some(children),
                    ..
                },
            ) => Content::Index(children),
            (
                OCI_MANIFEST | DOCKER_MANIFEST,
                Body {
                    config: Some(config),
                    layers,
                    ..
                },
            ) => Content::Image {
                config,
                layers: layers.unwrap_or_default(),
            },
            (other, _) => {
                return Err(format!(
                    "`{other}` is not a manifest type baton copies (expected one of {}), or the body lacks its `manifests` or `config`",
                    ACCEPT_MANIFESTS.join(", ")
                ));
            }
        };
        Ok(Self {
            bytes,
            media_type,
            digest,
            content,
        })
    }

    /// The blobs an image manifest needs in its repository: the config and every layer
    /// the registry holds (foreign layers, which have `urls`, live elsewhere); none for an
    /// index.
    pub(crate) fn blobs(&self) -> Vec<&Descriptor> {
        match &self.content {
            Content::Index(_) => Vec::new(),
            Content::Image { config, layers } => std::iter::once(config)
                .chain(layers.iter().filter(|l| l.urls.is_empty()))
                .collect(),
        }
    }

    /// The bytes of the manifest and of every blob it names (foreign layers included, as
    /// they are part of the image).
    pub(crate) fn own_size(&self) -> u64 {
        let blobs = match &self.content {
            Content::Index(_) => 0,
            Content::Image { config, layers } => {
                config.size + layers.iter().map(|l| l.size).sum::<u64>()
            }
        };
        self.bytes.len() as u64 + blobs
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn read(body: serde_json::Value, content_type: &str) -> Result<Manifest, String> {
        Manifest::read(
            serde_json::to_vec(&body).unwrap(),
            content_type.into(),
            "sha256:x".into(),
        )
    }

    #[test]
    fn an_image_names_its_config_and_registry_layers() {
        let m = read(
            json!({"schemaVersion": 2,
                   "config": {"mediaType": "c", "digest": "sha256:c", "size": 10},
                   "layers": [{"digest": "sha256:l1", "size": 100},
                              {"digest": "sha256:f", "size": 1000, "urls": ["https://x"]}]}),
            &format!("{OCI_MANIFEST}; charset=utf-8"),
        )
        .unwrap();
        assert_eq!(m.media_type, OCI_MANIFEST);
        let digests: Vec<_> = m.blobs().iter().map(|d| d.digest.as_str()).collect();
        assert_eq!(digests, ["sha256:c", "sha256:l1"]);
        assert_eq!(m.own_size(), m.bytes.len() as u64 + 1110);
    }

    #[test]
    fn an_index_names_its_children_and_the_body_type_stands_in_for_a_vague_header() {
        let m = read(
            json!({"mediaType": DOCKER_LIST, "manifests": [
                {"digest": "sha256:a", "size": 5, "platform": {"os": "linux", "architecture": "arm", "variant": "v7"}},
                {"digest": "sha256:b", "size": 6, "platform": {"os": "linux", "architecture": "amd64"}}]}),
            "application/json",
        )
        .unwrap();
        assert_eq!(m.media_type, DOCKER_LIST);
        let Content::Index(children) = &m.content else {
            panic!("{m:?}")
        };
        let labels: Vec<_> = children
            .iter()
            .map(|c| c.platform.as_ref().unwrap().label())
            .collect();
        assert_eq!(labels, ["linux/arm/v7", "linux/amd64"]);
        assert!(m.blobs().is_empty());
        assert_eq!(m.own_size(), m.bytes.len() as u64);
    }

    #[test]
    fn what_is_not_a_manifest_is_refused() {
        assert!(
            read(
                json!({"schemaVersion": 1, "fsLayers": []}),
                "application/vnd.docker.distribution.manifest.v1+prettyjws"
            )
            .is_err()
        );
        assert!(read(json!({"manifests": []}), OCI_MANIFEST).is_err());
        assert!(Manifest::read(b"nope".to_vec(), OCI_MANIFEST.into(), "d".into()).is_err());
    }
}
