//! The `kubernetes` adapter: a stage changes a workload's image, applies manifests, or runs
//! a ContainerOps component as a Job, and waits exactly as `kubectl rollout status` does.
//!
//! ```toml
//! [adapters.prod]
//! kind = "kubernetes"
//! kubeconfig = "~/.kube/config"   # or in_cluster = true
//! context = "prod"
//! ```
//!
//! ```yaml
//!   deploy:
//!     uses: prod
//!     with: { action: set-image, namespace: app, deployment: web, container: web,
//!             image: 'reg/app@${{ .stages.build.outputs.digest }}', undo_on_failure: true }
//! ```
//!
//! - `set-image` patches one container's image by strategic merge (as `kubectl set image`),
//!   recording the attempt key and the revision before it on the workload in the same patch.
//! - `apply` server-side applies a manifest (field manager `baton`), each object carrying
//!   the attempt key, and waits for every Deployment, StatefulSet and DaemonSet it touched.
//! - `job` runs a component as a Job named from the attempt key: input as `CO_DATA` and in
//!   the file `$BATON_INPUT` (a ConfigMap the Job owns); outputs as the `docker` adapter gives
//!   them, the `$BATON_OUTPUT` file being the container's termination message.
//!
//! # Waiting
//!
//! The verdict is kubectl's ([`rollout`]); its line is the progress message. One watch per
//! (namespace, kind) serves every stage of the instance (`watch`): its events wake the
//! attempts waiting on the object, and polls read the watch's store instead of the server.
//!
//! # Durability
//!
//! `find` adopts a workload carrying the attempt key (never patched twice) and the Job of
//! the deterministic name. With `undo_on_failure`, a progress deadline, a timeout or a
//! cancel undoes the rollout as `kubectl rollout undo` does ([`undo`]) and records it on
//! the Deployment, so a poll after a crash knows. A Job's log and termination message are
//! read before its end is reported and kept in the reference.
//!
//! # Modules
//!
//! [`config`] checks blocks; [`rollout`], [`undo`] and [`job`] are pure; `client` reads the
//! kubeconfig; `cluster` bounds and classifies requests (`errors`); `watch` shares watches;
//! `rollouts` and `batch` carry out the actions (`pods` says why a rollout is stuck);
//! `reference` is what a stage stores.

mod batch;
mod client;
mod cluster;
pub mod config;
mod errors;
pub mod job;
mod pods;
mod reference;
pub mod rollout;
mod rollouts;
pub mod undo;
mod watch;

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use baton_core::typed::{InstanceBuild, stage_with};
use baton_core::{
    Adapter, AdapterError, AdapterKind, AttemptKey, ExternalRef, FieldError, Logs, PollOutcome,
    PollRequest, SecretResolver, StartRequest, Waker,
};
use serde_json::{Map, Value};

use crate::cluster::Cluster;
pub use crate::config::{Action, InstanceConfig, Mode};
use crate::reference::Reference;
pub use crate::rollouts::{
    CANCELLED_BY_ANNOTATION, FIELD_MANAGER, REVISION_BEFORE_ANNOTATION, UNDO_REASON_ANNOTATION,
    UNDONE_BY_ANNOTATION,
};
pub use crate::watch::IDLE as WATCH_IDLE;

/// The kind name, as in `kind = "kubernetes"`.
pub const KIND: &str = "kubernetes";

/// The poll hint while waiting: long, as a safety net only, since every watch event for
/// the object wakes the attempt at once.
pub const POLL_HINT: Duration = Duration::from_secs(30);

/// The `kubernetes` kind.
#[derive(Debug, Clone, Default)]
pub struct KubernetesKind;

fn parse_instance(config: &Value) -> Result<InstanceConfig, Vec<FieldError>> {
    let home = std::env::var("HOME").ok();
    config::parse_instance(config, home.as_deref())
}

impl AdapterKind for KubernetesKind {
    fn kind(&self) -> &'static str {
        KIND
    }

    fn summary(&self) -> &'static str {
        "sets an image or applies manifests and waits as kubectl rollout status does, or runs a component as a Job"
    }

    fn docs(&self) -> &'static str {
        "docs/adapters/kubernetes.md"
    }

    fn validate_instance(&self, config: &Value) -> Vec<FieldError> {
        parse_instance(config).err().unwrap_or_default()
    }

    fn validate_stage(&self, with: &Value) -> Vec<FieldError> {
        config::parse_stage(with, Mode::Templates)
            .err()
            .unwrap_or_default()
    }

    fn build(
        &self,
        name: &str,
        config: &Value,
        secrets: &dyn SecretResolver,
    ) -> Result<Arc<dyn Adapter>, AdapterError> {
        let config = InstanceBuild::new(name, secrets).config(parse_instance(config))?;
        Ok(Arc::new(KubernetesAdapter::new(name, &config)?))
    }
}

struct Inner {
    name: String,
    access: client::Access,
    namespace: Option<String>,
    request_timeout: Duration,
    cluster: tokio::sync::OnceCell<Cluster>,
    waker: Arc<Mutex<Option<Waker>>>,
}

/// Drives stages on one cluster.
#[derive(Clone)]
pub struct KubernetesAdapter {
    inner: Arc<Inner>,
}

impl KubernetesAdapter {
    /// An adapter for instance `name`: its kubeconfig (or service account) is read now, and
    /// its problems name the file and the context.
    pub fn new(name: &str, config: &InstanceConfig) -> Result<Self, AdapterError> {
        let access = client::load(name, config)?;
        Ok(Self {
            inner: Arc::new(Inner {
                name: name.to_owned(),
                access,
                namespace: config.namespace.clone(),
                request_timeout: config.request_timeout,
                cluster: tokio::sync::OnceCell::new(),
                waker: Arc::default(),
            }),
        })
    }

    /// The watches open now, one per (namespace, resource) some stage waits on.
    pub fn open_watches(&self) -> usize {
        self.inner.cluster.get().map_or(0, |c| c.watches.open())
    }

    async fn cluster(&self) -> Result<&Cluster, AdapterError> {
        let inner = &self.inner;
        inner
            .cluster
            .get_or_try_init(|| async {
                let client = inner
                    .access
                    .client(&inner.name, inner.request_timeout)
                    .await?;
                let watches = watch::Watches::new(client.clone(), inner.waker.clone());
                let namespace = inner
                    .namespace
                    .clone()
                    .unwrap_or_else(|| inner.access.namespace());
                Ok(Cluster::new(
                    client,
                    watches,
                    namespace,
                    inner.request_timeout,
                ))
            })
            .await
    }
}

impl std::fmt::Debug for KubernetesAdapter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KubernetesAdapter")
            .field("name", &self.inner.name)
            .finish_non_exhaustive()
    }
}

#[async_trait]
impl Adapter for KubernetesAdapter {
    fn kind(&self) -> &'static str {
        KIND
    }

    async fn start(&self, request: &StartRequest) -> Result<ExternalRef, AdapterError> {
        let action = stage_with(config::parse_stage(&request.input, Mode::Rendered))?;
        let cluster = self.cluster().await?;
        let key = &request.key;
        let reference = match &action {
            Action::SetImage(spec) => rollouts::set_image(cluster, key, spec).await?,
            Action::Apply(spec) => rollouts::apply(cluster, key, spec).await?,
            Action::Job(spec) => batch::start(cluster, key, spec, request.timeout).await?,
        };
        Ok(reference.external())
    }

    async fn find(
        &self,
        key: &AttemptKey,
        input: &Value,
    ) -> Result<Option<ExternalRef>, AdapterError> {
        let action = stage_with(config::parse_stage(input, Mode::Rendered))?;
        let cluster = self.cluster().await?;
        let found = match &action {
            Action::SetImage(spec) => rollouts::find_set_image(cluster, key, spec).await?,
            Action::Apply(spec) => rollouts::find_apply(cluster, key, spec).await?,
            Action::Job(spec) => batch::find(cluster, key, spec).await?,
        };
        Ok(found.map(|r| r.external()))
    }

    async fn poll(&self, request: &PollRequest<'_>) -> Result<PollOutcome, AdapterError> {
        let reference = Reference::read(request.key, request.external)?;
        let cluster = self.cluster().await?;
        match &reference {
            Reference::Rollout(rollout) => rollouts::poll(cluster, request.key, rollout).await,
            Reference::Job(job) => batch::poll(cluster, request.key, job).await,
        }
    }

    async fn outputs(
        &self,
        key: &AttemptKey,
        external: &ExternalRef,
    ) -> Result<Map<String, Value>, AdapterError> {
        match Reference::read(key, external)? {
            Reference::Rollout(rollout) => {
                rollouts::outputs(self.cluster().await?, key, &rollout).await
            }
            Reference::Job(job) => batch::outputs(key, &job),
        }
    }

    async fn cancel(&self, key: &AttemptKey, external: &ExternalRef) -> Result<(), AdapterError> {
        self.cancel_explained(key, external).await.map(drop)
    }

    async fn cancel_explained(
        &self,
        key: &AttemptKey,
        external: &ExternalRef,
    ) -> Result<Option<String>, AdapterError> {
        let reference = Reference::read(key, external)?;
        let cluster = self.cluster().await?;
        match &reference {
            Reference::Rollout(rollout) => rollouts::cancel(cluster, key, rollout).await,
            Reference::Job(job) => batch::cancel(cluster, key, job).await.map(|()| None),
        }
    }

    async fn logs(&self, key: &AttemptKey, external: &ExternalRef) -> Result<Logs, AdapterError> {
        match Reference::read(key, external)? {
            Reference::Rollout(_) => Ok(Logs::default()),
            Reference::Job(job) => batch::logs(self.cluster().await?, key, &job).await,
        }
    }

    fn attach(&self, waker: Waker) {
        *self
            .inner
            .waker
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some(waker);
    }
}
