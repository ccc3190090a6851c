//! The `registry` adapter: wait for an image tag in an OCI registry, inspect an image, and
//! promote one to another tag, repository or registry by digest.
//!
//! ```toml
//! [adapters.reg]
//! kind = "registry"
//! url = "https://registry.example.com"
//! username = "baton"
//! password = { env = "REGISTRY_PASSWORD" }
//! ```
//!
//! ```yaml
//!     uses: reg
//!     with: { action: promote, from: 'app:${{ .stages.build.outputs.tag }}', to: 'app-prod:stable' }
//! ```
//!
//! The calls follow the distribution API (`/v2/`, see `docs/adapters/registry.md`):
//!
//! - `start` checks the rendered `with:`; a `promote` starts copying in a task of this
//!   process at once, while `wait` and `inspect` do their work in the polls.
//! - `find` answers the attempts this process knows; after a restart it answers `None` and
//!   the engine starts the attempt again, which is safe because every action is a read or
//!   a copy that leaves the same result when made twice.
//! - `poll` looks for the image (`wait`, backing off), resolves it (`inspect`), or reads
//!   the copy's end (`promote`); a poll for an attempt this process does not know (after a
//!   restart) takes the action up again from the stored reference.
//! - `cancel` aborts a copy in flight (what was copied stays: blobs and child manifests
//!   nothing refers to yet, which are harmless) and ends a wait.
//!
//! # Modules
//!
//! [`config`] checks instance blocks and `with:` blocks; `reference` reads image
//! references; `client` is HTTP to one registry with its auth; `manifest` reads manifests;
//! `copy` is the promote; `describe` makes the outputs.

mod client;
pub mod config;
mod copy;
mod describe;
mod manifest;
pub mod reference;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use baton_core::adapter::LogLink;
use baton_core::typed::{InstanceBuild, stage_with};
use baton_core::{
    Adapter, AdapterError, AdapterKind, AttemptKey, ExternalRef, ExternalState, FieldError, Logs,
    PollOutcome, PollRequest, SecretResolver, StartRequest, Waker,
};
use serde_json::{Map, Value, json};

use crate::client::Registry;
pub use crate::config::{InstanceConfig, StageSpec};
use crate::config::{Mode, RegistryConfig};
use crate::copy::{Copy, Stats};
use crate::reference::ImageRef;

/// The kind name, as in `kind = "registry"`.
pub const KIND: &str = "registry";

/// The `registry` kind.
#[derive(Debug, Clone, Copy, Default)]
pub struct RegistryKind;

impl AdapterKind for RegistryKind {
    fn kind(&self) -> &'static str {
        KIND
    }

    fn summary(&self) -> &'static str {
        "waits for, inspects and promotes (copies by digest) images in an OCI registry"
    }

    fn docs(&self) -> &'static str {
        "docs/adapters/registry.md"
    }

    fn validate_instance(&self, config: &Value) -> Vec<FieldError> {
        config::parse_instance(config).err().unwrap_or_default()
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
        let build = InstanceBuild::new(name, secrets);
        let config = build.config(config::parse_instance(config))?;
        let client = |registry: &RegistryConfig, prefix: &str| {
            let login = match &registry.login {
                Some((user, password)) => Some((
                    user.clone(),
                    build.secret_at(&format!("{prefix}password"), password)?,
                )),
                None => None,
            };
            Registry::new(registry.url.clone(), login, config.request_timeout)
        };
        let own = client(&config.registry, "")?;
        let mut destinations = Vec::new();
        for (i, destination) in config.destinations.iter().enumerate() {
            destinations.push((
                destination.authority(),
                Arc::new(client(destination, &format!("destinations[{i}]."))?),
            ));
        }
        Ok(Arc::new(RegistryAdapter::new(own, destinations, &config)))
    }
}

/// Where a copy task leaves its outputs or its error.
type CopyResult = Arc<Mutex<Option<Result<Map<String, Value>, AdapterError>>>>;

/// Where an attempt is.
#[derive(Debug)]
enum Phase {
    /// `wait` and `inspect`: the polls do the work.
    Looking,
    /// `promote`: a task copies; its result lands in the cell.
    Copying {
        abort: tokio::task::AbortHandle,
        result: CopyResult,
    },
    /// Over, with the outputs or why not.
    Ended(Ended),
}

#[derive(Debug, Clone)]
enum Ended {
    Succeeded(Map<String, Value>),
    Failed(String),
    Cancelled,
}

#[derive(Debug)]
struct Entry {
    spec: StageSpec,
    polls: u32,
    phase: Phase,
    /// When the phase became [`Phase::Ended`].
    ended_at: Option<Instant>,
}

impl Entry {
    fn finish(&mut self, ended: Ended) {
        self.phase = Phase::Ended(ended);
        self.ended_at = Some(Instant::now());
    }
}

/// How long an ended attempt is remembered. The engine reads a result at once; an attempt
/// forgotten after this is taken up again from its stored reference by a later poll, which
/// every action allows (they are idempotent), so the memory stays bounded in a long-running
/// `baton serve`.
const REMEMBER_ENDED: Duration = Duration::from_secs(3600);

/// Adds `entry` for `key` unless one is there, forgetting attempts that ended long ago.
fn remember(
    memory: &mut HashMap<AttemptKey, Entry>,
    key: &AttemptKey,
    entry: impl FnOnce() -> Result<Entry, AdapterError>,
) -> Result<(), AdapterError> {
    if memory.contains_key(key) {
        return Ok(());
    }
    memory.retain(|_, e| e.ended_at.is_none_or(|at| at.elapsed() < REMEMBER_ENDED));
    memory.insert(key.clone(), entry()?);
    Ok(())
}

#[derive(Debug)]
struct Inner {
    own: Arc<Registry>,
    /// Other registries a promote may copy to, by `host[:port]`.
    destinations: Vec<(String, Arc<Registry>)>,
    poll_initial: Duration,
    poll_max: Duration,
    memory: Mutex<HashMap<AttemptKey, Entry>>,
    waker: Mutex<Option<Waker>>,
}

/// Waits for, inspects and promotes images in one registry.
#[derive(Debug, Clone)]
pub struct RegistryAdapter {
    inner: Arc<Inner>,
}

impl RegistryAdapter {
    fn new(
        own: Registry,
        destinations: Vec<(String, Arc<Registry>)>,
        config: &InstanceConfig,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                own: Arc::new(own),
                destinations,
                poll_initial: config.poll_initial,
                poll_max: config.poll_max,
                memory: Mutex::default(),
                waker: Mutex::default(),
            }),
        }
    }

    /// The registry `to` names and whether it is the instance's own.
    fn destination(&self, to: &ImageRef) -> Result<(Arc<Registry>, bool), AdapterError> {
        let own = &self.inner.own;
        match &to.host {
            None => Ok((Arc::clone(own), true)),
            Some(host) if *host == config::authority(own.base()) => Ok((Arc::clone(own), true)),
            Some(host) => self
                .inner
                .destinations
                .iter()
                .find(|(authority, _)| authority == host)
                .map(|(_, registry)| (Arc::clone(registry), false))
                .ok_or_else(|| {
                    let known: Vec<&str> =
                        self.inner.destinations.iter().map(|(a, _)| a.as_str()).collect();
                    AdapterError::Invalid(format!(
                        "`to` names registry `{host}`, which is neither this instance's ({}) nor one of its `destinations` ({}): add it to `destinations`",
                        config::authority(own.base()),
                        if known.is_empty() { "none".to_owned() } else { known.join(", ") }
                    ))
                }),
        }
    }

    /// The reference the store keeps: the image acted on, its page, and the checked
    /// `with:` so that a poll after a restart can take the action up again.
    fn external(&self, spec: &StageSpec) -> ExternalRef {
        let image = target_image(spec);
        let registry = self
            .destination(image)
            .map_or_else(|_| Arc::clone(&self.inner.own), |(r, _)| r);
        let url = registry.url(&format!(
            "{}/manifests/{}",
            image.repository,
            image.target.as_str()
        ));
        ExternalRef {
            id: image.to_string(),
            url: Some(url.to_string()),
            data: json!({ "with": config::stage_json(spec) }),
        }
    }

    /// The spec a stored reference holds.
    fn stored_spec(external: &ExternalRef) -> Result<StageSpec, AdapterError> {
        let with = external.data.get("with").cloned().unwrap_or(Value::Null);
        match config::parse_stage(&with, Mode::Rendered) {
            Ok(Some(spec)) => Ok(spec),
            _ => Err(AdapterError::Protocol(format!(
                "the stored reference `{}` holds no `with` baton can read: {}",
                external.id, external.data
            ))),
        }
    }

    /// A new entry for `spec`, its copy started when it is a promote.
    fn begin(&self, key: &AttemptKey, spec: StageSpec) -> Result<Entry, AdapterError> {
        let phase = match &spec {
            StageSpec::Promote { from, to } => self.spawn_copy(key, from, to)?,
            _ => Phase::Looking,
        };
        Ok(Entry {
            spec,
            polls: 0,
            phase,
            ended_at: None,
        })
    }

    fn spawn_copy(
        &self,
        key: &AttemptKey,
        from: &ImageRef,
        to: &ImageRef,
    ) -> Result<Phase, AdapterError> {
        let (dst, same_registry) = self.destination(to)?;
        let src = Arc::clone(&self.inner.own);
        let result = Arc::new(Mutex::new(None));
        let cell = Arc::clone(&result);
        let (from, to) = (from.clone(), to.clone());
        let (key, inner) = (key.clone(), Arc::clone(&self.inner));
        let task = tokio::spawn(async move {
            let outcome = promote(&src, &dst, same_registry, &from, &to).await;
            *cell.lock().expect("copy result") = Some(outcome);
            if let Some(waker) = inner.waker.lock().expect("waker").as_ref() {
                waker.wake(&key);
            }
        });
        Ok(Phase::Copying {
            abort: task.abort_handle(),
            result,
        })
    }

    fn hint(&self, polls: u32) -> Duration {
        baton_core::wire::poll_hint(
            self.inner.poll_initial,
            self.inner.poll_max,
            polls,
            rand::random_range(0.8..=1.0),
        )
    }

    /// One poll: the state of `key`, taking its action up again from `external` when this
    /// process does not know it.
    async fn follow(
        &self,
        key: &AttemptKey,
        external: &ExternalRef,
    ) -> Result<PollOutcome, AdapterError> {
        let (spec, polls, copy_result) = {
            let mut memory = self.inner.memory.lock().expect("memory");
            remember(&mut memory, key, || {
                self.begin(key, Self::stored_spec(external)?)
            })?;
            let entry = memory.get_mut(key).expect("inserted above");
            entry.polls += 1;
            let copy_result = match &entry.phase {
                Phase::Ended(ended) => return Ok(ended_outcome(ended)),
                Phase::Looking => None,
                Phase::Copying { abort, result } => {
                    // Read before the cell: a task that had ended by then has left its
                    // result, unless it panicked, which fails the copy.
                    let finished = abort.is_finished();
                    let taken = result.lock().expect("copy result").take();
                    Some(taken.or_else(|| {
                        finished.then(|| {
                            Err(AdapterError::Protocol(
                                "the copy ended without a result".into(),
                            ))
                        })
                    }))
                }
            };
            (entry.spec.clone(), entry.polls - 1, copy_result)
        };
        let hint = self.hint(polls);
        match (&spec, copy_result) {
            (StageSpec::Promote { from, to }, Some(None)) => {
                Ok(running(format!("copying {from} to {to}"), hint))
            }
            (StageSpec::Promote { from, to }, Some(Some(Err(e)))) if e.is_transient() => {
                // A copy leaves the same result when made again, so a passing failure
                // starts it over, within the stage's timeout.
                let phase = self.spawn_copy(key, from, to)?;
                self.settle(key, |entry| entry.phase = phase);
                Ok(running(
                    format!("copying {from} to {to} again after: {e}"),
                    hint,
                ))
            }
            (_, Some(Some(result))) => Ok(self.end(key, result.map_err(|e| e.to_string()))),
            (StageSpec::Wait(image), _) => match self.look(image).await {
                Ok(None) => Ok(running(
                    format!(
                        "waiting for {image} in registry {}: not there yet",
                        self.inner.own.base()
                    ),
                    hint,
                )),
                Ok(Some(outputs)) => Ok(self.end(key, Ok(outputs))),
                Err(e) if e.is_transient() => Err(e),
                Err(e) => Ok(self.end(key, Err(e.to_string()))),
            },
            (StageSpec::Inspect(image), _) => match self.look(image).await {
                Ok(None) => Ok(self.end(
                    key,
                    Err(format!(
                        "{image} is not in registry {}",
                        self.inner.own.base()
                    )),
                )),
                Ok(Some(outputs)) => Ok(self.end(key, Ok(outputs))),
                Err(e) if e.is_transient() => Err(e),
                Err(e) => Ok(self.end(key, Err(e.to_string()))),
            },
            (StageSpec::Promote { .. }, None) => Err(AdapterError::Protocol(
                "a promote without its copy".to_owned(),
            )),
        }
    }

    /// Changes `key`'s entry unless it has ended meanwhile (a cancel came first).
    fn settle(&self, key: &AttemptKey, change: impl FnOnce(&mut Entry)) {
        let mut memory = self.inner.memory.lock().expect("memory");
        if let Some(entry) = memory.get_mut(key)
            && !matches!(entry.phase, Phase::Ended(_))
        {
            change(entry);
        }
    }

    /// Ends `key` with `result` (unless it has ended already) and answers its state.
    fn end(&self, key: &AttemptKey, result: Result<Map<String, Value>, String>) -> PollOutcome {
        let ended = match result {
            Ok(outputs) => Ended::Succeeded(outputs),
            Err(message) => Ended::Failed(message),
        };
        self.settle(key, |entry| entry.finish(ended));
        let memory = self.inner.memory.lock().expect("memory");
        match memory.get(key).map(|e| &e.phase) {
            Some(Phase::Ended(ended)) => ended_outcome(ended),
            _ => PollOutcome::state(ExternalState::Running),
        }
    }

    /// The image's outputs when it exists, `None` when it does not (yet).
    async fn look(&self, image: &ImageRef) -> Result<Option<Map<String, Value>>, AdapterError> {
        let own = &self.inner.own;
        let Some(digest) = own
            .manifest_digest(&image.repository, image.target.as_str())
            .await?
        else {
            return Ok(None);
        };
        let Some(manifest) = own.manifest(&image.repository, &digest).await? else {
            // Deleted between the two reads: not there.
            return Ok(None);
        };
        let mut outputs = describe::describe(own, &image.repository, &manifest).await?;
        outputs.insert("image".into(), Value::String(image.to_string()));
        Ok(Some(outputs))
    }
}

/// The image a stage's outputs describe: `image`, or a promote's `to`.
fn target_image(spec: &StageSpec) -> &ImageRef {
    match spec {
        StageSpec::Wait(image) | StageSpec::Inspect(image) => image,
        StageSpec::Promote { to, .. } => to,
    }
}

fn running(message: String, hint: Duration) -> PollOutcome {
    PollOutcome::state(ExternalState::Running)
        .with_message(message)
        .next_poll(hint)
}

fn ended_outcome(ended: &Ended) -> PollOutcome {
    match ended {
        Ended::Succeeded(outputs) => {
            let digest = outputs
                .get("digest")
                .and_then(Value::as_str)
                .unwrap_or_default();
            PollOutcome::state(ExternalState::Succeeded { warnings: false })
                .with_message(digest.to_owned())
        }
        Ended::Failed(message) => {
            PollOutcome::state(ExternalState::Failed).with_message(message.clone())
        }
        Ended::Cancelled => PollOutcome::state(ExternalState::Cancelled),
    }
}

/// Copies `from` (in `src`) to `to` (in `dst`) and describes the copy at the destination.
async fn promote(
    src: &Registry,
    dst: &Registry,
    same_registry: bool,
    from: &ImageRef,
    to: &ImageRef,
) -> Result<Map<String, Value>, AdapterError> {
    let stats = Stats::default();
    let copy = Copy {
        src,
        dst,
        same_registry,
        from: &from.repository,
        to: &to.repository,
        stats: &stats,
    };
    let top = copy.run(from, to).await?;
    let mut outputs = describe::describe(dst, &to.repository, &top).await?;
    outputs.extend(stats.outputs());
    outputs.insert("image".into(), Value::String(to.to_string()));
    outputs.insert("from".into(), Value::String(from.to_string()));
    Ok(outputs)
}

#[async_trait]
impl Adapter for RegistryAdapter {
    fn kind(&self) -> &'static str {
        KIND
    }

    async fn start(&self, request: &StartRequest) -> Result<ExternalRef, AdapterError> {
        let spec = stage_with(config::parse_stage(&request.input, Mode::Rendered))?
            .ok_or_else(|| AdapterError::Invalid("the stage's `with` is not rendered".into()))?;
        if let StageSpec::Promote { to, .. } = &spec {
            self.destination(to)?;
        }
        let external = self.external(&spec);
        let mut memory = self.inner.memory.lock().expect("memory");
        remember(&mut memory, &request.key, || self.begin(&request.key, spec))?;
        Ok(external)
    }

    /// The attempts this process started. After a restart there are none: the engine then
    /// starts the attempt again, which makes the same copy or read.
    async fn find(
        &self,
        key: &AttemptKey,
        _input: &Value,
    ) -> Result<Option<ExternalRef>, AdapterError> {
        let memory = self.inner.memory.lock().expect("memory");
        Ok(memory.get(key).map(|entry| self.external(&entry.spec)))
    }

    async fn poll(&self, request: &PollRequest<'_>) -> Result<PollOutcome, AdapterError> {
        self.follow(request.key, request.external).await
    }

    async fn outputs(
        &self,
        key: &AttemptKey,
        external: &ExternalRef,
    ) -> Result<Map<String, Value>, AdapterError> {
        let known = {
            let memory = self.inner.memory.lock().expect("memory");
            memory.get(key).map(|entry| match &entry.phase {
                Phase::Ended(Ended::Succeeded(outputs)) => outputs.clone(),
                _ => Map::new(),
            })
        };
        if let Some(outputs) = known {
            return Ok(outputs);
        }
        // Ended before a restart: the image is described again (the copy's counts are gone).
        let spec = Self::stored_spec(external)?;
        let image = target_image(&spec);
        let (registry, _) = self.destination(image)?;
        let manifest = registry
            .manifest(&image.repository, image.target.as_str())
            .await?
            .ok_or_else(|| {
                AdapterError::NotFound(format!("{image} is not in registry {}", registry.base()))
            })?;
        let mut outputs = describe::describe(&registry, &image.repository, &manifest).await?;
        outputs.insert("image".into(), Value::String(image.to_string()));
        Ok(outputs)
    }

    async fn cancel(&self, key: &AttemptKey, external: &ExternalRef) -> Result<(), AdapterError> {
        let mut memory = self.inner.memory.lock().expect("memory");
        match memory.get_mut(key) {
            Some(entry) => {
                if let Phase::Copying { abort, .. } = &entry.phase {
                    abort.abort();
                }
                if !matches!(entry.phase, Phase::Ended(_)) {
                    entry.finish(Ended::Cancelled);
                }
            }
            None => {
                // Known only to the store: remember the cancel, so that no later poll takes
                // the action up again.
                if let Ok(spec) = Self::stored_spec(external) {
                    let _ = remember(&mut memory, key, || {
                        Ok(Entry {
                            spec,
                            polls: 0,
                            phase: Phase::Ended(Ended::Cancelled),
                            ended_at: Some(Instant::now()),
                        })
                    });
                }
            }
        }
        Ok(())
    }

    async fn logs(&self, key: &AttemptKey, external: &ExternalRef) -> Result<Logs, AdapterError> {
        let text = {
            let memory = self.inner.memory.lock().expect("memory");
            memory.get(key).map(|entry| match &entry.phase {
                Phase::Looking => "looking".to_owned(),
                Phase::Copying { .. } => "copying".to_owned(),
                Phase::Ended(Ended::Succeeded(outputs)) => {
                    Value::Object(outputs.clone()).to_string()
                }
                Phase::Ended(Ended::Failed(message)) => message.clone(),
                Phase::Ended(Ended::Cancelled) => "cancelled".to_owned(),
            })
        };
        Ok(Logs {
            links: external
                .url
                .iter()
                .map(|url| LogLink {
                    name: "manifest".into(),
                    url: url.clone(),
                })
                .collect(),
            text,
        })
    }

    fn attach(&self, waker: Waker) {
        *self.inner.waker.lock().expect("waker") = Some(waker);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attempts_that_ended_long_ago_are_forgotten_when_another_is_remembered() {
        let entry = |ended_ago: Option<Duration>| Entry {
            spec: StageSpec::Inspect(reference::parse("app:1", false).unwrap()),
            polls: 0,
            phase: match ended_ago {
                Some(_) => Phase::Ended(Ended::Cancelled),
                None => Phase::Looking,
            },
            ended_at: ended_ago.map(|ago| Instant::now().checked_sub(ago).unwrap()),
        };
        let key = |stage: &str| AttemptKey::new("run", stage, 1);
        let mut memory = HashMap::new();
        memory.insert(key("running"), entry(None));
        memory.insert(key("recent"), entry(Some(REMEMBER_ENDED / 2)));
        memory.insert(
            key("old"),
            entry(Some(REMEMBER_ENDED + Duration::from_secs(1))),
        );
        // A key already known changes nothing, and builds nothing.
        remember(&mut memory, &key("recent"), || panic!("not built")).unwrap();
        assert_eq!(memory.len(), 3);
        remember(&mut memory, &key("new"), || Ok(entry(None))).unwrap();
        let mut kept: Vec<_> = memory.keys().map(|k| k.stage_id().to_owned()).collect();
        kept.sort();
        assert_eq!(kept, ["new", "recent", "running"]);
    }

    #[test]
    fn the_kind_declares_what_it_is_and_checks_instances() {
        let kind = RegistryKind;
        assert!(kind.summary().contains("OCI registry"));
        let docs = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../..")
            .join(kind.docs());
        let page = std::fs::read_to_string(&docs).unwrap();
        assert!(
            page.starts_with("# The `registry` adapter"),
            "{}",
            docs.display()
        );
        assert_eq!(
            FieldError::paths(&kind.validate_instance(&json!({"url": "ftp://x"}))),
            ["url"]
        );
        assert!(
            kind.validate_instance(&json!({"url": "http://r"}))
                .is_empty()
        );
    }
}
