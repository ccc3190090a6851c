//! The instance block (`[adapters.<name>]`) and the stage's `with:` block.

use std::time::Duration;

use baton_core::secret::check_secret_value;
use baton_core::{FieldError, HumanDuration, SecretRef};
use reqwest::Url;
use serde_json::{Map, Value};

/// How a `WARNINGS` build counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Warnings {
    /// As a success with warnings (the default).
    Success,
    /// As a failure.
    Failure,
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
/// The longest wait between polls a config may ask for.
const LONGEST_POLL: Duration = Duration::from_secs(3600);

const INSTANCE_KEYS: &str = "`url`, `user`, `password`, `warnings`, `poll_initial`, `poll_max`, `request_timeout` and `webhook_token`";

/// Checks an instance block, returning the settings or every problem.
pub fn parse_instance(config: &Value) -> Result<Settings, Vec<FieldError>> {
    let empty = Map::new();
    let map = match config {
        Value::Object(map) => map,
        Value::Null => &empty,
        _ => {
            return Err(vec![FieldError::new(
                "",
                format!("expected a table with {INSTANCE_KEYS}"),
            )]);
        }
    };
    let mut errors = Vec::new();
    let mut url = None;
    let mut user = None;
    let mut password = None;
    let mut warnings = Warnings::Success;
    let mut poll_initial = DEFAULT_POLL_INITIAL;
    let mut poll_max = DEFAULT_POLL_MAX;
    let mut request_timeout = DEFAULT_REQUEST_TIMEOUT;
    let mut webhook_token = None;
    for (key, value) in map {
        match key.as_str() {
            "url" => match parse_url(value) {
                Ok(u) => url = Some(u),
                Err(message) => errors.push(FieldError::new("url", message)),
            },
            "user" => match value {
                Value::String(u) if !u.trim().is_empty() && !u.contains(':') => {
                    user = Some(u.clone())
                }
                _ => errors.push(FieldError::new(
                    "user",
                    "expected the Buildbot user name as a non-empty string without `:`",
                )),
            },
            "password" | "webhook_token" => match check_secret_value(value) {
                Ok(secret) if key == "password" => password = Some(secret),
                Ok(secret) => webhook_token = Some(secret),
                Err(message) => errors.push(FieldError::new(key, message)),
            },
            "warnings" => match value.as_str() {
                Some("success") => warnings = Warnings::Success,
                Some("failure") => warnings = Warnings::Failure,
                _ => errors.push(FieldError::new(
                    "warnings",
                    "expected `success` or `failure`: how a build that ends WARNINGS counts",
                )),
            },
            "poll_initial" | "poll_max" | "request_timeout" => {
                match parse_duration(value, LONGEST_POLL) {
                    Ok(d) if key == "poll_initial" => poll_initial = d,
                    Ok(d) if key == "poll_max" => poll_max = d,
                    Ok(d) => request_timeout = d,
                    Err(message) => errors.push(FieldError::new(key, message)),
                }
            }
            _ => errors.push(FieldError::new(
                key,
                format!("unknown key: buildbot takes {INSTANCE_KEYS}"),
            )),
        }
    }
    if url.is_none() && !map.contains_key("url") {
        errors.push(FieldError::new(
            "url",
            "missing: the Buildbot base URL, such as `http://127.0.0.1:8010`",
        ));
    }
    let login = match (user, password) {
        (Some(user), Some(password)) => Some((user, password)),
        (None, None) => None,
        (Some(_), None) if !map.contains_key("password") => {
            errors.push(FieldError::new(
                "password",
                "missing: `user` needs a `password` (`{ env = \"NAME\" }` or `{ file = \"/path\" }`)",
            ));
            None
        }
        (None, Some(_)) if !map.contains_key("user") => {
            errors.push(FieldError::new(
                "user",
                "missing: `password` needs a `user`",
            ));
            None
        }
        _ => None,
    };
    if poll_max < poll_initial && !errors.iter().any(|e| e.path.starts_with("poll_")) {
        errors.push(FieldError::new(
            "poll_max",
            format!(
                "must not be shorter than `poll_initial` ({})",
                HumanDuration(poll_initial)
            ),
        ));
    }
    match url {
        Some(url) if errors.is_empty() => Ok(Settings {
            url,
            login,
            warnings,
            poll_initial,
            poll_max,
            request_timeout,
            webhook_token,
        }),
        _ => Err(errors),
    }
}

fn parse_url(value: &Value) -> Result<Url, String> {
    let text = value
        .as_str()
        .ok_or("expected the Buildbot base URL as a string, such as `http://127.0.0.1:8010`")?;
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

fn parse_duration(value: &Value, longest: Duration) -> Result<Duration, String> {
    let text = value
        .as_str()
        .ok_or("expected a duration such as `1s`, `500ms` or `30s`")?;
    let d = HumanDuration::parse(text).map_err(|e| e.to_string())?.0;
    if d.is_zero() {
        return Err("must be longer than 0s".to_owned());
    }
    if d > longest {
        return Err(format!("must be at most {}", HumanDuration(longest)));
    }
    Ok(d)
}

/// Whether template strings may stand where another type is expected.
pub use baton_core::adapter::InputMode as Mode;

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
pub fn parse_stage(with: &Value, mode: Mode) -> Result<StageSpec, Vec<FieldError>> {
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
}
