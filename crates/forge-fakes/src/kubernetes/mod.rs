//! The Kubernetes API server, as the `kube` client and `kubectl` talk to it over plain
//! HTTP: bearer tokens with RBAC rules, generic object storage with one resourceVersion
//! counter, list and watch (replayed from an event log, 410 once [`Cluster::compact`]
//! forgot it), create, update, the four patch types (server-side apply with field
//! managers and conflicts among them), deletes with propagation and owner-reference
//! garbage collection, and controllers that move Deployments, StatefulSets, DaemonSets and
//! Jobs (and a kubelet that runs Job pods through [`Cluster::image`] programs) as real time
//! passes.
//!
//! ```no_run
//! # async fn demo() -> std::io::Result<()> {
//! use baton_forge_fakes::kubernetes::{Cluster, Rules};
//! let cluster = Cluster::new();
//! cluster.add_namespace("app");
//! cluster.add_token("t0k3n", "system:serviceaccount:ci:baton", Rules::all());
//! cluster.add_deployment("app", "web", "web", "web:1", 3);
//! let served = cluster.serve().await?;
//! cluster.write_kubeconfig(&served, std::path::Path::new("kubeconfig"), "fake", "t0k3n")?;
//! # Ok(()) }
//! ```
//!
//! Facts followed (kubernetes/kubernetes): the wire format of `Status` errors and watch
//! events (`staging/src/k8s.io/apimachinery/pkg/api/errors/errors.go`,
//! `staging/src/k8s.io/apimachinery/pkg/watch/json`), the RBAC refusal message
//! (`staging/src/k8s.io/apiserver/pkg/endpoints/handlers/responsewriters/errors.go`), the
//! Deployment controller's conditions (`pkg/controller/deployment/util/deployment_util.go`),
//! the Job controller's (`pkg/controller/job/job_controller.go`), the default orphaning of a
//! Job's pods (`pkg/registry/batch/job/strategy.go`) and what `kubectl rollout status`
//! reads (`staging/src/k8s.io/kubectl/pkg/polymorphichelpers/rollout_status.go`).
//!
//! Every request is counted in the [`Meter`] under the token's user name (`anonymous`
//! without a known token).

mod api;
mod controllers;
mod http;
mod patch;
mod plan;
mod rbac;
mod resources;
mod select;
mod store;
mod watch;

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use serde_json::{Value, json};
use tokio::sync::broadcast;

pub use plan::{PodInput, PodOutcome, RolloutPlan};
pub use rbac::Rules;

use crate::{Meter, Served, lock};
use controllers::Controllers;
use store::{Key, Store};

/// One write request (create, update, patch or delete) to an object, as received.
#[derive(Debug, Clone, PartialEq)]
pub struct Write {
    /// `patch`, `create`, `update` or `delete`.
    pub verb: String,
    /// The request's `Content-Type`, if any.
    pub content_type: Option<String>,
    /// The body (YAML bodies as JSON; `null` without one).
    pub body: Value,
    /// The `fieldManager` query parameter, if any.
    pub field_manager: Option<String>,
    /// The status code answered.
    pub status: u16,
}

/// What a Job pod's image does with its input.
type Program = Arc<dyn Fn(&PodInput) -> PodOutcome + Send + Sync>;

/// Everything behind the one lock.
struct State {
    store: Store,
    tokens: HashMap<String, (String, Rules)>,
    images: HashMap<String, Program>,
    writes: HashMap<Key, Vec<Write>>,
    creates: HashMap<(String, String), usize>,
    /// Who owns which fields of which object (server-side apply).
    managers: HashMap<Key, patch::Managers>,
    controllers: Controllers,
}

/// Counts of watch streams.
#[derive(Default)]
struct WatchCounts {
    open: AtomicUsize,
    peak: AtomicUsize,
    opened: Mutex<BTreeMap<(String, String), u64>>,
}

struct Inner {
    state: Mutex<State>,
    meter: Meter,
    watches: WatchCounts,
    /// Whether the controllers' loop runs (one per cluster, on the runtime that serves it).
    ticking: AtomicBool,
}

/// A simulated Kubernetes API server with its controllers. Cheap to clone: clones share
/// the cluster.
#[derive(Clone)]
pub struct Cluster {
    inner: Arc<Inner>,
}

impl Default for Cluster {
    fn default() -> Self {
        Self::new()
    }
}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster").finish_non_exhaustive()
    }
}

impl Cluster {
    /// An empty cluster: no namespace, no token.
    pub fn new() -> Self {
        // A reader further behind than this ends its stream and watches again from the
        // log, as a client does after any cut.
        let (feed, _) = broadcast::channel(1 << 14);
        Self {
            inner: Arc::new(Inner {
                state: Mutex::new(State {
                    store: Store::new(feed),
                    tokens: HashMap::new(),
                    images: HashMap::new(),
                    writes: HashMap::new(),
                    creates: HashMap::new(),
                    managers: HashMap::new(),
                    controllers: Controllers::default(),
                }),
                meter: Meter::default(),
                watches: WatchCounts::default(),
                ticking: AtomicBool::new(false),
            }),
        }
    }

    fn router(&self) -> axum::Router {
        controllers::start(self);
        http::router(self.clone())
    }

    /// Serves the cluster (and runs its controllers) on a free port of 127.0.0.1 from the
    /// current Tokio runtime, until the returned [`Served`] is dropped.
    pub async fn serve(&self) -> std::io::Result<Served> {
        crate::serve(self.router()).await
    }

    /// The same from a runtime of its own, for tests that are not async.
    pub fn serve_in_background(&self) -> std::io::Result<Served> {
        crate::serve_in_background(|| self.router())
    }

    /// Writes a kubeconfig (YAML) with one cluster, user and context named `context` that
    /// reaches `served.url` with bearer `token`.
    pub fn write_kubeconfig(
        &self,
        served: &Served,
        path: &Path,
        context: &str,
        token: &str,
    ) -> std::io::Result<()> {
        let config = json!({
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": context, "cluster": {"server": served.url}}],
            "users": [{"name": context, "user": {"token": token}}],
            "contexts": [{"name": context, "context": {"cluster": context, "user": context}}],
            "current-context": context,
        });
        let yaml = serde_yaml_ng::to_string(&config).map_err(std::io::Error::other)?;
        std::fs::write(path, yaml)
    }

    /// A token for `user` (e.g. `system:serviceaccount:ci:baton`) allowed what `rules`
    /// allow.
    pub fn add_token(&self, token: &str, user: &str, rules: Rules) {
        let mut state = self.state();
        state
            .tokens
            .insert(token.to_owned(), (user.to_owned(), rules));
    }

    /// A namespace (objects may only live in namespaces that exist; 404 otherwise).
    pub fn add_namespace(&self, ns: &str) {
        let mut state = self.state();
        let key = (String::from("namespaces"), String::new(), ns.to_owned());
        if state.store.get(&key).is_none() {
            let namespace =
                json!({"spec": {"finalizers": ["kubernetes"]}, "status": {"phase": "Active"}});
            state.store.insert(key, namespace);
        }
    }

    /// A Deployment `ns/name`, rolled out and stable at revision 1: `replicas` pods of one
    /// container `container` running `image`, with its ReplicaSet (revision 1).
    pub fn add_deployment(
        &self,
        ns: &str,
        name: &str,
        container: &str,
        image: &str,
        replicas: i32,
    ) {
        let wanted = controllers::Workload::new(ns, name, container, image, replicas);
        controllers::deployment::add(&mut self.state(), &wanted);
    }

    /// A StatefulSet `ns/name`, rolled out and stable: `replicas` replicas of one container.
    pub fn add_statefulset(
        &self,
        ns: &str,
        name: &str,
        container: &str,
        image: &str,
        replicas: i32,
    ) {
        let wanted = controllers::Workload::new(ns, name, container, image, replicas);
        controllers::workloads::add_statefulset(&mut self.state(), &wanted);
    }

    /// A DaemonSet `ns/name` on `nodes` nodes, rolled out and stable.
    pub fn add_daemonset(&self, ns: &str, name: &str, container: &str, image: &str, nodes: i32) {
        let wanted = controllers::Workload::new(ns, name, container, image, nodes);
        controllers::workloads::add_daemonset(&mut self.state(), &wanted);
    }

    /// How the next rollouts of workload `ns/name` (any of the three kinds) behave.
    pub fn rollout_plan(&self, ns: &str, name: &str, plan: RolloutPlan) {
        let mut state = self.state();
        state
            .controllers
            .plans
            .insert((ns.to_owned(), name.to_owned()), plan);
    }

    /// How pods running `image` behave (Job pods): `program` sees the pod's input. It runs
    /// once, when the pod starts, under the cluster's lock: it must not call the cluster.
    pub fn image(
        &self,
        image: &str,
        program: impl Fn(&PodInput) -> PodOutcome + Send + Sync + 'static,
    ) {
        let mut state = self.state();
        state.images.insert(image.to_owned(), Arc::new(program));
    }

    /// The object as stored (JSON), if any. `resource` is the plural (`deployments`,
    /// `jobs`, `pods`, `replicasets`, `configmaps`, ...).
    pub fn get(&self, resource: &str, ns: &str, name: &str) -> Option<Value> {
        let key = (resource.to_owned(), ns.to_owned(), name.to_owned());
        self.state().store.get(&key).cloned()
    }

    /// The objects of `resource` in `ns`, by name.
    pub fn list(&self, resource: &str, ns: &str) -> Vec<Value> {
        let state = self.state();
        state
            .store
            .list(resource, Some(ns))
            .map(|(_, v)| v.clone())
            .collect()
    }

    /// Every write request to `resource` `ns/name` so far, oldest first.
    pub fn writes(&self, resource: &str, ns: &str, name: &str) -> Vec<Write> {
        let key = (resource.to_owned(), ns.to_owned(), name.to_owned());
        self.state().writes.get(&key).cloned().unwrap_or_default()
    }

    /// Create requests (`POST`) for `resource` in `ns` so far, refused ones (403, 409,
    /// 422) included.
    pub fn creates(&self, resource: &str, ns: &str) -> usize {
        let key = (resource.to_owned(), ns.to_owned());
        self.state().creates.get(&key).copied().unwrap_or(0)
    }

    /// Every request, under the token's user name.
    pub fn meter(&self) -> &Meter {
        &self.inner.meter
    }

    /// Watch streams open now.
    pub fn open_watches(&self) -> usize {
        self.inner.watches.open.load(Ordering::SeqCst)
    }

    /// Watch streams opened in all on `resource` in `ns`.
    pub fn watches_opened(&self, resource: &str, ns: &str) -> u64 {
        let opened = lock(&self.inner.watches.opened);
        opened
            .get(&(resource.to_owned(), ns.to_owned()))
            .copied()
            .unwrap_or(0)
    }

    /// The most watch streams open at once so far.
    pub fn peak_open_watches(&self) -> usize {
        self.inner.watches.peak.load(Ordering::SeqCst)
    }

    /// Forgets the event history: the next watch from an older resourceVersion gets 410
    /// Gone (an `ERROR` event with a 410 `Status`), and so does a list asking for an exact
    /// older resourceVersion.
    pub fn compact(&self) {
        self.state().store.compact();
    }

    /// Ends every open watch stream (as an API server restart or a load balancer does).
    pub fn drop_watches(&self) {
        self.state().store.drop_watches();
    }

    /// When the status update that completed the latest rollout of `ns/name` was written.
    pub fn rollout_completed_at(&self, ns: &str, name: &str) -> Option<SystemTime> {
        let state = self.state();
        let key = (ns.to_owned(), name.to_owned());
        state.controllers.completed_at.get(&key).copied()
    }

    /// Pods in `ns` that belonged to a Job that no longer exists and are still there (the
    /// Job was deleted without propagation). Stays empty when callers delete correctly.
    pub fn orphaned_pods(&self, ns: &str) -> Vec<String> {
        let state = self.state();
        state
            .store
            .list("pods", Some(ns))
            .filter(|(_, pod)| {
                pod["metadata"]["labels"]["batch.kubernetes.io/controller-uid"]
                    .as_str()
                    .is_some_and(|uid| state.store.by_uid(uid).is_none())
            })
            .map(|(k, _)| k.2.clone())
            .collect()
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        lock(&self.inner.state)
    }
}
