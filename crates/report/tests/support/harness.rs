//! The engine and reporter every report test drives: a real engine on a SQLite store in a
//! temporary directory, a test adapter (`script`) and `approval`, and a [`Reporter`]
//! following the engine, with its log captured.
//!
//! Each `script` stage's `with` says what it does: `{"result": "succeed" | "fail" |
//! "fail-once" | "wait", "url": "…"}`; `fail-once` fails its first attempt only, `wait`
//! waits for a signal `{"decision": "approved"}`, and `url` becomes the link to its
//! external work.
//!
//! `fixtures/github-app-test-key.pem` is an RSA key made for these tests only (`openssl
//! genrsa -traditional 2048`), with its public half beside it.

// Shared by several test files, each of which uses a part.
#![allow(dead_code)]

use std::collections::HashMap;
use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use baton_config::{
    EnvFileResolver, GatewayConfig, GithubAuth, GithubSource, GitlabSource, SourceConfig,
};
use baton_core::context::TriggerInfo;
use baton_core::{
    Adapter, AdapterError, AttemptKey, ExternalRef, ExternalState, Logs, PollOutcome, PollRequest,
    RunStatus, SecretRef, StageDefaults, StartRequest, Workflow, WorkflowSpec,
};
use baton_engine::{Engine, EngineConfig};
use baton_report::{Reporter, RetryPolicy};
use baton_store::{
    Change, ReportKey, RunHeader, RunPayload, SqliteStore, StageRecord, TaskKind, TaskSpec,
    now_millis,
};
use serde_json::{Map, Value, json};

pub(crate) const SHA: &str = "6dcb09b5b57875f334f61aebed695e2e4193db5e";
pub(crate) const PUBLIC_URL: &str = "https://baton.example.com";
pub(crate) const GITHUB_TOKEN: &str = "ghp_testtoken0123456789";
pub(crate) const GITLAB_TOKEN: &str = "glpat-testtoken0123456789";

/// Succeeds, fails or waits for a signal, as the stage's `with` says.
struct Script;

#[async_trait]
impl Adapter for Script {
    fn kind(&self) -> &'static str {
        "script"
    }
    async fn start(&self, request: &StartRequest) -> Result<ExternalRef, AdapterError> {
        Ok(ExternalRef {
            id: request.key.to_string(),
            url: request
                .input
                .get("url")
                .and_then(Value::as_str)
                .map(str::to_owned),
            data: json!({"with": request.input, "attempt": request.key.attempt()}),
        })
    }
    async fn find(&self, _: &AttemptKey, _: &Value) -> Result<Option<ExternalRef>, AdapterError> {
        Ok(None)
    }
    async fn poll(&self, request: &PollRequest<'_>) -> Result<PollOutcome, AdapterError> {
        let with = &request.external.data["with"];
        let state = match with["result"].as_str().unwrap_or("succeed") {
            "fail" => ExternalState::Failed,
            "fail-once" if request.external.data["attempt"] == 1 => ExternalState::Failed,
            "wait" => match request.signal.and_then(|s| s["decision"].as_str()) {
                Some("approved") => ExternalState::Succeeded { warnings: false },
                Some(_) => ExternalState::Failed,
                None => ExternalState::Blocked,
            },
            _ => ExternalState::Succeeded { warnings: false },
        };
        Ok(PollOutcome::state(state)
            .with_message("the script said so")
            .next_poll(Duration::from_millis(20)))
    }
    async fn outputs(
        &self,
        _: &AttemptKey,
        _: &ExternalRef,
    ) -> Result<Map<String, Value>, AdapterError> {
        Ok(Map::new())
    }
    async fn cancel(&self, _: &AttemptKey, _: &ExternalRef) -> Result<(), AdapterError> {
        Ok(())
    }
    async fn logs(&self, _: &AttemptKey, _: &ExternalRef) -> Result<Logs, AdapterError> {
        Ok(Logs::default())
    }
}

/// What the tracing subscriber wrote.
#[derive(Clone, Default)]
pub(crate) struct LogBuffer(Arc<Mutex<Vec<u8>>>);

impl LogBuffer {
    pub(crate) fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

impl Write for LogBuffer {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// An engine on a temporary store, a reporter following it, and the captured log. The
/// tests run on one thread (`#[tokio::test]`), so the log subscriber sees every task.
pub(crate) struct Harness {
    pub(crate) dir: tempfile::TempDir,
    pub(crate) engine: Engine,
    pub(crate) log: LogBuffer,
    gateway: GatewayConfig,
    policy: RetryPolicy,
    reporter: tokio::task::JoinHandle<()>,
    _log_guard: tracing::subscriber::DefaultGuard,
}

pub(crate) fn fast_retries() -> RetryPolicy {
    RetryPolicy {
        first_retry: Duration::from_millis(50),
        max_backoff: Duration::from_millis(200),
        give_up_after: Duration::from_secs(20),
        request_timeout: Duration::from_secs(5),
    }
}

pub(crate) fn github_source(api_url: String, auth: GithubAuth) -> SourceConfig {
    SourceConfig::Github(GithubSource {
        secrets: vec![SecretRef::Env("GITHUB_WEBHOOK_SECRET".into())],
        api_url,
        api_auth: Some(auth),
    })
}

pub(crate) fn gitlab_source(api_url: String) -> SourceConfig {
    SourceConfig::Gitlab(GitlabSource {
        tokens: vec![SecretRef::Env("GITLAB_WEBHOOK_TOKEN".into())],
        api_url,
        api_token: Some(SecretRef::Env("GITLAB_API_TOKEN".into())),
    })
}

impl Harness {
    /// A harness whose engine runs.
    pub(crate) async fn new(sources: Vec<(&str, SourceConfig)>, policy: RetryPolicy) -> Self {
        let h = Self::stopped(sources, policy).await;
        h.start_engine().await;
        h
    }

    /// A harness whose reporter follows an engine not started yet: runs created now stay
    /// queued until [`Harness::start_engine`].
    pub(crate) async fn stopped(sources: Vec<(&str, SourceConfig)>, policy: RetryPolicy) -> Self {
        let log = LogBuffer::default();
        let writer = log.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(move || writer.clone())
            .with_env_filter("baton_report=debug")
            .with_ansi(false)
            .finish();
        let log_guard = tracing::subscriber::set_default(subscriber);

        let dir = tempfile::tempdir().unwrap();
        std::fs::copy(
            concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/tests/fixtures/github-app-test-key.pem"
            ),
            dir.path().join("app.pem"),
        )
        .unwrap();
        let store = Arc::new(
            SqliteStore::open(&format!(
                "sqlite://{}",
                dir.path().join("runs.db").display()
            ))
            .await
            .unwrap(),
        );
        let mut adapters: HashMap<String, Arc<dyn Adapter>> = HashMap::new();
        adapters.insert("script".into(), Arc::new(Script));
        adapters.insert(
            "approval".into(),
            Arc::new(baton_adapter_approval::ApprovalAdapter::new()),
        );
        let engine = Engine::new(
            store,
            adapters,
            EngineConfig {
                poll_min: Duration::from_millis(10),
                poll_max: Duration::from_millis(100),
                ..EngineConfig::default()
            },
        );
        let gateway = GatewayConfig {
            sources: sources
                .into_iter()
                .map(|(name, source)| (name.to_owned(), source))
                .collect(),
            base_dir: dir.path().to_owned(),
            ..GatewayConfig::default()
        };
        let reporter = spawn_reporter(&gateway, &dir, policy, &engine);
        Self {
            dir,
            engine,
            log,
            gateway,
            policy,
            reporter,
            _log_guard: log_guard,
        }
    }

    /// Starts the engine, as `baton serve` does once the reporter follows it.
    pub(crate) async fn start_engine(&self) {
        self.engine.start().await.unwrap();
    }

    /// Kills the reporter (requests under way are cut off, as by a `kill -9`) and starts a
    /// new one on the same store, as a restarted `baton serve` does.
    pub(crate) async fn restart_reporter(&mut self) {
        self.reporter.abort();
        let _ = (&mut self.reporter).await;
        self.reporter = spawn_reporter(&self.gateway, &self.dir, self.policy, &self.engine);
    }

    pub(crate) async fn start(
        &self,
        stages: Value,
        report: &[&str],
        event: Value,
        source: &str,
    ) -> String {
        self.engine
            .create_run(Arc::new(workflow(stages, report)), event, trigger(source))
            .await
            .unwrap()
    }

    /// Stores a run as [`Engine::create_run`] would, and leaves it for the engine to take up
    /// when it starts, as a `baton` stopped before it ran it would: it stays queued until
    /// [`Harness::start_engine`].
    pub(crate) async fn queue(
        &self,
        stages: Value,
        report: &[&str],
        event: Value,
        source: &str,
    ) -> String {
        let workflow = workflow(stages, report);
        let now = now_millis();
        let id = format!("{now:012x}70008000000000000001");
        let mut changes = vec![Change::InsertRun(
            RunHeader {
                id: id.clone(),
                workflow: "ci".into(),
                status: RunStatus::Queued,
                cancel_requested: false,
                message: None,
                created_at: now,
                started_at: None,
                finished_at: None,
            },
            RunPayload {
                spec: serde_json::to_value(&workflow.spec).unwrap(),
                event,
                trigger: trigger(source),
            },
        )];
        let mut contexts = vec![String::new()];
        for (i, stage) in workflow.stages.iter().enumerate() {
            changes.push(Change::PutStage(StageRecord::pending(
                &id, &stage.id, i as u32,
            )));
            contexts.push(stage.id.clone());
        }
        for source in report {
            for stage_id in &contexts {
                let key = ReportKey {
                    run_id: id.clone(),
                    source: (*source).to_owned(),
                    stage_id: stage_id.clone(),
                };
                changes.push(Change::Report { key, due_at: now });
            }
        }
        changes.push(Change::Schedule(TaskSpec {
            run_id: id.clone(),
            stage_id: String::new(),
            kind: TaskKind::Advance,
            attempt: 0,
            due_at: now,
            claim_until: None,
        }));
        self.engine.store().commit(changes).await.unwrap();
        id
    }

    pub(crate) async fn finish(&self, run_id: &str) -> RunStatus {
        tokio::time::timeout(Duration::from_secs(20), self.engine.wait(run_id))
            .await
            .expect("the run finishes in time")
            .unwrap()
            .status
    }

    /// Waits until the log shows `text`.
    pub(crate) async fn logged(&self, text: &str) -> String {
        for _ in 0..500 {
            let log = self.log.text();
            if log.contains(text) {
                return log;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("`{text}` not logged in 10 s:\n{}", self.log.text());
    }
}

/// The workflow `ci` with `stages`, reporting to `report`.
fn workflow(stages: Value, report: &[&str]) -> Workflow {
    let spec: WorkflowSpec =
        serde_json::from_value(json!({"name": "ci", "stages": stages, "report": report})).unwrap();
    Workflow::compile(spec, StageDefaults::default()).unwrap()
}

/// A push delivered to `source`.
fn trigger(source: &str) -> TriggerInfo {
    TriggerInfo {
        source: source.into(),
        event: "push".into(),
        delivery_id: Some("d-1".into()),
    }
}

/// A reporter for `gateway`'s sources following `engine`, spawned as `baton serve` does.
fn spawn_reporter(
    gateway: &GatewayConfig,
    dir: &tempfile::TempDir,
    policy: RetryPolicy,
    engine: &Engine,
) -> tokio::task::JoinHandle<()> {
    let secrets = EnvFileResolver::with_vars(
        dir.path(),
        [
            ("GITHUB_TOKEN".to_owned(), GITHUB_TOKEN.to_owned()),
            ("GITLAB_API_TOKEN".to_owned(), GITLAB_TOKEN.to_owned()),
        ],
    );
    let reporter = Reporter::new(gateway, &secrets, Some(PUBLIC_URL.to_owned()))
        .unwrap()
        .expect("sources with credentials");
    tokio::spawn(reporter.with_retry(policy).run(engine.clone()))
}
