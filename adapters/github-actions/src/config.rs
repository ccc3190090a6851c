//! The instance block (`[adapters.<name>]`) and the stage's `with:` block, checked in one
//! pass that reports every problem with its key path.

use std::time::Duration;

use baton_core::secret::{deserialize_optional_reference, deserialize_reference};
use baton_core::typed::{
    checked, duration_or_default, poll_range, reported, text_entries, unknown_stage_keys,
};
use baton_core::{FieldError, HumanDuration, SecretRef, read_table};
use reqwest::Url;
use serde::Deserialize;
use serde_json::{Map, Value};

/// Whether template strings may stand where another type is expected.
pub use baton_core::adapter::InputMode as Mode;

/// The most inputs a `workflow_dispatch` takes (GitHub raised it from 10 to 25 in
/// December 2025: <https://github.blog/changelog/2025-12-04-actions-workflow-dispatch-workflows-now-support-25-inputs/>,
/// cited in rhysd/actionlint#598).
pub const MAX_INPUTS: usize = 25;

/// The default `url`.
pub const DEFAULT_URL: &str = "https://api.github.com";
/// The default `poll_initial`.
pub const DEFAULT_POLL_INITIAL: Duration = Duration::from_secs(10);
/// The default `poll_max`.
pub const DEFAULT_POLL_MAX: Duration = Duration::from_secs(30);
/// The default `request_timeout`.
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// The default `stop_grace`.
pub const DEFAULT_STOP_GRACE: Duration = Duration::from_secs(60);
/// The longest `poll_max` (and `stop_grace`), and the longest `request_timeout`.
pub use baton_core::typed::{LONGEST_POLL, LONGEST_REQUEST};

/// How baton authenticates to GitHub.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Credentials<S> {
    /// A token (fine-grained or classic PAT, or any bearer token).
    Token(S),
    /// A GitHub App installation: a JWT signed with `key` buys installation tokens.
    App {
        /// The App's id.
        id: u64,
        /// The installation's id.
        installation: u64,
        /// The App's private key (PEM).
        key: S,
    },
}

/// A checked instance block.
#[derive(Debug, Clone, PartialEq)]
pub struct InstanceConfig {
    /// The REST API's root, ending in `/`.
    pub url: Url,
    /// The repository's owner.
    pub owner: String,
    /// The repository's name.
    pub repo: String,
    /// How to authenticate.
    pub credentials: Credentials<SecretRef>,
    /// The input that carries the attempt key, when the workflows declare one.
    pub correlation_input: Option<String>,
    /// The first poll hint.
    pub poll_initial: Duration,
    /// The longest poll hint.
    pub poll_max: Duration,
    /// The bound on one HTTP request.
    pub request_timeout: Duration,
    /// How long a cancelled run has before `force-cancel`.
    pub stop_grace: Duration,
}

/// `app = { id, installation, key }`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AppKeys {
    /// The App's numeric id.
    pub id: u64,
    /// The installation's numeric id (in the installation's settings URL).
    pub installation: u64,
    /// A secret reference to the App's private key, PEM.
    #[serde(deserialize_with = "deserialize_reference")]
    pub key: SecretRef,
}

/// The instance block as written in `[adapters.<name>]` with `kind = "github-actions"`,
/// before the checks serde cannot make ([`parse_instance`] makes them).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InstanceKeys {
    /// The REST API's root: `https://api.github.com`, or `https://<host>/api/v3` on GitHub
    /// Enterprise Server. Default: `https://api.github.com`.
    #[serde(default)]
    pub url: Option<String>,
    /// The repository, `owner/name`. Required.
    pub repo: String,
    /// A secret reference to a token with Actions read and write. Give it or `app`.
    #[serde(default, deserialize_with = "deserialize_optional_reference")]
    pub token: Option<SecretRef>,
    /// A GitHub App installation instead of `token`: `{ id, installation, key = { file } }`.
    #[serde(default)]
    pub app: Option<AppKeys>,
    /// A `workflow_dispatch` input every dispatch fills with the attempt key, shown by the
    /// workflow in its `run-name`; lets baton find a run a 204 did not name. Default: none.
    #[serde(default)]
    pub correlation_input: Option<String>,
    /// The first poll hint; over 0 s, at most 1 h. Default: `10s`.
    #[serde(default)]
    pub poll_initial: Option<HumanDuration>,
    /// The longest poll hint; over 0 s, at most 1 h, not shorter than `poll_initial`.
    /// Default: `30s`.
    #[serde(default)]
    pub poll_max: Option<HumanDuration>,
    /// The bound on one HTTP request; over 0 s, at most 5 m. Default: `30s`.
    #[serde(default)]
    pub request_timeout: Option<HumanDuration>,
    /// How long a cancelled run has to end before `force-cancel`; over 0 s, at most 1 h.
    /// Default: `60s`.
    #[serde(default)]
    pub stop_grace: Option<HumanDuration>,
}

/// Checks an instance block, returning the config or every problem.
pub fn parse_instance(config: &Value) -> Result<InstanceConfig, Vec<FieldError>> {
    read_table::<InstanceKeys>(config).check(config, check_instance)
}

fn check_instance(keys: InstanceKeys, errors: &mut Vec<FieldError>) -> Option<InstanceConfig> {
    let has_token = keys.token.is_some() || reported(errors, "token");
    let has_app = keys.app.is_some() || errors.iter().any(|e| e.path.starts_with("app"));
    let url = checked(
        "url",
        parse_api_url(keys.url.as_deref().unwrap_or(DEFAULT_URL)),
        errors,
    );
    let repo = checked("repo", parse_repo(&keys.repo), errors);
    let credentials = match (keys.token, keys.app) {
        (Some(_), _) | (_, Some(_)) if has_token && has_app => {
            errors.push(FieldError::new("app", "give `token` or `app`, not both"));
            None
        }
        (Some(token), None) => Some(Credentials::Token(token)),
        (None, Some(app)) => Some(Credentials::App {
            id: app.id,
            installation: app.installation,
            key: app.key,
        }),
        _ if has_token || has_app => None,
        _ => {
            errors.push(FieldError::new(
                "token",
                "missing: give `token = { env = \"GITHUB_TOKEN\" }` (a token with Actions: read and write) or `app = { id, installation, key = { file = \"app.pem\" } }`",
            ));
            None
        }
    };
    if let Some(input) = &keys.correlation_input
        && !is_input_name(input)
    {
        errors.push(FieldError::new(
            "correlation_input",
            format!("`{input}` is not an input name: letters, digits, `-` and `_`, starting with a letter or `_`"),
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
    let stop_grace = duration_or_default(
        "stop_grace",
        keys.stop_grace,
        DEFAULT_STOP_GRACE,
        LONGEST_POLL,
        errors,
    );
    let (owner, repo) = repo?;
    Some(InstanceConfig {
        url: url?,
        owner,
        repo,
        credentials: credentials?,
        correlation_input: keys.correlation_input,
        poll_initial,
        poll_max,
        request_timeout,
        stop_grace,
    })
}

/// GitHub's rule for input names (the workflow syntax reference: "must start with a letter
/// or `_` and contain only alphanumeric characters, `-`, or `_`").
fn is_input_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

fn parse_repo(text: &str) -> Result<(String, String), String> {
    let ok = |part: &str| {
        !part.is_empty()
            && part
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
            && part != "."
            && part != ".."
    };
    match text.split_once('/') {
        Some((owner, name)) if ok(owner) && ok(name) => Ok((owner.to_owned(), name.to_owned())),
        _ => Err(format!(
            "`{text}` is not a repository: expected `owner/name`, such as `octo-org/app`"
        )),
    }
}

fn parse_api_url(text: &str) -> Result<Url, String> {
    let mut url = Url::parse(text.trim()).map_err(|e| {
        format!("`{text}` is not a URL ({e}): expected `https://api.github.com` or, on GitHub Enterprise Server, `https://<host>/api/v3`")
    })?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(format!("`{text}` is not an http:// or https:// URL"));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(format!("`{text}` has no host"));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err("credentials do not belong in the URL: give `token` or `app`".to_owned());
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err(format!(
            "`{text}` has a query or fragment: give the API's root only"
        ));
    }
    if url.host_str() == Some("github.com") {
        return Err(format!(
            "`{text}` is the web site: the REST API is at `https://api.github.com`"
        ));
    }
    if !url.path().ends_with('/') {
        let path = format!("{}/", url.path());
        url.set_path(&path);
    }
    Ok(url)
}

/// A checked `with:` block.
#[derive(Debug, Clone, PartialEq)]
pub struct StageSpec {
    /// The workflow's file name (`ci.yml`) or numeric id.
    pub workflow: String,
    /// The branch or tag to run on.
    pub git_ref: String,
    /// The inputs, in the order written.
    pub inputs: Map<String, Value>,
}

const STAGE_KEYS: &str = "workflow, ref, inputs";

/// Checks a `with:` block; `correlation_input`, when the instance has one, is filled by
/// baton and counts towards GitHub's limit of [`MAX_INPUTS`].
pub fn parse_stage(
    with: &Value,
    mode: Mode,
    correlation_input: Option<&str>,
) -> Result<StageSpec, Vec<FieldError>> {
    let mut errors = Vec::new();
    let Value::Object(map) = with else {
        return Err(vec![FieldError::new(
            "workflow",
            format!(
                "missing: expected a table with `workflow` (`ci.yml`), `ref` (a branch or tag) and optional `inputs`; keys: {STAGE_KEYS}"
            ),
        )]);
    };
    unknown_stage_keys("github-actions", STAGE_KEYS, map, &mut errors);
    let mut text = |key: &str, what: &str| match map.get(key) {
        Some(Value::String(s)) if mode.is_template(s) => Some(s.clone()),
        Some(Value::String(s)) if !s.trim().is_empty() && !s.contains(['\n', '\0']) => {
            Some(s.trim().to_owned())
        }
        Some(Value::Number(n)) if key == "workflow" => Some(n.to_string()),
        None => {
            errors.push(FieldError::new(key, format!("missing: {what}")));
            None
        }
        Some(_) => {
            errors.push(FieldError::new(key, format!("expected {what}")));
            None
        }
    };
    let workflow = text(
        "workflow",
        "the workflow's file name in .github/workflows (`ci.yml`) or its numeric id",
    );
    let git_ref = text(
        "ref",
        "the branch or tag to run the workflow on (`main`, `v1.2.0`); GitHub takes no commit SHA here",
    );
    if let Some(w) = &workflow
        && !mode.is_template(w)
        && (w.contains('/') || w.contains(".."))
    {
        errors.push(FieldError::new(
            "workflow",
            format!("`{w}` is a path: give the file name only (`ci.yml`), as in .github/workflows"),
        ));
    }
    let mut inputs = Map::new();
    match map.get("inputs") {
        None | Some(Value::Null) => {}
        Some(Value::String(s)) if mode.is_template(s) => {}
        Some(Value::Object(given)) => {
            let name_problem = |name: &str| {
                if Some(name) == correlation_input {
                    Some(
                        "baton fills this input with the attempt key (it is the instance's `correlation_input`): remove it here",
                    )
                } else if !is_input_name(name) {
                    Some("not an input name: letters, digits, `-` and `_`")
                } else {
                    None
                }
            };
            let texts = text_entries(
                "inputs",
                given,
                name_problem,
                "expected a string, number or boolean: workflow_dispatch inputs are sent as strings",
                &mut errors,
            );
            inputs.extend(
                texts
                    .into_iter()
                    .map(|(name, text)| (name, Value::String(text))),
            );
            let total = given.len() + usize::from(correlation_input.is_some());
            if total > MAX_INPUTS {
                errors.push(FieldError::new(
                    "inputs",
                    format!(
                        "{total} inputs{}: GitHub takes at most {MAX_INPUTS} in one dispatch",
                        if correlation_input.is_some() {
                            " with the correlation input"
                        } else {
                            ""
                        }
                    ),
                ));
            }
        }
        Some(_) => errors.push(FieldError::new(
            "inputs",
            "expected a table of input names and string values",
        )),
    }
    match (workflow, git_ref) {
        (Some(workflow), Some(git_ref)) if errors.is_empty() => Ok(StageSpec {
            workflow,
            git_ref,
            inputs,
        }),
        _ => Err(errors),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn paths(errors: &[FieldError]) -> Vec<&str> {
        errors.iter().map(|e| e.path.as_str()).collect()
    }

    #[test]
    fn instance_defaults_and_credentials() {
        let c = parse_instance(&json!({"repo": "o/r", "token": {"env": "GITHUB_TOKEN"}})).unwrap();
        assert_eq!(c.url.as_str(), "https://api.github.com/");
        assert_eq!((c.owner.as_str(), c.repo.as_str()), ("o", "r"));
        assert_eq!(
            c.credentials,
            Credentials::Token(SecretRef::Env("GITHUB_TOKEN".into()))
        );
        assert_eq!(
            (c.poll_initial, c.poll_max, c.request_timeout, c.stop_grace),
            (
                DEFAULT_POLL_INITIAL,
                DEFAULT_POLL_MAX,
                DEFAULT_REQUEST_TIMEOUT,
                DEFAULT_STOP_GRACE
            )
        );
        let ghes = parse_instance(&json!({
            "url": "https://ghe.example.com/api/v3", "repo": "o/r",
            "app": {"id": 1, "installation": 2, "key": {"file": "app.pem"}},
            "correlation_input": "baton_attempt", "stop_grace": "5s",
        }))
        .unwrap();
        assert_eq!(ghes.url.as_str(), "https://ghe.example.com/api/v3/");
        assert!(matches!(
            ghes.credentials,
            Credentials::App {
                id: 1,
                installation: 2,
                ..
            }
        ));
        assert_eq!(ghes.correlation_input.as_deref(), Some("baton_attempt"));
    }

    #[test]
    fn instance_reports_every_problem() {
        let errors = parse_instance(&json!({
            "url": "https://github.com",
            "repo": "just-a-name",
            "token": "plain",
            "correlation_input": "1bad",
            "poll_initial": "10s",
            "poll_max": "5s",
            "request_timeout": "0s",
            "colour": "red",
        }))
        .unwrap_err();
        assert_eq!(
            paths(&errors),
            [
                "url",
                "repo",
                "token",
                "correlation_input",
                "poll_max",
                "request_timeout",
                "colour"
            ]
        );
        let both = parse_instance(&json!({"repo": "o/r", "token": {"env": "T"},
            "app": {"id": 1, "installation": 2, "key": {"file": "k"}}}))
        .unwrap_err();
        assert_eq!(paths(&both), ["app"]);
        let none = parse_instance(&json!({"repo": "o/r"})).unwrap_err();
        assert_eq!(paths(&none), ["token"]);
        let bad_app = parse_instance(
            &json!({"repo": "o/r", "app": {"id": "x", "installation": 2, "key": "pem"}}),
        )
        .unwrap_err();
        assert!(
            bad_app.iter().all(|e| e.path.starts_with("app")),
            "{bad_app:?}"
        );
    }

    #[test]
    fn stage_forms_and_problems() {
        let s = parse_stage(
            &json!({"workflow": "ci.yml", "ref": "main", "inputs": {"sha": "abc", "n": 3, "dry": false}}),
            Mode::Rendered,
            Some("baton_attempt"),
        )
        .unwrap();
        assert_eq!(
            s.inputs,
            *json!({"sha": "abc", "n": "3", "dry": "false"})
                .as_object()
                .unwrap()
        );
        assert!(
            parse_stage(
                &json!({"workflow": 1234, "ref": "${{ .x }}", "inputs": "${{ .y }}"}),
                Mode::Templates,
                None
            )
            .is_ok()
        );
        let errors = parse_stage(
            &json!({"workflow": ".github/workflows/ci.yml", "inputs": {"baton_attempt": "x", "l": [1]}, "extra": 1}),
            Mode::Rendered,
            Some("baton_attempt"),
        )
        .unwrap_err();
        assert_eq!(
            paths(&errors),
            [
                "extra",
                "ref",
                "workflow",
                "inputs.baton_attempt",
                "inputs.l"
            ]
        );
        let many: Map<String, Value> = (0..25).map(|i| (format!("i{i}"), json!("v"))).collect();
        let with = json!({"workflow": "ci.yml", "ref": "main", "inputs": many});
        assert!(parse_stage(&with, Mode::Rendered, None).is_ok());
        assert_eq!(
            paths(&parse_stage(&with, Mode::Rendered, Some("c")).unwrap_err()),
            ["inputs"]
        );
    }

    #[test]
    fn the_docs_table_lists_every_instance_key() {
        let doc = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../docs/adapters/github-actions.md");
        baton_adapter_kit::docs::check_doc_keys::<InstanceKeys>(&doc, "Instance config");
    }
}
