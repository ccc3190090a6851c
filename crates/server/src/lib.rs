//! `baton serve`: webhook intake, trigger matching, the REST API, health and metrics.
//!
//! | route | does |
//! |---|---|
//! | `POST /hooks/<source>` | verifies, stores and answers a webhook delivery ([`intake`]) |
//! | `POST /hooks/adapters/<instance>` | an adapter's completion webhook (a hint to poll) |
//! | `/api/v1/…` | the REST API ([`api`], [`relays`], [`workflows_api`]); `GET /api/v1/openapi.json` describes it |
//! | `GET /healthz`, `GET /readyz` | alive; a delivery could be stored now |
//! | `GET /metrics` | Prometheus metrics |
//! | `/`, `/login`, `/runs`, … | the web UI ([`ui`]) |

use std::collections::{BTreeSet, HashMap};
use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::{get, post};
use baton_config::Loaded;
use baton_core::expr_bound::Limits;
use baton_core::secret::SecretError;
use baton_core::{Kinds, SecretResolver, Workflow};
use baton_engine::Engine;
use metrics_exporter_prometheus::PrometheusHandle;
use tokio::sync::Notify;
use tower::Layer;

mod api;
mod connections;
mod error;
mod extract;
mod intake;
mod matcher;
pub mod registry;
mod relays;
mod request_id;
pub mod sources;
mod travis;
mod ui;
mod workflows_api;

/// The OpenAPI description of the REST API, served at `/api/v1/openapi.json`.
pub const OPENAPI: &str = include_str!("../openapi.json");

/// Everything the handlers share.
pub struct AppState {
    /// The engine (and through it the store).
    pub engine: Engine,
    /// Webhook sources by name.
    pub sources: HashMap<String, Arc<sources::Source>>,
    /// Every workflow of the config.
    pub workflows: Vec<Arc<Workflow>>,
    /// Each workflow's name and the file it was loaded from, in the order of `workflows`:
    /// the web UI names the file and serves its text as it is on disk.
    pub workflow_files: Vec<(String, PathBuf)>,
    /// API tokens.
    pub tokens: Vec<api::Token>,
    /// Adapter instance names whose kind takes decisions: only their stages may be approved
    /// or rejected.
    pub decision_instances: BTreeSet<String>,
    /// `server.max_body_bytes`.
    pub max_body_bytes: u64,
    /// `[expressions]`: the bounds of trigger conditions.
    pub expressions: Limits,
    /// Wakes the delivery matcher.
    pub matcher: Notify,
    /// `[relays.*]`: the relay messages deliveries make, and the workers that send them.
    pub relays: Arc<baton_relay::Relays>,
    /// Every adapter instance a stage may name (built-ins included), with its kind, in
    /// config order: what the workflow editor offers for `uses`.
    pub instances: Vec<(String, String)>,
    /// The checks `baton validate` makes of a workflow file, for a workflow given as text.
    pub workflow_check: baton_config::WorkflowCheck,
    /// The `workflows` globs: where the editor may save a workflow file.
    pub workflow_globs: baton_config::WorkflowGlobs,
    /// `ui.save_workflows`: whether an operator may save from the editor.
    pub save_workflows: bool,
    metrics: Option<PrometheusHandle>,
    connections: connections::Limits,
    /// Counts the matcher's committed passes: the UI's delivery pages follow it, since a
    /// delivery that starts no run changes no run.
    deliveries_matched: tokio::sync::watch::Sender<u64>,
    /// Turns true when the server starts shutting down: streams that never end by
    /// themselves (the UI's server-sent events) end then, so the shutdown does not wait on
    /// them.
    closing: tokio::sync::watch::Sender<bool>,
}

/// A server could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// A secret could not be read.
    #[error("{whose} secret cannot be read")]
    Secret {
        /// Whose secret (`source \`github\``, `api token \`ops\``).
        whose: String,
        /// Why.
        #[source]
        source: SecretError,
    },
    /// A relay could not be set up.
    #[error(transparent)]
    Relay(#[from] baton_relay::RelayError),
    /// The listener failed.
    #[error("listening failed: {0}")]
    Io(#[from] std::io::Error),
}

impl AppState {
    /// Resolves secrets and prepares the state. `kinds` are the adapter kinds the config was
    /// loaded with; `metrics` is the Prometheus handle when a recorder was installed.
    pub fn new(
        loaded: &Loaded,
        kinds: &Kinds,
        engine: Engine,
        secrets: &dyn SecretResolver,
        metrics: Option<PrometheusHandle>,
    ) -> Result<Self, ServeError> {
        let gateway = &loaded.gateway;
        let mut sources = HashMap::new();
        for (name, config) in &gateway.sources {
            let source = sources::Source::new(name, config, secrets).map_err(|source| {
                ServeError::Secret {
                    whose: format!("source `{name}`"),
                    source,
                }
            })?;
            sources.insert(name.clone(), Arc::new(source));
        }
        let tokens = gateway
            .api
            .tokens
            .iter()
            .map(|t| {
                let secret = secrets
                    .resolve(&t.token)
                    .map_err(|source| ServeError::Secret {
                        whose: format!("api token `{}`", t.name),
                        source,
                    })?;
                Ok(api::Token {
                    name: t.name.clone(),
                    secret: secret.expose().as_bytes().to_vec(),
                    role: t.role,
                })
            })
            .collect::<Result<_, ServeError>>()?;
        let relays = baton_relay::Relays::new(
            &gateway.relays,
            secrets,
            engine.store().clone(),
            gateway.expressions.limits(),
        )?;
        Ok(Self {
            relays: Arc::new(relays),
            engine,
            sources,
            workflows: loaded
                .workflows
                .iter()
                .map(|w| Arc::new(w.workflow.clone()))
                .collect(),
            workflow_files: loaded
                .workflows
                .iter()
                .map(|w| (w.workflow.name().to_owned(), w.file.clone()))
                .collect(),
            tokens,
            instances: gateway
                .instances(kinds)
                .into_iter()
                .map(|(name, instance)| (name, instance.kind))
                .collect(),
            workflow_check: baton_config::WorkflowCheck::new(loaded, kinds),
            workflow_globs: gateway.workflow_globs(),
            save_workflows: gateway.ui.save_workflows,
            decision_instances: gateway.decision_instances(kinds),
            max_body_bytes: gateway.server.max_body_bytes,
            expressions: gateway.expressions.limits(),
            matcher: Notify::new(),
            metrics,
            connections: connections::Limits::new(&gateway.server),
            deliveries_matched: tokio::sync::watch::Sender::new(0),
            closing: tokio::sync::watch::Sender::new(false),
        })
    }
}

async fn healthz() -> impl IntoResponse {
    (StatusCode::OK, "ok\n")
}

/// How long `/readyz` waits for the store: a database that does not answer within it is
/// as good as gone, and a probe must answer before its own timeout (Kubernetes' default is
/// 1 s, but a store's cached answer comes at once; only a fresh probe can take this long).
const READY_WITHIN: Duration = Duration::from_secs(3);

/// Ready when a delivery could be stored now: the store can write (its recent commits
/// succeeded, or a probe did) and be read. 503 says why not ("store cannot write: disk
/// full (…)", "store unavailable: …"); a store that does not answer within [`READY_WITHIN`]
/// is not ready either.
async fn readyz(
    axum::extract::State(state): axum::extract::State<Arc<AppState>>,
) -> impl IntoResponse {
    let store = state.engine.store();
    let checked = tokio::time::timeout(READY_WITHIN, async {
        store.writable().await?;
        store.ping().await
    })
    .await;
    match checked {
        Ok(Ok(())) => (StatusCode::OK, "ready\n".to_owned()),
        Ok(Err(e)) if e.cannot_write() => (StatusCode::SERVICE_UNAVAILABLE, format!("{e}\n")),
        Ok(Err(e)) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("store unreachable: {e}\n"),
        ),
        Err(_) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "store unreachable: no answer within {}s\n",
                READY_WITHIN.as_secs()
            ),
        ),
    }
}

async fn metrics_page(
    axum::extract::State(state): axum::extract::State<Arc<AppState>>,
) -> impl IntoResponse {
    match &state.metrics {
        Some(handle) => (
            StatusCode::OK,
            [("content-type", "text/plain; version=0.0.4")],
            handle.render(),
        )
            .into_response(),
        None => (StatusCode::NOT_FOUND, "metrics are not enabled\n").into_response(),
    }
}

async fn openapi() -> impl IntoResponse {
    ([("content-type", "application/json")], OPENAPI)
}

async fn not_found(headers: axum::http::HeaderMap) -> error::ApiError {
    error::ApiError::not_found("no such route; the API is described at /api/v1/openapi.json")
        .unread_body(&headers)
}

/// The router with every route. [`serve`] wraps it in [`request_id::RequestIds`].
pub fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/hooks/adapters/{instance}", post(intake::adapter_webhook))
        .route("/hooks/{source}", post(intake::receive))
        .route("/api/v1/openapi.json", get(openapi))
        .route("/api/v1/runs", get(api::list_runs))
        .route("/api/v1/runs/{id}", get(api::get_run))
        .route("/api/v1/workflows/{name}/runs", post(api::start_run))
        .route("/api/v1/runs/{id}/cancel", post(api::cancel_run))
        .route(
            "/api/v1/runs/{id}/stages/{stage}/retry",
            post(api::retry_stage),
        )
        .route(
            "/api/v1/runs/{id}/stages/{stage}/approve",
            post(api::approve),
        )
        .route("/api/v1/runs/{id}/stages/{stage}/reject", post(api::reject))
        .route("/api/v1/workflows/validate", post(workflows_api::validate))
        .route("/api/v1/deliveries", get(api::list_deliveries))
        .route("/api/v1/deliveries/{id}", get(api::get_delivery))
        .route("/api/v1/deliveries/{id}/replay", post(api::replay_delivery))
        .route("/api/v1/relays", get(relays::list))
        .route("/api/v1/relays/{relay}/messages", get(relays::messages))
        .route(
            "/api/v1/relays/{relay}/messages/{key}",
            get(relays::message),
        )
        .route(
            "/api/v1/relays/{relay}/messages/{key}/replay",
            post(relays::replay_message),
        )
        .route("/api/v1/relays/{relay}/replay", post(relays::replay))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics_page))
        .merge(ui::routes())
        .method_not_allowed_fallback(error::method_not_allowed)
        .fallback(not_found)
        .with_state(state)
}

/// Serves until `shutdown` resolves: stops accepting, lets requests under way finish, then
/// stops the engine (every state change is already committed). Connections are capped and
/// timed as `[server]` says: header, body and idle timeouts, `max_connections` and
/// `reserved_connections`.
pub async fn serve(
    state: Arc<AppState>,
    listener: tokio::net::TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    let engine = state.engine.clone();
    // Before the matcher: it hands relay messages over leased, and starting the relays
    // releases the leases an earlier process left.
    let relays = state.relays.start().await;
    let matcher = tokio::spawn(matcher::run(state.clone()));
    // Around the router, not inside it: a layer inside wraps each route (and a route's service
    // is cloned per request), which cost as much as the layer's own work.
    let app = request_id::RequestIds::new().layer(router(state.clone()));
    let closing = state.clone();
    let shutdown = async move {
        shutdown.await;
        closing.closing.send_replace(true);
    };
    connections::serve(listener, app, state.connections, shutdown).await;
    matcher.abort();
    drop(relays);
    engine.shutdown(Duration::from_secs(10)).await;
    Ok(())
}
