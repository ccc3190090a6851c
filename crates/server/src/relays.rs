//! The relay part of the REST API: targets and their state, messages by status, one
//! message's tries, and replays. Viewers read; operators replay.

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use baton_relay::RelayView;
use baton_store::{
    Millis, RelayMessageFilter, RelayReplay, RelayStatus, RelayStore, RelayTargetStats, now_millis,
};
use serde::{Deserialize, Deserializer};
use serde_json::{Value, json};

use crate::AppState;
use crate::api::{Operator, Viewer};
use crate::error::ApiError;
use crate::extract::{ApiJson, ApiPath, ApiQuery, JsonBody, Limit, from_text};

/// The store's relay queue; 404 on a store that keeps none.
pub(crate) fn queue(state: &AppState) -> Result<&dyn RelayStore, ApiError> {
    state
        .engine
        .store()
        .relays()
        .ok_or_else(|| ApiError::not_found("this store keeps no relay messages"))
}

/// 404 unless the config has `relay` (and `target`, if given).
fn known(state: &AppState, relay: &str, target: Option<&str>) -> Result<(), ApiError> {
    if state.relays.knows(relay, target) {
        return Ok(());
    }
    let views = state.relays.views();
    match views.iter().find(|r| r.name == relay) {
        None => {
            let names: Vec<&str> = views.iter().map(|r| r.name.as_str()).collect();
            Err(ApiError::not_found(format!(
                "no relay `{relay}` (known: {})",
                if names.is_empty() {
                    "none; relays are configured in [relays.<name>]".to_owned()
                } else {
                    names.join(", ")
                }
            )))
        }
        Some(view) => {
            let names: Vec<&str> = view.targets.iter().map(|t| t.name.as_str()).collect();
            Err(ApiError::not_found(format!(
                "relay `{relay}` has no target `{}` (its targets: {})",
                target.unwrap_or_default(),
                names.join(", ")
            )))
        }
    }
}

/// `GET /api/v1/relays`: every relay with its targets, their state and their counts.
pub(crate) async fn list(
    State(state): State<Arc<AppState>>,
    _caller: Viewer,
) -> Result<Json<Value>, ApiError> {
    let views = state.relays.views();
    let stats = if views.is_empty() {
        Vec::new()
    } else {
        queue(&state)?.relay_targets().await?
    };
    Ok(Json(json!({"relays": merge(views, &stats)})))
}

/// The relays as configured, each target with what the store counts for it.
fn merge(views: Vec<RelayView>, stats: &[RelayTargetStats]) -> Vec<Value> {
    views
        .into_iter()
        .map(|relay| {
            let targets: Vec<Value> = relay
                .targets
                .into_iter()
                .map(|target| {
                    let counted = stats
                        .iter()
                        .find(|s| s.relay == relay.name && s.target == target.name);
                    json!({
                        "name": target.name,
                        "url": target.url,
                        "state": target.state,
                        "circuit": target.circuit,
                        "disabled_at": target.disabled_at,
                        "disabled_reason": target.disabled_reason,
                        "pending": counted.map_or(0, |s| s.pending),
                        "delivered": counted.map_or(0, |s| s.delivered),
                        "dead": counted.map_or(0, |s| s.dead),
                        "oldest_pending_at": counted.and_then(|s| s.oldest_pending_at),
                    })
                })
                .collect();
            json!({"name": relay.name, "from": relay.from, "targets": targets})
        })
        .collect()
}

/// `?target=&status=&before=&limit=`.
#[derive(Deserialize)]
pub(crate) struct MessageQuery {
    target: Option<String>,
    status: Option<StatusParam>,
    before: Option<String>,
    #[serde(default)]
    limit: Limit,
}

/// `status`: a relay message's status.
pub(crate) struct StatusParam(RelayStatus);

impl<'de> Deserialize<'de> for StatusParam {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        from_text(deserializer, |text| {
            RelayStatus::parse(text).map(Self).ok_or_else(|| {
                format!(
                    "`{text}` is not a relay message status: expected pending, delivered or dead"
                )
            })
        })
    }
}

/// `GET /api/v1/relays/{relay}/messages`: newest first; `next` is the `before` of the next
/// page.
pub(crate) async fn messages(
    State(state): State<Arc<AppState>>,
    _caller: Viewer,
    ApiPath(relay): ApiPath<String>,
    ApiQuery(q): ApiQuery<MessageQuery>,
) -> Result<Json<Value>, ApiError> {
    known(&state, &relay, q.target.as_deref())?;
    let limit = q.limit.0;
    let messages = queue(&state)?
        .list_relay_messages(&RelayMessageFilter {
            relay: Some(relay),
            target: q.target,
            status: q.status.map(|s| s.0),
            before: q.before,
            limit,
        })
        .await?;
    let next = (messages.len() == limit as usize)
        .then(|| messages.last().map(|m| m.key.clone()))
        .flatten();
    Ok(Json(json!({"messages": messages, "next": next})))
}

/// `GET /api/v1/relays/{relay}/messages/{key}`: the message and its tries.
pub(crate) async fn message(
    State(state): State<Arc<AppState>>,
    _caller: Viewer,
    ApiPath((relay, key)): ApiPath<(String, String)>,
) -> Result<Json<Value>, ApiError> {
    let (message, attempts) = queue(&state)?
        .load_relay_message(&key)
        .await?
        .filter(|(m, _)| m.relay == relay)
        .ok_or_else(|| ApiError::not_found(format!("relay `{relay}` has no message `{key}`")))?;
    Ok(Json(json!({"message": message, "attempts": attempts})))
}

/// `POST /api/v1/relays/{relay}/messages/{key}/replay`.
pub(crate) async fn replay_message(
    State(state): State<Arc<AppState>>,
    caller: Operator,
    ApiPath((relay, key)): ApiPath<(String, String)>,
) -> Result<Json<Value>, ApiError> {
    let replayed = replay_one(&state, &relay, &key, &caller.name).await?;
    Ok(Json(json!({"replayed": replayed})))
}

/// Sends message `key` of `relay` again, for `by`: 404 when the relay has no such message,
/// 409 while it is pending. How many messages it made pending (1). The API and the UI both
/// replay a message through it.
pub(crate) async fn replay_one(
    state: &AppState,
    relay: &str,
    key: &str,
    by: &str,
) -> Result<u64, ApiError> {
    let queue = queue(state)?;
    let Some((message, _)) = queue
        .load_relay_message(key)
        .await?
        .filter(|(m, _)| m.relay == relay)
    else {
        return Err(ApiError::not_found(format!(
            "relay `{relay}` has no message `{key}`"
        )));
    };
    if message.status == RelayStatus::Pending {
        return Err(ApiError::conflict(format!(
            "message `{key}` is pending already: it is tried on its schedule"
        )));
    }
    let replayed = queue
        .replay_relays(&RelayReplay::Message(key.to_owned()), now_millis())
        .await?;
    state.relays.refresh().await?;
    tracing::info!(%relay, %key, by = %by, "relay message replayed");
    Ok(replayed)
}

/// The body of `POST /api/v1/relays/{relay}/replay`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ReplayBody {
    target: Option<String>,
    #[serde(default)]
    status: ReplayStatus,
    since: Option<Time>,
    until: Option<Time>,
}

impl JsonBody for ReplayBody {
    const EXPECTED: &'static str = r#"{"target": "…", "status": "dead" | "delivered" | "any", "since": "RFC 3339 time", "until": "RFC 3339 time"} (every key optional; status is "dead" when absent)"#;
}

/// Which messages a replay takes (`None`: delivered and dead alike).
pub(crate) struct ReplayStatus(Option<RelayStatus>);

impl Default for ReplayStatus {
    /// Dead ones, unless the body says otherwise.
    fn default() -> Self {
        Self(Some(RelayStatus::Dead))
    }
}

impl<'de> Deserialize<'de> for ReplayStatus {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        from_text(deserializer, |text| match text {
            "dead" => Ok(Self(Some(RelayStatus::Dead))),
            "delivered" => Ok(Self(Some(RelayStatus::Delivered))),
            "any" => Ok(Self(None)),
            _ => Err(format!(
                "`{text}` cannot be replayed: expected dead, delivered or any"
            )),
        })
    }
}

/// An RFC 3339 time, in milliseconds since the epoch.
pub(crate) struct Time(Millis);

impl<'de> Deserialize<'de> for Time {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        from_text(deserializer, |text| {
            chrono::DateTime::parse_from_rfc3339(text)
                .map(|t| Self(t.timestamp_millis()))
                .map_err(|e| {
                    format!("`{text}` is not an RFC 3339 time such as 2026-12-06T10:00:00Z: {e}")
                })
        })
    }
}

/// `POST /api/v1/relays/{relay}/replay`: every dead (or delivered, or either) message of
/// the relay, of one target, made in a time range.
pub(crate) async fn replay(
    State(state): State<Arc<AppState>>,
    caller: Operator,
    ApiPath(relay): ApiPath<String>,
    ApiJson(body): ApiJson<ReplayBody>,
) -> Result<Json<Value>, ApiError> {
    let body = body.unwrap_or(ReplayBody {
        target: None,
        status: ReplayStatus::default(),
        since: None,
        until: None,
    });
    known(&state, &relay, body.target.as_deref())?;
    let status = body.status.0;
    let selection = RelayReplay::Matching {
        relay: relay.clone(),
        target: body.target,
        status,
        since: body.since.map(|t| t.0),
        until: body.until.map(|t| t.0),
    };
    let replayed = queue(&state)?
        .replay_relays(&selection, now_millis())
        .await?;
    state.relays.refresh().await?;
    tracing::info!(%relay, replayed, by = %caller.name, "relay messages replayed");
    Ok(Json(json!({"replayed": replayed})))
}
