//! What every command needs: the loaded config, the adapters, the store and the engine.

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result};
use baton_config::{Checked, Diagnostics, EnvFileResolver, GatewayConfig, Loaded, SecretsFrom};
use baton_core::{Adapter, Kinds, SecretResolver};
use baton_engine::{Engine, EngineConfig};
use baton_store::{StoreError, StoreOptions};

/// Every adapter kind this build of baton has. Adding a kind is one line here: what the kind
/// is (an instance without a block, whether it takes decisions) it declares itself.
/// `secret_env` names the variables the config reads secrets from, which commands never get.
pub(crate) fn kinds(exec_state_dir: &Path, secret_env: BTreeSet<String>) -> Kinds {
    let mut kinds = Kinds::new();
    kinds.register(Arc::new(
        baton_adapter_exec::ExecKind::new(exec_state_dir).hiding_env(secret_env),
    ));
    kinds.register(Arc::new(baton_adapter_approval::ApprovalKind));
    kinds.register(Arc::new(baton_adapter_docker::DockerKind::new(
        exec_state_dir.with_extension("docker"),
    )));
    kinds.register(Arc::new(baton_adapter_jenkins::JenkinsKind::default()));
    kinds.register(Arc::new(baton_adapter_buildbot::BuildbotKind));
    kinds.register(Arc::new(baton_adapter_gitlab_ci::GitLabKind::default()));
    kinds.register(Arc::new(baton_adapter_travis::TravisKind::default()));
    kinds.register(Arc::new(baton_adapter_concourse::ConcourseKind::default()));
    kinds.register(Arc::new(baton_adapter_registry::RegistryKind));
    kinds.register(Arc::new(baton_adapter_kubernetes::KubernetesKind));
    kinds.register(Arc::new(
        baton_adapter_github_actions::GithubActionsKind::default(),
    ));
    kinds
}

/// The store of a lone workflow file run without a gateway config.
pub(crate) const LONE_STORE: &str = "sqlite://.baton/baton.db";

/// The config file to use: `-c`, else `baton.toml` / `baton.yaml` in the current folder
/// when one exists and the workflow is not given as a file.
pub(crate) fn config_file(flag: Option<&Path>, lone_workflow: Option<&Path>) -> Option<PathBuf> {
    if let Some(file) = flag {
        return Some(file.to_path_buf());
    }
    if lone_workflow.is_some() {
        return None;
    }
    ["baton.toml", "baton.yaml", "baton.yml"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.is_file())
}

/// Loads the config and workflows; `store` (a `--store` flag) replaces the store url.
pub(crate) fn load(
    config: Option<&Path>,
    workflow_files: &[PathBuf],
    store: Option<&str>,
) -> Result<Loaded, Diagnostics> {
    let mut loaded =
        baton_config::load(config, workflow_files, &checking_kinds(), std::env::vars())?;
    let store_overridden = std::env::vars().any(|(k, _)| k == "BATON_STORE__URL");
    if let Some(url) = store {
        loaded.gateway.store.url = url.to_owned();
    } else if config.is_none() && !store_overridden {
        loaded.gateway.store.url = LONE_STORE.to_owned();
    }
    Ok(loaded)
}

/// Loads the config and workflows, and reads every secret the config references as `serve`
/// does (see [`baton_config::load_reading_secrets`]).
pub(crate) fn load_reading_secrets(
    config: Option<&Path>,
    workflow_files: &[PathBuf],
    from: SecretsFrom,
) -> Checked {
    baton_config::load_reading_secrets(
        config,
        workflow_files,
        &checking_kinds(),
        std::env::vars(),
        from,
    )
}

/// The kinds for checking and describing: what they carry (the exec state folder, the
/// secrets' variables) matters only when adapters are built, which `build_engine` does with
/// the kinds of the loaded config.
pub(crate) fn checking_kinds() -> Kinds {
    kinds(Path::new("."), BTreeSet::new())
}

/// The kinds with what the config gives them (the state folder of `exec`, the variables it
/// reads secrets from): the kinds that build adapters.
pub(crate) fn configured_kinds(loaded: &Loaded) -> Kinds {
    kinds(&loaded.gateway.exec_state_dir(), loaded.secret_env_names())
}

/// Builds every adapter instance, opens the store and creates the engine (not started).
pub(crate) async fn build_engine(loaded: &Loaded) -> Result<Engine> {
    let gateway = &loaded.gateway;
    let kinds = configured_kinds(loaded);
    let resolver = EnvFileResolver::new(gateway.base_dir.clone());
    let mut adapters: HashMap<String, Arc<dyn Adapter>> = HashMap::new();
    for (name, instance) in gateway.instances(&kinds) {
        let kind = kinds
            .get(&instance.kind)
            .with_context(|| format!("adapter `{name}`: unknown kind `{}`", instance.kind))?;
        let adapter = kind
            .build(&name, &instance.config, &resolver)
            .with_context(|| format!("adapter `{name}`"))?;
        adapters.insert(name, adapter);
    }
    let options = store_options(gateway, &resolver)?;
    let store = baton_store::open_with(&options)
        .await
        .map_err(|e| store_open_error(&options.url, e))?;
    let expressions = gateway.expressions.limits();
    // Evaluations started outside the engine and the matcher (a generic source's `event`
    // expression) are bounded the same.
    baton_core::expr_bound::set_default_limits(expressions);
    let config = EngineConfig {
        poll_min: gateway.engine.poll_min.0,
        poll_max: gateway.engine.poll_max.0,
        max_concurrency: gateway.engine.max_concurrency,
        defaults: gateway.stage_defaults(&kinds),
        expressions,
        // A store owned by one process keeps the engine's own lease: its claims are never
        // taken over, only left by a crash, and cleared at the next start.
        lease: if store.shared() {
            gateway.store.lease()
        } else {
            EngineConfig::default().lease
        },
        ..EngineConfig::default()
    };
    Ok(Engine::new(store, adapters, config))
}

/// How to open the config's store: its URL, the password its reference names (read here,
/// never logged), and the lease for a shared store.
pub(crate) fn store_options(
    gateway: &GatewayConfig,
    secrets: &dyn SecretResolver,
) -> Result<StoreOptions> {
    let password = match &gateway.store.password {
        Some(reference) => Some(
            secrets
                .resolve(reference)
                .context("store.password cannot be read")?
                .expose()
                .to_owned(),
        ),
        None => None,
    };
    Ok(StoreOptions {
        url: gateway.store_url(),
        password,
        lease: gateway.store.is_postgres().then(|| gateway.store.lease()),
    })
}

/// The one-line error of a store that could not be opened, with the URL's password hidden:
/// a database that cannot be reached says so and names its host, the rest say what failed.
pub(crate) fn store_open_error(url: &str, error: StoreError) -> anyhow::Error {
    let shown = baton_store::redact_url(url);
    match &error {
        StoreError::Unavailable { .. } => anyhow::anyhow!(
            "the database at {} cannot be reached ({error}); baton does not start without its store ({shown})",
            database_host(url)
        ),
        _ => anyhow::Error::new(error).context(format!("opening the store {shown}")),
    }
}

/// `host:port` of a database URL, for messages (no user, no password).
fn database_host(url: &str) -> &str {
    let rest = url.split_once("://").map_or(url, |(_, rest)| rest);
    let authority = &rest[..rest.find(['/', '?']).unwrap_or(rest.len())];
    authority
        .rsplit_once('@')
        .map_or(authority, |(_, host)| host)
}

/// The instance names whose stages wait for a person's decision.
pub(crate) fn decision_instances(loaded: &Loaded) -> BTreeSet<String> {
    loaded.gateway.decision_instances(&configured_kinds(loaded))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unreachable_database_is_named_by_its_host_without_the_password() {
        let url = "postgres://baton:hunter2@db.example.com:5433/baton?sslmode=require";
        let error = store_open_error(
            url,
            StoreError::Unavailable {
                detail: "connection refused".into(),
            },
        );
        let text = format!("{error:#}");
        assert!(
            text.starts_with("the database at db.example.com:5433 cannot be reached"),
            "{text}"
        );
        assert!(!text.contains("hunter2"), "{text}");
        assert!(!text.contains('\n'), "{text}");
        let other = format!("{:#}", store_open_error(url, StoreError::Url("bad".into())));
        assert!(other.starts_with("opening the store postgres://baton:<redacted>@"));
        assert_eq!(database_host("postgres://db/x"), "db");
    }
}
