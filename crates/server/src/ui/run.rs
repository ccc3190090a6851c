//! `/runs/{id}`: one run — its facts, its graph with each stage's status, and per stage its
//! attempts, outputs, error and log — refreshed while it is open, with the actions the
//! signed-in role may take on it.
//!
//! | address | what |
//! |---|---|
//! | `GET /runs/{id}` | the page; `?fragment=live` only the part that changes |
//! | `GET /runs/{id}/stages/{stage}/log` | the tail of an attempt's log (`?attempt=`), a page or, with `?fragment=log`, the part the page's script puts in place |
//! | `POST /runs/{id}/cancel` | cancel the run (operator) |
//! | `POST /runs/{id}/stages/{stage}/approve`, `…/reject` | a decision on a waiting approval stage (approver), with an optional `comment` |
//! | `POST /runs/{id}/stages/{stage}/retry` | run a failed or cancelled stage again (operator) |
//!
//! An action answers with a redirect back to the page (303), which says what was done; a
//! refusal or a request that does not fit the run's state answers with an error page.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use baton_core::graph::to_page_svg;
use baton_core::{AdapterError, AttemptKey, ExternalRef, Logs, StageStatus, Workflow};
use baton_store::{AttemptRecord, Millis, RunSnapshot, StageRecord, now_millis};
use maud::{Markup, PreEscaped, html};
use serde::Deserialize;
use serde_json::Value;

use crate::AppState;
use crate::api::{APPROVER, OPERATOR};
use crate::error::ApiError;

use super::form::Form;
use super::layout::{self, Nav};
use super::session::{Session, encode_query};

/// How long the page waits for an adapter's logs before it says so.
const LOG_TIMEOUT: Duration = Duration::from_secs(5);
/// The lines of a log shown: its end, where a failure usually is.
const LOG_LINES: usize = 200;
/// The longest comment a decision may carry.
const MAX_COMMENT_CHARS: usize = 2000;

/// The run page's routes: the page, its log, and its actions.
pub(crate) fn routes() -> Router<Arc<AppState>> {
    Router::new()
        .route("/runs/{id}", get(show))
        .route("/runs/{id}/cancel", post(cancel))
        .route("/runs/{id}/stages/{stage}/retry", post(retry))
        // `approve` or `reject`.
        .route("/runs/{id}/stages/{stage}/{verdict}", post(decide))
        .route("/runs/{id}/stages/{stage}/log", get(log))
}

/// `?fragment=&done=&stage=` of the page.
#[derive(Deserialize, Default)]
struct PageQuery {
    /// `live`: only the part that changes.
    fragment: Option<String>,
    /// What the action that led here did (`approved`, `rejected`, `cancelled`, `retried`).
    done: Option<String>,
    /// The stage it was done to.
    stage: Option<String>,
}

/// `GET /runs/{id}`.
async fn show(
    State(state): State<Arc<AppState>>,
    session: Session,
    Path(id): Path<String>,
    Query(q): Query<PageQuery>,
) -> Response {
    let snapshot = match state.engine.snapshot(&id).await {
        Ok(snapshot) => snapshot,
        Err(e) => return failure(e.into()),
    };
    let workflow = state.engine.workflow_of(&snapshot);
    let page = RunPage {
        snapshot: &snapshot,
        workflow: workflow.as_deref().map_err(ToString::to_string),
        decisions: &state.decision_instances,
        session: &session,
        now: now_millis(),
    };
    if q.fragment.as_deref() == Some("live") {
        return layout::fragment(page.live());
    }
    let notice = flash(q.done.as_deref(), q.stage.as_deref(), &snapshot);
    let body = html! {
        div.run-title {
            h1 { "Run " span.mono { (id) } }
            span.live-state data-live-state aria-live="polite" { }
        }
        @if let Some(notice) = notice {
            p.notice role="status" { (notice) }
        }
        div.run-live
            data-live-events={ "/ui/events?run=" (encode_query(&id)) }
            data-live-src={ (run_address(&id)) "?fragment=live" } {
            (page.live())
        }
    };
    layout::page(&format!("Run {id}"), Some(&session), Nav::Runs, body)
}

/// The page of run `id`.
fn run_address(id: &str) -> String {
    format!("/runs/{}", encode_query(id))
}

/// The sentence that says what the action that led back here did. Only the words actions
/// use are shown, and only for a stage of this run, so a crafted address cannot make the
/// page claim anything else.
fn flash(done: Option<&str>, stage: Option<&str>, snapshot: &RunSnapshot) -> Option<String> {
    let stage = stage.filter(|s| snapshot.stages.iter().any(|r| r.stage_id == *s));
    match (done?, stage) {
        ("cancelled", _) => {
            Some("Cancellation requested: running stages are being stopped.".into())
        }
        ("approved", Some(stage)) => Some(format!("Approved stage {stage}.")),
        ("rejected", Some(stage)) => Some(format!("Rejected stage {stage}.")),
        ("retried", Some(stage)) => Some(format!("Stage {stage} will run again.")),
        _ => None,
    }
}

/// Everything a run's page shows, gathered before any markup is written.
struct RunPage<'a> {
    /// The stored run.
    snapshot: &'a RunSnapshot,
    /// The workflow it runs, or why it could not be compiled.
    workflow: Result<&'a Workflow, String>,
    /// The adapter instances whose stages take decisions.
    decisions: &'a BTreeSet<String>,
    /// Who is looking.
    session: &'a Session,
    /// Now, for the durations of what still runs.
    now: Millis,
}

/// What the page offers to do to one stage.
#[derive(Debug, Default, PartialEq, Eq)]
struct StageActions {
    /// Approve or reject it.
    decide: bool,
    /// Run it again.
    retry: bool,
}

impl RunPage<'_> {
    /// The id of the run.
    fn id(&self) -> &str {
        &self.snapshot.header.id
    }

    /// The adapter instance stage `stage` uses, as the stored workflow says.
    fn uses(&self, stage: &str) -> Option<&str> {
        self.snapshot.payload.spec["stages"][stage]["uses"].as_str()
    }

    /// Whether the run is asked to stop and has not yet.
    fn cancelling(&self) -> bool {
        let header = &self.snapshot.header;
        header.cancel_requested && !header.status.is_terminal()
    }

    /// Cancel is offered to an operator while the run goes on and nobody asked yet.
    fn may_cancel(&self) -> bool {
        let header = &self.snapshot.header;
        self.session.may(OPERATOR) && !header.status.is_terminal() && !header.cancel_requested
    }

    /// Approve and reject are offered to an approver on a waiting approval stage; retry
    /// to an operator on a failed or cancelled stage of a run that is not being cancelled.
    /// The server checks again when the form is sent.
    fn stage_actions(&self, stage: &StageRecord) -> StageActions {
        let decision = self
            .uses(&stage.stage_id)
            .is_some_and(|uses| self.decisions.contains(uses));
        StageActions {
            decide: decision && stage.status == StageStatus::Waiting && self.session.may(APPROVER),
            retry: matches!(stage.status, StageStatus::Failed | StageStatus::Cancelled)
                && !self.cancelling()
                && self.session.may(OPERATOR),
        }
    }

    /// The part of the page that changes while the run goes on.
    fn live(&self) -> Markup {
        html! {
            (self.facts())
            @if self.may_cancel() {
                (self.cancel_form())
            }
            section.run-graph aria-labelledby="graph-heading" {
                h2 id="graph-heading" { "Graph" }
                (self.graph())
            }
            section aria-labelledby="stages-heading" {
                h2 id="stages-heading" { "Stages" }
                @for stage in &self.snapshot.stages {
                    (self.stage(stage))
                }
            }
        }
    }

    fn facts(&self) -> Markup {
        let header = &self.snapshot.header;
        let trigger = &self.snapshot.payload.trigger;
        html! {
            dl.facts {
                dt { "Workflow" }
                dd { a href={ "/workflows/" (encode_query(&header.workflow)) } { (header.workflow) } }
                dt { "Status" }
                dd {
                    (layout::status_badge(header.status.as_str()))
                    @if self.cancelling() {
                        " " span.muted { "cancellation requested" }
                    }
                }
                dt { "Trigger" }
                dd {
                    (trigger.source) " / " (trigger.event)
                    @if let Some(delivery) = &trigger.delivery_id {
                        " · delivery " span.mono { (delivery) } " ("
                        a href={ "/deliveries?source=" (encode_query(&trigger.source)) } {
                            "deliveries of " (trigger.source)
                        }
                        ")"
                    }
                }
                dt { "Created" }
                dd { (time(Some(header.created_at))) }
                (self.times(header.started_at, header.finished_at))
                @if let Some(message) = &header.message {
                    dt { "Message" }
                    dd { (message) }
                }
            }
        }
    }

    /// When something started and finished, and how long it took or has taken so far, as
    /// rows of a `dl.facts`.
    fn times(&self, started: Option<Millis>, finished: Option<Millis>) -> Markup {
        html! {
            dt { "Started" }
            dd { (time(started)) }
            dt { "Finished" }
            dd { (time(finished)) }
            dt { "Duration" }
            dd { (lasted(started, finished, self.now)) }
        }
    }

    fn cancel_form(&self) -> Markup {
        let id = self.id();
        html! {
            form.actions method="post" action={ (run_address(id)) "/cancel" }
                data-confirm={ "Cancel run " (id) "? Running stages are stopped." } {
                input type="hidden" name="csrf" value=(self.session.csrf);
                button.danger type="submit" { "Cancel run" }
            }
        }
    }

    fn graph(&self) -> Markup {
        let workflow = match &self.workflow {
            Ok(workflow) => *workflow,
            Err(problem) => {
                return html! {
                    p.notice.error { "The graph cannot be drawn: " (problem) }
                };
            }
        };
        let status = |stage: &baton_core::Stage| {
            self.snapshot
                .stages
                .iter()
                .find(|r| r.stage_id == stage.id)
                .map(|r| r.status)
        };
        let svg = to_page_svg(
            workflow,
            |stage| self.decisions.contains(&stage.uses),
            status,
            |stage| Some(format!("#stage-{}", stage.id)),
        );
        // Markup baton drew itself, every value in it XML-escaped (graph/text.rs).
        html! { div.graph { (PreEscaped(svg)) } }
    }

    fn stage(&self, stage: &StageRecord) -> Markup {
        let id = &stage.stage_id;
        let attempts: Vec<&AttemptRecord> = self
            .snapshot
            .attempts
            .iter()
            .filter(|a| a.stage_id == *id)
            .collect();
        let actions = self.stage_actions(stage);
        // What needs a person is open from the start.
        let open = matches!(stage.status, StageStatus::Failed | StageStatus::Waiting);
        html! {
            details.stage-detail id={ "stage-" (id) } open[open] {
                summary {
                    (layout::status_badge(stage.status.as_str()))
                    strong.mono { (id) }
                    @if let Some(uses) = self.uses(id) {
                        span.muted { "uses " (uses) }
                    }
                    @if stage.attempt > 1 {
                        span.muted { "attempt " (stage.attempt) }
                    }
                }
                div.stage-body {
                    (problem(stage))
                    @if actions.decide {
                        (self.decision_forms(id))
                    }
                    @if actions.retry {
                        (self.retry_form(id))
                    }
                    dl.facts {
                        dt { "Attempt" }
                        dd { (stage.attempt) }
                        (self.times(stage.started_at, stage.finished_at))
                        @if let Some(external) = &stage.external {
                            dt { "External" }
                            dd { (external_ref(external)) }
                        }
                    }
                    @if !attempts.is_empty() {
                        (self.attempts(id, &attempts))
                    }
                    @if let Some(outputs) = stage.outputs.as_ref().filter(|o| !is_empty(o)) {
                        h3 { "Outputs" }
                        pre.outputs { (pretty(outputs)) }
                    }
                    @if stage.attempt > 0 {
                        (self.log_details(id, stage.attempt))
                    }
                }
            }
        }
    }

    fn attempts(&self, stage: &str, attempts: &[&AttemptRecord]) -> Markup {
        html! {
            h3 { "Attempts" }
            div.table {
                table.attempts {
                    thead {
                        tr {
                            th scope="col" { "#" }
                            th scope="col" { "Status" }
                            th scope="col" { "Started" }
                            th scope="col" { "Finished" }
                            th scope="col" { "Duration" }
                            th.wide scope="col" { "Outcome" }
                            th scope="col" { "Log" }
                        }
                    }
                    tbody {
                        @for a in attempts {
                            tr {
                                td { (a.attempt) }
                                td { (layout::status_badge(a.status.as_str())) }
                                td { (time(a.started_at)) }
                                td { (time(a.finished_at)) }
                                td { (lasted(a.started_at, a.finished_at, self.now)) }
                                td.wide {
                                    @if let Some(reason) = &a.reason {
                                        code { (reason) } " "
                                    }
                                    @if let Some(message) = &a.message {
                                        (message)
                                    }
                                    @if let Some(external) = &a.external {
                                        " " (external_ref(external))
                                    }
                                }
                                td {
                                    a href=(log_address(self.id(), stage, a.attempt, false)) {
                                        "log" span.visually-hidden { " of attempt " (a.attempt) }
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
    }

    /// The current attempt's log: a link that opens it as a page, which the page's script
    /// replaces with the log itself when the details are opened.
    fn log_details(&self, stage: &str, attempt: u32) -> Markup {
        html! {
            details.log id={ "log-" (stage) } data-log-src=(log_address(self.id(), stage, attempt, true)) {
                summary { "Log" }
                div.log-body {
                    p { a href=(log_address(self.id(), stage, attempt, false)) { "Open the log of attempt " (attempt) } }
                }
            }
        }
    }

    fn decision_forms(&self, stage: &str) -> Markup {
        let id = self.id();
        let form = |verb: &str, word: &str, class: &str| {
            html! {
                form.decision method="post" action={ (run_address(id)) "/stages/" (stage) "/" (verb) }
                    data-confirm={ (word) " stage " (stage) " of run " (id) "?" } {
                    input type="hidden" name="csrf" value=(self.session.csrf);
                    label {
                        "Comment (optional)"
                        input type="text" name="comment" maxlength=(MAX_COMMENT_CHARS) autocomplete="off";
                    }
                    button class=(class) type="submit" { (word) }
                }
            }
        };
        html! {
            div.decisions {
                (form("approve", "Approve", "primary"))
                (form("reject", "Reject", "danger"))
            }
        }
    }

    fn retry_form(&self, stage: &str) -> Markup {
        let id = self.id();
        html! {
            form.actions method="post" action={ (run_address(id)) "/stages/" (stage) "/retry" }
                data-confirm={ "Retry stage " (stage) "? It runs again, then every stage after it." } {
                input type="hidden" name="csrf" value=(self.session.csrf);
                button type="submit" { "Retry stage" }
            }
        }
    }
}

/// Why a stage is where it is: an error for a failure, a plain note otherwise.
fn problem(stage: &StageRecord) -> Markup {
    if stage.reason.is_none() && stage.message.is_none() {
        return html! {};
    }
    html! {
        @if stage.status == StageStatus::Failed {
            p.notice.error {
                strong { "Failed" }
                @if let Some(reason) = &stage.reason { " (" code { (reason) } ")" }
                @if let Some(message) = &stage.message { ": " (message) }
            }
        } @else {
            p.muted {
                @if let Some(reason) = &stage.reason { code { (reason) } " " }
                @if let Some(message) = &stage.message { (message) }
            }
        }
    }
}

/// An external system's reference: its id, and its link when it is a web address. The
/// adapter's own data stays out of the page: it may hold what only the adapter should see.
fn external_ref(external: &ExternalRef) -> Markup {
    html! {
        span.mono { (external.id) }
        @if let Some(url) = external.url.as_deref() {
            " "
            @if let Some(url) = web_link(url) {
                a href=(url) rel="noreferrer" { "open" }
            } @else {
                span.mono { (url) }
            }
        }
    }
}

/// `url` when it is an `http` or `https` address: anything else (`javascript:`, `file:`)
/// is shown as text, never as a link.
fn web_link(url: &str) -> Option<&str> {
    let scheme = url.split_once(':').map(|(s, _)| s.to_ascii_lowercase());
    matches!(scheme.as_deref(), Some("http" | "https")).then_some(url)
}

fn time(at: Option<Millis>) -> Markup {
    html! {
        @if let Some(at) = at {
            time datetime=(layout::iso(at)) { (layout::when(at)) }
        } @else {
            span.muted { "—" }
        }
    }
}

/// From `start` to `end`, or to `now` while it lasts.
fn lasted(start: Option<Millis>, end: Option<Millis>, now: Millis) -> Markup {
    html! {
        @match (start, end) {
            (Some(start), Some(end)) => { (layout::duration(end - start)) }
            (Some(start), None) => { (layout::duration(now - start)) " so far" }
            _ => { span.muted { "—" } }
        }
    }
}

fn is_empty(value: &Value) -> bool {
    match value {
        Value::Null => true,
        Value::Object(map) => map.is_empty(),
        _ => false,
    }
}

fn pretty(value: &Value) -> String {
    serde_json::to_string_pretty(value).unwrap_or_default()
}

/// An error as a page: its message and its status (404 for an unknown run, 409 for an
/// action the run's state does not allow).
fn failure(error: ApiError) -> Response {
    let title = match error.status {
        StatusCode::NOT_FOUND => "Not found",
        StatusCode::CONFLICT => "Not possible now",
        StatusCode::SERVICE_UNAVAILABLE => "Unavailable",
        _ => "Failed",
    };
    layout::error_page(error.status, title, &error.message)
}

/// Back to the run's page, saying what was done.
fn done(id: &str, word: &str, stage: Option<&str>) -> Response {
    let mut address = format!("{}?done={word}", run_address(id));
    if let Some(stage) = stage {
        address.push_str("&stage=");
        address.push_str(&encode_query(stage));
    }
    Redirect::to(&address).into_response()
}

/// `POST /runs/{id}/cancel`.
async fn cancel(
    State(state): State<Arc<AppState>>,
    session: Session,
    headers: HeaderMap,
    Path(id): Path<String>,
    form: Form,
) -> Response {
    if let Err(refusal) = session.check_action(&headers, form.get("csrf"), OPERATOR) {
        return refusal.into_response();
    }
    match state.engine.cancel_run(&id).await {
        Ok(()) => {
            tracing::info!(run = %id, by = %session.name, "run cancelled from the web UI");
            done(&id, "cancelled", None)
        }
        Err(e) => failure(e.into()),
    }
}

/// `POST /runs/{id}/stages/{stage}/retry`.
async fn retry(
    State(state): State<Arc<AppState>>,
    session: Session,
    headers: HeaderMap,
    Path((id, stage)): Path<(String, String)>,
    form: Form,
) -> Response {
    if let Err(refusal) = session.check_action(&headers, form.get("csrf"), OPERATOR) {
        return refusal.into_response();
    }
    match state.engine.retry_stage(&id, &stage).await {
        Ok(attempt) => {
            tracing::info!(run = %id, stage = %stage, attempt, by = %session.name, "stage retried from the web UI");
            done(&id, "retried", Some(&stage))
        }
        Err(e) => failure(e.into()),
    }
}

/// What a person decides on a waiting approval stage: the last part of the form's address.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(rename_all = "lowercase")]
enum Verdict {
    /// `…/approve`.
    Approve,
    /// `…/reject`.
    Reject,
}

/// `POST /runs/{id}/stages/{stage}/approve` and `…/reject`.
async fn decide(
    State(state): State<Arc<AppState>>,
    session: Session,
    headers: HeaderMap,
    Path((id, stage, verdict)): Path<(String, String, Verdict)>,
    form: Form,
) -> Response {
    let approve = matches!(verdict, Verdict::Approve);
    if let Err(refusal) = session.check_action(&headers, form.get("csrf"), APPROVER) {
        return refusal.into_response();
    }
    let comment = match comment(form.get("comment")) {
        Ok(comment) => comment,
        Err(problem) => {
            return layout::error_page(StatusCode::BAD_REQUEST, "Comment too long", &problem);
        }
    };
    match crate::api::decide(&state, &session.name, (&id, &stage), approve, comment).await {
        Ok(()) => done(
            &id,
            if approve { "approved" } else { "rejected" },
            Some(&stage),
        ),
        Err(e) => failure(e),
    }
}

/// A decision's comment: trimmed, `None` when empty, refused when longer than
/// [`MAX_COMMENT_CHARS`].
fn comment(given: Option<&str>) -> Result<Option<String>, String> {
    let text = given.unwrap_or_default().trim();
    if text.chars().count() > MAX_COMMENT_CHARS {
        return Err(format!(
            "A comment may hold {MAX_COMMENT_CHARS} characters at most; nothing was sent."
        ));
    }
    Ok((!text.is_empty()).then(|| text.to_owned()))
}

/// `?attempt=&fragment=` of a log.
#[derive(Deserialize, Default)]
struct LogQuery {
    /// The attempt; the current one when absent.
    attempt: Option<u32>,
    /// `log`: only the log, for the run page's script.
    fragment: Option<String>,
}

/// The address of an attempt's log, as a page or as the fragment the run page fetches.
fn log_address(run: &str, stage: &str, attempt: u32, fragment: bool) -> String {
    format!(
        "{}/stages/{}/log?attempt={attempt}{}",
        run_address(run),
        encode_query(stage),
        if fragment { "&fragment=log" } else { "" }
    )
}

/// `GET /runs/{id}/stages/{stage}/log`.
async fn log(
    State(state): State<Arc<AppState>>,
    session: Session,
    Path((id, stage)): Path<(String, String)>,
    Query(q): Query<LogQuery>,
) -> Response {
    let snapshot = match state.engine.snapshot(&id).await {
        Ok(snapshot) => snapshot,
        Err(e) => return failure(e.into()),
    };
    let Some(record) = snapshot.stages.iter().find(|s| s.stage_id == stage) else {
        return failure(ApiError::not_found(format!(
            "run `{id}` has no stage `{stage}`"
        )));
    };
    let attempt = q.attempt.unwrap_or(record.attempt);
    if attempt == 0 || attempt > record.attempt {
        return failure(ApiError::not_found(format!(
            "stage `{stage}` of run `{id}` has no attempt {attempt}"
        )));
    }
    let external = if attempt == record.attempt {
        record.external.clone()
    } else {
        snapshot
            .attempts
            .iter()
            .find(|a| a.stage_id == stage && a.attempt == attempt)
            .and_then(|a| a.external.clone())
    };
    let uses = snapshot.payload.spec["stages"][stage.as_str()]["uses"]
        .as_str()
        .unwrap_or_default();
    let tail = match external {
        None => LogTail::Missing("No log: this attempt has not started external work."),
        Some(external) => match state.engine.adapter(uses) {
            None => LogTail::Missing("No log: the adapter this stage uses is not configured."),
            Some(adapter) => {
                let key = AttemptKey::new(&id, &stage, attempt);
                LogTail::within(LOG_TIMEOUT, uses, adapter.logs(&key, &external)).await
            }
        },
    };
    let markup = tail.render();
    if q.fragment.as_deref() == Some("log") {
        return layout::fragment(markup);
    }
    let body = html! {
        p { a href={ (run_address(&id)) "#stage-" (stage) } { "← Run " (id) } }
        h1 { "Log of " span.mono { (stage) } ", attempt " (attempt) }
        (markup)
    };
    layout::page(&format!("Log of {stage}"), Some(&session), Nav::Runs, body)
}

/// What reading a log came to.
enum LogTail {
    /// The adapter answered.
    Read(Logs),
    /// There is nothing to ask for.
    Missing(&'static str),
    /// The adapter failed or took too long.
    Failed(String),
}

impl LogTail {
    /// What `reading` (an adapter's `logs` call for instance `uses`) comes to within `limit`.
    async fn within(
        limit: Duration,
        uses: &str,
        reading: impl Future<Output = Result<Logs, AdapterError>>,
    ) -> Self {
        match tokio::time::timeout(limit, reading).await {
            Ok(Ok(logs)) => Self::Read(logs),
            Ok(Err(e)) => Self::Failed(format!("The log could not be read: {e}")),
            Err(_) => Self::Failed(format!(
                "The log could not be read: {uses} did not answer within {} s.",
                limit.as_secs_f64()
            )),
        }
    }

    fn render(&self) -> Markup {
        match self {
            Self::Missing(why) => html! { p.muted { (why) } },
            Self::Failed(why) => html! { p.notice.error role="alert" { (why) } },
            Self::Read(logs) => {
                let (text, cut) = logs
                    .text
                    .as_deref()
                    .map_or(("", 0), |t| last_lines(t, LOG_LINES));
                html! {
                    @if !logs.links.is_empty() {
                        ul.log-links {
                            @for link in &logs.links {
                                li {
                                    @if let Some(url) = web_link(&link.url) {
                                        a href=(url) rel="noreferrer" { (link.name) }
                                    } @else {
                                        (link.name) ": " span.mono { (link.url) }
                                    }
                                }
                            }
                        }
                    }
                    @if logs.text.is_some() {
                        @if cut > 0 {
                            p.muted { "The last " (LOG_LINES) " lines; " (cut) " before them are not shown." }
                        }
                        pre.log { (text) }
                    } @else if logs.links.is_empty() {
                        p.muted { "The adapter keeps no log for this attempt." }
                    }
                }
            }
        }
    }
}

/// The last `n` lines of `text`, and how many lines came before them.
fn last_lines(text: &str, n: usize) -> (&str, usize) {
    let body = text.strip_suffix('\n').unwrap_or(text);
    let total = body.lines().count();
    if total <= n {
        return (text, 0);
    }
    let mut start = body.len();
    for _ in 0..n {
        start = body[..start].rfind('\n').unwrap_or(0);
    }
    (&text[start + 1..], total - n)
}

#[cfg(test)]
mod tests {
    use baton_config::Role;
    use baton_core::context::TriggerInfo;
    use baton_core::{RunStatus, StageDefaults, WorkflowSpec};
    use baton_store::{RunHeader, RunPayload};
    use serde_json::json;

    use super::*;

    fn spec() -> Value {
        json!({"name": "ship", "stages": {
            "build": {"uses": "exec", "with": {"run": "true"}},
            "gate": {"uses": "approval", "needs": "build"},
            "deploy": {"uses": "exec", "needs": "gate"}
        }})
    }

    fn workflow() -> Workflow {
        let spec: WorkflowSpec = serde_json::from_value(spec()).unwrap();
        Workflow::compile(spec, StageDefaults::default()).unwrap()
    }

    /// A run of `ship` whose build succeeded with outputs that hold markup, whose gate
    /// waits, and whose deploy is pending.
    fn snapshot() -> RunSnapshot {
        let mut build = StageRecord::pending("r1", "build", 0);
        build.status = StageStatus::Succeeded;
        build.attempt = 1;
        build.started_at = Some(1_000);
        build.finished_at = Some(4_000);
        build.outputs = Some(json!({"note": "<script>alert(1)</script>"}));
        build.external = Some(ExternalRef {
            id: "pid-42".into(),
            url: Some("javascript:alert(2)".into()),
            data: json!({"secret": "adapter-private"}),
        });
        let mut gate = StageRecord::pending("r1", "gate", 1);
        gate.status = StageStatus::Waiting;
        gate.attempt = 1;
        gate.started_at = Some(4_000);
        gate.message = Some("waiting for approval: <b>ship</b>?".into());
        let deploy = StageRecord::pending("r1", "deploy", 2);
        let attempt = AttemptRecord {
            run_id: "r1".into(),
            stage_id: "build".into(),
            attempt: 1,
            status: StageStatus::Succeeded,
            reason: None,
            message: None,
            external: build.external.clone(),
            started_at: Some(1_000),
            finished_at: Some(4_000),
        };
        RunSnapshot {
            version: 3,
            header: RunHeader {
                id: "r1".into(),
                workflow: "ship".into(),
                status: RunStatus::Running,
                cancel_requested: false,
                message: None,
                created_at: 900,
                started_at: Some(1_000),
                finished_at: None,
            },
            payload: RunPayload {
                spec: spec(),
                event: json!({}),
                trigger: TriggerInfo {
                    source: "github".into(),
                    event: "push".into(),
                    delivery_id: Some("<d-1>".into()),
                },
            },
            stages: vec![build, gate, deploy],
            attempts: vec![attempt],
        }
    }

    fn session(role: Role) -> Session {
        Session {
            name: "someone".into(),
            role,
            csrf: "form-token".into(),
        }
    }

    fn decisions() -> BTreeSet<String> {
        BTreeSet::from(["approval".to_owned()])
    }

    fn render(snapshot: &RunSnapshot, role: Role) -> String {
        let wf = workflow();
        let decisions = decisions();
        let session = session(role);
        let page = RunPage {
            snapshot,
            workflow: Ok(&wf),
            decisions: &decisions,
            session: &session,
            now: 10_000,
        };
        page.live().into_string()
    }

    #[test]
    fn values_from_the_store_are_escaped_and_adapter_data_stays_out() {
        let html = render(&snapshot(), Role::Approver);
        assert!(
            html.contains("&lt;script&gt;alert(1)&lt;/script&gt;"),
            "{html}"
        );
        assert!(!html.contains("<script>"));
        assert!(html.contains("waiting for approval: &lt;b&gt;ship&lt;/b&gt;?"));
        assert!(html.contains("delivery <span class=\"mono\">&lt;d-1&gt;</span>"));
        assert!(
            !html.contains("adapter-private"),
            "ExternalRef.data is never shown"
        );
        // A link that is not a web address is text, never an href.
        assert!(!html.contains("href=\"javascript:"), "{html}");
        assert!(html.contains("javascript:alert(2)"));
    }

    #[test]
    fn the_graph_and_the_stages_link_to_each_other() {
        let html = render(&snapshot(), Role::Viewer);
        for (stage, status) in [
            ("build", "succeeded"),
            ("gate", "waiting"),
            ("deploy", "pending"),
        ] {
            assert!(
                html.contains(&format!("<a href=\"#stage-{stage}\">")),
                "{stage}"
            );
            assert!(html.contains(&format!("data-stage=\"{stage}\" data-status=\"{status}\"")));
            assert!(html.contains(&format!(
                "<details class=\"stage-detail\" id=\"stage-{stage}\""
            )));
        }
        // The waiting stage is open from the start; the others are not.
        assert!(html.contains("id=\"stage-gate\" open"));
        assert!(!html.contains("id=\"stage-build\" open"));
        // The approval stage is drawn apart.
        assert!(html.contains("class=\"stage status-waiting approval\""));
        // The log of a started attempt is one click away, with or without the script.
        assert!(
            html.contains("data-log-src=\"/runs/r1/stages/build/log?attempt=1&amp;fragment=log\"")
        );
        assert!(html.contains("href=\"/runs/r1/stages/build/log?attempt=1\""));
        assert!(
            !html.contains("/stages/deploy/log"),
            "deploy has not started"
        );
    }

    #[test]
    fn forms_follow_the_role_and_the_state() {
        let snap = snapshot();
        let viewer = render(&snap, Role::Viewer);
        assert!(!viewer.contains("<form"), "{viewer}");
        let operator = render(&snap, Role::Operator);
        assert!(operator.contains("action=\"/runs/r1/cancel\""));
        assert!(
            !operator.contains("/approve"),
            "an operator does not decide"
        );
        let approver = render(&snap, Role::Approver);
        for verb in ["approve", "reject"] {
            assert!(approver.contains(&format!("action=\"/runs/r1/stages/gate/{verb}\"")));
        }
        assert_eq!(
            approver
                .matches("name=\"csrf\" value=\"form-token\"")
                .count(),
            3
        );
        assert!(approver.contains("data-confirm=\"Approve stage gate of run r1?\""));
        assert!(!approver.contains("/retry"), "nothing failed");

        let mut failed = snapshot();
        failed.header.status = RunStatus::Failed;
        failed.header.finished_at = Some(9_000);
        failed.stages[1].status = StageStatus::Failed;
        failed.stages[1].reason = Some("rejected".into());
        failed.stages[1].message = Some("rejected by anna".into());
        let html = render(&failed, Role::Operator);
        assert!(html.contains("action=\"/runs/r1/stages/gate/retry\""));
        assert!(
            !html.contains("/cancel"),
            "a finished run cannot be cancelled"
        );
        assert!(!html.contains("/approve"), "no longer waiting");
        assert!(html.contains("<strong>Failed</strong> (<code>rejected</code>): rejected by anna"));

        let mut cancelling = snapshot();
        cancelling.header.cancel_requested = true;
        cancelling.stages[0].status = StageStatus::Cancelled;
        let html = render(&cancelling, Role::Operator);
        assert!(!html.contains("/cancel\""), "asked already");
        assert!(
            !html.contains("/retry"),
            "not while the run is being cancelled"
        );
        assert!(html.contains("cancellation requested"));
    }

    #[test]
    fn a_stage_that_takes_no_decisions_is_never_offered_one() {
        let mut snap = snapshot();
        snap.stages[0].status = StageStatus::Waiting;
        let html = render(&snap, Role::Approver);
        assert!(!html.contains("/stages/build/approve"));
        assert!(html.contains("/stages/gate/approve"));
    }

    #[test]
    fn the_notice_says_only_what_actions_say() {
        let snap = snapshot();
        assert_eq!(
            flash(Some("approved"), Some("gate"), &snap).as_deref(),
            Some("Approved stage gate.")
        );
        assert_eq!(flash(Some("approved"), Some("nope"), &snap), None);
        assert_eq!(flash(Some("hacked"), Some("gate"), &snap), None);
        assert!(flash(Some("cancelled"), None, &snap).is_some());
        assert_eq!(flash(None, Some("gate"), &snap), None);
    }

    #[test]
    fn only_web_addresses_become_links() {
        assert_eq!(
            web_link("https://ci.example/1"),
            Some("https://ci.example/1")
        );
        assert_eq!(web_link("HTTP://ci.example/1"), Some("HTTP://ci.example/1"));
        assert_eq!(web_link("javascript:alert(1)"), None);
        assert_eq!(web_link("JaVaScRiPt:alert(1)"), None);
        assert_eq!(web_link("file:///tmp/x/stdout"), None);
        assert_eq!(web_link("/relative"), None);
    }

    #[test]
    fn a_log_shows_its_last_lines() {
        let text: String = (1..=250).map(|i| format!("line {i}\n")).collect();
        let (tail, cut) = last_lines(&text, 200);
        assert_eq!(cut, 50);
        assert!(tail.starts_with("line 51\n"), "{tail}");
        assert!(tail.ends_with("line 250\n"));
        assert_eq!(tail.lines().count(), 200);
        assert_eq!(last_lines("a\nb", 200), ("a\nb", 0));
        assert_eq!(last_lines("a\nb\nc", 2), ("b\nc", 1));
        assert_eq!(last_lines("", 2), ("", 0));
    }

    #[test]
    fn a_comment_is_trimmed_and_bounded() {
        assert_eq!(comment(None), Ok(None));
        assert_eq!(comment(Some("   ")), Ok(None));
        assert_eq!(comment(Some(" ok ")), Ok(Some("ok".into())));
        assert!(comment(Some(&"x".repeat(MAX_COMMENT_CHARS + 1))).is_err());
        assert!(comment(Some(&"é".repeat(MAX_COMMENT_CHARS))).is_ok());
    }

    #[tokio::test]
    async fn a_log_read_is_bounded_in_time() {
        let begun = std::time::Instant::now();
        let hung =
            LogTail::within(Duration::from_millis(50), "slow-ci", std::future::pending()).await;
        assert!(begun.elapsed() < Duration::from_secs(2));
        let LogTail::Failed(why) = hung else {
            panic!("a read that never ends is a failure")
        };
        assert_eq!(
            why,
            "The log could not be read: slow-ci did not answer within 0.05 s."
        );
        let refused = LogTail::within(Duration::from_secs(5), "ci", async {
            Err(AdapterError::Auth("the token was refused".into()))
        })
        .await;
        assert!(matches!(&refused, LogTail::Failed(why) if why.ends_with("the token was refused")));
        let read =
            LogTail::within(Duration::from_secs(5), "ci", async { Ok(Logs::default()) }).await;
        assert!(matches!(read, LogTail::Read(_)));
    }

    #[test]
    fn a_log_that_cannot_be_read_says_why() {
        let failed = LogTail::Failed("The log could not be read: <boom>".into()).render();
        assert!(failed.into_string().contains("&lt;boom&gt;"));
        let logs = Logs {
            links: vec![
                baton_core::adapter::LogLink {
                    name: "web".into(),
                    url: "https://ci.example/l".into(),
                },
                baton_core::adapter::LogLink {
                    name: "file".into(),
                    url: "file:///x".into(),
                },
            ],
            text: Some("<b>out</b>\n".into()),
        };
        let html = LogTail::Read(logs).render().into_string();
        assert!(html.contains("<a href=\"https://ci.example/l\" rel=\"noreferrer\">web</a>"));
        assert!(!html.contains("href=\"file:"));
        assert!(
            html.contains("<pre class=\"log\">&lt;b&gt;out&lt;/b&gt;\n</pre>"),
            "{html}"
        );
    }
}
