//! The workflow editor: `/workflows/new` and `/workflows/{name}/edit`.
//!
//! Without JavaScript the page is a form around the workflow's YAML with "Validate" (the
//! page comes back with the problems), "Download" and, where the config allows, "Save".
//! `editor.js` adds the visual editor: triggers, stages with their adapter instance and
//! `with`, `needs` drawn on a canvas (or picked from a list), the YAML rebuilt by the server
//! as the person types (`POST /ui/editor/compose`) and checked (`POST /ui/editor/validate`,
//! the twin of `POST /api/v1/workflows/validate` with a session instead of a token).
//!
//! An existing file is edited in place ([`baton_config::compose`]): what the person did not
//! change keeps its comments and order. Saving writes the file the workflow came from (or a
//! new one where the `workflows` globs find it), whole or not at all; it takes effect when
//! `baton serve` next starts, since workflows are read at start.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use axum::Json;
use axum::Router;
use axum::extract::{Path as UrlPath, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use baton_config::{Problem, WorkflowDraft, compose, draft_of};
use maud::{Markup, html};
use serde::Deserialize;
use serde_json::json;
use sha2::{Digest, Sha256};

use crate::AppState;
use crate::api::{OPERATOR, VIEWER};
use crate::error::ApiError;
use crate::extract::{ApiJson, JsonBody};
use crate::workflows_api::{Editing, Validation, WorkflowBody, check};

use super::assets;
use super::form::Form;
use super::layout::{self, Nav};
use super::session::Session;

/// The header the editor's script sends the form token in.
const CSRF_HEADER: &str = "x-csrf-token";

/// The editor's routes.
pub(crate) fn routes() -> Router<Arc<AppState>> {
    Router::new()
        .route("/workflows/new", get(new_page).post(new_checked))
        .route("/workflows/{name}/edit", get(edit_page).post(edit_checked))
        .route("/ui/editor/validate", post(validate))
        .route("/ui/editor/compose", post(compose_draft))
        .route("/ui/editor/download", post(download))
        .route("/ui/editor/save", post(save))
}

/// The loaded workflow an edit starts from.
#[derive(Debug, Clone)]
struct Base {
    /// Its name.
    name: String,
    /// Its file.
    file: PathBuf,
    /// The file's text.
    text: String,
}

impl Base {
    /// The SHA-256 of the text, hex: a save refuses a file that no longer has it.
    fn digest(&self) -> String {
        digest(&self.text)
    }
}

fn digest(text: &str) -> String {
    hex::encode(Sha256::digest(text.as_bytes()))
}

/// Reads the file of the loaded workflow `name`.
async fn base(state: &AppState, name: &str) -> Result<Base, Response> {
    let Some((_, file)) = state.workflow_files.iter().find(|(n, _)| n == name) else {
        return Err(layout::error_page(
            StatusCode::NOT_FOUND,
            "No such workflow",
            &format!("This server loaded no workflow named `{name}`."),
        ));
    };
    match tokio::fs::read_to_string(file).await {
        Ok(text) => Ok(Base {
            name: name.to_owned(),
            file: file.clone(),
            text,
        }),
        Err(e) => Err(layout::error_page(
            StatusCode::INTERNAL_SERVER_ERROR,
            "Workflow file unreadable",
            &format!("{} cannot be read: {e}", file.display()),
        )),
    }
}

/// What the editor page shows.
struct Editor {
    /// The workflow being edited, if it is not new.
    base: Option<Base>,
    /// The YAML in the text area.
    yaml: String,
    /// The server's problems with it, once checked.
    problems: Option<Vec<Problem>>,
    /// A message above the editor.
    notice: Option<Markup>,
}

impl Editor {
    /// The page for `yaml`, not yet checked.
    fn new(base: Option<Base>, yaml: String) -> Self {
        Self {
            base,
            yaml,
            problems: None,
            notice: None,
        }
    }
}

/// The base named `name`, when one is named.
async fn base_named(state: &AppState, name: Option<&str>) -> Result<Option<Base>, Response> {
    match name.filter(|n| !n.is_empty()) {
        Some(name) => base(state, name).await.map(Some),
        None => Ok(None),
    }
}

/// `GET /workflows/new`.
async fn new_page(State(state): State<Arc<AppState>>, session: Session) -> Response {
    let draft = WorkflowDraft {
        on: vec![baton_config::DraftTrigger {
            source: "manual".into(),
            ..Default::default()
        }],
        ..WorkflowDraft::default()
    };
    let editor = Editor::new(None, compose(None, &draft).text);
    page(&state, &session, editor, StatusCode::OK)
}

/// `GET /workflows/{name}/edit`.
async fn edit_page(
    State(state): State<Arc<AppState>>,
    session: Session,
    UrlPath(name): UrlPath<String>,
) -> Response {
    let base = match base(&state, &name).await {
        Ok(base) => base,
        Err(response) => return response,
    };
    let editor = Editor::new(Some(base.clone()), base.text);
    page(&state, &session, editor, StatusCode::OK)
}

/// `POST /workflows/new`: "Validate" without the script.
async fn new_checked(
    State(state): State<Arc<AppState>>,
    session: Session,
    headers: HeaderMap,
    form: Form,
) -> Response {
    checked(&state, &session, &headers, &form, None).await
}

/// `POST /workflows/{name}/edit`: "Validate" without the script.
async fn edit_checked(
    State(state): State<Arc<AppState>>,
    session: Session,
    headers: HeaderMap,
    UrlPath(name): UrlPath<String>,
    form: Form,
) -> Response {
    checked(&state, &session, &headers, &form, Some(&name)).await
}

async fn checked(
    state: &AppState,
    session: &Session,
    headers: &HeaderMap,
    form: &Form,
    name: Option<&str>,
) -> Response {
    if let Err(refusal) = session.check_action(headers, form.get("csrf"), VIEWER) {
        return refusal.into_response();
    }
    let base = match base_named(state, name).await {
        Ok(base) => base,
        Err(response) => return response,
    };
    let yaml = match yaml_of(form, base.as_ref()) {
        Ok(yaml) => yaml,
        Err(response) => return *response,
    };
    let validation = check(state, &WorkflowBody::Yaml(yaml.clone()), name);
    let editor = Editor {
        problems: Some(validation.problems),
        ..Editor::new(base, yaml)
    };
    page(state, session, editor, StatusCode::OK)
}

/// The workflow a form sends: the editor's draft (`draft`, JSON) written into the base's
/// file, or else the text of `yaml`; a page that says so when the draft cannot be read.
fn yaml_of(form: &Form, base: Option<&Base>) -> Result<String, Box<Response>> {
    match form.get("draft").filter(|d| !d.trim().is_empty()) {
        Some(draft) => match serde_json::from_str::<WorkflowDraft>(draft) {
            Ok(draft) => Ok(compose(base.map(|b| b.text.as_str()), &draft).text),
            Err(e) => Err(Box::new(layout::error_page(
                StatusCode::BAD_REQUEST,
                "Editor state unreadable",
                &format!("The editor sent a workflow that cannot be read ({e}). Reload the page."),
            ))),
        },
        None => Ok(form.get("yaml").unwrap_or_default().to_owned()),
    }
}

/// `POST /ui/editor/validate[?editing=NAME]`: the validation API for the page's script,
/// with the session and the form token in `X-CSRF-Token`.
async fn validate(
    State(state): State<Arc<AppState>>,
    session: Session,
    headers: HeaderMap,
    Query(q): Query<Editing>,
    body: WorkflowBody,
) -> Response {
    if let Err(refusal) = session.check_action(&headers, csrf_header(&headers), VIEWER) {
        return refusal.into_response();
    }
    Json::<Validation>(check(&state, &body, q.editing.as_deref())).into_response()
}

fn csrf_header(headers: &HeaderMap) -> Option<&str> {
    headers.get(CSRF_HEADER).and_then(|v| v.to_str().ok())
}

/// The body of `POST /ui/editor/compose`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ComposeRequest {
    /// The editor's workflow.
    draft: WorkflowDraft,
    /// The loaded workflow it edits, if any.
    #[serde(default)]
    base: Option<String>,
}

impl JsonBody for ComposeRequest {
    const EXPECTED: &'static str = r#"{"draft": {"name", "on", "stages"}, "base": "<workflow>"}"#;
}

/// `POST /ui/editor/compose`: the YAML of the editor's draft, written into the base's file
/// when it edits one; `comments_kept` is false when the file had to be written out whole.
async fn compose_draft(
    State(state): State<Arc<AppState>>,
    session: Session,
    headers: HeaderMap,
    body: Result<ApiJson<ComposeRequest>, ApiError>,
) -> Response {
    if let Err(refusal) = session.check_action(&headers, csrf_header(&headers), VIEWER) {
        return refusal.into_response();
    }
    let request = match body {
        Ok(ApiJson(Some(request))) => request,
        Ok(ApiJson(None)) => {
            return ApiError::bad_request(format!("expected {}", ComposeRequest::EXPECTED))
                .into_response();
        }
        Err(e) => return e.into_response(),
    };
    let base = match base_named(&state, request.base.as_deref()).await {
        Ok(base) => base,
        Err(response) => return response,
    };
    let composed = compose(base.as_ref().map(|b| b.text.as_str()), &request.draft);
    Json(json!({"yaml": composed.text, "comments_kept": composed.comments_kept})).into_response()
}

/// `POST /ui/editor/download`: the workflow as a file, `<name>.yaml`.
async fn download(
    State(state): State<Arc<AppState>>,
    session: Session,
    headers: HeaderMap,
    form: Form,
) -> Response {
    if let Err(refusal) = session.check_action(&headers, form.get("csrf"), VIEWER) {
        return refusal.into_response();
    }
    let base = match base_named(&state, form.get("base")).await {
        Ok(base) => base,
        Err(response) => return response,
    };
    let yaml = match yaml_of(&form, base.as_ref()) {
        Ok(yaml) => yaml,
        Err(response) => return *response,
    };
    let name = workflow_name(&yaml)
        .or_else(|| base.as_ref().map(|b| b.name.clone()))
        .unwrap_or_else(|| "workflow".to_owned());
    let mut response = yaml.into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/yaml; charset=utf-8"),
    );
    if let Ok(value) = HeaderValue::from_str(&format!("attachment; filename=\"{name}.yaml\"")) {
        headers.insert(header::CONTENT_DISPOSITION, value);
    }
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

/// The `name` of a workflow's YAML when it is one a file may be called by: letters,
/// digits, `_`, `-` and `.`, not starting with `.`.
fn workflow_name(yaml: &str) -> Option<String> {
    let name = draft_of(yaml).ok()?.name;
    let fits = !name.is_empty()
        && !name.starts_with('.')
        && name.len() <= 100
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'));
    fits.then_some(name)
}

/// `POST /ui/editor/save`: writes the workflow into its file (operators, when
/// `[ui] save_workflows` is on).
async fn save(
    State(state): State<Arc<AppState>>,
    session: Session,
    headers: HeaderMap,
    form: Form,
) -> Response {
    if let Err(refusal) = session.check_action(&headers, form.get("csrf"), OPERATOR) {
        return refusal.into_response();
    }
    if !state.save_workflows {
        return layout::error_page(
            StatusCode::FORBIDDEN,
            "Saving is off",
            "This server's config does not let the editor save workflows (`[ui] save_workflows = true` would). Download the file instead.",
        );
    }
    let base = match base_named(&state, form.get("base")).await {
        Ok(base) => base,
        Err(response) => return response,
    };
    let yaml = match yaml_of(&form, base.as_ref()) {
        Ok(yaml) => yaml,
        Err(response) => return *response,
    };
    let editing = base.as_ref().map(|b| b.name.as_str());
    let validation = check(&state, &WorkflowBody::Yaml(yaml.clone()), editing);
    if !validation.valid {
        let editor = Editor {
            problems: Some(validation.problems),
            notice: Some(html! {
                p.notice.error role="alert" { "Not saved: the workflow has problems." }
            }),
            ..Editor::new(base, yaml)
        };
        return page(&state, &session, editor, StatusCode::UNPROCESSABLE_ENTITY);
    }
    let written = match &base {
        Some(base) => {
            if form.get("base_digest") != Some(base.digest().as_str()) {
                return layout::error_page(
                    StatusCode::CONFLICT,
                    "File changed",
                    &format!(
                        "{} changed since the editor opened it. Reload the editor to start from the file as it is now.",
                        base.file.display()
                    ),
                );
            }
            if !state.workflow_globs.finds(&base.file) {
                return layout::error_page(
                    StatusCode::FORBIDDEN,
                    "Not a workflow file",
                    &format!(
                        "{} was not found by the config's `workflows` globs; only such files are saved.",
                        base.file.display()
                    ),
                );
            }
            replace_file(&base.file, &yaml).map(|()| base.file.clone())
        }
        None => {
            let Some(name) = workflow_name(&yaml) else {
                return layout::error_page(
                    StatusCode::BAD_REQUEST,
                    "No file name",
                    "The workflow's name cannot name a file: use letters, digits, `_`, `-` and `.`, not starting with `.`.",
                );
            };
            let Some(file) = state.workflow_globs.new_file(&name) else {
                return layout::error_page(
                    StatusCode::CONFLICT,
                    "Nowhere to save",
                    "The config's `workflows` globs would not find a new file for this workflow. Download it and place it yourself.",
                );
            };
            create_file(&file, &yaml).map(|()| file)
        }
    };
    match written {
        Ok(file) => {
            tracing::info!(by = %session.name, file = %file.display(), "workflow saved from the editor");
            saved_page(&session, &file)
        }
        Err(SaveError::Exists(file)) => layout::error_page(
            StatusCode::CONFLICT,
            "File exists",
            &format!(
                "{} already exists and was left as it is. Edit that workflow instead, or choose another name.",
                file.display()
            ),
        ),
        Err(SaveError::Io(file, e)) => layout::error_page(
            StatusCode::INTERNAL_SERVER_ERROR,
            "Not saved",
            &format!("{} could not be written: {e}", file.display()),
        ),
    }
}

/// Why a save failed.
#[derive(Debug)]
enum SaveError {
    /// A new workflow's file is already there.
    Exists(PathBuf),
    /// Writing failed.
    Io(PathBuf, std::io::Error),
}

/// Writes `text` to a new temporary file beside `file`; its path.
fn temporary_beside(file: &Path, text: &str) -> Result<PathBuf, SaveError> {
    let io = |e| SaveError::Io(file.to_path_buf(), e);
    let folder = file.parent().unwrap_or(Path::new("."));
    let name = file
        .file_name()
        .map_or_else(|| "workflow".into(), |n| n.to_string_lossy().into_owned());
    let temporary = folder.join(format!(".{name}.{}.tmp", uuid::Uuid::new_v4().simple()));
    let mut out = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&temporary)
        .map_err(io)?;
    let written = out.write_all(text.as_bytes()).and_then(|()| out.sync_all());
    if let Err(e) = written {
        let _ = std::fs::remove_file(&temporary);
        return Err(io(e));
    }
    Ok(temporary)
}

/// Replaces `file` with `text` in one step: a reader sees the old file or the new one.
fn replace_file(file: &Path, text: &str) -> Result<(), SaveError> {
    let temporary = temporary_beside(file, text)?;
    std::fs::rename(&temporary, file).map_err(|e| {
        let _ = std::fs::remove_file(&temporary);
        SaveError::Io(file.to_path_buf(), e)
    })
}

/// Creates `file` holding `text` in one step, never replacing a file already there.
fn create_file(file: &Path, text: &str) -> Result<(), SaveError> {
    let temporary = temporary_beside(file, text)?;
    // A hard link fails when the name is taken, where a rename would replace it.
    let linked = std::fs::hard_link(&temporary, file);
    let _ = std::fs::remove_file(&temporary);
    match linked {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            Err(SaveError::Exists(file.to_path_buf()))
        }
        Err(e) => Err(SaveError::Io(file.to_path_buf(), e)),
    }
}

fn saved_page(session: &Session, file: &Path) -> Response {
    let body = html! {
        section.notice role="status" id="saved" {
            h1 { "Workflow saved" }
            p { "Written to " code { (file.display()) } "." }
            p { (RESTART_NOTE) }
            p { a href="/workflows" { "Back to workflows" } }
        }
    };
    layout::page("Workflow saved", Some(session), Nav::Workflows, body)
}

/// When a saved workflow takes effect.
const RESTART_NOTE: &str = "baton serve reads workflows when it starts: a saved workflow takes effect when the server restarts.";

/// The editor page.
fn page(state: &AppState, session: &Session, editor: Editor, status: StatusCode) -> Response {
    let base_name = editor.base.as_ref().map(|b| b.name.clone());
    let action = match &base_name {
        Some(name) => format!("/workflows/{name}/edit"),
        None => "/workflows/new".to_owned(),
    };
    let draft = draft_of(&editor.yaml);
    let may_save = state.save_workflows && session.may(OPERATOR);
    let instances: Vec<_> = state
        .instances
        .iter()
        .map(|(name, kind)| json!({"name": name, "kind": kind}))
        .collect();
    let mut sources: Vec<&str> = state.sources.keys().map(String::as_str).collect();
    sources.sort_unstable();
    let title = match &base_name {
        Some(name) => format!("Edit {name}"),
        None => "New workflow".to_owned(),
    };
    let body = html! {
        h1 {
            @if let Some(name) = &base_name {
                "Edit workflow " code { (name) }
            } @else {
                "New workflow"
            }
        }
        p.muted {
            "Checked against this server's config as " code { "baton validate" } " checks a workflow file. "
            (RESTART_NOTE)
        }
        @if let Some(notice) = &editor.notice { (notice) }
        @if let Some(base) = &editor.base {
            p.muted { "File: " code { (base.file.display()) } }
        }
        @match &draft {
            Ok(draft) => {
                div #visual-editor .visual-editor hidden
                    data-draft=(serde_json::to_string(draft).unwrap_or_default())
                    data-instances=(serde_json::Value::Array(instances).to_string())
                    data-sources=(serde_json::to_string(&sources).unwrap_or_default())
                    data-base=(base_name.as_deref().unwrap_or_default()) {}
            }
            Err(e) => {
                p.notice #visual-editor-off { (e.to_string()) }
            }
        }
        form #workflow-form .workflow-form method="post" action=(action) {
            input type="hidden" name="csrf" value=(session.csrf);
            input #workflow-draft type="hidden" name="draft" value="";
            @if let Some(base) = &editor.base {
                input type="hidden" name="base" value=(base.name);
                input type="hidden" name="base_digest" value=(base.digest());
            }
            label for="workflow-yaml" { "Workflow YAML" }
            textarea #workflow-yaml name="yaml" rows="24" spellcheck="false" autocapitalize="off"
                aria-describedby="workflow-problems" { (editor.yaml) }
            div.buttons {
                button #validate-button type="submit" aria-label="Validate the workflow" { "Validate" }
                button #download-button type="submit" formaction="/ui/editor/download"
                    aria-label="Download the workflow as a YAML file" { "Download" }
                @if may_save {
                    button #save-button .primary type="submit" formaction="/ui/editor/save"
                        aria-label="Save the workflow to its file" { "Save" }
                }
            }
            @if !may_save {
                p.muted #save-off {
                    @if !state.save_workflows {
                        "Saving is off in this server's config (" code { "[ui] save_workflows" } "): download the file instead."
                    } @else {
                        "Saving needs the operator role; yours is " (session.role_name()) "."
                    }
                }
            }
        }
        section #workflow-problems .problems aria-live="polite" aria-label="Problems" {
            @if let Some(problems) = &editor.problems {
                (problem_list(problems))
            }
        }
        script src=(assets::url("editor.js")) defer {}
    };
    let mut response = layout::page(&title, Some(session), Nav::Workflows, body);
    *response.status_mut() = status;
    response
}

fn problem_list(problems: &[Problem]) -> Markup {
    html! {
        @if problems.is_empty() {
            p.valid role="status" { span aria-hidden="true" { "✓ " } "No problems: the workflow is valid." }
        } @else {
            h2 { (problems.len()) @if problems.len() == 1 { " problem" } @else { " problems" } }
            ul {
                @for problem in problems {
                    li {
                        span.icon aria-hidden="true" { "✗ " }
                        @if !problem.path.is_empty() { code { (problem.path) } ": " }
                        (problem.message)
                        @if let Some(line) = problem.line { span.muted { " (line " (line) ")" } }
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn download_names_come_from_names_a_file_may_have() {
        assert_eq!(
            workflow_name("name: shop-1.2_x\n").as_deref(),
            Some("shop-1.2_x")
        );
        for bad in [
            "name: ../etc\n",
            "name: 'a\"b'\n",
            "name: .hidden\n",
            "name: ''\n",
            "name: [a]\n",
            "stages: {}\n",
            "not: [yaml\n",
        ] {
            assert_eq!(workflow_name(bad), None, "{bad}");
        }
    }

    #[test]
    fn a_new_file_is_never_written_over_and_a_replaced_one_is_whole() {
        let dir = std::env::temp_dir().join(format!("baton-editor-save-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("w.yaml");
        create_file(&file, "name: one\n").unwrap();
        assert_eq!(std::fs::read_to_string(&file).unwrap(), "name: one\n");
        assert!(matches!(
            create_file(&file, "name: two\n"),
            Err(SaveError::Exists(_))
        ));
        assert_eq!(std::fs::read_to_string(&file).unwrap(), "name: one\n");
        replace_file(&file, "name: three\n").unwrap();
        assert_eq!(std::fs::read_to_string(&file).unwrap(), "name: three\n");
        let left: Vec<_> = std::fs::read_dir(&dir).unwrap().collect();
        assert_eq!(left.len(), 1, "no temporary file stays behind");
        assert!(matches!(
            replace_file(&dir.join("missing/w.yaml"), "x"),
            Err(SaveError::Io(..))
        ));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn problems_are_listed_with_their_path_and_line_and_escaped() {
        let markup = problem_list(&[Problem {
            path: "stages.a.with".into(),
            message: "<script>".into(),
            line: Some(7),
        }])
        .into_string();
        assert!(markup.contains("<code>stages.a.with</code>"), "{markup}");
        assert!(markup.contains("&lt;script&gt;"), "{markup}");
        assert!(markup.contains("(line 7)"), "{markup}");
        assert!(problem_list(&[]).into_string().contains("valid"));
    }
}
