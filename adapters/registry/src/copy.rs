//! `promote`: a copy by digest that never rewrites. Child manifests go first, by digest,
//! each after its blobs; blobs are mounted within a registry and streamed between two;
//! whatever the destination has already is skipped; the top manifest's exact bytes are
//! PUT last, under the tag, with the type they came with.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use baton_core::AdapterError;
use serde_json::{Map, Value, json};

use crate::client::{Mount, Registry};
use crate::manifest::{Content, Manifest};
use crate::reference::{ImageRef, Target};

/// What a copy did, counted as it goes.
#[derive(Debug, Default)]
pub(crate) struct Stats {
    /// Blob bytes sent to the destination (0 when every blob was mounted or present).
    pub(crate) bytes_uploaded: Arc<AtomicU64>,
    /// Blobs mounted from the source repository.
    pub(crate) blobs_mounted: AtomicU64,
    /// Blobs streamed from the source.
    pub(crate) blobs_uploaded: AtomicU64,
    /// Blobs the destination had already.
    pub(crate) blobs_present: AtomicU64,
    /// Manifests PUT (children and the top one).
    pub(crate) manifests_pushed: AtomicU64,
}

impl Stats {
    /// The counts as outputs.
    pub(crate) fn outputs(&self) -> Map<String, Value> {
        let n = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let Value::Object(map) = json!({
            "bytes_uploaded": n(&self.bytes_uploaded),
            "blobs_mounted": n(&self.blobs_mounted),
            "blobs_uploaded": n(&self.blobs_uploaded),
            "blobs_present": n(&self.blobs_present),
            "manifests_pushed": n(&self.manifests_pushed),
        }) else {
            unreachable!("a json! object is an object")
        };
        map
    }
}

/// One promote: from `src`'s `from` repository to `dst`'s `to` repository.
pub(crate) struct Copy<'a> {
    /// Where the image is.
    pub(crate) src: &'a Registry,
    /// Where it goes (the same client when it is the same registry).
    pub(crate) dst: &'a Registry,
    /// Whether `src` and `dst` are one registry, so that blobs can be mounted.
    pub(crate) same_registry: bool,
    /// The source repository.
    pub(crate) from: &'a str,
    /// The destination repository.
    pub(crate) to: &'a str,
    /// The counts.
    pub(crate) stats: &'a Stats,
}

impl Copy<'_> {
    /// Copies `from` to `to` and returns the top manifest as copied.
    pub(crate) async fn run(
        &self,
        from: &ImageRef,
        to: &ImageRef,
    ) -> Result<Manifest, AdapterError> {
        let top = self
            .src
            .manifest(self.from, from.target.as_str())
            .await?
            .ok_or_else(|| {
                AdapterError::NotFound(format!(
                    "{from} is not in registry {}: nothing to promote",
                    self.src.base()
                ))
            })?;
        if let Target::Digest(digest) = &to.target
            && *digest != top.digest
        {
            return Err(AdapterError::Invalid(format!(
                "`to` names digest {digest}, but {from} is {}: a promote never changes a digest",
                top.digest
            )));
        }
        self.children_and_blobs(&top).await?;
        self.put(&top, to.target.as_str()).await?;
        Ok(top)
    }

    /// Everything `manifest` needs at the destination before it is PUT.
    async fn children_and_blobs(&self, manifest: &Manifest) -> Result<(), AdapterError> {
        if let Content::Index(children) = &manifest.content {
            for child in children {
                if self.dst.has_manifest(self.to, &child.digest).await? {
                    continue;
                }
                let fetched = self
                    .src
                    .child_manifest(self.from, &manifest.digest, &child.digest)
                    .await?;
                // Nested indexes are rare but legal: the same rules apply one level down.
                Box::pin(self.children_and_blobs(&fetched)).await?;
                self.put(&fetched, &fetched.digest).await?;
            }
        }
        for blob in manifest.blobs() {
            self.blob(&blob.digest).await?;
        }
        Ok(())
    }

    /// PUTs `manifest`'s bytes under `reference` and checks the digest the registry states.
    async fn put(&self, manifest: &Manifest, reference: &str) -> Result<(), AdapterError> {
        let answered = self.dst.put_manifest(self.to, reference, manifest).await?;
        self.stats.manifests_pushed.fetch_add(1, Ordering::Relaxed);
        match answered {
            Some(digest) if digest != manifest.digest => Err(AdapterError::Protocol(format!(
                "registry {} stored {}:{reference} as {digest}, not {}: it rewrote the manifest",
                self.dst.base(),
                self.to,
                manifest.digest
            ))),
            _ => Ok(()),
        }
    }

    /// Makes blob `digest` present at the destination: already there, mounted, or
    /// streamed from the source.
    async fn blob(&self, digest: &str) -> Result<(), AdapterError> {
        if self.dst.has_blob(self.to, digest).await? {
            self.stats.blobs_present.fetch_add(1, Ordering::Relaxed);
            return Ok(());
        }
        let session = if self.same_registry {
            match self.dst.mount(self.to, digest, self.from).await? {
                Mount::Mounted => {
                    self.stats.blobs_mounted.fetch_add(1, Ordering::Relaxed);
                    return Ok(());
                }
                Mount::Session(location) => location,
            }
        } else {
            self.dst.start_upload(self.to).await?
        };
        let streamed = async {
            let source = self.src.blob(self.from, digest).await?;
            self.dst
                .upload(
                    self.to,
                    &session,
                    digest,
                    source,
                    &self.stats.bytes_uploaded,
                )
                .await
        };
        match streamed.await {
            Ok(()) => {
                self.stats.blobs_uploaded.fetch_add(1, Ordering::Relaxed);
                Ok(())
            }
            Err(e) => {
                self.dst.cancel_upload(self.to, &session).await;
                Err(e)
            }
        }
    }
}
