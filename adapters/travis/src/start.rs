//! Creating a request (never one the repository's limit will refuse), and finding the one
//! an attempt already created.

use std::time::Duration;

use baton_core::typed::stage_with;
pub(crate) use baton_core::wire::now_ms;
use baton_core::wire::{iso_utc, run_created_ms};
use baton_core::{AdapterError, AttemptKey, ExternalRef, HumanDuration, StartRequest};
use reqwest::{Method, StatusCode};
use serde_json::{Map, Value, json};

use crate::TravisAdapter;
use crate::client::{Ask, LIMIT_REACHED};
use crate::config::{self, MARKER, Mode, StageSpec};
use crate::limit::{frees_in, inside};
use crate::model::{Pending, Request, Requests};
use crate::tracked::Tracked;
use baton_core::wire::Repeat;

/// How many recent requests `find` looks through.
const FIND_CANDIDATES: &str = "50";

/// How many recent requests are read to see when a spent limit frees.
const LIMIT_CANDIDATES: &str = "100";

/// How far before a run's creation `find` looks, for clocks that disagree a little.
const CLOCK_SLACK_MS: u64 = 60_000;

/// Travis's window when it does not say (`TIME_FRAME = 1.hour`).
const HOUR: Duration = Duration::from_secs(3600);

/// The wait when a spent window's requests cannot be listed.
const UNLISTED_WAIT: Duration = Duration::from_secs(300);

/// The largest create answer read.
const CREATE_ANSWER_BYTES: usize = 1_048_576;

pub(crate) fn stage_spec(input: &Value) -> Result<StageSpec, AdapterError> {
    stage_with(config::parse_stage(input, Mode::Rendered))
}

/// The text baton adds to a request's message so that `find` recognises it.
pub(crate) fn marker(key: &AttemptKey) -> String {
    format!("{MARKER}{key}]")
}

/// The attempt a message names, if it holds baton's marker.
pub(crate) fn marked(text: &str) -> Option<AttemptKey> {
    let (_, rest) = text.split_once(MARKER)?;
    let (key, _) = rest.split_once(']')?;
    AttemptKey::parse(key.trim())
}

/// The body of the create: the stage's inputs, the message with the marker.
fn create_body(spec: &StageSpec, key: &AttemptKey, workflow: &str) -> Value {
    let message = match &spec.message {
        Some(message) => format!("{} {}", message.trim_end(), marker(key)),
        None => format!("baton: {workflow} {}", marker(key)),
    };
    let mut request = Map::new();
    request.insert("message".into(), json!(message));
    let optional = [
        ("branch", spec.branch.as_ref().map(|b| json!(b))),
        ("sha", spec.sha.as_ref().map(|s| json!(s))),
        ("config", spec.config.clone().map(Value::Object)),
        ("merge_mode", spec.merge_mode.as_ref().map(|m| json!(m))),
    ];
    for (name, value) in optional {
        if let Some(value) = value {
            request.insert(name.into(), value);
        }
    }
    json!({ "request": request })
}

impl TravisAdapter {
    fn wait_for_build(&self, spec: &StageSpec) -> Duration {
        spec.request_timeout_build
            .unwrap_or(self.inner.request_timeout_build)
    }

    /// Creates the request of `request`'s stage, unless the repository's limit is known to
    /// be spent.
    pub(crate) async fn create(&self, request: &StartRequest) -> Result<ExternalRef, AdapterError> {
        let spec = stage_spec(&request.input)?;
        let key = &request.key;
        let inner = &self.inner;
        let now = now_ms();
        let window = inner.limit.at(now);
        if let (Some(frees), Some(said)) = (window.frees_ms, &window.said) {
            // Known spent, and known until when: nothing is sent.
            return Err(AdapterError::Throttled {
                message: said.clone(),
                retry_after: Duration::from_millis(frees.saturating_sub(now)),
            });
        }
        if window.spent() {
            let throttled = self.spent_window(None, window.max, window.per).await;
            // The window may have freed meanwhile: then the request goes out.
            if throttled.retry_after().is_some_and(|wait| !wait.is_zero()) {
                return Err(throttled);
            }
        }
        let client = &inner.client;
        let what = "create a build request";
        let body = create_body(&spec, key, &request.workflow);
        let sent = client
            .send(
                Method::POST,
                client.repo_url(&["requests"], &[]),
                Some(&body),
                Ask {
                    what,
                    repeat: Repeat::Once,
                    cap: CREATE_ANSWER_BYTES,
                    tail: false,
                },
            )
            .await;
        let reply = match sent {
            Ok(reply) => reply,
            Err(e) => {
                inner.limit.maybe_created();
                return Err(e);
            }
        };
        if reply.status == StatusCode::TOO_MANY_REQUESTS
            && let Some(refusal) = reply
                .travis_error()
                .filter(|e| e.error_type == LIMIT_REACHED)
        {
            let per = refusal.per_seconds.map(Duration::from_secs);
            inner.limit.refused(refusal.max_requests, per);
            return Err(self
                .spent_window(Some(&refusal.said()), refusal.max_requests, per)
                .await);
        }
        client.accept(&reply, what)?;
        let pending: Pending = client.parse(&reply, what)?;
        inner.limit.created(pending.remaining_requests);
        let tracked = Tracked {
            request: pending.request.id,
            requested_ms: now_ms(),
            wait_ms: self.wait_for_build(&spec).as_millis() as u64,
            ..Tracked::default()
        };
        let external = tracked.reference(&inner.pages);
        inner.memory.keep(key, &tracked, &external);
        tracing::info!(attempt = %key, request = ?pending.request.id, remaining = ?pending.remaining_requests, "created a Travis request");
        Ok(external)
    }

    /// The error for a spent window, saying how many requests it allows, that they are
    /// spent, and when it frees, read from the repository's recent requests; `refusal` is
    /// Travis's own words when a create met the limit. Its `retry_after` is zero when the
    /// window has freed after all.
    async fn spent_window(
        &self,
        refusal: Option<&str>,
        max: Option<u32>,
        per: Option<Duration>,
    ) -> AdapterError {
        let inner = &self.inner;
        let client = &inner.client;
        let per = per.unwrap_or(HOUR);
        let listed = client
            .send(
                Method::GET,
                client.repo_url(&["requests"], &[("limit", LIMIT_CANDIDATES)]),
                None,
                Ask::read("list recent requests"),
            )
            .await
            .ok()
            .filter(|r| r.status.is_success());
        let server_now = listed
            .as_ref()
            .and_then(|r| r.date_ms)
            .unwrap_or_else(now_ms);
        let listed_api: Vec<u64> = listed
            .as_ref()
            .and_then(|r| serde_json::from_slice::<Requests>(&r.body).ok())
            .map(|list| {
                list.requests
                    .iter()
                    .filter(|r| r.event_type.as_deref().is_none_or(|e| e == "api"))
                    .filter_map(Request::created_ms)
                    .collect()
            })
            .unwrap_or_default();
        let created = inside(listed_api, per, server_now);
        let wait = frees_in(&created, per, server_now);
        // Known spent by baton's count alone, and no request listed in the window: the
        // window has freed since.
        let freed = refusal.is_none() && listed.is_some() && created.is_empty();
        let retry_after = match wait {
            _ if freed => Duration::ZERO,
            Some(wait) => wait,
            None => UNLISTED_WAIT,
        };
        let allowed = match max {
            Some(max) => format!("{max} API requests per {}", HumanDuration(per)),
            None => format!(
                "its API requests per {} (10 unless a Travis admin changed the repository's `api_builds_rate_limit`)",
                HumanDuration(per)
            ),
        };
        let why = match refusal {
            Some(words) => format!("Travis refused to create a build request (429 {words})"),
            None => "the last request baton created used the last one Travis counted (`remaining_requests` counts before the new request)".to_owned(),
        };
        let when = match (wait, created.iter().min()) {
            (Some(wait), Some(oldest)) => format!(
                "The oldest of the {} Travis lists in the window, created {}, leaves it at {}, in {}",
                created.len(),
                iso_utc(*oldest),
                iso_utc(oldest.saturating_add(per.as_millis() as u64)),
                HumanDuration(Duration::from_secs(wait.as_secs().max(1)))
            ),
            _ => format!(
                "Travis lists none of them in the window, so baton tries again in {}",
                HumanDuration(UNLISTED_WAIT)
            ),
        };
        let message = format!(
            "repository `{}` on Travis `{}` may create {allowed}, and all are spent: {why}. {when}; baton creates the request then (within the stage's timeout) and sends nothing before",
            client.slug(),
            client.instance()
        );
        let frees = now_ms().saturating_add(retry_after.as_millis() as u64);
        inner.limit.frees_at(frees, &message);
        AdapterError::Throttled {
            message,
            retry_after,
        }
    }

    /// See [`TravisAdapter::find`](crate::TravisAdapter).
    pub(crate) async fn find_request(
        &self,
        key: &AttemptKey,
        input: &Value,
    ) -> Result<Option<ExternalRef>, AdapterError> {
        if let Some(known) = self.inner.memory.reference(key) {
            return Ok(Some(known));
        }
        let spec = stage_spec(input)?;
        let wait = self.wait_for_build(&spec);
        let found = self.search(key, wait).await?;
        let Some(request) = found else {
            return Ok(None);
        };
        let tracked = Tracked {
            request: Some(request.id),
            requested_ms: request.created_ms().unwrap_or_else(now_ms),
            wait_ms: wait.as_millis() as u64,
            ..Tracked::default()
        };
        let external = tracked.reference(&self.inner.pages);
        self.inner.memory.keep(key, &tracked, &external);
        tracing::info!(attempt = %key, request = request.id, "found the attempt's Travis request");
        Ok(Some(external))
    }

    /// The request whose message holds `key`'s marker among the recent ones. A request
    /// Travis has not processed yet shows no message: while one created within `wait` may
    /// be `key`'s, the answer is a transient error rather than "none", so that no second
    /// request is created.
    pub(crate) async fn search(
        &self,
        key: &AttemptKey,
        wait: Duration,
    ) -> Result<Option<Request>, AdapterError> {
        let client = &self.inner.client;
        let list: Requests = client
            .get(
                client.repo_url(&["requests"], &[("limit", FIND_CANDIDATES)]),
                "list recent requests",
            )
            .await?;
        let since = run_created_ms(key).map(|ms| ms.saturating_sub(CLOCK_SLACK_MS));
        let mark = marker(key);
        let now = now_ms();
        let mut unread = None;
        for request in list.requests {
            let created = request.created_ms();
            if since.zip(created).is_some_and(|(since, at)| at < since) {
                continue;
            }
            if request.texts().any(|t| t.contains(&mark)) {
                return Ok(Some(request));
            }
            let young = created.is_none_or(|at| at.saturating_add(wait.as_millis() as u64) > now);
            if request.unprocessed() && young && unread.is_none() {
                unread = Some(request.id);
            }
        }
        match unread {
            Some(id) => Err(AdapterError::Transient(format!(
                "Travis `{}` has not processed request {id} yet, so its message cannot be read, and it may be {key}'s: baton looks again before creating another",
                client.instance()
            ))),
            None => Ok(None),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_marker_names_the_attempt_and_nothing_else() {
        let key = AttemptKey::new("019a8f3c-2b1e-7c3d-8e4f-5a6b7c8d9e0f", "test", 2);
        let text = format!("deploy v1 {}", marker(&key));
        assert_eq!(
            text,
            "deploy v1 [baton-attempt 019a8f3c-2b1e-7c3d-8e4f-5a6b7c8d9e0f/test/2]"
        );
        assert_eq!(marked(&text), Some(key));
        // Attempt 2's marker is not attempt 20's.
        let twenty = marker(&AttemptKey::new("r", "s", 20));
        assert!(!twenty.contains(&marker(&AttemptKey::new("r", "s", 2))));
        for odd in [
            "no marker",
            "[baton-attempt r/s]",
            "[baton-attempt r/s/x]",
            "[baton-attempt r/s/1",
        ] {
            assert_eq!(marked(odd), None, "{odd}");
        }
    }

    #[test]
    fn the_create_body_sends_what_the_stage_gave_and_the_marker() {
        let key = AttemptKey::new("r1", "test", 1);
        let bare = create_body(&StageSpec::default(), &key, "ship");
        assert_eq!(
            bare,
            json!({"request": {"message": "baton: ship [baton-attempt r1/test/1]"}})
        );
        let spec = StageSpec {
            branch: Some("main".into()),
            sha: Some("abcdef1".into()),
            config: Some(
                json!({"env": {"global": ["A=1"]}})
                    .as_object()
                    .unwrap()
                    .clone(),
            ),
            merge_mode: Some("deep_merge_append".into()),
            message: Some("deploy v1 ".into()),
            request_timeout_build: None,
        };
        assert_eq!(
            create_body(&spec, &key, "ship"),
            json!({"request": {
                "message": "deploy v1 [baton-attempt r1/test/1]", "branch": "main",
                "sha": "abcdef1", "config": {"env": {"global": ["A=1"]}},
                "merge_mode": "deep_merge_append"
            }})
        );
    }
}
