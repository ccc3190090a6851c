//! `/runs`: every run, newest first, filtered by workflow and status, paged by key, and
//! refreshed while it is open.

use std::sync::Arc;

use axum::Router;
use axum::extract::{Query, State};
use axum::response::Response;
use axum::routing::get;
use baton_core::RunStatus;
use baton_store::{RunCursor, RunFilter, RunListing, now_millis};
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
    let next = list::cut(&mut runs, |r| RunCursor::after(&r.header).to_text());
    let rows = rows(&runs, now_millis());
    if paging.rows_only() {
        return layout::fragment(rows);
    }
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
        (list::paged_table(&q.address(), first_page, head(), rows, next.as_deref()))
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

/// A table of runs around `rows` (from [`rows`]). With `live_src`, the body is fetched again
/// from that address each time a run changes.
pub(super) fn table(rows: Markup, live_src: Option<&str>) -> Markup {
    list::table(head(), rows, live_src.map(|src| ("/ui/events", src)))
}

/// The head's cells of a table of runs, in the order [`rows`] fills them.
fn head() -> Markup {
    html! {
        th scope="col" { "Status" }
        th scope="col" { "Run" }
        th scope="col" { "Workflow" }
        th.wide scope="col" { "Trigger" }
        th.wide scope="col" { "Commit" }
        th.wide scope="col" { "Started" }
        th scope="col" { "Duration" }
    }
}

/// One table row per run, linked to the run and its workflow; `now` ends the duration of a
/// run that is still going.
pub(super) fn rows(runs: &[RunListing], now: i64) -> Markup {
    html! {
        @if runs.is_empty() {
            tr { td colspan="7" .muted { "No runs." } }
        }
        @for listing in runs {
            @let run = &listing.header;
            tr {
                td { (layout::status_badge(run.status.as_str())) }
                td.mono { a href={ "/runs/" (run.id) } { (run.id) } }
                td { a href={ "/workflows/" (run.workflow) } { (run.workflow) } }
                td.wide { (trigger(listing)) }
                td.wide.mono { (commit(listing.commit.as_deref())) }
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

/// `source/event`, a link to the delivery that started the run when it is stored.
fn trigger(run: &RunListing) -> Markup {
    let trigger = &run.trigger;
    html! {
        (trigger.source) "/" (trigger.event)
        @if let Some(id) = run.delivery {
            " " a href={ "/deliveries/" (id) } title={ "delivery " (trigger.delivery_id.as_deref().unwrap_or_default()) } {
                "#" (id)
            }
        }
    }
}

/// Digits of a SHA shown in a list: enough to tell commits of one repository apart.
const SHORT_SHA: usize = 10;

/// The commit's short SHA, the full one in its title.
fn commit(sha: Option<&str>) -> Markup {
    html! {
        @match sha {
            Some(sha) => abbr title=(sha) { (sha.get(..SHORT_SHA).unwrap_or(sha)) },
            None => span.muted { "—" },
        }
    }
}

#[cfg(test)]
mod tests {
    use baton_core::context::TriggerInfo;
    use baton_store::RunHeader;

    use super::*;

    const SHA: &str = "0123456789abcdef0123456789abcdef01234567";

    fn listing(trigger: TriggerInfo, delivery: Option<i64>, commit: Option<&str>) -> RunListing {
        RunListing {
            header: RunHeader {
                id: "r1".into(),
                workflow: "wf".into(),
                status: RunStatus::Succeeded,
                cancel_requested: false,
                message: None,
                created_at: 1,
                started_at: Some(2),
                finished_at: Some(3),
            },
            trigger,
            delivery,
            commit: commit.map(str::to_owned),
        }
    }

    #[test]
    fn a_row_links_its_delivery_and_shortens_its_commit_all_escaped() {
        let hooked = listing(
            TriggerInfo {
                source: "<gh>".into(),
                event: "push&x".into(),
                delivery_id: Some("\"d1".into()),
            },
            Some(42),
            Some(SHA),
        );
        let html = rows(&[hooked], 10).into_string();
        assert!(html.contains("&lt;gh&gt;/push&amp;x"), "{html}");
        assert!(
            html.contains(r#"<a href="/deliveries/42" title="delivery &quot;d1">#42</a>"#),
            "{html}"
        );
        assert!(
            html.contains(&format!(r#"<abbr title="{SHA}">0123456789</abbr>"#)),
            "{html}"
        );

        let manual = listing(
            TriggerInfo {
                source: "manual".into(),
                event: "manual".into(),
                delivery_id: None,
            },
            None,
            None,
        );
        let html = rows(&[manual], 10).into_string();
        assert!(html.contains("manual/manual"), "{html}");
        assert!(!html.contains("/deliveries/"), "{html}");
        assert!(!html.contains("<abbr"), "{html}");
    }
}
