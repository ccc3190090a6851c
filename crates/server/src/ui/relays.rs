//! `/relays`: where deliveries are forwarded (`[relays.*]`): each relay's targets with
//! their state and counts, and its newest messages with their tries and last outcome; an
//! operator sends a delivered or dead message again.

use std::sync::Arc;

use axum::Router;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use baton_relay::{RelayView, TargetView};
use baton_store::{RelayMessageFilter, RelayMessageRecord, RelayStatus, RelayTargetStats};
use maud::{Markup, html};
use serde::Deserialize;

use crate::AppState;
use crate::api::OPERATOR;
use crate::relays::{queue, replay_one};

use super::form::Form;
use super::layout::{self, Nav};
use super::session::Session;

/// How many of a relay's newest messages the page lists.
const NEWEST: u32 = 20;

/// The routes of the relays page.
pub(crate) fn routes() -> Router<Arc<AppState>> {
    Router::new()
        .route("/relays", get(relays_page))
        .route("/relays/{relay}/messages/{key}/replay", post(replay))
}

/// `?done=`.
#[derive(Deserialize, Default)]
struct PageQuery {
    /// `replayed`: the action just done, said in a notice.
    done: Option<String>,
}

/// One relay as the page shows it.
struct Shown {
    /// The relay and its targets as configured, with their state.
    view: RelayView,
    /// Its newest messages.
    messages: Vec<RelayMessageRecord>,
}

/// `GET /relays`.
async fn relays_page(
    State(state): State<Arc<AppState>>,
    session: Session,
    Query(q): Query<PageQuery>,
) -> Response {
    let views = state.relays.views();
    let mut stats = Vec::new();
    let mut shown = Vec::with_capacity(views.len());
    if !views.is_empty() {
        let loaded = async {
            let queue = queue(&state)?;
            stats = queue.relay_targets().await?;
            for view in views {
                let messages = queue
                    .list_relay_messages(&RelayMessageFilter {
                        relay: Some(view.name.clone()),
                        limit: NEWEST,
                        ..RelayMessageFilter::default()
                    })
                    .await?;
                shown.push(Shown { view, messages });
            }
            Ok::<_, crate::error::ApiError>(())
        };
        if let Err(e) = loaded.await {
            return layout::error_page(
                StatusCode::SERVICE_UNAVAILABLE,
                "Relays unavailable",
                &format!("The store could not list relay messages: {}", e.message),
            );
        }
    }
    let body = html! {
        p { a href="/deliveries" { "← Deliveries" } }
        h1 { "Relays" }
        @if q.done.as_deref() == Some("replayed") {
            p.notice role="status" { "Replayed: the message is pending again and is sent on its target's schedule." }
        }
        @if shown.is_empty() {
            p.muted { "No relays are configured: a relay is a " code { "[relays.<name>]" } " table of the config." }
        }
        @for relay in &shown {
            section.relay aria-labelledby={ "relay-" (relay.view.name) } {
                h2 id={ "relay-" (relay.view.name) } { (relay.view.name) }
                p.muted { "Forwards the deliveries of " (relay.view.from.join(", ")) "." }
                (targets(&relay.view, &stats))
                h3 { "Newest messages" }
                (messages(&relay.view.name, &relay.messages, &session))
            }
        }
    };
    layout::page("Relays", Some(&session), Nav::Deliveries, body)
}

fn targets(relay: &RelayView, stats: &[RelayTargetStats]) -> Markup {
    html! {
        div.table {
            table {
                thead {
                    tr {
                        th scope="col" { "Target" }
                        th scope="col" { "State" }
                        th scope="col" { "Pending" }
                        th scope="col" { "Delivered" }
                        th scope="col" { "Dead" }
                        th.wide scope="col" { "Address" }
                    }
                }
                tbody {
                    @for target in &relay.targets {
                        @let counted = stats.iter().find(|s| s.relay == relay.name && s.target == target.name);
                        tr {
                            td { (target.name) }
                            td { (layout::status_badge(target.state)) (target_note(target)) }
                            td { (counted.map_or(0, |s| s.pending)) }
                            td { (counted.map_or(0, |s| s.delivered)) }
                            td { (counted.map_or(0, |s| s.dead)) }
                            td.wide.mono { (target.url) }
                        }
                    }
                }
            }
        }
    }
}

/// Why a target is not healthy, when it is not.
fn target_note(target: &TargetView) -> Markup {
    html! {
        @if let Some(circuit) = &target.circuit {
            br;
            span.muted {
                (circuit.failures) " failed tries in a row"
                @if let Some(at) = circuit.probe_at {
                    "; next probe " time datetime=(layout::iso(at)) { (layout::when(at)) }
                }
            }
        }
        @if let Some(reason) = &target.disabled_reason {
            br;
            span.muted { (reason) }
        }
    }
}

fn messages(relay: &str, messages: &[RelayMessageRecord], session: &Session) -> Markup {
    let may_replay = session.may(OPERATOR);
    html! {
        div.table {
            table {
                thead {
                    tr {
                        th scope="col" { "Status" }
                        th scope="col" { "Target" }
                        th scope="col" { "Delivery" }
                        th scope="col" { "Tries" }
                        th scope="col" { "Last outcome" }
                        th.wide scope="col" { "Made" }
                        th.wide scope="col" { "Message" }
                        @if may_replay { th scope="col" { "Action" } }
                    }
                }
                tbody {
                    @if messages.is_empty() {
                        tr { td colspan="8" .muted { "No messages yet." } }
                    }
                    @for m in messages {
                        tr {
                            td { (layout::status_badge(m.status.as_str())) }
                            td { (m.target) }
                            td.mono { a href={ "/deliveries/" (m.delivery) } { (m.delivery) } }
                            td { (m.tries) span.muted { " of " (m.attempts) " in all" } }
                            td {
                                @if let Some(outcome) = m.last_outcome {
                                    (outcome.as_str())
                                    @if let Some(code) = m.last_code { " (" (code) ")" }
                                } @else {
                                    span.muted { "—" }
                                }
                            }
                            td.wide { time datetime=(layout::iso(m.created_at)) { (layout::when(m.created_at)) } }
                            td.wide { @if let Some(text) = &m.message { (text) } }
                            @if may_replay {
                                td {
                                    @if m.status != RelayStatus::Pending {
                                        form.actions method="post"
                                            action={ "/relays/" (path_segment(relay)) "/messages/" (path_segment(&m.key)) "/replay" }
                                            data-confirm={ "Send message " (m.key) " to " (m.target) " again?" } {
                                            input type="hidden" name="csrf" value=(session.csrf);
                                            button type="submit" title=(m.key) { "Replay" }
                                        }
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
    }
}

/// `text` as one segment of a path: relay names are the config's, and may hold anything.
fn path_segment(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(byte));
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

/// `POST /relays/{relay}/messages/{key}/replay`: the form's `csrf`.
async fn replay(
    State(state): State<Arc<AppState>>,
    session: Session,
    Path((relay, key)): Path<(String, String)>,
    headers: HeaderMap,
    form: Form,
) -> Response {
    if let Err(refusal) = session.check_action(&headers, form.get("csrf"), OPERATOR) {
        return refusal.into_response();
    }
    match replay_one(&state, &relay, &key, &session.name).await {
        Ok(_) => Redirect::to("/relays?done=replayed").into_response(),
        Err(e) => layout::error_page(e.status, "Replay refused", &e.message),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_path_segment_keeps_its_slashes_and_spaces_inside() {
        assert_eq!(path_segment("ci-mirror_2.x~"), "ci-mirror_2.x~");
        assert_eq!(path_segment("a/b c"), "a%2Fb%20c");
        assert_eq!(path_segment("é"), "%C3%A9");
    }
}
