//! `/workflows`: every workflow of the config with its triggers and last run; one workflow's
//! graph, triggers, stages, recent runs and source file; and starting a run by hand.
//!
//! | address | does |
//! |---|---|
//! | `GET /workflows` | the list (`?fragment=rows`: only the table's body) |
//! | `GET /workflows/{name}` | one workflow (`?fragment=runs`: only its recent runs' rows) |
//! | `GET /workflows/{name}.yaml` | the workflow's file as it is on disk, as a download |
//! | `POST /workflows/{name}/runs` | starts a run by hand (operator), then shows it |

use std::path::Path;
use std::sync::Arc;

use axum::Router;
use axum::extract::{Path as UrlPath, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use baton_core::workflow::TriggerSpec;
use baton_core::{HumanDuration, OnFailure, Workflow};
use baton_store::{RunFilter, RunListing, now_millis};
use maud::{Markup, PreEscaped, html};
use serde::Deserialize;
use serde_json::Value;

use crate::AppState;
use crate::api::OPERATOR;
use crate::error::ApiError;

use super::form::Form;
use super::layout::{self, Nav};
use super::runs;
use super::session::Session;

/// Runs shown on a workflow's page.
const RECENT_RUNS: u32 = 20;

/// The source that starts a run by hand (the CLI, the API and this UI).
const MANUAL: &str = "manual";

/// What the start form shows when a page is first opened.
const EMPTY_EVENT: &str = "{}";

/// The list's columns (`true`: hidden on a phone's width).
const WORKFLOW_COLUMNS: &[(&str, bool)] = &[
    ("Workflow", false),
    ("Last run", false),
    ("Stages", true),
    ("Triggers", false),
    ("By hand", false),
];

/// The columns of a workflow's triggers.
const TRIGGER_COLUMNS: &[(&str, bool)] =
    &[("Source", false), ("Event", false), ("Condition", false)];

/// The columns of a workflow's stages: what a person looks for first stays on a phone.
const STAGE_COLUMNS: &[(&str, bool)] = &[
    ("Stage", false),
    ("Uses", false),
    ("Needs", false),
    ("Timeout", true),
    ("Retry", true),
    ("On failure", true),
    ("If", true),
];

/// The routes of this module.
pub(crate) fn routes() -> Router<Arc<AppState>> {
    Router::new()
        .route("/workflows", get(list))
        .route("/workflows/{name}", get(show))
        .route("/workflows/{name}/runs", post(start))
}

/// `?fragment=`: `rows` on the list, `runs` on a workflow's page.
#[derive(Deserialize, Default)]
pub(crate) struct FragmentQuery {
    /// Which part of the page alone, for a live refresh.
    fragment: Option<String>,
}

/// `GET /workflows`.
async fn list(
    State(state): State<Arc<AppState>>,
    session: Session,
    Query(q): Query<FragmentQuery>,
) -> Response {
    let rows = list_rows(&state).await;
    if q.fragment.as_deref() == Some("rows") {
        return layout::fragment(rows);
    }
    let body = html! {
        h1 { "Workflows" }
        p { a.button href="/workflows/new" { "New workflow" } }
        p.muted {
            (state.workflows.len()) " workflow" @if state.workflows.len() != 1 { "s" }
            " in the config. A workflow with a " code { "manual" }
            " trigger can be started by hand from its page. "
            span.live-state data-live-state aria-live="polite" { }
        }
        (table(
            "workflows",
            WORKFLOW_COLUMNS,
            html! { tbody data-live-events="/ui/events" data-live-src="/workflows?fragment=rows" { (rows) } },
        ))
    };
    layout::page("Workflows", Some(&session), Nav::Workflows, body)
}

/// One row per workflow, each with its last run (one query per workflow, all at once).
async fn list_rows(state: &AppState) -> Markup {
    let filters: Vec<RunFilter> = state
        .workflows
        .iter()
        .map(|w| recent(w.name(), 1))
        .collect();
    let last_runs =
        futures::future::join_all(filters.iter().map(|f| state.engine.list_runs(f))).await;
    html! {
        @if state.workflows.is_empty() {
            tr { td colspan="5" .muted { "The config has no workflows." } }
        }
        @for (workflow, last) in state.workflows.iter().zip(last_runs) {
            tr {
                th scope="row" { a href=(page_address(workflow.name())) { (workflow.name()) } }
                td {
                    @match last {
                        Ok(runs) => @match runs.first() {
                            Some(run) => a href={ "/runs/" (run.header.id) } { (layout::status_badge(run.header.status.as_str())) },
                            None => span.muted { "never run" },
                        },
                        Err(e) => span.muted title=(e.to_string()) { "unavailable" },
                    }
                }
                td.wide { (workflow.stages.len()) }
                td { (triggers_summary(&workflow.spec.on)) }
                td { (by_hand_mark(startable_by_hand(workflow))) }
            }
        }
    }
}

/// The newest `limit` runs of workflow `name`.
fn recent(name: &str, limit: u32) -> RunFilter {
    RunFilter {
        workflow: Some(name.to_owned()),
        limit,
        ..RunFilter::default()
    }
}

/// The address of a workflow's page. Names are `[A-Za-z0-9_.-]+`, safe in a path as they are.
fn page_address(name: &str) -> String {
    format!("/workflows/{name}")
}

/// The address of a workflow's file.
fn download_address(name: &str) -> String {
    format!("/workflows/{name}.yaml")
}

/// Whether a workflow has the trigger that lets a person start it.
fn startable_by_hand(workflow: &Workflow) -> bool {
    workflow.triggers.iter().any(|t| t.source == MANUAL)
}

fn by_hand_mark(yes: bool) -> Markup {
    html! {
        @if yes {
            span.yes { span.icon aria-hidden="true" { "✓" } " yes" }
        } @else {
            span.muted { span.icon aria-hidden="true" { "—" } " no" }
        }
    }
}

/// The `on:` entries, one per line: source, event (or any), and the condition.
fn triggers_summary(on: &[TriggerSpec]) -> Markup {
    html! {
        @if on.is_empty() {
            span.muted { "none" }
        } @else {
            ul.triggers {
                @for trigger in on {
                    li {
                        strong { (trigger.source) }
                        @if trigger.source != MANUAL {
                            " · "
                            @if let Some(event) = &trigger.event { code { (event) } } @else { span.muted { "any event" } }
                        }
                        @if let Some(condition) = &trigger.condition {
                            " · if " code { (condition) }
                        }
                    }
                }
            }
        }
    }
}

/// `GET /workflows/{name}`, and `GET /workflows/{name}.yaml` for the file.
async fn show(
    State(state): State<Arc<AppState>>,
    session: Session,
    UrlPath(name): UrlPath<String>,
    Query(q): Query<FragmentQuery>,
) -> Response {
    // A workflow's own name wins: names may hold dots, so `x.yaml` can be one.
    if let Some(workflow) = find(&state, &name) {
        if q.fragment.as_deref() == Some("runs") {
            return match state
                .engine
                .list_runs(&recent(workflow.name(), RECENT_RUNS))
                .await
            {
                Ok(list) => layout::fragment(runs::rows(&list, now_millis())),
                Err(e) => runs_unavailable(&e.to_string()),
            };
        }
        let page = Page {
            state: &state,
            session: &session,
            workflow,
        };
        return page.render(StatusCode::OK, EMPTY_EVENT, None).await;
    }
    if let Some(workflow) = name.strip_suffix(".yaml").and_then(|n| find(&state, n)) {
        return download(&state, workflow).await;
    }
    unknown_workflow(&state, &name)
}

fn find<'a>(state: &'a AppState, name: &str) -> Option<&'a Arc<Workflow>> {
    state.workflows.iter().find(|w| w.name() == name)
}

/// The file workflow `name` was loaded from.
fn file_of<'a>(state: &'a AppState, name: &str) -> Option<&'a Path> {
    state
        .workflow_files
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, file)| file.as_path())
}

fn unknown_workflow(state: &AppState, name: &str) -> Response {
    let known: Vec<&str> = state.workflows.iter().map(|w| w.name()).collect();
    layout::error_page(
        StatusCode::NOT_FOUND,
        "No such workflow",
        &format!(
            "The config has no workflow `{name}` (it has: {}).",
            if known.is_empty() {
                "none".to_owned()
            } else {
                known.join(", ")
            }
        ),
    )
}

fn runs_unavailable(why: &str) -> Response {
    layout::error_page(
        StatusCode::SERVICE_UNAVAILABLE,
        "Runs unavailable",
        &format!("The store could not list runs: {why}"),
    )
}

/// One workflow's page, for one person.
struct Page<'a> {
    state: &'a AppState,
    session: &'a Session,
    workflow: &'a Workflow,
}

impl Page<'_> {
    /// The page with `status`; the start form holds `event` and, after a refused start,
    /// says why (`problem`).
    async fn render(&self, status: StatusCode, event: &str, problem: Option<&str>) -> Response {
        let name = self.workflow.name();
        let recent_runs = self
            .state
            .engine
            .list_runs(&recent(name, RECENT_RUNS))
            .await;
        let body = html! {
            h1 { "Workflow " code { (name) } }
            (self.facts())
            (self.start_form(event, problem))
            h2 { "Graph" }
            figure.graph.workflow-graph {
                (self.graph())
            }
            h2 { "Triggers" }
            (triggers_table(&self.workflow.spec.on))
            h2 { "Stages" }
            (self.stages_table())
            h2 { "Recent runs " span.live-state data-live-state aria-live="polite" { } }
            @match &recent_runs {
                Ok(list) => (recent_runs_table(name, list)),
                // The workflow itself comes from the config: only this part needs the store.
                Err(e) => p.notice.error role="alert" { "The store could not list runs: " (e) },
            }
        };
        let mut response = layout::page(name, Some(self.session), Nav::Workflows, body);
        *response.status_mut() = status;
        response
    }

    fn facts(&self) -> Markup {
        let name = self.workflow.name();
        let file = file_of(self.state, name);
        html! {
            dl.facts {
                dt { "File" }
                dd {
                    @if let Some(file) = file {
                        code title=(file.display()) { (file_name(file)) }
                        " · "
                    }
                    a href=(download_address(name)) download { "Download YAML" }
                    " · "
                    a href={ "/workflows/" (name) "/edit" } { "Edit" }
                }
                dt { "Stages" }
                dd { (self.workflow.stages.len()) }
                dt { "By hand" }
                dd {
                    (by_hand_mark(startable_by_hand(self.workflow)))
                    @if !startable_by_hand(self.workflow) {
                        span.muted { " (add " code { "{ source: manual }" } " to its " code { "on:" } " list)" }
                    }
                }
                @if !self.workflow.spec.report.is_empty() {
                    dt { "Reports to" }
                    dd { (self.workflow.spec.report.join(", ")) }
                }
            }
        }
    }

    /// The start form, for a person who may start runs of a workflow that allows it.
    fn start_form(&self, event: &str, problem: Option<&str>) -> Markup {
        let name = self.workflow.name();
        if !startable_by_hand(self.workflow) {
            return html! {};
        }
        if !self.session.may(OPERATOR) {
            return html! {
                p.muted { "Starting a run by hand needs the operator role; yours is " (self.session.role_name()) "." }
            };
        }
        html! {
            section.start-run aria-labelledby="start-run" {
                h2 id="start-run" { "Start a run" }
                form method="post" action={ (page_address(name)) "/runs" }
                    data-confirm={ "Start a run of " (name) "?" } {
                    input type="hidden" name="csrf" value=(self.session.csrf);
                    @if let Some(problem) = problem {
                        p.notice.error id="event-problem" role="alert" { (problem) }
                    }
                    label {
                        span { "Event (a JSON object; the run reads it as " code { ".event" } ")" }
                        @if problem.is_some() {
                            textarea.event name="event" rows="6" spellcheck="false"
                                aria-invalid="true" aria-describedby="event-problem" { (event) }
                        } @else {
                            textarea.event name="event" rows="6" spellcheck="false" { (event) }
                        }
                    }
                    button.primary type="submit" { "Start run" }
                }
            }
        }
    }

    /// The stage graph, drawn by baton itself.
    fn graph(&self) -> Markup {
        // The only markup on this page not escaped by maud: baton drew it, and every text in
        // it is XML-escaped by the graph module.
        PreEscaped(picture(self.workflow, &self.state.decision_instances))
    }

    fn stages_table(&self) -> Markup {
        let stages = &self.workflow.stages;
        let spec = &self.workflow.spec.stages;
        html! {
            (table(
                "stages",
                STAGE_COLUMNS,
                html! {
                    tbody {
                        @for stage in stages {
                            @let own = spec.get(&stage.id);
                            tr {
                                th scope="row" .mono { (stage.id) }
                                td.mono {
                                    (stage.uses)
                                    @if self.state.decision_instances.contains(&stage.uses) {
                                        " " span.muted { "(waits for a person)" }
                                    }
                                }
                                td.mono {
                                    @if stage.needs.is_empty() {
                                        span.muted { "—" }
                                    } @else {
                                        (stage.needs.iter().map(|&i| stages[i].id.as_str()).collect::<Vec<_>>().join(", "))
                                    }
                                }
                                td.wide {
                                    (HumanDuration(stage.timeout))
                                    @if own.is_some_and(|s| s.timeout.is_none()) {
                                        " " span.muted { "(default)" }
                                    }
                                }
                                td.wide {
                                    @if stage.retry.attempts > 1 {
                                        (stage.retry.attempts) " attempts, first wait " (HumanDuration(stage.retry.backoff))
                                    } @else {
                                        span.muted { "no retry" }
                                    }
                                }
                                td.wide { (on_failure(stage.on_failure)) }
                                td.wide {
                                    @match own.and_then(|s| s.condition.as_deref()) {
                                        Some(condition) => code { (condition) },
                                        None => span.muted { "—" },
                                    }
                                }
                            }
                        }
                    }
                },
            ))
        }
    }
}

/// A table with column headings (`true`: hidden on a phone's width) above `body`, its
/// `<tbody>`.
fn table(class: &str, columns: &[(&str, bool)], body: Markup) -> Markup {
    html! {
        div.table {
            table class=(class) {
                thead {
                    tr {
                        @for &(heading, wide) in columns {
                            th.wide[wide] scope="col" { (heading) }
                        }
                    }
                }
                (body)
            }
        }
    }
}

fn on_failure(policy: OnFailure) -> &'static str {
    match policy {
        OnFailure::Halt => "halt",
        OnFailure::Continue => "continue",
        OnFailure::Ignore => "ignore",
    }
}

fn triggers_table(on: &[TriggerSpec]) -> Markup {
    html! {
        @if on.is_empty() {
            p.muted { "No triggers: nothing starts this workflow." }
        } @else {
            (table(
                "triggers",
                TRIGGER_COLUMNS,
                html! {
                    tbody {
                        @for trigger in on {
                            tr {
                                td { (trigger.source) }
                                td {
                                    @if trigger.source == MANUAL {
                                        span.muted { "started by hand (CLI, API, this page)" }
                                    } @else if let Some(event) = &trigger.event {
                                        code { (event) }
                                    } @else {
                                        span.muted { "any event" }
                                    }
                                }
                                td {
                                    @match &trigger.condition {
                                        Some(condition) => code { (condition) },
                                        None => span.muted { "always" },
                                    }
                                }
                            }
                        }
                    }
                },
            ))
        }
    }
}

fn recent_runs_table(name: &str, recent_runs: &[RunListing]) -> Markup {
    let live = format!("{}?fragment=runs", page_address(name));
    html! {
        (runs::table(runs::rows(recent_runs, now_millis()), Some(&live)))
        p { a href={ "/runs?workflow=" (name) } { "All runs of " (name) " →" } }
    }
}

/// The workflow's graph as inline SVG for this page, coloured by baton.css (the page's CSP
/// refuses the `<style>` a standalone picture carries); no run, so no statuses or links.
fn picture(workflow: &Workflow, decisions: &std::collections::BTreeSet<String>) -> String {
    baton_core::graph::to_page_svg(
        workflow,
        |s| decisions.contains(&s.uses),
        |_| None,
        |_| None,
    )
}

/// The last part of a file's path.
fn file_name(file: &Path) -> String {
    file.file_name().map_or_else(
        || file.display().to_string(),
        |n| n.to_string_lossy().into_owned(),
    )
}

/// `POST /workflows/{name}/runs`: `csrf` and `event` (JSON text).
async fn start(
    State(state): State<Arc<AppState>>,
    session: Session,
    headers: HeaderMap,
    UrlPath(name): UrlPath<String>,
    form: Form,
) -> Response {
    if let Err(refusal) = session.check_action(&headers, form.get("csrf"), OPERATOR) {
        return refusal.into_response();
    }
    let Some(workflow) = find(&state, &name) else {
        return unknown_workflow(&state, &name);
    };
    let typed = form.get("event").unwrap_or_default();
    let page = Page {
        state: &state,
        session: &session,
        workflow,
    };
    let event = match parse_event(typed, state.max_body_bytes) {
        Ok(event) => event,
        Err((status, problem)) => return page.render(status, typed, Some(&problem)).await,
    };
    match crate::api::start_by_hand(&state, &name, event, &session.name).await {
        Ok(run) => Redirect::to(&format!("/runs/{run}")).into_response(),
        Err(e) => refused(&e),
    }
}

/// The event typed in the form: a JSON object (blank is `{}`), no larger than the API
/// would take (`server.max_body_bytes`). Else the status and what to fix.
fn parse_event(typed: &str, max_bytes: u64) -> Result<Value, (StatusCode, String)> {
    if typed.len() as u64 > max_bytes {
        return Err((
            StatusCode::PAYLOAD_TOO_LARGE,
            format!(
                "The event is {} bytes; this server takes at most {max_bytes} (server.max_body_bytes).",
                typed.len()
            ),
        ));
    }
    if typed.trim().is_empty() {
        return Ok(Value::Object(Default::default()));
    }
    match serde_json::from_str::<Value>(typed) {
        Ok(event @ Value::Object(_)) => Ok(event),
        Ok(other) => Err((
            StatusCode::BAD_REQUEST,
            format!(
                "The event must be a JSON object ({{ … }}), not {}.",
                baton_core::typed::json_kind(&other)
            ),
        )),
        Err(e) => Err((
            StatusCode::BAD_REQUEST,
            format!("The event is not valid JSON: {e}."),
        )),
    }
}

/// An error of the API's start, as a page with its status.
fn refused(error: &ApiError) -> Response {
    layout::error_page(error.status, "Run not started", &error.message)
}

/// `GET /workflows/{name}.yaml`: the file as it is on disk; when it cannot be read (moved or
/// removed since baton loaded it), the workflow as loaded, written as YAML.
async fn download(state: &AppState, workflow: &Workflow) -> Response {
    let name = workflow.name();
    let file = file_of(state, name);
    let read = match file {
        Some(file) => Some(tokio::fs::read(file).await),
        None => None,
    };
    let (bytes, filename) = match (read, file) {
        (Some(Ok(bytes)), Some(file)) => (bytes, attachment_name(file, name)),
        (read, _) => {
            let why = match read {
                Some(Err(e)) => format!(
                    "{} cannot be read now ({e})",
                    file.map_or_else(String::new, |f| f.display().to_string())
                ),
                _ => "no file is known".to_owned(),
            };
            tracing::warn!(workflow = %name, "workflow file for download: {why}");
            match serde_yaml_ng::to_string(&workflow.spec) {
                Ok(text) => (
                    format!("# {why}: this is workflow `{name}` as baton loaded it.\n{text}")
                        .into_bytes(),
                    format!("{name}.yaml"),
                ),
                Err(e) => {
                    return layout::error_page(
                        StatusCode::INTERNAL_SERVER_ERROR,
                        "Download failed",
                        &format!("Workflow `{name}` could not be written as YAML: {e}"),
                    );
                }
            }
        }
    };
    let mut response = bytes.into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/yaml; charset=utf-8"),
    );
    if let Ok(value) = HeaderValue::from_str(&format!("attachment; filename=\"{filename}\"")) {
        headers.insert(header::CONTENT_DISPOSITION, value);
    }
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

/// The name a download is saved under: the file's own name when it needs no quoting in a
/// header, else `<workflow>.yaml`.
fn attachment_name(file: &Path, workflow: &str) -> String {
    let own = file_name(file);
    let plain = !own.is_empty()
        && own
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
    if plain {
        own
    } else {
        format!("{workflow}.yaml")
    }
}

#[cfg(test)]
mod tests {
    use baton_core::StageDefaults;

    use super::*;

    #[test]
    fn the_inline_graph_has_no_declaration_and_no_style() {
        let spec: baton_core::WorkflowSpec = serde_json::from_value(serde_json::json!({
            "name": "ship",
            "on": [{"source": "manual"}],
            "stages": {
                "build": {"uses": "exec", "with": {"command": ["true"]}},
                "approve": {"uses": "approval", "needs": "build", "if": ".event.go"},
            },
        }))
        .unwrap();
        let workflow = Workflow::compile(spec, StageDefaults::default()).unwrap();
        let decisions = std::collections::BTreeSet::from(["approval".to_owned()]);
        let inline = picture(&workflow, &decisions);
        assert!(inline.starts_with("<svg "), "{inline}");
        assert!(inline.trim_end().ends_with("</svg>"));
        assert!(!inline.contains("<style") && !inline.contains(" style="));
        assert!(!inline.contains("<?xml"));
        // Everything else is kept: the stages, the edge, the legend.
        for kept in [
            "<defs>",
            "marker",
            "class=\"stage approval conditional\"",
            ">build<",
            "class=\"edge\"",
            "class=\"legend\"",
        ] {
            assert!(inline.contains(kept), "{kept} missing from {inline}");
        }
    }

    #[test]
    fn the_event_must_be_a_json_object_within_the_bound() {
        assert_eq!(parse_event("", 100).unwrap(), serde_json::json!({}));
        assert_eq!(parse_event("  \n", 100).unwrap(), serde_json::json!({}));
        assert_eq!(
            parse_event(r#"{"ref": "main"}"#, 100).unwrap(),
            serde_json::json!({"ref": "main"})
        );
        let (status, problem) = parse_event("{\"ref\": ", 100).unwrap_err();
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert!(problem.contains("not valid JSON"), "{problem}");
        let (status, problem) = parse_event("[1, 2]", 100).unwrap_err();
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert!(problem.contains("not an array"), "{problem}");
        let (status, problem) =
            parse_event(&format!("{{\"a\": \"{}\"}}", "x".repeat(100)), 100).unwrap_err();
        assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
        assert!(problem.contains("at most 100"), "{problem}");
    }

    #[test]
    fn downloads_keep_plain_file_names_only() {
        assert_eq!(
            attachment_name(Path::new("/etc/baton/wf/ship.yml"), "ship"),
            "ship.yml"
        );
        assert_eq!(
            attachment_name(Path::new("/etc/baton/wf/my \"ship\".yaml"), "ship"),
            "ship.yaml"
        );
        assert_eq!(attachment_name(Path::new("/"), "ship"), "ship.yaml");
    }

    #[test]
    fn triggers_read_as_source_event_and_condition() {
        let on: Vec<TriggerSpec> = serde_json::from_value(serde_json::json!([
            {"source": "github", "event": "push", "if": ".ref == \"refs/heads/<main>\""},
            {"source": "gitlab"},
            {"source": "manual"},
        ]))
        .unwrap();
        let text = triggers_summary(&on).into_string();
        assert!(text.contains("<strong>github</strong> · <code>push</code> · if <code>.ref == &quot;refs/heads/&lt;main&gt;&quot;</code>"), "{text}");
        assert!(
            text.contains("<strong>gitlab</strong> · <span class=\"muted\">any event</span>"),
            "{text}"
        );
        assert!(text.contains("<li><strong>manual</strong></li>"), "{text}");
    }
}
