//! One connection to the API server: the client, the shared watches, the default namespace,
//! and every request bounded in time and classified when it fails.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use baton_core::{AdapterError, AttemptKey};
use kube::api::{Api, ApiResource, DynamicObject};
use kube::core::GroupVersionKind;

use crate::errors::{Call, classify};
use crate::watch::Watches;

/// The connection of one adapter instance.
pub(crate) struct Cluster {
    /// The client.
    pub(crate) client: kube::Client,
    /// The shared watches.
    pub(crate) watches: Watches,
    /// The namespace of stages that name none.
    pub(crate) namespace: String,
    /// The bound on one request.
    pub(crate) request_timeout: Duration,
    /// Kinds already mapped to resources by discovery: (apiVersion, kind) → the resource and
    /// whether it is namespaced.
    kinds: Mutex<HashMap<(String, String), (ApiResource, bool)>>,
    /// The pods of long-waiting rollouts, looked at now and then.
    pub(crate) pod_checks: crate::pods::Checks,
    /// Held through an undo's read, plan and patch: a wake can start a second poll of the
    /// same attempt while the first one undoes, and the second must read the first's mark
    /// rather than undo again. Undos are rare, so one lock serves the instance.
    pub(crate) undoing: tokio::sync::Mutex<()>,
}

/// The context of errors about attempt `key`.
pub(crate) fn context(key: &AttemptKey) -> String {
    format!("kubernetes {key}")
}

impl Cluster {
    /// A connection.
    pub(crate) fn new(
        client: kube::Client,
        watches: Watches,
        namespace: String,
        request_timeout: Duration,
    ) -> Self {
        Self {
            client,
            watches,
            namespace,
            request_timeout,
            kinds: Mutex::default(),
            pod_checks: crate::pods::Checks::default(),
            undoing: tokio::sync::Mutex::new(()),
        }
    }

    /// `request`, bounded by the request timeout (running out is a transient error).
    pub(crate) async fn send<T>(
        &self,
        request: impl Future<Output = Result<T, kube::Error>>,
    ) -> Result<T, kube::Error> {
        match tokio::time::timeout(self.request_timeout, request).await {
            Ok(result) => result,
            Err(elapsed) => Err(kube::Error::Service(Box::new(elapsed))),
        }
    }

    /// [`Cluster::send`], its failure classified for `call`.
    pub(crate) async fn call<T>(
        &self,
        key: &AttemptKey,
        call: Call<'_>,
        request: impl Future<Output = Result<T, kube::Error>>,
    ) -> Result<T, AdapterError> {
        self.send(request)
            .await
            .map_err(|e| classify(&context(key), &call, e))
    }

    /// The objects of `resource` in `namespace`.
    pub(crate) fn api(&self, resource: &ApiResource, namespace: &str) -> Api<DynamicObject> {
        Api::namespaced_with(self.client.clone(), namespace, resource)
    }

    /// The resource of a manifest's `apiVersion` and `kind`, and whether it is namespaced,
    /// asked of discovery once per kind.
    pub(crate) async fn resource_of(
        &self,
        key: &AttemptKey,
        api_version: &str,
        kind: &str,
    ) -> Result<(ApiResource, bool), AdapterError> {
        let cache_key = (api_version.to_owned(), kind.to_owned());
        if let Some(found) = self
            .kinds
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&cache_key)
        {
            return Ok(found.clone());
        }
        let (group, version) = api_version.rsplit_once('/').unwrap_or(("", api_version));
        let gvk = GroupVersionKind::gvk(group, version, kind);
        let found = self
            .send(kube::discovery::pinned_kind(&self.client, &gvk))
            .await
            .map_err(|e| match e {
                kube::Error::Api(status) if status.code == 404 => AdapterError::Invalid(format!(
                    "{}: the cluster has no kind {kind} in {api_version}",
                    context(key)
                )),
                kube::Error::Discovery(e) => AdapterError::Invalid(format!(
                    "{}: the cluster has no kind {kind} in {api_version}: {e}",
                    context(key)
                )),
                other => classify(
                    &context(key),
                    &Call {
                        verb: "get",
                        group,
                        resource: "(discovery)",
                        namespace: "",
                        name: None,
                    },
                    other,
                ),
            })?;
        let found = (found.0, found.1.scope == kube::discovery::Scope::Namespaced);
        self.kinds
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(cache_key, found.clone());
        Ok(found)
    }
}
