//! The `docker` adapter: a stage runs one container of a ContainerOps component on a
//! Docker engine.
//!
//! ```toml
//! [adapters.local]
//! kind = "docker"
//! host = "unix:///var/run/docker.sock"   # default: DOCKER_HOST or the standard socket
//! ```
//!
//! ```yaml
//!   lint:
//!     uses: local
//!     with:
//!       image: registry.example.com/tools/lint:1
//!       input: { files: '${{ .event.commits }}' }
//!       memory: 256m
//! ```
//!
//! The component gets its input three ways: as `CO_DATA` (the input as a JSON string,
//! ContainerOps' variable), on stdin, and in the read-only file named by `$BATON_INPUT`. It
//! gives outputs as `exec` does ([`baton_core::component`]): `[COUT] KEY = value` lines on
//! stdout, then the JSON object written to `$BATON_OUTPUT` over them, then `exit_code`.
//! Exit code 0 is success.
//!
//! # Durability and cleanup
//!
//! - The container's name comes from the attempt key and it carries the labels
//!   `baton.attempt`, `baton.run` and `baton.stage`: a second create of the same attempt
//!   gets 409 Conflict from the engine, and the existing container is adopted instead.
//! - `find` adopts the attempt's container whatever its state (a created one is started);
//!   its log lives in the engine, so nothing is lost while no baton watches it.
//! - Once the container has ended, its result (state, exit code, outputs, log tail) is
//!   written durably to the attempt's folder under the kind's state folder, and only then
//!   is the container removed. `poll`, `find` and `outputs` read the record from then on,
//!   so a baton that dies between the two never starts the attempt again.
//! - At first use an adapter removes the ended `baton.attempt` containers whose result is
//!   already recorded (left by a baton that died between the record and the removal).
//! - `cancel`, and a container running past the stage's timeout, stop the container (its
//!   stop signal, `stop_grace`, then `SIGKILL`), record it, and remove it.
//!
//! # Modules
//!
//! [`config`] checks instance and `with:` blocks; `engine` connects and reads; `run`
//! creates, starts and adopts; `finish` records, removes and stops; `record` is the
//! attempt's folder.

pub mod config;
mod engine;
mod finish;
mod record;
mod run;

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use baton_core::typed::{InstanceBuild, stage_with};
use baton_core::{
    Adapter, AdapterError, AdapterKind, AttemptKey, ExternalRef, ExternalState, FieldError, Logs,
    PollOutcome, PollRequest, SecretResolver, StartRequest, Waker,
};
use bollard::Docker;
use bollard::models::{ContainerInspectResponse, ContainerStateStatusEnum};
use bollard::query_parameters::{ListContainersOptions, WaitContainerOptions};
use futures::StreamExt;
use serde_json::{Map, Value};

pub use crate::config::{Host, InstanceConfig, Mode, StageSpec};
pub use crate::engine::{ATTEMPT_LABEL, DEADLINE_LABEL, RUN_LABEL, STAGE_LABEL};
use crate::finish::CANCELLED;
pub use crate::record::container_name;
use crate::record::{AttemptFiles, Record};
use crate::run::{Attempt, Created, Started};

/// The kind name, as in `kind = "docker"`.
pub const KIND: &str = "docker";

/// The poll hint while a container runs. The wake-up when it exits makes completion
/// immediate in practice; this bounds the delay for adopted containers.
pub const POLL_HINT: Duration = Duration::from_secs(1);

/// How much of the log `logs` returns.
const LOG_LINES: usize = 2000;
const LOG_BYTES: usize = 64 * 1024;

/// The `docker` kind.
#[derive(Debug, Clone)]
pub struct DockerKind {
    default_state_dir: PathBuf,
}

impl DockerKind {
    /// A kind whose instances keep attempts' records under `default_state_dir` unless
    /// their block names another folder.
    pub fn new(default_state_dir: impl Into<PathBuf>) -> Self {
        Self {
            default_state_dir: default_state_dir.into(),
        }
    }

    fn parse(&self, config: &Value) -> Result<InstanceConfig, Vec<FieldError>> {
        let docker_host = std::env::var("DOCKER_HOST").ok();
        config::parse_instance(config, docker_host.as_deref(), &self.default_state_dir)
    }
}

impl AdapterKind for DockerKind {
    fn kind(&self) -> &'static str {
        KIND
    }

    fn summary(&self) -> &'static str {
        "runs a ContainerOps component as one container on a Docker engine"
    }

    fn docs(&self) -> &'static str {
        "docs/adapters/docker.md"
    }

    fn validate_instance(&self, config: &Value) -> Vec<FieldError> {
        self.parse(config).err().unwrap_or_default()
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
        let config = InstanceBuild::new(name, secrets).config(self.parse(config))?;
        Ok(Arc::new(DockerAdapter::new(&config)))
    }
}

#[derive(Debug)]
struct Inner {
    host: Host,
    state_dir: PathBuf,
    stop_grace: Duration,
    docker: tokio::sync::OnceCell<Docker>,
    waker: Mutex<Option<Waker>>,
    /// Containers being started by this process, so that a second start of the same
    /// attempt waits instead of racing the first.
    starting: Mutex<HashSet<String>>,
    /// One lock per container being recorded: a poll woken by the container's exit and
    /// a poll at its hint must not both read a log the other is removing.
    recording: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

/// Runs stage containers on one Docker engine.
#[derive(Debug, Clone)]
pub struct DockerAdapter {
    inner: Arc<Inner>,
}

impl DockerAdapter {
    /// An adapter for the engine and state folder of `config` (made absolute now: the
    /// engine mounts input files by absolute path).
    pub fn new(config: &InstanceConfig) -> Self {
        let state_dir =
            std::path::absolute(&config.state_dir).unwrap_or_else(|_| config.state_dir.clone());
        Self {
            inner: Arc::new(Inner {
                host: config.host.clone(),
                state_dir,
                stop_grace: config.stop_grace,
                docker: tokio::sync::OnceCell::new(),
                waker: Mutex::default(),
                starting: Mutex::default(),
                recording: Mutex::default(),
            }),
        }
    }

    /// The folder holding the attempts' records.
    pub fn state_dir(&self) -> &Path {
        &self.inner.state_dir
    }

    /// The connection, made at first use; the first use also sweeps the ended containers
    /// whose result is recorded.
    async fn docker(&self) -> Result<&Docker, AdapterError> {
        self.inner
            .docker
            .get_or_try_init(|| async {
                let docker = engine::connect(&self.inner.host).await?;
                sweep(&docker, &self.inner.state_dir).await;
                Ok(docker)
            })
            .await
    }

    /// Records how the ended container ended and removes it, one caller at a time per
    /// container (a caller that waited gets the record the first one wrote).
    async fn finalize(
        &self,
        attempt: &Attempt<'_>,
        container: &ContainerInspectResponse,
    ) -> Result<Record, AdapterError> {
        let lock = locked(&self.inner.recording)
            .entry(attempt.name.to_owned())
            .or_default()
            .clone();
        let result = {
            let _held = lock.lock().await;
            finish::finalize(attempt, container).await
        };
        let mut recording = locked(&self.inner.recording);
        // Only this map and the callers still waiting hold the lock: the last one out drops it.
        if Arc::strong_count(&lock) == 2 {
            recording.remove(attempt.name);
        }
        result
    }

    fn files(&self, name: &str) -> AttemptFiles {
        AttemptFiles::new(&self.inner.state_dir, name)
    }

    /// Waits (in the background) for the container to stop and wakes the engine then.
    fn watch(&self, docker: &Docker, key: &AttemptKey, name: &str) {
        let waker = locked(&self.inner.waker).clone();
        let Some(waker) = waker else { return };
        let (docker, key, name) = (docker.clone(), key.clone(), name.to_owned());
        tokio::spawn(async move {
            let options = WaitContainerOptions {
                condition: "not-running".to_owned(),
            };
            // Any answer, an error included, is worth a poll: polling reads the truth.
            let _ = docker.wait_container(&name, Some(options)).next().await;
            waker.wake(&key);
        });
    }

    async fn start_attempt(&self, request: &StartRequest) -> Result<ExternalRef, AdapterError> {
        let key = &request.key;
        let spec = stage_with(config::parse_stage(&request.input, Mode::Rendered))?;
        let docker = self.docker().await?;
        let name = container_name(key);
        let files = self.files(&name);
        if let Some(record) = finish::read_record(key, &files)? {
            return Ok(run::reference(&record.container, &name));
        }
        let attempt = Attempt {
            docker,
            key,
            name: &name,
            files: &files,
        };
        if let Some(found) = self.adopt(&attempt, &spec.input.to_string()).await? {
            return Ok(found);
        }
        run::ensure_image(docker, key, &spec).await?;
        let input = spec.input.to_string();
        {
            let (files, input) = (files.clone(), input.clone());
            tokio::task::spawn_blocking(move || files.write_input(&input))
                .await
                .map_err(|e| AdapterError::Transient(format!("docker {key}: {e}")))?
                .map_err(|e| {
                    AdapterError::Transient(format!(
                        "docker {key}: cannot write the input file: {e}"
                    ))
                })?;
        }
        let body = run::container_body(key, &spec, &files, request.timeout);
        match run::create(&attempt, body).await? {
            Created::New(id) => self.start_created(&attempt, &id, input).await,
            Created::Exists => self.adopt(&attempt, &input).await?.ok_or_else(|| {
                AdapterError::Transient(format!(
                    "docker {key}: the engine said the container exists, then that it does not"
                ))
            }),
        }
    }

    /// Starts the created container `id` and returns its reference; a container the
    /// engine refused to start, or one cancelled first, is recorded and removed.
    async fn start_created(
        &self,
        attempt: &Attempt<'_>,
        id: &str,
        input: String,
    ) -> Result<ExternalRef, AdapterError> {
        match run::start_created(attempt, input).await? {
            Started::Running => self.watch(attempt.docker, attempt.key, attempt.name),
            Started::Refused(why) => {
                finish::record_refused(attempt, id, why).await?;
            }
            Started::Cancelled => {
                let container = engine::inspect(attempt.docker, attempt.key, attempt.name)
                    .await?
                    .unwrap_or_default();
                self.finalize(attempt, &container).await?;
            }
        }
        Ok(run::reference(id, attempt.name))
    }

    /// The reference of the attempt's existing container, started if it was only created;
    /// `None` when the engine has no such container.
    async fn adopt(
        &self,
        attempt: &Attempt<'_>,
        input: &str,
    ) -> Result<Option<ExternalRef>, AdapterError> {
        let Some(container) = engine::inspect(attempt.docker, attempt.key, attempt.name).await?
        else {
            return Ok(None);
        };
        if !run::holds_attempt(&container, attempt.key) {
            return Err(AdapterError::Protocol(format!(
                "docker {}: a container named `{}` exists without the label {ATTEMPT_LABEL}={}: baton will not adopt it",
                attempt.key, attempt.name, attempt.key
            )));
        }
        let id = container.id.clone().unwrap_or_default();
        if run::status(&container) == Some(ContainerStateStatusEnum::CREATED) {
            return self
                .start_created(attempt, &id, input.to_owned())
                .await
                .map(Some);
        }
        self.watch(attempt.docker, attempt.key, attempt.name);
        Ok(Some(run::reference(&id, attempt.name)))
    }

    async fn poll_attempt(&self, key: &AttemptKey) -> Result<PollOutcome, AdapterError> {
        let docker = self.docker().await?;
        let name = container_name(key);
        let files = self.files(&name);
        if let Some(record) = finish::read_record(key, &files)? {
            return Ok(recorded(&record));
        }
        let attempt = Attempt {
            docker,
            key,
            name: &name,
            files: &files,
        };
        let Some(container) = engine::inspect(docker, key, &name).await? else {
            // It may have been recorded and removed since the first look.
            return Ok(match finish::read_record(key, &files)? {
                Some(record) => recorded(&record),
                None => outcome(
                    ExternalState::Failed,
                    "gone",
                    "the container disappeared without a recorded result (removed outside baton?)",
                ),
            });
        };
        if !run::holds_attempt(&container, key) {
            return Err(AdapterError::Protocol(format!(
                "docker {key}: the container named `{name}` does not carry this attempt's label"
            )));
        }
        match run::status(&container) {
            Some(ContainerStateStatusEnum::EXITED | ContainerStateStatusEnum::DEAD) => {
                Ok(recorded(&self.finalize(&attempt, &container).await?))
            }
            Some(ContainerStateStatusEnum::CREATED) => Ok(outcome(
                ExternalState::Queued,
                "created",
                "the container is created and being started",
            )
            .next_poll(POLL_HINT)),
            Some(
                ContainerStateStatusEnum::RUNNING
                | ContainerStateStatusEnum::PAUSED
                | ContainerStateStatusEnum::RESTARTING,
            ) => self.running(&attempt, &container).await,
            other => {
                let raw = other.map(|s| s.to_string()).unwrap_or_default();
                Ok(PollOutcome {
                    raw: Some(raw.clone()),
                    ..PollOutcome::state(ExternalState::Unknown(raw)).next_poll(POLL_HINT)
                })
            }
        }
    }

    /// A running container: stopped and recorded once past its deadline, else its last log
    /// line as the progress message.
    async fn running(
        &self,
        attempt: &Attempt<'_>,
        container: &ContainerInspectResponse,
    ) -> Result<PollOutcome, AdapterError> {
        let deadline = container
            .config
            .as_ref()
            .and_then(|c| c.labels.as_ref())
            .and_then(|labels| labels.get(DEADLINE_LABEL))
            .and_then(|text| text.parse::<u64>().ok());
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs();
        if deadline.is_some_and(|deadline| now >= deadline) {
            let why = "timed out: the container ran past the stage's timeout and was stopped";
            return self
                .stop_and_record(attempt, why)
                .await
                .map(|r| recorded(&r));
        }
        let line = engine::log_tail(attempt.docker, attempt.key, attempt.name, 1, 1024).await?;
        let message = if line.trim().is_empty() {
            "running".to_owned()
        } else {
            format!("running: {}", line.trim())
        };
        Ok(outcome(ExternalState::Running, "running", message).next_poll(POLL_HINT))
    }

    /// Marks the attempt stopped for `why`, stops the container, records and removes it.
    async fn stop_and_record(
        &self,
        attempt: &Attempt<'_>,
        why: &str,
    ) -> Result<Record, AdapterError> {
        {
            let (files, why) = (attempt.files.clone(), why.to_owned());
            tokio::task::spawn_blocking(move || files.mark_cancelled(&why))
                .await
                .map_err(|e| AdapterError::Transient(format!("docker {}: {e}", attempt.key)))?
                .map_err(|e| {
                    AdapterError::Transient(format!(
                        "docker {}: cannot record the cancel: {e}",
                        attempt.key
                    ))
                })?;
        }
        finish::stop(attempt, self.inner.stop_grace).await?;
        let container = engine::inspect(attempt.docker, attempt.key, attempt.name)
            .await?
            .unwrap_or_default();
        self.finalize(attempt, &container).await
    }
}

/// The mutex's value; a panic elsewhere while it was held leaves nothing half-done here
/// (every holder makes one insert or removal).
fn locked<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The poll outcome a record gives.
fn recorded(record: &Record) -> PollOutcome {
    let raw = match record.exit_code {
        Some(code) => format!("exit {code}"),
        None => "not run".to_owned(),
    };
    outcome(record.ending.state(), &raw, record.message.clone())
}

fn outcome(state: ExternalState, raw: &str, message: impl Into<String>) -> PollOutcome {
    let mut outcome = PollOutcome::state(state).with_message(message);
    outcome.raw = Some(raw.to_owned());
    outcome
}

/// Removes the ended containers of attempts whose result is already recorded in
/// `state_dir`: a baton died between the record and the removal. Failures only delay the
/// cleanup to the next poll of that attempt, or the next baton.
async fn sweep(docker: &Docker, state_dir: &Path) {
    let options = ListContainersOptions {
        all: true,
        filters: Some(HashMap::from([
            ("label".to_owned(), vec![ATTEMPT_LABEL.to_owned()]),
            (
                "status".to_owned(),
                vec!["exited".to_owned(), "dead".to_owned(), "created".to_owned()],
            ),
        ])),
        ..ListContainersOptions::default()
    };
    let containers = match docker.list_containers(Some(options)).await {
        Ok(containers) => containers,
        Err(e) => {
            tracing::warn!(error = %e, "cannot list ended baton containers to sweep");
            return;
        }
    };
    for container in containers {
        let key = container
            .labels
            .as_ref()
            .and_then(|labels| labels.get(ATTEMPT_LABEL))
            .and_then(|text| AttemptKey::parse(text));
        let Some(key) = key else { continue };
        let name = container_name(&key);
        let files = AttemptFiles::new(state_dir, &name);
        if !matches!(files.read_record(), Ok(Some(_))) {
            continue;
        }
        let attempt = Attempt {
            docker,
            key: &key,
            name: &name,
            files: &files,
        };
        match finish::remove(&attempt).await {
            Ok(()) => tracing::info!(%key, container = name, "removed a recorded container"),
            Err(e) => tracing::warn!(%key, error = %e, "cannot remove a recorded container"),
        }
    }
}

#[async_trait]
impl Adapter for DockerAdapter {
    fn kind(&self) -> &'static str {
        KIND
    }

    async fn start(&self, request: &StartRequest) -> Result<ExternalRef, AdapterError> {
        let name = container_name(&request.key);
        if !locked(&self.inner.starting).insert(name.clone()) {
            return Err(AdapterError::Transient(format!(
                "docker {}: another start of this attempt is under way",
                request.key
            )));
        }
        let result = self.start_attempt(request).await;
        locked(&self.inner.starting).remove(&name);
        result
    }

    async fn find(
        &self,
        key: &AttemptKey,
        input: &Value,
    ) -> Result<Option<ExternalRef>, AdapterError> {
        let docker = self.docker().await?;
        let name = container_name(key);
        let files = self.files(&name);
        if let Some(record) = finish::read_record(key, &files)? {
            return Ok(Some(run::reference(&record.container, &name)));
        }
        let attempt = Attempt {
            docker,
            key,
            name: &name,
            files: &files,
        };
        // A created container is started with the input it was made for (its file is
        // written before the create); stdin then gets the input as rendered now.
        let input = config::parse_stage(input, Mode::Rendered)
            .map(|spec| spec.input.to_string())
            .unwrap_or_else(|_| input.to_string());
        self.adopt(&attempt, &input).await
    }

    async fn poll(&self, request: &PollRequest<'_>) -> Result<PollOutcome, AdapterError> {
        // Everything is read from the container the key names; the reference's data is
        // informational, so a damaged one cannot point this at another container.
        self.poll_attempt(request.key).await
    }

    async fn outputs(
        &self,
        key: &AttemptKey,
        _external: &ExternalRef,
    ) -> Result<Map<String, Value>, AdapterError> {
        let files = self.files(&container_name(key));
        match finish::read_record(key, &files)? {
            Some(record) => Ok(record.outputs),
            None => Err(AdapterError::NotFound(format!(
                "docker {key}: no result is recorded yet"
            ))),
        }
    }

    async fn cancel(&self, key: &AttemptKey, _external: &ExternalRef) -> Result<(), AdapterError> {
        let docker = self.docker().await?;
        let name = container_name(key);
        let files = self.files(&name);
        // Finished: a late cancel must not rewrite the recorded result.
        if finish::read_record(key, &files)?.is_some() {
            return Ok(());
        }
        let attempt = Attempt {
            docker,
            key,
            name: &name,
            files: &files,
        };
        if engine::inspect(docker, key, &name).await?.is_none() {
            // Never created: a start racing this one sees the marker and runs nothing.
            return files.mark_cancelled(CANCELLED).map_err(|e| {
                AdapterError::Transient(format!("docker {key}: cannot record the cancel: {e}"))
            });
        }
        self.stop_and_record(&attempt, CANCELLED).await.map(drop)
    }

    async fn logs(&self, key: &AttemptKey, _external: &ExternalRef) -> Result<Logs, AdapterError> {
        let docker = self.docker().await?;
        let name = container_name(key);
        let files = self.files(&name);
        let text = match finish::read_record(key, &files)? {
            Some(record) => record.log_tail,
            None => {
                if engine::inspect(docker, key, &name).await?.is_none() {
                    return Err(AdapterError::NotFound(format!(
                        "docker {key}: no container `{name}` and no recorded result"
                    )));
                }
                engine::log_tail(docker, key, &name, LOG_LINES, LOG_BYTES).await?
            }
        };
        Ok(Logs {
            links: Vec::new(),
            text: Some(text),
        })
    }

    fn attach(&self, waker: Waker) {
        *locked(&self.inner.waker) = Some(waker);
    }
}
