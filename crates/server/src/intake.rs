//! `POST /hooks/<source>`: verify, store, answer. Matching runs later, from the store.
//!
//! The [`Delivery`] extractor does all the checking (source, size, signature, JSON, event
//! type, delivery id), so the handler only stores and answers: a 2xx means the delivery is
//! durably stored.

use std::sync::Arc;

use axum::Json;
use axum::body::{Body, to_bytes};
use axum::extract::{FromRequest, FromRequestParts, Path, Request};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use baton_core::expr::parse_val;
use baton_core::expr_bound;
use baton_store::{Intake, NewDelivery, now_millis};
use serde_json::json;

use crate::AppState;
use crate::connections::BodyTimedOut;
use crate::error::ApiError;
use crate::registry::split_envelope;
use crate::request_id::{GeneratedId, REQUEST_ID};
use crate::sources::{Refusal, SECRET_HEADERS, Source, StoredEvent};

/// The deepest nesting the matcher's parser ([`parse_val`], serde_json's recursion limit)
/// reads: 127 arrays or objects, one inside the other.
const MAX_JSON_NESTING: usize = 127;

/// A genuine, parsed delivery, ready to be stored.
pub(crate) struct Delivery {
    source: Arc<Source>,
    ping: bool,
    headers: String,
    /// What is stored: the one event of a delivery, or each event of an envelope.
    events: Events,
}

/// The events a request carries.
enum Events {
    /// Most sources': the request is the event.
    One(StoredEvent),
    /// A registry's envelope: stored together, one delivery per event.
    Envelope(Vec<StoredEvent>),
}

fn rejected(source: &str, why: &'static str) {
    metrics::counter!("baton_deliveries_total", "source" => source.to_owned(), "result" => why)
        .increment(1);
}

/// The request's headers as JSON object text, without secrets or signatures, plus the
/// `x-request-id` baton `generated` when the sender sent none. Written directly (no map is
/// built): this runs for every delivery. Repeated headers are joined with `, `, as HTTP
/// allows.
fn stored_headers(headers: &HeaderMap, source: &Source, generated: Option<&HeaderValue>) -> String {
    let mut out = Vec::with_capacity(64 * headers.keys_len() + 2);
    out.push(b'{');
    for name in headers.keys() {
        let key = name.as_str();
        if SECRET_HEADERS.contains(&key) || source.signature_header() == Some(key) {
            continue;
        }
        let mut values = headers.get_all(name).iter().filter_map(|v| v.to_str().ok());
        let Some(first) = values.next() else { continue };
        if out.len() > 1 {
            out.push(b',');
        }
        write_json_string(&mut out, key);
        out.push(b':');
        match values.next() {
            None => write_json_string(&mut out, first),
            Some(second) => {
                let mut joined = format!("{first}, {second}");
                for more in values {
                    joined.push_str(", ");
                    joined.push_str(more);
                }
                write_json_string(&mut out, &joined);
            }
        }
    }
    if let Some(id) = generated.and_then(|v| v.to_str().ok())
        && !headers.contains_key(REQUEST_ID)
    {
        if out.len() > 1 {
            out.push(b',');
        }
        write_json_string(&mut out, REQUEST_ID.as_str());
        out.push(b':');
        write_json_string(&mut out, id);
    }
    out.push(b'}');
    // Only whole UTF-8 strings and ASCII punctuation were written.
    String::from_utf8(out).unwrap_or_else(|_| "{}".to_owned())
}

fn write_json_string(out: &mut Vec<u8>, text: &str) {
    // Writing a `str` into a Vec cannot fail.
    let _ = serde_json::to_writer(&mut *out, text);
}

impl FromRequest<Arc<AppState>> for Delivery {
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &Arc<AppState>) -> Result<Self, ApiError> {
        let (mut parts, body) = request.into_parts();
        let Path(name) = match Path::<String>::from_request_parts(&mut parts, state).await {
            Ok(path) => path,
            Err(e) => return Err(ApiError::bad_request(e.to_string()).unread_body(&parts.headers)),
        };
        let Some(source) = state.sources.get(&name).cloned() else {
            rejected("(unknown)", "unknown_source");
            // Which sources exist is not the caller's business.
            return Err(ApiError::not_found("unknown webhook source").unread_body(&parts.headers));
        };
        let limit = state.max_body_bytes;
        let declared = parts
            .headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|n| n > limit) {
            rejected(&name, "too_large");
            return Err(ApiError::too_large(limit).closing());
        }
        let bytes = match to_bytes(Body::new(body), limit as usize).await {
            Ok(bytes) => bytes,
            Err(e) => {
                let (error, result) = unreadable_body(&e, limit);
                rejected(&name, result);
                return Err(error.closing());
            }
        };
        let bytes = match source.authenticate(&parts.headers, bytes).await {
            Ok(bytes) => bytes,
            Err(refusal) => return Err(refused(&name, refusal)),
        };
        let Ok(body) = String::from_utf8(bytes.into()) else {
            rejected(&name, "bad_json");
            return Err(ApiError::bad_request("the body is not UTF-8 text"));
        };
        // The matcher's own parser, so that a stored body is one the matcher can read: what
        // it refuses (nesting deeper than serde_json's limit, numbers beyond f64) is refused
        // here, before the answer. The value also serves a jq event expression.
        let json = match parse_val(&body) {
            Ok(json) => json,
            Err(e) => {
                rejected(&name, "bad_json");
                return Err(ApiError::bad_request(format!(
                    "the body is not JSON baton can read (at most {MAX_JSON_NESTING} levels of nesting, numbers within the range of a 64-bit float): {e}"
                )));
            }
        };
        if source.takes_envelopes() {
            let events = match split_envelope(&body) {
                Ok(events) => events,
                Err(refusal) => return Err(refused(&name, refusal)),
            };
            let generated = parts.extensions.get::<GeneratedId>().map(|g| &g.0);
            return Ok(Self {
                headers: stored_headers(&parts.headers, &source, generated),
                source,
                ping: false,
                events: Events::Envelope(events),
            });
        }
        let (identified, body) = if source.evaluates() {
            // An event expression is jq: evaluated bounded on an evaluation thread, never
            // on this async worker. The headers and body travel there and back.
            let (from, headers) = (source.clone(), std::mem::take(&mut parts.headers));
            let evaluated = expr_bound::offload(state.expressions, move |_| {
                let identified = from.identify(&headers, body.as_bytes(), json);
                (identified, headers, body)
            })
            .await;
            match evaluated {
                Ok((identified, headers, body)) => {
                    parts.headers = headers;
                    (identified, body)
                }
                Err(e) => {
                    rejected(&name, "malformed");
                    return Err(ApiError::internal(e.to_string()));
                }
            }
        } else {
            (source.identify(&parts.headers, body.as_bytes(), json), body)
        };
        let identified = match identified {
            Ok(i) => i,
            Err(
                Refusal::Malformed(why)
                | Refusal::Unauthenticated(why)
                | Refusal::Forbidden(why)
                | Refusal::Unavailable(why)
                | Refusal::UnsupportedType(why),
            ) => {
                rejected(&name, "malformed");
                return Err(ApiError::bad_request(why));
            }
        };
        let generated = parts.extensions.get::<GeneratedId>().map(|g| &g.0);
        Ok(Self {
            headers: stored_headers(&parts.headers, &source, generated),
            source,
            ping: identified.ping,
            events: Events::One(StoredEvent {
                event: identified.event,
                delivery_id: identified.delivery_id,
                body,
            }),
        })
    }
}

/// The answer to a delivery that failed its source's check, counted and logged.
fn refused(source: &str, refusal: Refusal) -> ApiError {
    let (result, error) = match refusal {
        Refusal::Unauthenticated(why) => ("unauthenticated", ApiError::unauthorized(why)),
        // A body that is not what the source takes (a travis source's form without
        // `payload`) is refused as the matcher refuses bad JSON.
        Refusal::Malformed(why) => ("malformed", ApiError::bad_request(why)),
        Refusal::Forbidden(why) => ("forbidden", ApiError::forbidden(why)),
        Refusal::Unavailable(why) => ("unavailable", ApiError::unavailable(why)),
        Refusal::UnsupportedType(why) => (
            "unsupported_media_type",
            ApiError::unsupported_media_type(why),
        ),
    };
    rejected(source, result);
    tracing::warn!(source = %source, reason = %error.message, "webhook refused");
    error
}

/// The answer to a body that could not be read whole, and its `result` label: 408 when it
/// took longer than `server.body_timeout`, 400 when the connection failed, else 413 (over
/// the limit).
fn unreadable_body(error: &axum::Error, limit: u64) -> (ApiError, &'static str) {
    if has_cause::<BodyTimedOut>(error) {
        let message = format!("{error}; send the whole body at once");
        let timeout = ApiError::new(StatusCode::REQUEST_TIMEOUT, "timeout", message);
        return (timeout, "body_timeout");
    }
    if has_cause::<hyper::Error>(error) {
        let message = format!("the body could not be read: {error}");
        return (ApiError::bad_request(message), "malformed");
    }
    (ApiError::too_large(limit), "too_large")
}

fn has_cause<T: std::error::Error + 'static>(error: &(dyn std::error::Error + 'static)) -> bool {
    let mut cause = Some(error);
    while let Some(e) = cause {
        if e.is::<T>() {
            return true;
        }
        cause = e.source();
    }
    false
}

/// `{"delivery": ID, "status": "…"}`, written directly: this is the hot path.
fn answer(status: StatusCode, id: i64, word: &str) -> Response {
    let body = format!("{{\"delivery\":{id},\"status\":\"{word}\"}}");
    (status, [(header::CONTENT_TYPE, "application/json")], body).into_response()
}

/// Stores the delivery, then answers 202 (stored) or 200 (seen before).
pub(crate) async fn receive(
    axum::extract::State(state): axum::extract::State<Arc<AppState>>,
    delivery: Delivery,
) -> Result<Response, ApiError> {
    let source = delivery.source.name.clone();
    if delivery.ping {
        rejected(&source, "ping");
        return Ok((
            StatusCode::OK,
            Json(json!({"status": "pong", "source": source})),
        )
            .into_response());
    }
    let received_at = now_millis();
    let stored = |e: StoredEvent, headers: String| NewDelivery {
        source: source.clone(),
        delivery_id: e.delivery_id,
        event: e.event,
        headers,
        body: e.body,
        received_at,
    };
    let events = match delivery.events {
        Events::One(event) => {
            let new = stored(event, delivery.headers);
            let intake = state.engine.store().insert_delivery(new).await;
            return match intake.map_err(|e| store_failed(&source, e))? {
                Intake::Stored(id) => {
                    // The store hands the delivery to the matcher itself, after the commit.
                    delivery.source.accepted.increment(1);
                    Ok(answer(StatusCode::ACCEPTED, id, "accepted"))
                }
                Intake::Duplicate(id) => {
                    delivery.source.duplicate.increment(1);
                    Ok(answer(StatusCode::OK, id, "duplicate"))
                }
            };
        }
        Events::Envelope(events) => events,
    };
    let batch = events
        .into_iter()
        .map(|e| stored(e, delivery.headers.clone()))
        .collect();
    let intakes = state
        .engine
        .store()
        .insert_deliveries(batch)
        .await
        .map_err(|e| store_failed(&source, e))?;
    Ok(envelope_answer(&delivery.source, &intakes))
}

/// The answer to a delivery the store did not take: 503 with `Retry-After` while its
/// database cannot be reached (counted as `unavailable`), never 202, since nothing was
/// stored.
fn store_failed(source: &str, error: baton_store::StoreError) -> ApiError {
    if crate::error::unavailable(&error) {
        rejected(source, "unavailable");
    }
    ApiError::store(error)
}

/// The answer to an envelope whose events went where `intakes` say, counted: 202 when any
/// was stored, else 200; `status` is `accepted`, `duplicate` (every event seen before) or
/// `empty` (no events); `deliveries` has each event's delivery id, in the envelope's order.
fn envelope_answer(source: &Source, intakes: &[Intake]) -> Response {
    let stored = intakes
        .iter()
        .filter(|i| matches!(i, Intake::Stored(_)))
        .count();
    let duplicates = intakes.len() - stored;
    source.accepted.increment(stored as u64);
    source.duplicate.increment(duplicates as u64);
    let ids: Vec<i64> = intakes
        .iter()
        .map(|i| match i {
            Intake::Stored(id) | Intake::Duplicate(id) => *id,
        })
        .collect();
    let (status, word) = match (stored, duplicates) {
        (0, 0) => (StatusCode::OK, "empty"),
        (0, _) => (StatusCode::OK, "duplicate"),
        _ => (StatusCode::ACCEPTED, "accepted"),
    };
    let body =
        json!({"status": word, "stored": stored, "duplicates": duplicates, "deliveries": ids});
    (status, Json(body)).into_response()
}

/// `POST /hooks/adapters/<instance>`: an adapter's completion webhook, a hint to poll now.
///
/// Not authenticated: it only makes baton look sooner at work it already follows, and
/// what baton then believes comes from the adapter's authenticated poll.
pub(crate) async fn adapter_webhook(
    axum::extract::State(state): axum::extract::State<Arc<AppState>>,
    Path(instance): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let Some(adapter) = state.engine.adapter(&instance) else {
        return Err(ApiError::not_found(format!(
            "no adapter instance `{instance}`"
        )));
    };
    let bytes = to_bytes(body, state.max_body_bytes as usize)
        .await
        .map_err(|e| unreadable_body(&e, state.max_body_bytes).0)?;
    let pairs: Vec<(String, String)> = headers
        .iter()
        .filter_map(|(k, v)| Some((k.as_str().to_owned(), v.to_str().ok()?.to_owned())))
        .collect();
    let request = baton_core::WebhookRequest {
        headers: &pairs,
        body: &bytes,
    };
    let keys = adapter
        .completion_webhook(&request)
        .map_err(|e| ApiError::bad_request(e.to_string()))?;
    let count = keys.len();
    for key in keys {
        state.engine.wake(key).await;
    }
    Ok((StatusCode::ACCEPTED, Json(json!({"woken": count}))).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sources::tests::Fixed;
    use baton_core::SecretRef;
    use serde_json::Value;

    #[test]
    fn stored_headers_are_json_without_secrets_and_join_repeats() {
        let config = baton_config::SourceConfig::Github(baton_config::GithubSource {
            secrets: vec![SecretRef::Env("s".into())],
            ..Default::default()
        });
        let source = Source::new("gh", &config, &Fixed).unwrap();
        let mut headers = HeaderMap::new();
        headers.insert("x-github-event", "push".parse().unwrap());
        headers.insert("x-hub-signature-256", "sha256=00".parse().unwrap());
        headers.insert("authorization", "Bearer t".parse().unwrap());
        headers.append("x-note", "say \"hi\"".parse().unwrap());
        headers.append("x-note", "again".parse().unwrap());
        let text = stored_headers(&headers, &source, None);
        let parsed: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(
            parsed,
            json!({"x-github-event": "push", "x-note": "say \"hi\", again"})
        );
        assert_eq!(stored_headers(&HeaderMap::new(), &source, None), "{}");
        // The id baton gave a request without one is stored as if sent, so the delivery's
        // log lines can be found from it.
        let made = HeaderValue::from_static("abc-1");
        let parsed: Value =
            serde_json::from_str(&stored_headers(&headers, &source, Some(&made))).unwrap();
        assert_eq!(parsed["x-request-id"], "abc-1");
        assert_eq!(
            stored_headers(&HeaderMap::new(), &source, Some(&made)),
            r#"{"x-request-id":"abc-1"}"#
        );
    }

    #[tokio::test]
    async fn an_envelopes_answer_counts_its_events_and_lists_their_ids_in_order() {
        let config = baton_config::SourceConfig::Registry(baton_config::RegistrySource {
            auth: baton_config::RegistryAuth::Bearer(SecretRef::Env("t".into())),
        });
        let source = Source::new("registry", &config, &Fixed).unwrap();
        let answered = |intakes: &[Intake]| {
            let response = envelope_answer(&source, intakes);
            async move {
                let status = response.status();
                let body = to_bytes(response.into_body(), 1 << 20).await.unwrap();
                (status, serde_json::from_slice::<Value>(&body).unwrap())
            }
        };
        let (status, body) = answered(&[
            Intake::Duplicate(4),
            Intake::Stored(9),
            Intake::Duplicate(9),
        ])
        .await;
        assert_eq!(status, StatusCode::ACCEPTED);
        assert_eq!(
            body,
            json!({"status": "accepted", "stored": 1, "duplicates": 2, "deliveries": [4, 9, 9]})
        );
        let (status, body) = answered(&[Intake::Stored(1), Intake::Stored(2)]).await;
        assert_eq!(status, StatusCode::ACCEPTED);
        assert_eq!(
            (body["stored"].clone(), body["duplicates"].clone()),
            (json!(2), json!(0))
        );
        let (status, body) = answered(&[Intake::Duplicate(3)]).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(
            body,
            json!({"status": "duplicate", "stored": 0, "duplicates": 1, "deliveries": [3]})
        );
        let (status, body) = answered(&[]).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(
            body,
            json!({"status": "empty", "stored": 0, "duplicates": 0, "deliveries": []})
        );
    }

    #[test]
    fn the_nesting_limit_stated_is_the_parsers() {
        let nested = |depth: usize| format!("{}1{}", "[".repeat(depth), "]".repeat(depth));
        assert!(parse_val(&nested(MAX_JSON_NESTING)).is_ok());
        let deeper = parse_val(&nested(MAX_JSON_NESTING + 1)).unwrap_err();
        assert!(
            deeper.to_string().contains("recursion limit exceeded"),
            "{deeper}"
        );
    }
}
