//! `/runs`: every run, newest first, filtered by workflow and status, paged by key, and
//! refreshed while it is open.

use std::sync::Arc;

use axum::Router;
use axum::extract::{Query, State};
use axum::response::Response;
use axum::routing::get;
use baton_core::RunStatus;
use baton_store::{RunCursor, RunFilter, RunHeader, now_millis};
use maud::{Markup, html};
use serde::Deserialize;

use crate::AppState;

use super::layout::{self, Nav};
use super::list::{self, ListAddress, Paging};
use super::session::Session;

/// The routes of the runs list.
pub(crate) fn routes() -> Router<Arc<AppState>> {
    Router::new().route("/runs", get(list_page))
}

/// `?workflow=&status=`; the page is in [`Paging`] (`before` is `<created_at>.<id>` of the
/// previous page's last run).
#[derive(Deserialize, Default)]
pub(crate) struct ListQuery {
    /// Only runs of this workflow.
    workflow: Option<String>,
    /// Only runs in this status; an unknown one is no filter.
    status: Option<String>,
}

impl ListQuery {
    fn workflow(&self) -> Option<&str> {
        self.workflow.as_deref().filter(|w| !w.is_empty())
    }

    fn status(&self) -> Option<RunStatus> {
        self.status.as_deref().and_then(RunStatus::parse)
    }

    /// This list's address with its filters.
    fn address(&self) -> ListAddress {
        ListAddress::new("/runs")
            .filter("workflow", self.workflow())
            .filter("status", self.status().map(RunStatus::as_str))
    }
}

/// `GET /runs`.
async fn list_page(
    State(state): State<Arc<AppState>>,
    session: Session,
    Query(q): Query<ListQuery>,
    Query(paging): Query<Paging>,
) -> Response {
    let before = paging.before().and_then(RunCursor::parse);
    let first_page = before.is_none();
    let filter = RunFilter {
        workflow: q.workflow().map(str::to_owned),
        status: q.status(),
        limit: list::FETCH,
        offset: 0,
        before,
    };
    let mut runs = match state.engine.list_runs(&filter).await {
        Ok(runs) => runs,
        Err(e) => return list::unavailable("runs", e),
    };
    let next = list::cut(&mut runs, |r| RunCursor::after(r).to_text());
    let rows = rows(&runs, now_millis());
    if paging.rows_only() {
        return layout::fragment(rows);
    }
    let head = html! {
        th scope="col" { "Status" }
        th scope="col" { "Run" }
        th scope="col" { "Workflow" }
        th.wide scope="col" { "Trigger" }
        th.wide scope="col" { "Started" }
        th scope="col" { "Duration" }
    };
    let body = html! {
        h1 { "Runs" }
        form.filters method="get" action="/runs" {
            label {
                "Workflow"
                select name="workflow" {
                    option value="" { "any" }
                    @for w in &state.workflows {
                        @let name = w.name();
                        option value=(name) selected[q.workflow() == Some(name)] { (name) }
                    }
                }
            }
            label {
                "Status"
                select name="status" {
                    option value="" { "any" }
                    @for s in RUN_STATUSES {
                        option value=(s.as_str()) selected[q.status() == Some(s)] { (s.as_str()) }
                    }
                }
            }
            button type="submit" { "Filter" }
            (list::live_state(first_page))
        }
        (list::table(&q.address(), first_page, head, rows, next.as_deref()))
    };
    layout::page("Runs", Some(&session), Nav::Runs, body)
}

const RUN_STATUSES: [RunStatus; 5] = [
    RunStatus::Queued,
    RunStatus::Running,
    RunStatus::Succeeded,
    RunStatus::Failed,
    RunStatus::Cancelled,
];

fn rows(runs: &[RunHeader], now: i64) -> Markup {
    html! {
        @if runs.is_empty() {
            tr { td colspan="6" .muted { "No runs." } }
        }
        @for run in runs {
            tr {
                td { (layout::status_badge(run.status.as_str())) }
                td.mono { a href={ "/runs/" (run.id) } { (run.id) } }
                td { a href={ "/workflows/" (run.workflow) } { (run.workflow) } }
                td.wide { (trigger(run)) }
                td.wide {
                    time datetime=(layout::iso(run.started_at.unwrap_or(run.created_at))) {
                        (layout::when(run.started_at.unwrap_or(run.created_at)))
                    }
                }
                td {
                    @if let Some(started) = run.started_at {
                        (layout::duration(run.finished_at.unwrap_or(now) - started))
                    } @else {
                        span.muted { "—" }
                    }
                }
            }
        }
    }
}

fn trigger(run: &RunHeader) -> Markup {
    let _ = run;
    html! { span.muted { "—" } }
}
