//! The instance block (`[adapters.<name>]`) and the stage's `with:` block.

use std::time::Duration;

use baton_core::secret::deserialize_optional_reference;
use baton_core::typed::{LONGEST_POLL, checked, duration_in_range, reported};
use baton_core::{FieldError, HumanDuration, SecretRef, read_table};
use reqwest::Url;
use serde::{Deserialize, Deserializer};
use serde_json::{Map, Value};

/// How a `WARNINGS` build counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Warnings {
    /// As a success with warnings (the default).
    #[default]
    Success,
    /// As a failure.
    Failure,
}

impl<'de> Deserialize<'de> for Warnings {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        match Value::deserialize(d)?.as_str() {
            Some("success") => Ok(Self::Success),
            Some("failure") => Ok(Self::Failure),
            _ => Err(serde::de::Error::custom(
                "expected `success` or `failure`: how a build that ends WARNINGS counts",
            )),
        }
    }
}

/// A checked instance block.
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    /// The Buildbot base URL (its `buildbotURL`), always ending in `/`.
    pub url: Url,
    /// The user to log in as and the reference to its password.
    pub login: Option<(String, SecretRef)>,
    /// How `WARNINGS` counts.
    pub warnings: Warnings,
    /// The first wait between polls of a build.
    pub poll_initial: Duration,
    /// The longest wait between polls of a build.
    pub poll_max: Duration,
    /// The bound on each HTTP request.
    pub request_timeout: Duration,
    /// When set, status pushes must carry `Authorization: Bearer <token>`.
    pub webhook_token: Option<SecretRef>,
}

/// The default first wait between polls.
pub const DEFAULT_POLL_INITIAL: Duration = Duration::from_secs(1);
/// The default longest wait between polls.
pub const DEFAULT_POLL_MAX: Duration = Duration::from_secs(30);
/// The default bound on each HTTP request.
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// The instance block as written in `[adapters.<name>]` with `kind = "buildbot"`, before
/// the checks serde cannot make (`parse_instance` makes them).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InstanceKeys {
    /// The Buildbot base URL (its `buildbotURL`), `http://` or `https://`, with its
    /// sub-path if it has one; no query, `#` part or credentials. Required.
    pub url: String,
    /// The user to log in as (a non-empty name without `:`); needs `password`. Default:
    /// none (no login).
    #[serde(default)]
    pub user: Option<String>,
    /// A secret reference to `user`'s password; needs `user`. Default: none.
    #[serde(default, deserialize_with = "deserialize_optional_reference")]
    pub password: Option<SecretRef>,
    /// How a `WARNINGS` build counts: `success` or `failure`. Default: `success`.
    #[serde(default)]
    pub warnings: Warnings,
    /// The first wait between polls of a build; over 0 s, at most 1 h. Default: `1s`.
    #[serde(default)]
    pub poll_initial: Option<HumanDuration>,
    /// The longest wait between polls; over 0 s, at most 1 h, not shorter than
    /// `poll_initial`. Default: `30s`.
    #[serde(default)]
    pub poll_max: Option<HumanDuration>,
    /// The bound on each HTTP request; over 0 s, at most 1 h. Default: `30s`.
    #[serde(default)]
    pub request_timeout: Option<HumanDuration>,
    /// A secret reference; when set, status pushes must carry `Authorization: Bearer
    /// <token>`. Default: none.
    #[serde(default, deserialize_with = "deserialize_optional_reference")]
    pub webhook_token: Option<SecretRef>,
}

/// Checks an instance block, returning the settings or every problem.
pub(crate) fn parse_instance(config: &Value) -> Result<Settings, Vec<FieldError>> {
    read_table::<InstanceKeys>(config).check(config, check_instance)
}

/// The checks serde cannot make. A key that already failed to read was dropped and counts
/// as given, so it causes no second problem here.
fn check_instance(keys: InstanceKeys, errors: &mut Vec<FieldError>) -> Option<Settings> {
    let has_user = keys.user.is_some() || reported(errors, "user");
    let has_password = keys.password.is_some() || reported(errors, "password");

    let url = checked("url", parse_url(&keys.url), errors);
    let user = match keys.user {
        Some(user) if user.trim().is_empty() || user.contains(':') => {
            errors.push(FieldError::new(
                "user",
                "expected the Buildbot user name as a non-empty string without `:`",
            ));
            None
        }
        user => user,
    };
    let login = match (user, keys.password) {
        (Some(user), Some(password)) => Some((user, password)),
        (Some(_), None) if !has_password => {
            errors.push(FieldError::new(
                "password",
                "missing: `user` needs a `password` (`{ env = \"NAME\" }` or `{ file = \"/path\" }`)",
            ));
            None
        }
        (None, Some(_)) if !has_user => {
            errors.push(FieldError::new(
                "user",
                "missing: `password` needs a `user`",
            ));
            None
        }
        _ => None,
    };
    let poll_initial = duration_in_range(
        "poll_initial",
        keys.poll_initial,
        DEFAULT_POLL_INITIAL,
        LONGEST_POLL,
        errors,
    );
    let poll_max = duration_in_range(
        "poll_max",
        keys.poll_max,
        DEFAULT_POLL_MAX,
        LONGEST_POLL,
        errors,
    );
    let request_timeout = duration_in_range(
        "request_timeout",
        keys.request_timeout,
        DEFAULT_REQUEST_TIMEOUT,
        LONGEST_POLL,
        errors,
    );
    if let (Some(initial), Some(max)) = (poll_initial, poll_max)
        && max < initial
        && !errors.iter().any(|e| e.path.starts_with("poll_"))
    {
        errors.push(FieldError::new(
            "poll_max",
            format!(
                "must not be shorter than `poll_initial` ({})",
                HumanDuration(initial)
            ),
        ));
    }
    Some(Settings {
        url: url?,
        login,
        warnings: keys.warnings,
        poll_initial: poll_initial?,
        poll_max: poll_max?,
        request_timeout: request_timeout?,
        webhook_token: keys.webhook_token,
    })
}

fn parse_url(text: &str) -> Result<Url, String> {
    let mut url = Url::parse(text.trim()).map_err(|e| {
        format!("`{text}` is not a URL ({e}); expected one such as `http://127.0.0.1:8010`")
    })?;
    if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
        return Err(format!("`{text}` is not an http:// or https:// URL"));
    }
    if url.query().is_some() || url.fragment().is_some() || !url.username().is_empty() {
        return Err(format!(
            "`{text}`: give the base URL only, without a query, a `#` part or credentials (use `user` and `password`)"
        ));
    }
    if url.path().contains("/api/") {
        return Err(format!(
            "`{text}`: give Buildbot's base URL (its `buildbotURL`), not the API's; baton adds `api/v2`"
        ));
    }
    if !url.path().ends_with('/') {
        let path = format!("{}/", url.path());
        url.set_path(&path);
    }
    Ok(url)
}

/// Whether template strings may stand where another type is expected.
pub(crate) use baton_core::adapter::InputMode as Mode;

/// The default force scheduler.
pub const DEFAULT_SCHEDULER: &str = "force";

/// Property names baton sets itself or that name the builder; a stage may not give them.
pub const RESERVED_PROPERTIES: [&str; 5] = [
    "reason",
    "baton_attempt",
    "builderid",
    "builderNames",
    "owner",
];

/// A checked `with:` block.
#[derive(Debug, Clone, PartialEq)]
pub struct StageSpec {
    /// The builder to force.
    pub builder: String,
    /// The force scheduler's name.
    pub scheduler: String,
    /// The properties (force scheduler parameters) to send, by name.
    pub properties: Map<String, Value>,
}

fn is_template(mode: Mode, value: &Value) -> bool {
    value.as_str().is_some_and(|s| mode.is_template(s))
}

/// Checks a `with:` block, returning the spec or every problem.
pub(crate) fn parse_stage(with: &Value, mode: Mode) -> Result<StageSpec, Vec<FieldError>> {
    let Value::Object(map) = with else {
        return Err(vec![FieldError::new(
            "builder",
            "missing: buildbot stages need `with: { builder: NAME }` (and optional `scheduler`, `properties`)",
        )]);
    };
    let mut errors = Vec::new();
    for key in map.keys() {
        if !matches!(key.as_str(), "builder" | "scheduler" | "properties") {
            errors.push(FieldError::new(
                key,
                "unknown key: buildbot takes `builder`, `scheduler` and `properties`",
            ));
        }
    }
    let builder = match map.get("builder") {
        Some(Value::String(b)) if !b.trim().is_empty() => b.clone(),
        None => {
            errors.push(FieldError::new(
                "builder",
                "missing: the name of the Buildbot builder to force",
            ));
            String::new()
        }
        Some(_) => {
            errors.push(FieldError::new(
                "builder",
                "expected the builder's name as a non-empty string",
            ));
            String::new()
        }
    };
    let scheduler = match map.get("scheduler") {
        None | Some(Value::Null) => DEFAULT_SCHEDULER.to_owned(),
        Some(Value::String(s)) if !s.trim().is_empty() => s.clone(),
        Some(_) => {
            errors.push(FieldError::new(
                "scheduler",
                "expected the force scheduler's name as a non-empty string (default `force`)",
            ));
            String::new()
        }
    };
    let mut properties = Map::new();
    match map.get("properties") {
        None | Some(Value::Null) => {}
        Some(v) if is_template(mode, v) => {}
        Some(Value::Object(props)) => {
            for (name, value) in props {
                let path = format!("properties.{name}");
                if name.is_empty() {
                    errors.push(FieldError::new(path, "a property needs a name"));
                } else if RESERVED_PROPERTIES.contains(&name.as_str()) {
                    errors.push(FieldError::new(
                        path,
                        format!(
                            "`{name}` is set by baton (the attempt key goes into `reason` and `baton_attempt`); choose another name"
                        ),
                    ));
                } else if matches!(value, Value::String(_) | Value::Number(_) | Value::Bool(_)) {
                    properties.insert(name.clone(), value.clone());
                } else {
                    errors.push(FieldError::new(
                        path,
                        "expected a scalar: a string, a number or a boolean",
                    ));
                }
            }
        }
        Some(_) => errors.push(FieldError::new(
            "properties",
            "expected a table of property names to scalars (strings, numbers, booleans)",
        )),
    }
    if errors.is_empty() {
        Ok(StageSpec {
            builder,
            scheduler,
            properties,
        })
    } else {
        Err(errors)
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
    fn a_full_instance_block_parses() {
        let s = parse_instance(&json!({
            "url": "http://127.0.0.1:8010",
            "user": "gw",
            "password": {"env": "BB_PASS"},
            "warnings": "failure",
            "poll_initial": "200ms",
            "poll_max": "10s",
            "request_timeout": "5s",
            "webhook_token": {"file": "/run/token"},
        }))
        .unwrap();
        assert_eq!(s.url.as_str(), "http://127.0.0.1:8010/");
        assert_eq!(
            s.login,
            Some(("gw".into(), SecretRef::Env("BB_PASS".into())))
        );
        assert_eq!(s.warnings, Warnings::Failure);
        assert_eq!(s.poll_initial, Duration::from_millis(200));
        assert_eq!(s.poll_max, Duration::from_secs(10));
        assert_eq!(s.request_timeout, Duration::from_secs(5));
        assert_eq!(s.webhook_token, Some(SecretRef::File("/run/token".into())));
    }

    #[test]
    fn defaults_and_a_sub_path() {
        let s = parse_instance(&json!({"url": "https://ci.example.com/buildbot"})).unwrap();
        assert_eq!(s.url.as_str(), "https://ci.example.com/buildbot/");
        assert_eq!(s.login, None);
        assert_eq!(s.warnings, Warnings::Success);
        assert_eq!(
            (s.poll_initial, s.poll_max, s.request_timeout),
            (
                DEFAULT_POLL_INITIAL,
                DEFAULT_POLL_MAX,
                DEFAULT_REQUEST_TIMEOUT
            )
        );
    }

    #[test]
    fn every_instance_problem_is_reported_at_once() {
        let errors = parse_instance(&json!({
            "url": "ftp://x",
            "user": "",
            "password": "hunter2",
            "warnings": "maybe",
            "poll_initial": "0s",
            "poll_max": "soon",
            "request_timeout": 5,
            "token": "x",
        }))
        .unwrap_err();
        assert_eq!(
            paths(&errors),
            [
                "url",
                "user",
                "password",
                "warnings",
                "poll_initial",
                "poll_max",
                "request_timeout",
                "token"
            ]
        );
        assert!(errors[2].message.contains("literal secret"), "{errors:?}");
    }

    #[test]
    fn missing_and_mismatched_keys() {
        assert_eq!(paths(&parse_instance(&json!({})).unwrap_err()), ["url"]);
        let e = parse_instance(&json!({"url": "http://h", "user": "u"})).unwrap_err();
        assert_eq!(paths(&e), ["password"]);
        let e = parse_instance(&json!({"url": "http://h", "password": {"env": "P"}})).unwrap_err();
        assert_eq!(paths(&e), ["user"]);
        let e = parse_instance(&json!({"url": "http://h", "poll_initial": "5s", "poll_max": "1s"}))
            .unwrap_err();
        assert_eq!(paths(&e), ["poll_max"]);
        let e = parse_instance(&json!({"url": "http://h:8010/api/v2"})).unwrap_err();
        assert!(e[0].message.contains("base URL"), "{e:?}");
        let e = parse_instance(&json!({"url": "http://u:p@h/"})).unwrap_err();
        assert!(e[0].message.contains("credentials"), "{e:?}");
        assert_eq!(paths(&parse_instance(&json!([1])).unwrap_err()), [""]);
    }

    #[test]
    fn stage_blocks() {
        let spec = parse_stage(
            &json!({"builder": "b", "properties": {"a": "x", "n": 3, "f": true}}),
            Mode::Rendered,
        )
        .unwrap();
        assert_eq!(spec.scheduler, "force");
        assert_eq!(spec.properties.len(), 3);
        let spec = parse_stage(
            &json!({"builder": "${{ .event.b }}", "scheduler": "nightly", "properties": "${{ .event.props }}"}),
            Mode::Templates,
        )
        .unwrap();
        assert_eq!(spec.scheduler, "nightly");
        let e = parse_stage(
            &json!({"builder": 5, "scheduler": "", "properties": {"reason": "x", "list": [1], "ok": "y"}, "job": "x"}),
            Mode::Templates,
        )
        .unwrap_err();
        assert_eq!(
            paths(&e),
            [
                "job",
                "builder",
                "scheduler",
                "properties.reason",
                "properties.list"
            ]
        );
        let e = parse_stage(
            &json!({"builder": "b", "properties": "${{ .x }}"}),
            Mode::Rendered,
        )
        .unwrap_err();
        assert_eq!(paths(&e), ["properties"]);
        assert_eq!(
            paths(&parse_stage(&json!({}), Mode::Templates).unwrap_err()),
            ["builder"]
        );
        assert_eq!(
            paths(&parse_stage(&json!(null), Mode::Templates).unwrap_err()),
            ["builder"]
        );
    }

    #[test]
    fn the_docs_table_lists_every_instance_key() {
        let doc = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../docs/adapters/buildbot.md");
        baton_adapter_kit::docs::check_doc_keys::<InstanceKeys>(&doc, "Instance config");
    }
}
