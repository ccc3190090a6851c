//! The instance block (`[adapters.<name>]`) and the stage's `with:` block, checked in one
//! pass that reports every problem with its key path.

use std::time::Duration;

use baton_core::secret::deserialize_optional_reference;
use baton_core::typed::{
    checked, duration_or_default, poll_range, reported, text_entries, unknown_stage_keys,
};
use baton_core::{FieldError, HumanDuration, SecretRef, read_table};
use reqwest::Url;
use serde::Deserialize;
use serde_json::{Map, Value};

/// The default `poll_initial`.
pub const DEFAULT_POLL_INITIAL: Duration = Duration::from_secs(5);
/// The default `poll_max`.
pub const DEFAULT_POLL_MAX: Duration = Duration::from_secs(30);
/// The default `poll_streaming`.
pub const DEFAULT_POLL_STREAMING: Duration = Duration::from_secs(60);
/// The default `explain_pending_after`.
pub const DEFAULT_EXPLAIN_PENDING_AFTER: Duration = Duration::from_secs(120);
/// The default `check_timeout`.
pub const DEFAULT_CHECK_TIMEOUT: Duration = Duration::from_secs(30);
/// The default `request_timeout`.
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// The longest `explain_pending_after`.
pub const LONGEST_EXPLAIN: Duration = Duration::from_secs(86_400);
pub use baton_core::typed::{LONGEST_POLL, LONGEST_REQUEST};

/// The instance block as written in `[adapters.<name>]` with `kind = "concourse"`, before
/// the checks serde cannot make ([`parse_instance`] makes them).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InstanceKeys {
    /// Concourse's web URL (its `external_url`), `http://` or `https://`, as people open it;
    /// the API is below it at `/api/v1`, the token endpoint at `/sky/issuer/token`. No
    /// credentials, query or fragment. Required.
    pub url: String,
    /// The team whose pipelines the stages run. Required.
    pub team: String,
    /// A local (or LDAP) user for the password grant, with `password`. Exactly one of
    /// `username` + `password` and `token` is given.
    #[serde(default)]
    pub username: Option<String>,
    /// A secret reference to `username`'s password.
    #[serde(default, deserialize_with = "deserialize_optional_reference")]
    pub password: Option<SecretRef>,
    /// A secret reference to a bearer token obtained elsewhere (such as by `fly login`
    /// through a GitHub or OIDC connector, which the password grant cannot use). baton
    /// cannot renew it: once it expires, every call fails until the secret holds a new one.
    #[serde(default, deserialize_with = "deserialize_optional_reference")]
    pub token: Option<SecretRef>,
    /// Follow each build through its event stream (`/events`), which ends the stage the
    /// moment the build ends and keeps the log's tail. Default: `true`.
    #[serde(default)]
    pub events: Option<bool>,
    /// The first poll hint; over 0 s, at most 1 h. Default: `5s`.
    #[serde(default)]
    pub poll_initial: Option<HumanDuration>,
    /// The longest poll hint; over 0 s, at most 1 h, not shorter than `poll_initial`.
    /// Default: `30s`.
    #[serde(default)]
    pub poll_max: Option<HumanDuration>,
    /// The poll hint while the event stream follows the build (polling is then only the
    /// safety net); over 0 s, at most 1 h. Default: `60s`.
    #[serde(default)]
    pub poll_streaming: Option<HumanDuration>,
    /// How long a build may stay `pending` before each poll reads why (`/preparation`) and
    /// says it in the stage's message; over 0 s, at most a day. Default: `2m`.
    #[serde(default)]
    pub explain_pending_after: Option<HumanDuration>,
    /// The bound on waiting for the check of a stage's `resource` before the build is
    /// created; over 0 s, at most 5 m. Default: `30s`.
    #[serde(default)]
    pub check_timeout: Option<HumanDuration>,
    /// The bound on one HTTP request; over 0 s, at most 5 m. Default: `30s`.
    #[serde(default)]
    pub request_timeout: Option<HumanDuration>,
}

/// How baton proves who it is.
#[derive(Debug, Clone, PartialEq)]
pub enum Credentials {
    /// The password grant with fly's client, for `username`.
    Password {
        /// The user.
        username: String,
        /// Their password.
        password: SecretRef,
    },
    /// A bearer token obtained elsewhere.
    Token(SecretRef),
}

/// A checked instance block.
#[derive(Debug, Clone, PartialEq)]
pub struct InstanceConfig {
    /// Concourse's web root, always ending in `/`.
    pub root: Url,
    /// The team.
    pub team: String,
    /// The credentials.
    pub credentials: Credentials,
    /// Follow builds through their event streams.
    pub events: bool,
    /// The first poll hint.
    pub poll_initial: Duration,
    /// The longest poll hint.
    pub poll_max: Duration,
    /// The poll hint while a stream follows the build.
    pub poll_streaming: Duration,
    /// When a pending build's poll starts reading why.
    pub explain_pending_after: Duration,
    /// The bound on waiting for a resource check.
    pub check_timeout: Duration,
    /// The bound on one HTTP request.
    pub request_timeout: Duration,
}

/// Checks an instance block, returning the config or every problem.
pub fn parse_instance(config: &Value) -> Result<InstanceConfig, Vec<FieldError>> {
    read_table::<InstanceKeys>(config).check(config, check_instance)
}

fn check_instance(keys: InstanceKeys, errors: &mut Vec<FieldError>) -> Option<InstanceConfig> {
    let root = checked("url", parse_root(&keys.url), errors);
    let team = keys.team.trim().to_owned();
    if team.is_empty() || team.contains('/') {
        errors.push(FieldError::new(
            "team",
            "expected the name of a Concourse team, such as `main`",
        ));
    }
    let credentials = check_credentials(&keys, errors);
    let (poll_initial, poll_max) = poll_range(
        keys.poll_initial,
        keys.poll_max,
        (DEFAULT_POLL_INITIAL, DEFAULT_POLL_MAX),
        LONGEST_POLL,
        errors,
    );
    let poll_streaming = duration_or_default(
        "poll_streaming",
        keys.poll_streaming,
        DEFAULT_POLL_STREAMING,
        LONGEST_POLL,
        errors,
    );
    let explain_pending_after = duration_or_default(
        "explain_pending_after",
        keys.explain_pending_after,
        DEFAULT_EXPLAIN_PENDING_AFTER,
        LONGEST_EXPLAIN,
        errors,
    );
    let check_timeout = duration_or_default(
        "check_timeout",
        keys.check_timeout,
        DEFAULT_CHECK_TIMEOUT,
        LONGEST_REQUEST,
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
        root: root?,
        team,
        credentials: credentials?,
        events: keys.events.unwrap_or(true),
        poll_initial,
        poll_max,
        poll_streaming,
        explain_pending_after,
        check_timeout,
        request_timeout,
    })
}

/// Exactly one of the password grant (`username` + `password`) and `token`.
fn check_credentials(keys: &InstanceKeys, errors: &mut Vec<FieldError>) -> Option<Credentials> {
    let has_password = keys.password.is_some() || reported(errors, "password");
    let has_token = keys.token.is_some() || reported(errors, "token");
    let username = keys
        .username
        .as_deref()
        .map(str::trim)
        .filter(|u| !u.is_empty());
    if keys.username.is_some() && username.is_none() {
        errors.push(FieldError::new("username", "must not be empty"));
        return None;
    }
    let (key, problem) = match (username, has_password, has_token) {
        (Some(username), true, false) => {
            return Some(Credentials::Password {
                username: username.to_owned(),
                password: keys.password.clone()?,
            });
        }
        (None, false, true) => return keys.token.clone().map(Credentials::Token),
        (_, _, true) => (
            "token",
            "give either `token` or `username` with `password`, not both",
        ),
        (None, false, false) => (
            "username",
            "missing: give `username` with `password` (a local or LDAP user, for the password grant) or `token` (a bearer token obtained elsewhere)",
        ),
        (Some(_), false, false) => (
            "password",
            "missing: `username` needs `password`, a secret reference (`password = { env = \"CONCOURSE_PASSWORD\" }`)",
        ),
        (None, true, false) => (
            "username",
            "missing: `password` needs the `username` it belongs to",
        ),
    };
    errors.push(FieldError::new(key, problem));
    None
}

fn parse_root(text: &str) -> Result<Url, String> {
    let mut url = Url::parse(text.trim()).map_err(|e| {
        format!("`{text}` is not a URL ({e}): expected Concourse's web URL, such as `https://ci.example.com`")
    })?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(format!("`{text}` is not an http:// or https:// URL"));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(format!("`{text}` has no host"));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(
            "credentials do not belong in the URL: give `username` and `password`, or `token`"
                .to_owned(),
        );
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err(format!(
            "`{text}` has a query or fragment: give Concourse's web URL only"
        ));
    }
    let root = url.path().trim_end_matches('/');
    if root.ends_with("/api/v1") {
        return Err(format!(
            "`{text}` is the API's URL: give Concourse's web URL (without `/api/v1`), as people open it"
        ));
    }
    let path = format!("{root}/");
    url.set_path(&path);
    Ok(url)
}

/// Whether template strings may stand where another type is expected.
pub use baton_core::adapter::InputMode as Mode;

/// A checked `with:` block.
#[derive(Debug, Clone, PartialEq)]
pub struct StageSpec {
    /// The pipeline's name.
    pub pipeline: String,
    /// The job's name.
    pub job: String,
    /// The pipeline instance's vars (empty for a pipeline without instances).
    pub instance_vars: Map<String, Value>,
    /// A resource to check before the build is created.
    pub resource: Option<String>,
    /// The version to check `resource` from.
    pub version: Option<Map<String, Value>>,
}

/// The keys a stage takes, for messages.
const STAGE_KEYS: &str = "pipeline, job, instance_vars, resource, version";

/// Checks a `with:` block, returning the spec or every problem.
///
/// In [`Mode::Templates`] the spec may hold placeholders where templates stand; only the
/// errors are meant to be used.
pub fn parse_stage(with: &Value, mode: Mode) -> Result<StageSpec, Vec<FieldError>> {
    let Value::Object(map) = with else {
        return Err(vec![FieldError::new(
            "pipeline",
            format!(
                "missing: expected a table with `pipeline` and `job`, and optional {STAGE_KEYS}"
            ),
        )]);
    };
    let mut errors = Vec::new();
    unknown_stage_keys("concourse", STAGE_KEYS, map, &mut errors);
    let name = |key: &str, what: &str, errors: &mut Vec<FieldError>| match map.get(key) {
        Some(Value::String(text)) if !text.trim().is_empty() && !text.contains('/') => {
            Some(text.trim().to_owned())
        }
        Some(Value::String(text)) if mode.is_template(text) => Some(text.clone()),
        None => {
            errors.push(FieldError::new(key, format!("missing: the {what}")));
            None
        }
        Some(_) => {
            errors.push(FieldError::new(
                key,
                format!("expected the {what} (a non-empty string without `/`)"),
            ));
            None
        }
    };
    let pipeline = name("pipeline", "pipeline's name, such as `app`", &mut errors);
    let job = name("job", "job's name, such as `deploy`", &mut errors);
    let instance_vars = match map.get("instance_vars") {
        None | Some(Value::Null) => Map::new(),
        Some(Value::String(text)) if mode.is_template(text) => Map::new(),
        Some(Value::Object(vars)) => vars.clone(),
        Some(_) => {
            errors.push(FieldError::new(
                "instance_vars",
                "expected a table of the pipeline instance's vars, such as `{ branch: main }`",
            ));
            Map::new()
        }
    };
    let resource = match map.get("resource") {
        None | Some(Value::Null) => None,
        Some(Value::String(text)) if !text.trim().is_empty() && !text.contains('/') => {
            Some(text.trim().to_owned())
        }
        Some(Value::String(text)) if mode.is_template(text) => Some(text.clone()),
        Some(_) => {
            errors.push(FieldError::new(
                "resource",
                "expected the name of one of the pipeline's resources (a non-empty string)",
            ));
            None
        }
    };
    let version = match map.get("version") {
        None | Some(Value::Null) => None,
        Some(Value::String(text)) if mode.is_template(text) => Some(Map::new()),
        Some(Value::Object(fields)) if !fields.is_empty() => Some(
            text_entries(
                "version",
                fields,
                |_| None,
                "expected a string, number or boolean: a resource version's fields are text",
                &mut errors,
            )
            .into_iter()
            .map(|(k, v)| (k, Value::String(v)))
            .collect(),
        ),
        Some(_) => {
            errors.push(FieldError::new(
                "version",
                "expected a resource version: a table of its fields, such as `{ ref: '${{ .event.after }}' }`",
            ));
            None
        }
    };
    if version.is_some() && resource.is_none() && !reported(&errors, "resource") {
        errors.push(FieldError::new(
            "version",
            "needs `resource`: the resource this version is checked into",
        ));
    }
    match (pipeline, job) {
        (Some(pipeline), Some(job)) if errors.is_empty() => Ok(StageSpec {
            pipeline,
            job,
            instance_vars,
            resource,
            version,
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
    fn instance_defaults_and_root() {
        let c = parse_instance(&json!({
            "url": "https://ci.example.com",
            "team": "main",
            "username": "baton",
            "password": {"env": "CONCOURSE_PASSWORD"},
        }))
        .unwrap();
        assert_eq!(c.root.as_str(), "https://ci.example.com/");
        assert_eq!(
            c.credentials,
            Credentials::Password {
                username: "baton".into(),
                password: SecretRef::Env("CONCOURSE_PASSWORD".into())
            }
        );
        assert!(c.events);
        assert_eq!(
            (c.poll_initial, c.poll_max, c.poll_streaming),
            (
                DEFAULT_POLL_INITIAL,
                DEFAULT_POLL_MAX,
                DEFAULT_POLL_STREAMING
            )
        );
        assert_eq!(
            (c.explain_pending_after, c.check_timeout, c.request_timeout),
            (
                DEFAULT_EXPLAIN_PENDING_AFTER,
                DEFAULT_CHECK_TIMEOUT,
                DEFAULT_REQUEST_TIMEOUT
            )
        );
        let c = parse_instance(&json!({
            "url": "http://127.0.0.1:8080/concourse/", "team": "ops",
            "token": {"file": "/run/t"}, "events": false,
            "poll_initial": "1s", "poll_max": "2s", "poll_streaming": "3s",
            "explain_pending_after": "4s", "check_timeout": "5s", "request_timeout": "6s",
        }))
        .unwrap();
        assert_eq!(c.root.as_str(), "http://127.0.0.1:8080/concourse/");
        assert_eq!(
            c.credentials,
            Credentials::Token(SecretRef::File("/run/t".into()))
        );
        assert!(!c.events);
        assert_eq!(c.poll_streaming, Duration::from_secs(3));
        assert_eq!(c.explain_pending_after, Duration::from_secs(4));
        assert_eq!(c.check_timeout, Duration::from_secs(5));
        assert_eq!(c.request_timeout, Duration::from_secs(6));
    }

    #[test]
    fn instance_reports_every_problem() {
        let errors = parse_instance(&json!({
            "url": "https://ci.example.com/api/v1",
            "team": "",
            "username": "baton",
            "password": "hunter2",
            "poll_initial": "10s",
            "poll_max": "5s",
            "poll_streaming": "0s",
            "check_timeout": "1h",
            "colour": "red",
        }))
        .unwrap_err();
        assert_eq!(
            paths(&errors),
            [
                "url",
                "team",
                "password",
                "poll_max",
                "poll_streaming",
                "check_timeout",
                "colour"
            ]
        );
        assert!(errors[2].message.contains("literal secret"), "{errors:?}");
    }

    #[test]
    fn exactly_one_way_to_authenticate() {
        let base = |extra: Value| {
            let mut block = json!({"url": "https://ci.example.com", "team": "main"});
            for (k, v) in extra.as_object().unwrap() {
                block[k] = v.clone();
            }
            parse_instance(&block).unwrap_err()
        };
        let both = base(json!({"username": "u", "password": {"env": "P"}, "token": {"env": "T"}}));
        assert_eq!(paths(&both), ["token"]);
        assert!(both[0].message.contains("not both"));
        let neither = base(json!({}));
        assert_eq!(paths(&neither), ["username"]);
        assert!(neither[0].message.contains("`token`"), "{neither:?}");
        assert_eq!(paths(&base(json!({"username": "u"}))), ["password"]);
        assert_eq!(
            paths(&base(json!({"password": {"env": "P"}}))),
            ["username"]
        );
        assert_eq!(
            paths(&base(json!({"username": " ", "password": {"env": "P"}}))),
            ["username"]
        );
    }

    #[test]
    fn stage_forms() {
        let s = parse_stage(
            &json!({"pipeline": "app", "job": "deploy", "instance_vars": {"branch": "main", "n": 2},
                    "resource": "repo", "version": {"ref": "abc", "n": 3}}),
            Mode::Rendered,
        )
        .unwrap();
        assert_eq!((s.pipeline.as_str(), s.job.as_str()), ("app", "deploy"));
        assert_eq!(
            Value::Object(s.instance_vars),
            json!({"branch": "main", "n": 2})
        );
        assert_eq!(s.resource.as_deref(), Some("repo"));
        assert_eq!(
            s.version.map(Value::Object),
            Some(json!({"ref": "abc", "n": "3"}))
        );
        assert!(
            parse_stage(
                &json!({"pipeline": "${{ .p }}", "job": "j", "instance_vars": "${{ .v }}",
                        "resource": "repo", "version": "${{ .event.version }}"}),
                Mode::Templates
            )
            .is_ok()
        );
    }

    #[test]
    fn stage_reports_every_problem() {
        let errors = parse_stage(
            &json!({"pipline": "app", "job": "a/b", "instance_vars": [1], "version": {"ref": [1]}}),
            Mode::Templates,
        )
        .unwrap_err();
        assert_eq!(
            paths(&errors),
            [
                "pipline",
                "pipeline",
                "job",
                "instance_vars",
                "version.ref",
                "version"
            ]
        );
        assert!(
            errors[0].message.contains("a concourse stage takes"),
            "{errors:?}"
        );
        assert_eq!(
            paths(
                &parse_stage(
                    &json!({"pipeline": "p", "job": "j", "version": {}}),
                    Mode::Rendered
                )
                .unwrap_err()
            ),
            ["version"]
        );
        assert_eq!(
            paths(&parse_stage(&json!("app"), Mode::Rendered).unwrap_err()),
            ["pipeline"]
        );
    }

    #[test]
    fn the_docs_table_lists_every_instance_key() {
        let doc = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../docs/adapters/concourse.md");
        baton_adapter_kit::docs::check_doc_keys::<InstanceKeys>(&doc, "Instance config");
    }
}
