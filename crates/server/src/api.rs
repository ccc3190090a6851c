//! The REST API under `/api/v1`, with bearer tokens and roles.

use std::sync::Arc;

use axum::Json;
use axum::extract::{FromRequestParts, State};
use axum::http::StatusCode;
use axum::http::request::Parts;
use axum::response::{IntoResponse, Response};
use baton_config::Role;
use baton_core::Decision;
use baton_core::context::TriggerInfo;
use baton_engine::RunView;
use baton_store::{DeliveryFilter, DeliveryRecord, RunCursor, RunFilter, now_millis};
use serde::Deserialize;
use serde_json::{Map, Value, json};
use subtle::ConstantTimeEq;

use crate::AppState;
use crate::error::ApiError;
use crate::extract::{
    ApiJson, ApiPath, ApiQuery, DeliveryId, JsonBody, Limit, Offset, StatusParam, from_text,
};

/// A resolved API token.
pub struct Token {
    /// Its holder's name.
    pub name: String,
    /// The secret.
    pub secret: Vec<u8>,
    /// What it may do.
    pub role: Role,
}

/// The token whose secret is `given`, compared against every token so that the time taken
/// does not tell which one matched.
pub(crate) fn find_token<'a>(tokens: &'a [Token], given: &[u8]) -> Option<&'a Token> {
    let mut found = None;
    for token in tokens {
        if bool::from(token.secret.as_slice().ct_eq(given)) {
            found = Some(token);
        }
    }
    found
}

/// A role's rank: viewer 0, operator 1, approver 2.
pub(crate) fn rank(role: Role) -> u8 {
    match role {
        Role::Viewer => VIEWER,
        Role::Operator => OPERATOR,
        Role::Approver => APPROVER,
    }
}

/// The rank of a viewer.
pub(crate) const VIEWER: u8 = 0;
/// The rank of an operator.
pub(crate) const OPERATOR: u8 = 1;
/// The rank of an approver.
pub(crate) const APPROVER: u8 = 2;
/// The roles by rank.
pub(crate) const ROLE_NAMES: [&str; 3] = ["viewer", "operator", "approver"];

/// Who is calling, from `Authorization: Bearer <token>`, with a role of rank `MIN` or above.
///
/// As an extractor it runs before the path, query and body are read, so a caller without
/// the role gets 401 or 403 whatever else is wrong with the request, and no body is read
/// for them.
pub(crate) struct Caller<const MIN: u8> {
    /// The token's name.
    pub name: String,
}

/// Any token.
pub(crate) type Viewer = Caller<VIEWER>;
/// An operator's or an approver's token.
pub(crate) type Operator = Caller<OPERATOR>;
/// An approver's token.
pub(crate) type Approver = Caller<APPROVER>;

impl<const MIN: u8> FromRequestParts<Arc<AppState>> for Caller<MIN> {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &Arc<AppState>,
    ) -> Result<Self, ApiError> {
        let refuse = |e: ApiError| e.unread_body(&parts.headers);
        let given = parts
            .headers
            .get(axum::http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::trim)
            .ok_or_else(|| refuse(ApiError::unauthorized("missing `Authorization: Bearer <token>`; tokens are configured in [api] tokens")))?;
        let token = find_token(&state.tokens, given.as_bytes())
            .ok_or_else(|| refuse(ApiError::unauthorized("unknown token")))?;
        let held = rank(token.role);
        if held < MIN {
            return Err(refuse(ApiError::forbidden(format!(
                "token `{}` has role {}; this call needs {} or above",
                token.name,
                ROLE_NAMES[usize::from(held)],
                ROLE_NAMES[usize::from(MIN)]
            ))));
        }
        Ok(Self {
            name: token.name.clone(),
        })
    }
}

/// `?workflow=&status=&limit=&offset=&before=`.
#[derive(Deserialize)]
pub(crate) struct RunQuery {
    workflow: Option<String>,
    status: Option<StatusParam>,
    #[serde(default)]
    limit: Limit,
    #[serde(default)]
    offset: Offset,
    before: Option<RunCursorParam>,
}

/// `before`: the last run of the previous page, as `<created_at>.<id>` ([`RunCursor`]).
pub(crate) struct RunCursorParam(RunCursor);

impl<'de> Deserialize<'de> for RunCursorParam {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        from_text(deserializer, |text| {
            RunCursor::parse(text).map(Self).ok_or_else(|| {
                format!(
                    "`{text}` is not a run cursor: expected `<created_at>.<id>`, a page's `next`"
                )
            })
        })
    }
}

/// `GET /api/v1/runs`: a page of runs, and when it is full the cursor of the next one.
pub(crate) async fn list_runs(
    State(state): State<Arc<AppState>>,
    _caller: Viewer,
    ApiQuery(q): ApiQuery<RunQuery>,
) -> Result<Json<Value>, ApiError> {
    let (limit, offset) = (q.limit.0, q.offset.0);
    let runs = state
        .engine
        .list_runs(&RunFilter {
            workflow: q.workflow,
            status: q.status.map(|s| s.0),
            limit,
            offset,
            before: q.before.map(|b| b.0),
        })
        .await?;
    let next = full_page(&runs, limit).map(|last| RunCursor::after(&last.header).to_text());
    Ok(Json(
        json!({"runs": runs, "limit": limit, "offset": offset, "next": next}),
    ))
}

/// The last item of `page` when it holds `limit` items, so there may be more after it.
fn full_page<T>(page: &[T], limit: u32) -> Option<&T> {
    (page.len() >= limit as usize)
        .then(|| page.last())
        .flatten()
}

/// `GET /api/v1/runs/{id}`.
pub(crate) async fn get_run(
    State(state): State<Arc<AppState>>,
    _caller: Viewer,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<RunView>, ApiError> {
    let snapshot = state.engine.snapshot(&id).await?;
    Ok(Json(RunView::from_snapshot(&snapshot, now_millis())))
}

/// The body of `POST /api/v1/workflows/{name}/runs`: the event.
#[derive(Deserialize)]
#[serde(transparent)]
pub(crate) struct Event(Map<String, Value>);

impl JsonBody for Event {
    const EXPECTED: &'static str = "the event, a JSON object (or no body for `{}`)";
}

/// `POST /api/v1/workflows/{name}/runs`: the body is the event.
pub(crate) async fn start_run(
    State(state): State<Arc<AppState>>,
    caller: Operator,
    ApiPath(name): ApiPath<String>,
    ApiJson(event): ApiJson<Event>,
) -> Result<Response, ApiError> {
    let event = Value::Object(event.map(|e| e.0).unwrap_or_default());
    let run = start_by_hand(&state, &name, event, &caller.name).await?;
    Ok((StatusCode::CREATED, Json(json!({"run": run}))).into_response())
}

/// Starts workflow `name` by hand with `event`, for `by`; the run's id. The API and the UI
/// both start runs through it.
pub(crate) async fn start_by_hand(
    state: &AppState,
    name: &str,
    event: Value,
    by: &str,
) -> Result<String, ApiError> {
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
    let trigger = TriggerInfo {
        source: "manual".into(),
        event: "manual".into(),
        delivery_id: None,
    };
    let run = state.engine.create_run(workflow, event, trigger).await?;
    tracing::info!(workflow = %name, run = %run, by = %by, "run started by hand");
    Ok(run)
}

/// `POST /api/v1/runs/{id}/cancel`.
pub(crate) async fn cancel_run(
    State(state): State<Arc<AppState>>,
    caller: Operator,
    ApiPath(id): ApiPath<String>,
) -> Result<Response, ApiError> {
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
    caller: Operator,
    ApiPath((id, stage)): ApiPath<(String, String)>,
) -> Result<Response, ApiError> {
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
#[serde(deny_unknown_fields)]
pub(crate) struct DecisionBody {
    comment: Option<String>,
}

impl JsonBody for DecisionBody {
    const EXPECTED: &'static str = r#"{"comment": "…"} (or no body)"#;
}

/// Sends `by`'s decision to stage `stage` of run `id`. The API and the UI both decide
/// through it.
pub(crate) async fn decide(
    state: &AppState,
    by: &str,
    (id, stage): (&str, &str),
    approve: bool,
    comment: Option<String>,
) -> Result<(), ApiError> {
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
        Decision::approved(by.to_owned())
    } else {
        Decision::rejected(by.to_owned())
    };
    if let Some(comment) = comment {
        decision = decision.with_comment(comment);
    }
    state.engine.signal(id, stage, decision.to_signal()).await?;
    let word = if approve { "approved" } else { "rejected" };
    tracing::info!(run = %id, stage = %stage, by = %by, decision = word, "decision sent to the stage");
    Ok(())
}

async fn decided(
    state: &AppState,
    caller: Approver,
    (id, stage): (String, String),
    approve: bool,
    body: Option<DecisionBody>,
) -> Result<Response, ApiError> {
    let comment = body.and_then(|b| b.comment);
    decide(state, &caller.name, (&id, &stage), approve, comment).await?;
    let word = if approve { "approved" } else { "rejected" };
    Ok((
        StatusCode::ACCEPTED,
        Json(json!({"run": id, "stage": stage, "decision": word})),
    )
        .into_response())
}

/// `POST /api/v1/runs/{id}/stages/{stage}/approve`.
pub(crate) async fn approve(
    State(state): State<Arc<AppState>>,
    caller: Approver,
    ApiPath(path): ApiPath<(String, String)>,
    ApiJson(body): ApiJson<DecisionBody>,
) -> Result<Response, ApiError> {
    decided(&state, caller, path, true, body).await
}

/// `POST /api/v1/runs/{id}/stages/{stage}/reject`.
pub(crate) async fn reject(
    State(state): State<Arc<AppState>>,
    caller: Approver,
    ApiPath(path): ApiPath<(String, String)>,
    ApiJson(body): ApiJson<DecisionBody>,
) -> Result<Response, ApiError> {
    decided(&state, caller, path, false, body).await
}

/// `?source=&limit=&offset=&before=`.
#[derive(Deserialize)]
pub(crate) struct DeliveryQuery {
    source: Option<String>,
    #[serde(default)]
    limit: Limit,
    #[serde(default)]
    offset: Offset,
    /// The last delivery of the previous page.
    before: Option<DeliveryId>,
}

/// `GET /api/v1/deliveries`: a page of deliveries, and when it is full the cursor of the
/// next one.
pub(crate) async fn list_deliveries(
    State(state): State<Arc<AppState>>,
    _caller: Viewer,
    ApiQuery(q): ApiQuery<DeliveryQuery>,
) -> Result<Json<Value>, ApiError> {
    let (limit, offset) = (q.limit.0, q.offset.0);
    let deliveries = state
        .engine
        .store()
        .list_deliveries(&DeliveryFilter {
            source: q.source,
            limit,
            offset,
            before: q.before.map(|b| b.0),
        })
        .await?;
    let next = full_page(&deliveries, limit).map(|last| last.id);
    Ok(Json(
        json!({"deliveries": deliveries, "limit": limit, "offset": offset, "next": next}),
    ))
}

/// `GET /api/v1/deliveries/{id}`.
pub(crate) async fn get_delivery(
    State(state): State<Arc<AppState>>,
    _caller: Viewer,
    ApiPath(id): ApiPath<DeliveryId>,
) -> Result<Json<DeliveryRecord>, ApiError> {
    let delivery = state
        .engine
        .store()
        .load_delivery(id.0)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("no delivery {id}")))?;
    Ok(Json(delivery))
}

/// `POST /api/v1/deliveries/{id}/replay`.
pub(crate) async fn replay_delivery(
    State(state): State<Arc<AppState>>,
    caller: Operator,
    ApiPath(id): ApiPath<DeliveryId>,
) -> Result<Response, ApiError> {
    replay(&state, id.0, &caller.name).await?;
    Ok((
        StatusCode::ACCEPTED,
        Json(json!({"delivery": id, "status": "replaying"})),
    )
        .into_response())
}

/// Marks stored delivery `id` for matching again, for `by`, and wakes the matcher, which
/// starts the runs it matches. The API and the UI both replay through it.
pub(crate) async fn replay(state: &AppState, id: i64, by: &str) -> Result<(), ApiError> {
    if state.engine.store().load_delivery(id).await?.is_none() {
        return Err(ApiError::not_found(format!("no delivery {id}")));
    }
    state.engine.replay_delivery(id).await?;
    state.matcher.notify_one();
    tracing::info!(delivery = id, by = %by, "delivery replayed");
    Ok(())
}
