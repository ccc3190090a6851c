//! The REST API under `/api/v1`, with bearer tokens and roles.

use std::sync::Arc;

use axum::Json;
use axum::extract::{FromRequestParts, Path, Query, State};
use axum::http::StatusCode;
use axum::http::request::Parts;
use axum::response::{IntoResponse, Response};
use baton_config::Role;
use baton_core::context::TriggerInfo;
use baton_core::{Decision, RunStatus};
use baton_engine::RunView;
use baton_store::{DeliveryFilter, RunFilter, now_millis};
use serde::Deserialize;
use serde_json::{Value, json};
use subtle::ConstantTimeEq;

use crate::AppState;
use crate::error::ApiError;

/// A resolved API token.
pub struct Token {
    /// Its holder's name.
    pub name: String,
    /// The secret.
    pub secret: Vec<u8>,
    /// What it may do.
    pub role: Role,
}

fn rank(role: Role) -> u8 {
    match role {
        Role::Viewer => 0,
        Role::Operator => 1,
        Role::Approver => 2,
    }
}

fn role_name(role: Role) -> &'static str {
    match role {
        Role::Viewer => "viewer",
        Role::Operator => "operator",
        Role::Approver => "approver",
    }
}

/// Who is calling, from `Authorization: Bearer <token>`.
pub(crate) struct Caller {
    /// The token's name.
    pub name: String,
    role: Role,
}

impl Caller {
    /// Refuses (403) a caller whose role is below `needed`.
    pub(crate) fn require(&self, needed: Role) -> Result<(), ApiError> {
        if rank(self.role) >= rank(needed) {
            Ok(())
        } else {
            Err(ApiError::forbidden(format!(
                "token `{}` has role {}; this call needs {} or above",
                self.name,
                role_name(self.role),
                role_name(needed)
            )))
        }
    }
}

impl FromRequestParts<Arc<AppState>> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &Arc<AppState>,
    ) -> Result<Self, ApiError> {
        let given = parts
            .headers
            .get(axum::http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::trim)
            .ok_or_else(|| ApiError::unauthorized("missing `Authorization: Bearer <token>`; tokens are configured in [api] tokens"))?;
        // Compare against every token so the time does not tell which one matched.
        let mut found = None;
        for token in &state.tokens {
            if bool::from(token.secret.as_slice().ct_eq(given.as_bytes())) {
                found = Some(token);
            }
        }
        let token = found.ok_or_else(|| ApiError::unauthorized("unknown token"))?;
        Ok(Self {
            name: token.name.clone(),
            role: token.role,
        })
    }
}

/// `?workflow=&status=&limit=&offset=`.
#[derive(Deserialize)]
pub(crate) struct RunQuery {
    workflow: Option<String>,
    status: Option<String>,
    limit: Option<u32>,
    offset: Option<u32>,
}

/// `GET /api/v1/runs`.
pub(crate) async fn list_runs(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Query(q): Query<RunQuery>,
) -> Result<Json<Value>, ApiError> {
    caller.require(Role::Viewer)?;
    let status = match q.status.as_deref() {
        None => None,
        Some(s) => Some(RunStatus::parse(s).ok_or_else(|| {
            ApiError::bad_request(format!(
                "status `{s}`: expected queued, running, succeeded, failed or cancelled"
            ))
        })?),
    };
    let limit = q.limit.unwrap_or(50).clamp(1, 1000);
    let offset = q.offset.unwrap_or(0);
    let runs = state
        .engine
        .list_runs(&RunFilter {
            workflow: q.workflow,
            status,
            limit,
            offset,
        })
        .await?;
    Ok(Json(
        json!({"runs": runs, "limit": limit, "offset": offset}),
    ))
}

/// `GET /api/v1/runs/{id}`.
pub(crate) async fn get_run(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<RunView>, ApiError> {
    caller.require(Role::Viewer)?;
    let snapshot = state.engine.snapshot(&id).await?;
    Ok(Json(RunView::from_snapshot(&snapshot, now_millis())))
}

/// `POST /api/v1/workflows/{name}/runs`: the body is the event.
pub(crate) async fn start_run(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Path(name): Path<String>,
    body: axum::body::Bytes,
) -> Result<Response, ApiError> {
    caller.require(Role::Operator)?;
    let Some(workflow) = state.workflows.iter().find(|w| w.name() == name).cloned() else {
        let names: Vec<&str> = state.workflows.iter().map(|w| w.name()).collect();
        return Err(ApiError::not_found(format!(
            "no workflow `{name}` (known: {})",
            names.join(", ")
        )));
    };
    if !workflow.triggers.iter().any(|t| t.source == "manual") {
        return Err(ApiError::conflict(format!(
            "workflow `{name}` cannot be started by hand: add `{{ source: manual }}` to its `on:` list"
        )));
    }
    let event: Value = if body.iter().all(u8::is_ascii_whitespace) {
        json!({})
    } else {
        serde_json::from_slice(&body)
            .map_err(|e| ApiError::bad_request(format!("the body (the event) is not JSON: {e}")))?
    };
    let trigger = TriggerInfo {
        source: "manual".into(),
        event: "manual".into(),
        delivery_id: None,
    };
    let run = state.engine.create_run(workflow, event, trigger).await?;
    tracing::info!(workflow = %name, run = %run, by = %caller.name, "run started by hand");
    Ok((StatusCode::CREATED, Json(json!({"run": run}))).into_response())
}

/// `POST /api/v1/runs/{id}/cancel`.
pub(crate) async fn cancel_run(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    caller.require(Role::Operator)?;
    state.engine.cancel_run(&id).await?;
    tracing::info!(run = %id, by = %caller.name, "run cancelled");
    Ok((
        StatusCode::ACCEPTED,
        Json(json!({"run": id, "status": "cancelling"})),
    )
        .into_response())
}

/// `POST /api/v1/runs/{id}/stages/{stage}/retry`.
pub(crate) async fn retry_stage(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Path((id, stage)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    caller.require(Role::Operator)?;
    let attempt = state.engine.retry_stage(&id, &stage).await?;
    tracing::info!(run = %id, stage = %stage, attempt, by = %caller.name, "stage retried");
    Ok((
        StatusCode::ACCEPTED,
        Json(json!({"run": id, "stage": stage, "attempt": attempt})),
    )
        .into_response())
}

/// The optional body of approve and reject.
#[derive(Deserialize, Default)]
pub(crate) struct DecisionBody {
    comment: Option<String>,
}

async fn decide(
    state: &AppState,
    caller: &Caller,
    id: &str,
    stage: &str,
    approve: bool,
    body: &[u8],
) -> Result<Response, ApiError> {
    caller.require(Role::Approver)?;
    let comment = if body.iter().all(u8::is_ascii_whitespace) {
        None
    } else {
        serde_json::from_slice::<DecisionBody>(body)
            .map_err(|e| ApiError::bad_request(format!("expected {{\"comment\": \"…\"}}: {e}")))?
            .comment
    };
    let snapshot = state.engine.snapshot(id).await?;
    let uses = snapshot.payload.spec["stages"][stage]["uses"]
        .as_str()
        .map(str::to_owned);
    let Some(uses) = uses else {
        return Err(ApiError::not_found(format!(
            "run `{id}` has no stage `{stage}`"
        )));
    };
    if !state.decision_instances.contains(&uses) {
        return Err(ApiError::conflict(format!(
            "stage `{stage}` is not an approval stage (it uses `{uses}`)"
        )));
    }
    let mut decision = if approve {
        Decision::approved(caller.name.clone())
    } else {
        Decision::rejected(caller.name.clone())
    };
    if let Some(comment) = comment {
        decision = decision.with_comment(comment);
    }
    state.engine.signal(id, stage, decision.to_signal()).await?;
    let word = if approve { "approved" } else { "rejected" };
    tracing::info!(run = %id, stage = %stage, by = %caller.name, decision = word, "decision sent to the stage");
    Ok((
        StatusCode::ACCEPTED,
        Json(json!({"run": id, "stage": stage, "decision": word})),
    )
        .into_response())
}

/// `POST /api/v1/runs/{id}/stages/{stage}/approve`.
pub(crate) async fn approve(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Path((id, stage)): Path<(String, String)>,
    body: axum::body::Bytes,
) -> Result<Response, ApiError> {
    decide(&state, &caller, &id, &stage, true, &body).await
}

/// `POST /api/v1/runs/{id}/stages/{stage}/reject`.
pub(crate) async fn reject(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Path((id, stage)): Path<(String, String)>,
    body: axum::body::Bytes,
) -> Result<Response, ApiError> {
    decide(&state, &caller, &id, &stage, false, &body).await
}

/// `?source=&limit=&offset=`.
#[derive(Deserialize)]
pub(crate) struct DeliveryQuery {
    source: Option<String>,
    limit: Option<u32>,
    offset: Option<u32>,
}

/// `GET /api/v1/deliveries`.
pub(crate) async fn list_deliveries(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Query(q): Query<DeliveryQuery>,
) -> Result<Json<Value>, ApiError> {
    caller.require(Role::Viewer)?;
    let limit = q.limit.unwrap_or(50).clamp(1, 1000);
    let offset = q.offset.unwrap_or(0);
    let deliveries = state
        .engine
        .store()
        .list_deliveries(&DeliveryFilter {
            source: q.source,
            limit,
            offset,
        })
        .await?;
    Ok(Json(
        json!({"deliveries": deliveries, "limit": limit, "offset": offset}),
    ))
}

fn delivery_id(text: &str) -> Result<i64, ApiError> {
    text.parse()
        .map_err(|_| ApiError::bad_request(format!("`{text}` is not a delivery id (a number)")))
}

/// `GET /api/v1/deliveries/{id}`.
pub(crate) async fn get_delivery(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    caller.require(Role::Viewer)?;
    let id = delivery_id(&id)?;
    let delivery = state
        .engine
        .store()
        .load_delivery(id)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("no delivery {id}")))?;
    Ok(Json(serde_json::to_value(delivery).unwrap_or_default()))
}

/// `POST /api/v1/deliveries/{id}/replay`.
pub(crate) async fn replay_delivery(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    caller.require(Role::Operator)?;
    let id = delivery_id(&id)?;
    if state.engine.store().load_delivery(id).await?.is_none() {
        return Err(ApiError::not_found(format!("no delivery {id}")));
    }
    state.engine.replay_delivery(id).await?;
    state.matcher.notify_one();
    tracing::info!(delivery = id, by = %caller.name, "delivery replayed");
    Ok((
        StatusCode::ACCEPTED,
        Json(json!({"delivery": id, "status": "replaying"})),
    )
        .into_response())
}
