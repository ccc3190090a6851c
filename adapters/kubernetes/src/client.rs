//! Reaching the API server: the kubeconfig (or the pod's service account) read when the
//! adapter is built, so that its problems name the file and context at once; the client made
//! at first use.

use std::path::{Path, PathBuf};
use std::time::Duration;

use baton_core::AdapterError;
use kube::config::{KubeConfigOptions, Kubeconfig};

use crate::config::{InstanceConfig, Source};

/// Where the credentials were read from, ready to make a client.
#[derive(Debug, Clone)]
pub(crate) enum Access {
    /// A kubeconfig file, read and checked.
    File {
        /// The file.
        path: PathBuf,
        /// Its contents.
        kubeconfig: Box<Kubeconfig>,
        /// The context used (named, or the file's current one).
        context: String,
        /// The context's namespace, if it sets one.
        namespace: Option<String>,
    },
    /// The pod's service account.
    InCluster(Box<kube::Config>),
}

/// The kubeconfig file to read: the block's, else the first of `KUBECONFIG`, else
/// `~/.kube/config`.
pub(crate) fn kubeconfig_path(
    given: Option<&Path>,
    kubeconfig_env: Option<&str>,
    home: Option<&str>,
) -> Option<PathBuf> {
    if let Some(path) = given {
        return Some(path.to_owned());
    }
    if let Some(first) = kubeconfig_env.and_then(|list| list.split(':').find(|p| !p.is_empty())) {
        return Some(PathBuf::from(first));
    }
    home.map(|home| Path::new(home).join(".kube/config"))
}

/// Reads the credentials of instance `name`.
pub(crate) fn load(name: &str, config: &InstanceConfig) -> Result<Access, AdapterError> {
    let (given, context) = match &config.source {
        Source::InCluster => {
            return kube::Config::incluster()
                .map(|c| Access::InCluster(Box::new(c)))
                .map_err(|e| {
                    AdapterError::Invalid(format!(
                        "adapter `{name}`: in_cluster = true, but this is not a pod with a service account: {e}"
                    ))
                });
        }
        Source::Kubeconfig { path, context } => (path.as_deref(), context.as_deref()),
    };
    let env = std::env::var("KUBECONFIG").ok();
    let home = std::env::var("HOME").ok();
    let path = kubeconfig_path(given, env.as_deref(), home.as_deref()).ok_or_else(|| {
        AdapterError::Invalid(format!(
            "adapter `{name}`: no kubeconfig: set `kubeconfig`, KUBECONFIG or HOME"
        ))
    })?;
    let kubeconfig = Kubeconfig::read_from(&path).map_err(|e| {
        AdapterError::Invalid(format!(
            "adapter `{name}`: cannot read the kubeconfig {}: {e}",
            path.display()
        ))
    })?;
    let chosen = context
        .map(str::to_owned)
        .or_else(|| kubeconfig.current_context.clone())
        .ok_or_else(|| {
            AdapterError::Invalid(format!(
                "adapter `{name}`: the kubeconfig {} has no current-context: set `context`",
                path.display()
            ))
        })?;
    let Some(found) = kubeconfig.contexts.iter().find(|c| c.name == chosen) else {
        let names: Vec<_> = kubeconfig
            .contexts
            .iter()
            .map(|c| c.name.as_str())
            .collect();
        return Err(AdapterError::Invalid(format!(
            "adapter `{name}`: the kubeconfig {} has no context `{chosen}` (it has: {})",
            path.display(),
            names.join(", ")
        )));
    };
    let namespace = found.context.as_ref().and_then(|c| c.namespace.clone());
    Ok(Access::File {
        path,
        kubeconfig: Box::new(kubeconfig),
        context: chosen,
        namespace,
    })
}

impl Access {
    /// The namespace of stages that name none, when neither the block nor the stage does.
    pub(crate) fn namespace(&self) -> String {
        match self {
            Self::File { namespace, .. } => namespace.clone(),
            Self::InCluster(config) => Some(config.default_namespace.clone()),
        }
        .unwrap_or_else(|| "default".to_owned())
    }

    /// A client; `request_timeout` bounds connecting (each call is bounded by its caller).
    pub(crate) async fn client(
        &self,
        name: &str,
        request_timeout: Duration,
    ) -> Result<kube::Client, AdapterError> {
        let mut config = match self {
            Self::InCluster(config) => (**config).clone(),
            Self::File {
                path,
                kubeconfig,
                context,
                ..
            } => {
                let options = KubeConfigOptions {
                    context: Some(context.clone()),
                    ..KubeConfigOptions::default()
                };
                kube::Config::from_custom_kubeconfig((**kubeconfig).clone(), &options)
                    .await
                    .map_err(|e| {
                        AdapterError::Invalid(format!(
                            "adapter `{name}`: the kubeconfig {} (context `{context}`) cannot be used: {e}",
                            path.display()
                        ))
                    })?
            }
        };
        config.connect_timeout = Some(request_timeout);
        kube::Client::try_from(config).map_err(|e| {
            AdapterError::Invalid(format!("adapter `{name}`: cannot make a client: {e}"))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::parse_instance;

    #[test]
    fn the_file_is_the_blocks_then_kubeconfigs_then_homes() {
        let given = Path::new("/etc/k");
        assert_eq!(
            kubeconfig_path(Some(given), Some("/a"), Some("/h")),
            Some(given.to_owned())
        );
        assert_eq!(
            kubeconfig_path(None, Some(":/a:/b"), Some("/h")),
            Some(PathBuf::from("/a"))
        );
        assert_eq!(
            kubeconfig_path(None, None, Some("/h")),
            Some(PathBuf::from("/h/.kube/config"))
        );
        assert_eq!(kubeconfig_path(None, None, None), None);
    }

    fn instance(path: &Path, context: Option<&str>) -> InstanceConfig {
        let mut block = serde_json::json!({"kubeconfig": path.to_str().unwrap()});
        if let Some(context) = context {
            block["context"] = context.into();
        }
        parse_instance(&block, None).unwrap()
    }

    #[test]
    fn problems_name_the_file_and_the_context() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config");
        let missing = load("prod", &instance(&path, None))
            .unwrap_err()
            .to_string();
        assert!(
            missing.contains(&format!("cannot read the kubeconfig {}", path.display())),
            "{missing}"
        );
        std::fs::write(
            &path,
            "apiVersion: v1\nkind: Config\ncurrent-context: a\nclusters: [{name: c, cluster: {server: 'http://127.0.0.1:1'}}]\nusers: [{name: u, user: {token: t}}]\ncontexts: [{name: a, context: {cluster: c, user: u, namespace: app}}]\n",
        )
        .unwrap();
        let wrong = load("prod", &instance(&path, Some("b")))
            .unwrap_err()
            .to_string();
        assert!(
            wrong.contains("has no context `b` (it has: a)")
                && wrong.contains(&path.display().to_string()),
            "{wrong}"
        );
        let access = load("prod", &instance(&path, None)).unwrap();
        assert_eq!(access.namespace(), "app");
    }
}
