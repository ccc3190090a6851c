//! `/deliveries`: the webhook deliveries baton received, newest first, filtered by source
//! and paged by key; one delivery's facts, headers (secrets masked), payload and the runs
//! it started; and replaying it, for an operator.

use std::sync::Arc;

use axum::Router;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use baton_store::{DeliveryFilter, DeliveryRecord, DeliverySummary};
use maud::{Markup, html};
use serde::Deserialize;
use serde_json::Value;

/// The event stream delivery pages follow: every run's changes and each matched delivery.
const DELIVERY_EVENTS: &str = "/ui/events?deliveries=1";

use crate::AppState;
use crate::api::{self, OPERATOR};

use super::form::Form;
use super::layout::{self, Nav};
use super::list::{self, ListAddress, Paging};
use super::session::Session;

/// What a masked header shows instead of its value.
pub(crate) const MASK: &str = "••••••";

/// Parts of header names that mark a secret, a signature or a credential. The intake
/// already drops the headers it knows ([`crate::sources::SECRET_HEADERS`] and each source's
/// signature header); the page masks anything else named like one, whatever stored it.
const SECRET_NAME_PARTS: [&str; 8] = [
    "authorization",
    "token",
    "signature",
    "secret",
    "cookie",
    "password",
    "apikey",
    "api-key",
];

/// How many of a delivery's runs have their status looked up; the rest are listed by id.
const RUNS_WITH_STATUS: usize = 20;

/// The routes of the deliveries pages.
pub(crate) fn routes() -> Router<Arc<AppState>> {
    Router::new()
        .route("/deliveries", get(list_page))
        .route("/deliveries/{id}", get(delivery_page))
        .route("/deliveries/{id}/replay", post(replay))
}

/// Whether a header named `name` is shown masked.
pub(crate) fn is_secret_header(name: &str) -> bool {
    let name = name.to_ascii_lowercase();
    SECRET_NAME_PARTS.iter().any(|part| name.contains(part))
}

/// `?source=`; the page is in [`Paging`] (`before` is the previous page's last delivery id).
#[derive(Deserialize, Default)]
struct ListQuery {
    /// Only deliveries to this source.
    source: Option<String>,
}

impl ListQuery {
    fn source(&self) -> Option<&str> {
        self.source.as_deref().filter(|s| !s.is_empty())
    }

    /// This list's address with its filters.
    fn address(&self) -> ListAddress {
        ListAddress::new("/deliveries")
            .following(DELIVERY_EVENTS)
            .filter("source", self.source())
    }
}

/// `GET /deliveries`.
async fn list_page(
    State(state): State<Arc<AppState>>,
    session: Session,
    Query(q): Query<ListQuery>,
    Query(paging): Query<Paging>,
) -> Response {
    let before = paging.before().and_then(|b| b.parse::<i64>().ok());
    let first_page = before.is_none();
    let filter = DeliveryFilter {
        source: q.source().map(str::to_owned),
        limit: list::FETCH,
        offset: 0,
        before,
    };
    let mut deliveries = match state.engine.store().list_delivery_summaries(&filter).await {
        Ok(deliveries) => deliveries,
        Err(e) => return list::unavailable("deliveries", e),
    };
    let next = list::cut(&mut deliveries, |d| d.id.to_string());
    let rows = rows(&deliveries);
    if paging.rows_only() {
        return layout::fragment(rows);
    }
    let mut sources: Vec<&str> = state.sources.keys().map(String::as_str).collect();
    sources.sort_unstable();
    let head = html! {
        th scope="col" { "Delivery" }
        th scope="col" { "Status" }
        th scope="col" { "Source" }
        th scope="col" { "Event" }
        th.wide scope="col" { "Sender's id" }
        th.wide scope="col" { "Received" }
        th.wide scope="col" { "Runs" }
        th.wide scope="col" { "Message" }
    };
    let body = html! {
        h1 { "Deliveries" }
        @if !state.relays.views().is_empty() {
            p { a href="/relays" { "Relays" } ": where deliveries are forwarded, and how each message fared." }
        }
        form.filters method="get" action="/deliveries" {
            label {
                "Source"
                select name="source" {
                    option value="" { "any" }
                    @for name in &sources {
                        option value=(name) selected[q.source() == Some(*name)] { (name) }
                    }
                }
            }
            button type="submit" { "Filter" }
            (list::live_state(first_page))
        }
        (list::paged_table(&q.address(), first_page, head, rows, next.as_deref()))
    };
    layout::page("Deliveries", Some(&session), Nav::Deliveries, body)
}

fn rows(deliveries: &[DeliverySummary]) -> Markup {
    html! {
        @if deliveries.is_empty() {
            tr { td colspan="8" .muted { "No deliveries." } }
        }
        @for d in deliveries {
            tr {
                td.mono { a href={ "/deliveries/" (d.id) } { (d.id) } }
                td { (layout::status_badge(&d.status)) }
                td { (d.source) }
                td { (d.event) }
                td.wide.mono { (d.delivery_id) }
                td.wide { time datetime=(layout::iso(d.received_at)) { (layout::when(d.received_at)) } }
                td.wide { (run_links(&d.runs)) }
                td.wide { @if let Some(m) = &d.message { (m) } }
            }
        }
    }
}

fn run_links(runs: &[String]) -> Markup {
    html! {
        @if runs.is_empty() {
            span.muted { "—" }
        }
        @for (i, run) in runs.iter().enumerate() {
            @if i > 0 { ", " }
            a.mono href={ "/runs/" (run) } { (run) }
        }
    }
}

/// `?fragment=&done=` of one delivery's page.
#[derive(Deserialize, Default)]
struct DeliveryQuery {
    /// `live`: only the part that changes, for a live refresh.
    fragment: Option<String>,
    /// `replayed`: the action just done, said in a notice.
    done: Option<String>,
}

/// `GET /deliveries/{id}`.
async fn delivery_page(
    State(state): State<Arc<AppState>>,
    session: Session,
    Path(id): Path<String>,
    Query(q): Query<DeliveryQuery>,
) -> Response {
    let record = match load(&state, &id).await {
        Ok(record) => record,
        Err(response) => return *response,
    };
    let live = live_part(&state, &record).await;
    if q.fragment.as_deref() == Some("live") {
        return layout::fragment(live);
    }
    let id = record.id;
    let body = html! {
        p { a href="/deliveries" { "← Deliveries" } }
        h1 { "Delivery " span.mono { (id) } }
        @if q.done.as_deref() == Some("replayed") {
            p.notice role="status" {
                "Replayed: the delivery is matched again, and the runs it starts are listed below."
            }
        }
        div data-live-events=(DELIVERY_EVENTS) data-live-src={ "/deliveries/" (id) "?fragment=live" } {
            (live)
        }
        @if session.may(OPERATOR) {
            form.actions method="post" action={ "/deliveries/" (id) "/replay" }
                data-confirm={ "Replay delivery " (id) "? The workflows it matches start again." } {
                input type="hidden" name="csrf" value=(session.csrf);
                button type="submit" { "Replay" }
            }
        } @else {
            p.muted { "Replaying a delivery needs the operator role." }
        }
        h2 { "Headers" }
        (headers_table(&record.headers))
        h2 { "Payload" }
        pre { code { (pretty(&record.body)) } }
    };
    layout::page(
        &format!("Delivery {id}"),
        Some(&session),
        Nav::Deliveries,
        body,
    )
}

/// The delivery `id` names, or the page that says why there is none.
async fn load(state: &AppState, id: &str) -> Result<DeliveryRecord, Box<Response>> {
    let missing = || {
        Box::new(layout::error_page(
            StatusCode::NOT_FOUND,
            "No such delivery",
            &format!("There is no delivery {id}."),
        ))
    };
    let Some(number) = id.parse::<i64>().ok().filter(|n| *n >= 1) else {
        return Err(missing());
    };
    match state.engine.store().load_delivery(number).await {
        Ok(Some(record)) => Ok(record),
        Ok(None) => Err(missing()),
        Err(e) => Err(Box::new(layout::error_page(
            StatusCode::SERVICE_UNAVAILABLE,
            "Delivery unavailable",
            &format!("The store could not load delivery {number}: {e}"),
        ))),
    }
}

/// The facts that change as the delivery is matched and replayed, and its runs.
async fn live_part(state: &AppState, d: &DeliveryRecord) -> Markup {
    let mut runs = Vec::with_capacity(d.runs.len());
    for (i, run) in d.runs.iter().enumerate() {
        let header = if i < RUNS_WITH_STATUS {
            state
                .engine
                .store()
                .load_run(run)
                .await
                .ok()
                .flatten()
                .map(|snapshot| snapshot.header)
        } else {
            None
        };
        runs.push((run, header));
    }
    html! {
        dl.facts {
            dt { "Status" } dd { (layout::status_badge(&d.status)) }
            dt { "Source" } dd { (d.source) }
            dt { "Event" } dd { (d.event) }
            dt { "Sender's id" } dd.mono { (d.delivery_id) }
            dt { "Received" } dd { time datetime=(layout::iso(d.received_at)) { (layout::when(d.received_at)) } }
            dt { "Processed" }
            dd {
                @if let Some(at) = d.processed_at {
                    time datetime=(layout::iso(at)) { (layout::when(at)) }
                } @else {
                    span.muted { "not yet" }
                }
            }
            @if let Some(message) = &d.message {
                dt { "Message" } dd { (message) }
            }
        }
        h2 { "Runs started" }
        @if runs.is_empty() {
            p.muted { "None." }
        } @else {
            ul.runs {
                @for (id, header) in &runs {
                    li {
                        a.mono href={ "/runs/" (id) } { (id) }
                        @if let Some(header) = header {
                            " " (header.workflow) " " (layout::status_badge(header.status.as_str()))
                        }
                    }
                }
            }
        }
    }
}

fn headers_table(headers: &Value) -> Markup {
    let empty = serde_json::Map::new();
    let headers = headers.as_object().unwrap_or(&empty);
    html! {
        @if headers.is_empty() {
            p.muted { "None stored." }
        } @else {
            div.table {
                table.headers {
                    thead { tr { th scope="col" { "Name" } th scope="col" { "Value" } } }
                    tbody {
                        @for (name, value) in headers {
                            tr {
                                td.mono { (name) }
                                @if is_secret_header(name) {
                                    td.mono { (MASK) " " span.muted { "(masked)" } }
                                } @else {
                                    td.mono { (value.as_str().map_or_else(|| value.to_string(), str::to_owned)) }
                                }
                            }
                        }
                    }
                }
            }
        }
    }
}

/// A payload as indented JSON.
fn pretty(body: &Value) -> String {
    serde_json::to_string_pretty(body).unwrap_or_else(|_| body.to_string())
}

/// `POST /deliveries/{id}/replay`: the form's `csrf`.
async fn replay(
    State(state): State<Arc<AppState>>,
    session: Session,
    Path(id): Path<String>,
    headers: HeaderMap,
    form: Form,
) -> Response {
    if let Err(refusal) = session.check_action(&headers, form.get("csrf"), OPERATOR) {
        return refusal.into_response();
    }
    let Some(number) = id.parse::<i64>().ok().filter(|n| *n >= 1) else {
        return layout::error_page(
            StatusCode::NOT_FOUND,
            "No such delivery",
            &format!("There is no delivery {id}."),
        );
    };
    match api::replay(&state, number, &session.name).await {
        Ok(()) => Redirect::to(&format!("/deliveries/{number}?done=replayed")).into_response(),
        Err(e) => layout::error_page(e.status, "Replay refused", &e.message),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_named_like_secrets_are_masked() {
        for name in [
            "Authorization",
            "proxy-authorization",
            "X-Hub-Signature",
            "x-hub-signature-256",
            "X-Gitlab-Token",
            "cookie",
            "Set-Cookie",
            "x-webhook-secret",
            "webhook-signature",
            "X-Api-Key",
            "x-apikey",
            "x-db-password",
            "x-access-token",
        ] {
            assert!(is_secret_header(name), "{name} is shown");
        }
        for name in crate::sources::SECRET_HEADERS {
            assert!(is_secret_header(name), "{name} is shown");
        }
        for name in [
            "content-type",
            "user-agent",
            "x-github-event",
            "x-github-delivery",
            "x-gitlab-event-uuid",
            "x-request-id",
            "webhook-id",
        ] {
            assert!(!is_secret_header(name), "{name} is masked");
        }
    }

    #[test]
    fn a_masked_header_never_shows_its_value() {
        let headers = serde_json::json!({
            "x-hub-signature-256": "sha256=deadbeef",
            "x-custom-token": "tok-123",
            "x-github-event": "<b>push</b>",
        });
        let html = headers_table(&headers).into_string();
        assert!(
            !html.contains("deadbeef") && !html.contains("tok-123"),
            "{html}"
        );
        assert_eq!(html.matches(MASK).count(), 2, "{html}");
        assert!(html.contains("&lt;b&gt;push&lt;/b&gt;"), "{html}");
    }

    #[test]
    fn a_payload_is_indented_and_escaped_on_the_page() {
        let body = serde_json::json!({"x": "<script>alert(1)</script>"});
        let text = pretty(&body);
        assert_eq!(text, "{\n  \"x\": \"<script>alert(1)</script>\"\n}");
        let html = html! { pre { (text) } }.into_string();
        assert!(html.contains("&lt;script&gt;") && !html.contains("<script>"));
    }
}
