//! The instance block (`[adapters.<name>]`) and the stage's `with:` block, checked in one
//! pass that reports every problem with its key path.

use std::time::Duration;

use baton_core::secret::deserialize_optional_reference;
use baton_core::typed::{
    checked, duration_or_default, is_relative_file_path, poll_range, reported, text_entries,
};
use baton_core::{FieldError, HumanDuration, SecretRef, read_table};
use reqwest::Url;
use serde::Deserialize;
use serde_json::{Map, Value};

/// The pipeline variable baton sets to the attempt key, so that `find` can tell this
/// attempt's pipeline from every other.
pub const ATTEMPT_VARIABLE: &str = "BATON_ATTEMPT";

/// The default `poll_initial`.
pub const DEFAULT_POLL_INITIAL: Duration = Duration::from_secs(5);
/// The default `poll_max`.
pub const DEFAULT_POLL_MAX: Duration = Duration::from_secs(30);
/// The default `request_timeout`.
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// The longest `poll_initial` and `poll_max`, and the longest `request_timeout`.
pub use baton_core::typed::{LONGEST_POLL, LONGEST_REQUEST};

/// The instance block as written in `[adapters.<name>]` with `kind = "gitlab-ci"`, before
/// the checks serde cannot make ([`parse_instance`] makes them).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InstanceKeys {
    /// GitLab's root URL, `http://` or `https://` (`https://gitlab.example.com`, with its
    /// path prefix if it has one); the API is below it at `/api/v4`. No credentials, query
    /// or fragment. Required.
    pub url: String,
    /// The project: its path (`group/sub/app`) or its numeric id. Required.
    pub project: String,
    /// A secret reference to a token (personal, project or group access token) with the
    /// `api` scope (`read_api` is enough for all but creating and cancelling), sent as
    /// `PRIVATE-TOKEN`. Required: it reads pipelines even when `trigger_token` starts them.
    #[serde(default, deserialize_with = "deserialize_optional_reference")]
    pub token: Option<SecretRef>,
    /// A secret reference to a pipeline trigger token: pipelines are then created through
    /// the trigger endpoint with it. Default: none (the pipeline API with `token`).
    #[serde(default, deserialize_with = "deserialize_optional_reference")]
    pub trigger_token: Option<SecretRef>,
    /// The first poll hint; over 0 s, at most 1 h. Default: `5s`.
    #[serde(default)]
    pub poll_initial: Option<HumanDuration>,
    /// The longest poll hint; over 0 s, at most 1 h, not shorter than `poll_initial`.
    /// Default: `30s`.
    #[serde(default)]
    pub poll_max: Option<HumanDuration>,
    /// The bound on one HTTP request; over 0 s, at most 5 m. Default: `30s`.
    #[serde(default)]
    pub request_timeout: Option<HumanDuration>,
}

/// A checked instance block.
#[derive(Debug, Clone, PartialEq)]
pub struct InstanceConfig {
    /// The API root, `<url>/api/v4/`, always ending in `/`.
    pub api: Url,
    /// The project as written (a path or an id).
    pub project: String,
    /// The API token.
    pub token: SecretRef,
    /// The trigger token, if pipelines are started with one.
    pub trigger_token: Option<SecretRef>,
    /// The first poll hint.
    pub poll_initial: Duration,
    /// The longest poll hint.
    pub poll_max: Duration,
    /// The bound on one HTTP request.
    pub request_timeout: Duration,
}

/// Checks an instance block, returning the config or every problem.
pub fn parse_instance(config: &Value) -> Result<InstanceConfig, Vec<FieldError>> {
    read_table::<InstanceKeys>(config).check(config, check_instance)
}

fn check_instance(keys: InstanceKeys, errors: &mut Vec<FieldError>) -> Option<InstanceConfig> {
    let has_trigger = keys.trigger_token.is_some() || reported(errors, "trigger_token");
    if keys.token.is_none() && !reported(errors, "token") {
        errors.push(FieldError::new(
            "token",
            if has_trigger {
                // python-gitlab#1021: reading with a trigger token answers 404.
                "missing: a trigger token can create pipelines but not read them (GitLab answers `404 Project Not Found`), so baton also needs `token`, an access token with the `read_api` scope"
            } else {
                "missing: an access token with the `api` scope, as a secret reference (`token = { env = \"GITLAB_TOKEN\" }`)"
            },
        ));
    }
    let api = checked("url", parse_api_root(&keys.url), errors);
    let project = keys.project.trim().trim_matches('/').to_owned();
    if project.is_empty() || project.split('/').any(|part| part.trim().is_empty()) {
        errors.push(FieldError::new(
            "project",
            "expected the project's path (`group/sub/app`) or its numeric id",
        ));
    }
    let (poll_initial, poll_max) = poll_range(
        keys.poll_initial,
        keys.poll_max,
        (DEFAULT_POLL_INITIAL, DEFAULT_POLL_MAX),
        LONGEST_POLL,
        errors,
    );
    let request_timeout = duration_or_default(
        "request_timeout",
        keys.request_timeout,
        DEFAULT_REQUEST_TIMEOUT,
        LONGEST_REQUEST,
        errors,
    );
    Some(InstanceConfig {
        api: api?,
        project,
        token: keys.token?,
        trigger_token: keys.trigger_token,
        poll_initial,
        poll_max,
        request_timeout,
    })
}

fn parse_api_root(text: &str) -> Result<Url, String> {
    let mut url = Url::parse(text.trim()).map_err(|e| {
        format!("`{text}` is not a URL ({e}): expected GitLab's root, such as `https://gitlab.example.com`")
    })?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(format!("`{text}` is not an http:// or https:// URL"));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(format!("`{text}` has no host"));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err("credentials do not belong in the URL: give `token` instead".to_owned());
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err(format!(
            "`{text}` has a query or fragment: give GitLab's root URL only"
        ));
    }
    let root = url.path().trim_end_matches('/');
    if root.ends_with("/api/v4") {
        return Err(format!(
            "`{text}` is the API's URL: give GitLab's root (without `/api/v4`), as people open it"
        ));
    }
    let path = format!("{root}/api/v4/");
    url.set_path(&path);
    Ok(url)
}

/// Whether template strings may stand where another type is expected.
pub use baton_core::adapter::InputMode as Mode;

/// A checked `with:` block.
#[derive(Debug, Clone, PartialEq)]
pub struct StageSpec {
    /// The branch or tag the pipeline runs for.
    pub git_ref: String,
    /// Pipeline variables, in the order written, values as text.
    pub variables: Vec<(String, String)>,
    /// Pipeline inputs (`spec:inputs`), as given.
    pub inputs: Map<String, Value>,
    /// A file in a job's artifacts whose `KEY=value` lines become outputs.
    pub dotenv_artifact: Option<String>,
}

/// The keys a stage takes, for messages.
const STAGE_KEYS: &str = "ref, variables, inputs, dotenv_artifact";

/// Checks a `with:` block, returning the spec or every problem.
///
/// In [`Mode::Templates`] the spec may hold placeholders where templates stand; only the
/// errors are meant to be used.
pub fn parse_stage(with: &Value, mode: Mode) -> Result<StageSpec, Vec<FieldError>> {
    let Value::Object(map) = with else {
        return Err(vec![FieldError::new(
            "ref",
            format!(
                "missing: expected a table with `ref` (a branch or tag) and optional {STAGE_KEYS}"
            ),
        )]);
    };
    let mut errors = Vec::new();
    for key in map.keys() {
        if !STAGE_KEYS.split(", ").any(|k| k == key) {
            errors.push(FieldError::new(
                key,
                baton_core::typed::unknown_key(key, &STAGE_KEYS.split(", ").collect::<Vec<_>>()),
            ));
        }
    }
    let git_ref = match map.get("ref") {
        Some(Value::String(text)) if !text.trim().is_empty() => Some(text.clone()),
        None => {
            errors.push(FieldError::new(
                "ref",
                "missing: the branch or tag to run the pipeline for, such as `main`",
            ));
            None
        }
        Some(_) => {
            errors.push(FieldError::new(
                "ref",
                "expected a branch or tag name (a non-empty string)",
            ));
            None
        }
    };
    let variables = match map.get("variables") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::String(text)) if mode.is_template(text) => Vec::new(),
        Some(Value::Object(vars)) => parse_variables(vars, mode, &mut errors),
        Some(_) => {
            errors.push(FieldError::new(
                "variables",
                "expected a table of variable names and values (strings, numbers or booleans)",
            ));
            Vec::new()
        }
    };
    let inputs = match map.get("inputs") {
        None | Some(Value::Null) => Map::new(),
        Some(Value::String(text)) if mode.is_template(text) => Map::new(),
        Some(Value::Object(inputs)) => inputs.clone(),
        Some(_) => {
            errors.push(FieldError::new(
                "inputs",
                "expected a table of the pipeline's `spec:inputs` names and values",
            ));
            Map::new()
        }
    };
    let dotenv_artifact = match map.get("dotenv_artifact") {
        None | Some(Value::Null) => None,
        Some(Value::String(text)) if mode.is_template(text) => Some(text.clone()),
        Some(Value::String(path)) if is_artifact_path(path) => Some(path.clone()),
        Some(_) => {
            errors.push(FieldError::new(
                "dotenv_artifact",
                "expected a file's path inside a job's artifacts, such as `build.env` or `out/vars.env` (no `..`, no leading `/`)",
            ));
            None
        }
    };
    match git_ref {
        Some(git_ref) if errors.is_empty() => Ok(StageSpec {
            git_ref,
            variables,
            inputs,
            dotenv_artifact,
        }),
        _ => Err(errors),
    }
}

fn is_artifact_path(path: &str) -> bool {
    !path.contains(['\0', '\\', '?', '#']) && is_relative_file_path(path)
}

/// GitLab takes variable keys of letters, digits and `_` only
/// (doc/ci/variables/_index.md in gitlabhq/gitlabhq: "Only letters, digits and `_`").
fn is_variable_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 255
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

fn parse_variables(
    vars: &Map<String, Value>,
    mode: Mode,
    errors: &mut Vec<FieldError>,
) -> Vec<(String, String)> {
    let name_problem = |name: &str| {
        if name == ATTEMPT_VARIABLE {
            Some("baton sets BATON_ATTEMPT itself (to the attempt key); remove it here")
        } else if !is_variable_name(name) && !mode.is_template(name) {
            Some("a GitLab variable name has letters, digits and `_` only")
        } else {
            None
        }
    };
    text_entries(
        "variables",
        vars,
        name_problem,
        "expected a string, number or boolean: pipeline variables are text",
        errors,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn paths(errors: &[FieldError]) -> Vec<&str> {
        errors.iter().map(|e| e.path.as_str()).collect()
    }

    #[test]
    fn instance_defaults_and_api_root() {
        let c = parse_instance(&json!({
            "url": "https://gitlab.example.com/",
            "project": "group/sub/app",
            "token": {"env": "GITLAB_TOKEN"},
        }))
        .unwrap();
        assert_eq!(c.api.as_str(), "https://gitlab.example.com/api/v4/");
        assert_eq!(c.project, "group/sub/app");
        assert_eq!(c.trigger_token, None);
        assert_eq!(
            (c.poll_initial, c.poll_max, c.request_timeout),
            (
                DEFAULT_POLL_INITIAL,
                DEFAULT_POLL_MAX,
                DEFAULT_REQUEST_TIMEOUT
            )
        );
        let c = parse_instance(&json!({
            "url": "http://127.0.0.1:8080/gitlab", "project": "42",
            "token": {"file": "/run/t"}, "trigger_token": {"env": "T"},
            "poll_initial": "1s", "poll_max": "2s", "request_timeout": "3s",
        }))
        .unwrap();
        assert_eq!(c.api.as_str(), "http://127.0.0.1:8080/gitlab/api/v4/");
        assert_eq!(c.trigger_token, Some(SecretRef::Env("T".into())));
        assert_eq!(c.poll_max, Duration::from_secs(2));
    }

    #[test]
    fn instance_reports_every_problem() {
        let errors = parse_instance(&json!({
            "url": "https://gitlab.example.com/api/v4",
            "project": "group//app",
            "token": "glpat-literal",
            "trigger_token": 3,
            "poll_initial": "10s",
            "poll_max": "5s",
            "request_timeout": "1h",
            "colour": "red",
        }))
        .unwrap_err();
        assert_eq!(
            paths(&errors),
            [
                "url",
                "project",
                "token",
                "trigger_token",
                "poll_max",
                "request_timeout",
                "colour"
            ]
        );
        assert!(errors[2].message.contains("literal secret"), "{errors:?}");
        let alone = parse_instance(&json!({
            "url": "https://gitlab.example.com", "project": "g/a", "trigger_token": {"env": "T"},
        }))
        .unwrap_err();
        assert_eq!(paths(&alone), ["token"]);
        assert!(
            alone[0].message.contains("404 Project Not Found"),
            "{alone:?}"
        );
        assert_eq!(paths(&parse_instance(&json!([])).unwrap_err()), [""]);
    }

    #[test]
    fn stage_forms() {
        let s = parse_stage(
            &json!({"ref": "main", "variables": {"IMAGE_TAG": "v1", "N": 3, "DRY": false},
                    "inputs": {"env": "prod", "replicas": 2}, "dotenv_artifact": "out/build.env"}),
            Mode::Rendered,
        )
        .unwrap();
        assert_eq!(s.git_ref, "main");
        assert_eq!(
            s.variables,
            [
                ("IMAGE_TAG".to_owned(), "v1".to_owned()),
                ("N".to_owned(), "3".to_owned()),
                ("DRY".to_owned(), "false".to_owned())
            ]
        );
        assert_eq!(s.inputs["replicas"], json!(2));
        assert_eq!(s.dotenv_artifact.as_deref(), Some("out/build.env"));
        assert!(
            parse_stage(
                &json!({"ref": "${{ .event.ref }}", "variables": "${{ .x }}", "inputs": "${{ .y }}"}),
                Mode::Templates
            )
            .is_ok()
        );
    }

    #[test]
    fn stage_reports_every_problem() {
        let errors = parse_stage(
            &json!({"reff": "main", "variables": {"BATON_ATTEMPT": "k", "bad-name": "x", "L": [1]},
                    "inputs": [1], "dotenv_artifact": "../etc/passwd"}),
            Mode::Templates,
        )
        .unwrap_err();
        assert_eq!(
            paths(&errors),
            [
                "reff",
                "ref",
                "variables.BATON_ATTEMPT",
                "variables.bad-name",
                "variables.L",
                "inputs",
                "dotenv_artifact"
            ]
        );
        assert_eq!(
            paths(
                &parse_stage(
                    &json!({"ref": "main", "variables": "${{ .x }}"}),
                    Mode::Rendered
                )
                .unwrap_err()
            ),
            ["variables"]
        );
        assert_eq!(
            paths(&parse_stage(&json!("main"), Mode::Rendered).unwrap_err()),
            ["ref"]
        );
    }

    #[test]
    fn the_docs_table_lists_every_instance_key() {
        let doc = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../docs/adapters/gitlab-ci.md");
        baton_adapter_kit::docs::check_doc_keys::<InstanceKeys>(&doc, "Instance config");
    }
}
