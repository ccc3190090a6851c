//! The instance block (`[adapters.<name>]`) and the stage's `with:` block, checked in one
//! pass that reports every problem with its key path.

use std::time::Duration;

use baton_core::secret::deserialize_optional_reference;
use baton_core::typed::{checked, http_timing, reported};
use baton_core::{FieldError, HumanDuration, SecretRef, read_table};
use reqwest::Url;
use serde::Deserialize;
use serde_json::{Map, Value};

use crate::reference::{self, ImageRef};

/// Whether template strings may stand where another type is expected.
pub use baton_core::adapter::InputMode as Mode;

/// The default `poll_initial`.
pub const DEFAULT_POLL_INITIAL: Duration = Duration::from_secs(2);
/// The default `poll_max`.
pub const DEFAULT_POLL_MAX: Duration = Duration::from_secs(30);
/// The default `request_timeout`.
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// The instance block as written in `[adapters.<name>]` with `kind = "registry"`, before
/// the checks serde cannot make ([`parse_instance`] makes them).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InstanceKeys {
    /// The registry's root, `https://registry.example.com` or `http://127.0.0.1:5000`
    /// (plain http works as given); no path, query or credentials. Required.
    #[serde(default)]
    pub url: Option<String>,
    /// The user for Basic auth and for the token server of the bearer flow. Optional, with
    /// `password`.
    #[serde(default)]
    pub username: Option<String>,
    /// A secret reference to the password (or an access token) of `username`.
    #[serde(default, deserialize_with = "deserialize_optional_reference")]
    pub password: Option<SecretRef>,
    /// Other registries a promote's `to` may name (`host[:port]/repo:tag`), each
    /// `{ url, username, password }` with the same meaning as the keys above. Default: none.
    #[serde(default)]
    pub destinations: Option<Vec<DestinationKeys>>,
    /// The first wait between polls of a `wait`; over 0 s, at most 1 h. Default: `2s`.
    #[serde(default)]
    pub poll_initial: Option<HumanDuration>,
    /// The longest wait between polls; over 0 s, at most 1 h, not shorter than
    /// `poll_initial`. Default: `30s`.
    #[serde(default)]
    pub poll_max: Option<HumanDuration>,
    /// The bound on one HTTP request without a blob body (a blob transfer is bounded by the
    /// stage's timeout); over 0 s, at most 5 m. Default: `30s`.
    #[serde(default)]
    pub request_timeout: Option<HumanDuration>,
}

/// One entry of `destinations`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DestinationKeys {
    /// The other registry's root, as the instance's `url`.
    #[serde(default)]
    pub url: Option<String>,
    /// Its user, as the instance's `username`.
    #[serde(default)]
    pub username: Option<String>,
    /// Its password, as the instance's `password`.
    #[serde(default, deserialize_with = "deserialize_optional_reference")]
    pub password: Option<SecretRef>,
}

/// A registry and how to log in to it.
#[derive(Debug, Clone, PartialEq)]
pub struct RegistryConfig {
    /// The root, without a trailing `/`.
    pub url: Url,
    /// The user and the reference to the password, when given.
    pub login: Option<(String, SecretRef)>,
}

impl RegistryConfig {
    /// `host[:port]` as references write it.
    pub fn authority(&self) -> String {
        authority(&self.url)
    }
}

/// `host[:port]` of `url`, the port only when the URL gives one.
pub fn authority(url: &Url) -> String {
    let host = url.host_str().unwrap_or_default();
    match url.port() {
        Some(port) => format!("{host}:{port}"),
        None => host.to_owned(),
    }
}

/// A checked instance block.
#[derive(Debug, Clone, PartialEq)]
pub struct InstanceConfig {
    /// The instance's own registry.
    pub registry: RegistryConfig,
    /// Other registries a promote may copy to.
    pub destinations: Vec<RegistryConfig>,
    /// The first poll hint of a `wait`.
    pub poll_initial: Duration,
    /// The longest poll hint.
    pub poll_max: Duration,
    /// The bound on one request without a blob body.
    pub request_timeout: Duration,
}

/// Checks an instance block, returning the config or every problem.
pub fn parse_instance(config: &Value) -> Result<InstanceConfig, Vec<FieldError>> {
    read_table::<InstanceKeys>(config).check(config, check_instance)
}

fn check_instance(keys: InstanceKeys, errors: &mut Vec<FieldError>) -> Option<InstanceConfig> {
    let registry = check_registry("", (&keys.url, &keys.username, &keys.password), errors);
    let mut destinations = Vec::new();
    for (i, entry) in keys.destinations.iter().flatten().enumerate() {
        let prefix = format!("destinations[{i}].");
        if let Some(destination) = check_registry(
            &prefix,
            (&entry.url, &entry.username, &entry.password),
            errors,
        ) {
            let seen = registry.iter().chain(&destinations);
            if seen
                .clone()
                .any(|r| r.authority() == destination.authority())
            {
                errors.push(FieldError::new(
                    format!("{prefix}url"),
                    format!(
                        "`{}` is already a registry of this instance: each host[:port] once",
                        destination.authority()
                    ),
                ));
            }
            destinations.push(destination);
        }
    }
    let [poll_initial, poll_max, request_timeout] = http_timing(
        [keys.poll_initial, keys.poll_max, keys.request_timeout],
        [
            DEFAULT_POLL_INITIAL,
            DEFAULT_POLL_MAX,
            DEFAULT_REQUEST_TIMEOUT,
        ],
        errors,
    );
    Some(InstanceConfig {
        registry: registry?,
        destinations,
        poll_initial,
        poll_max,
        request_timeout,
    })
}

/// Checks `url`, `username` and `password` found under `prefix`.
fn check_registry(
    prefix: &str,
    (url, username, password): (&Option<String>, &Option<String>, &Option<SecretRef>),
    errors: &mut Vec<FieldError>,
) -> Option<RegistryConfig> {
    let at = |key: &str| format!("{prefix}{key}");
    let url = match url {
        Some(text) => checked(&at("url"), registry_url(text), errors),
        None if reported(errors, &at("url")) => None,
        None => {
            errors.push(FieldError::new(
                at("url"),
                "missing: the registry's root, such as `https://registry.example.com` or `http://127.0.0.1:5000`",
            ));
            None
        }
    };
    let login = match (username, password) {
        (Some(user), Some(password)) if !user.is_empty() && !user.contains(':') => {
            Some((user.clone(), password.clone()))
        }
        (Some(_), Some(_)) => {
            errors.push(FieldError::new(
                at("username"),
                "expected a user name: not empty, without `:`",
            ));
            None
        }
        (None, None) => None,
        (Some(_), None) if !reported(errors, &at("password")) => {
            errors.push(FieldError::new(
                at("password"),
                "missing: `username` needs a password as a secret reference, `password = { env = \"REGISTRY_PASSWORD\" }`",
            ));
            None
        }
        (None, Some(_)) => {
            errors.push(FieldError::new(
                at("username"),
                "missing: `password` needs the user it belongs to",
            ));
            None
        }
        _ => None,
    };
    Some(RegistryConfig { url: url?, login })
}

/// An `http://` or `https://` root with a host and nothing else.
fn registry_url(text: &str) -> Result<Url, String> {
    let expected = "expected the registry's root, such as `https://registry.example.com` or `http://127.0.0.1:5000`";
    let url =
        Url::parse(text.trim()).map_err(|e| format!("`{text}` is not a URL ({e}): {expected}"))?;
    let wrong = [
        (
            !matches!(url.scheme(), "http" | "https"),
            "is not an http:// or https:// URL",
        ),
        (url.host_str().is_none_or(str::is_empty), "has no host"),
        (
            !url.username().is_empty() || url.password().is_some(),
            "holds credentials: give `username` and `password` instead",
        ),
        (
            url.query().is_some() || url.fragment().is_some(),
            "has a query or fragment",
        ),
        (
            !matches!(url.path(), "" | "/" | "/v2" | "/v2/"),
            "has a path: the API is always at /v2/ under the root",
        ),
    ];
    match wrong.iter().find(|(bad, _)| *bad) {
        Some((_, why)) => Err(format!("`{text}` {why}: {expected}")),
        None => {
            let mut url = url;
            url.set_path("");
            Ok(url)
        }
    }
}

/// A checked `with:` block.
#[derive(Debug, Clone, PartialEq)]
pub enum StageSpec {
    /// Until `image`'s tag exists.
    Wait(ImageRef),
    /// Resolve `image` and describe it.
    Inspect(ImageRef),
    /// Copy `from` (this registry) to `to` (this registry or one of `destinations`).
    Promote {
        /// What is copied.
        from: ImageRef,
        /// Where it goes.
        to: ImageRef,
    },
}

/// The actions, for messages.
const ACTIONS: [&str; 3] = ["wait", "inspect", "promote"];

/// Checks a `with:` block, returning the spec or every problem.
///
/// In [`Mode::Templates`] a template stands for any value; only the errors are meant to
/// be used then (a spec with a template in it is not built).
pub fn parse_stage(with: &Value, mode: Mode) -> Result<Option<StageSpec>, Vec<FieldError>> {
    let Value::Object(map) = with else {
        return Err(vec![FieldError::new(
            "action",
            "expected a table: `{ action: promote, from: 'app:1', to: 'app:stable' }`, or `action: wait` / `inspect` with `image`",
        )]);
    };
    let mut errors = Vec::new();
    baton_core::typed::unknown_stage_keys("registry", "action, image, from, to", map, &mut errors);
    let text = |key: &str, errors: &mut Vec<FieldError>| match map.get(key) {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(s.clone()),
        Some(_) => {
            errors.push(FieldError::new(key, "expected a string"));
            None
        }
    };
    let action = text("action", &mut errors);
    let image = text("image", &mut errors);
    let from = text("from", &mut errors);
    let to = text("to", &mut errors);
    let reference =
        |key: &str, value: &Option<String>, host: bool, errors: &mut Vec<FieldError>| match value {
            Some(text) if mode.is_template(text) => None,
            Some(text) => checked(key, reference::parse(text, host), errors),
            None if reported(errors, key) => None,
            None => {
                errors.push(FieldError::new(key, "missing"));
                None
            }
        };
    let forbid = |keys: &[(&str, &Option<String>)], action: &str, errors: &mut Vec<FieldError>| {
        for (key, value) in keys {
            if value.is_some() {
                errors.push(FieldError::new(
                    *key,
                    format!("`{action}` does not take `{key}`"),
                ));
            }
        }
    };
    let spec = match action.as_deref() {
        Some(t) if mode.is_template(t) => {
            // Which keys belong is known only once rendered: each is checked for its shape.
            for (key, value, host) in [
                ("image", &image, false),
                ("from", &from, false),
                ("to", &to, true),
            ] {
                if value.is_some() {
                    reference(key, value, host, &mut errors);
                }
            }
            None
        }
        Some(action @ ("wait" | "inspect")) => {
            forbid(&[("from", &from), ("to", &to)], action, &mut errors);
            reference("image", &image, false, &mut errors).map(|image| {
                if action == "wait" {
                    StageSpec::Wait(image)
                } else {
                    StageSpec::Inspect(image)
                }
            })
        }
        Some("promote") => {
            forbid(&[("image", &image)], "promote", &mut errors);
            let from = reference("from", &from, false, &mut errors);
            let to = reference("to", &to, true, &mut errors);
            from.zip(to)
                .map(|(from, to)| StageSpec::Promote { from, to })
        }
        Some(other) => {
            errors.push(FieldError::new(
                "action",
                format!(
                    "`{other}` is not an action: expected one of {}",
                    ACTIONS.join(", ")
                ),
            ));
            None
        }
        None if reported(&errors, "action") => None,
        None => {
            errors.push(FieldError::new(
                "action",
                format!("missing: one of {}", ACTIONS.join(", ")),
            ));
            None
        }
    };
    if errors.is_empty() {
        Ok(spec)
    } else {
        Err(errors)
    }
}

/// The `with:` block as stored in the reference, for a poll after a restart.
pub fn stage_json(spec: &StageSpec) -> Value {
    let mut map = Map::new();
    let (action, keys) = match spec {
        StageSpec::Wait(image) => ("wait", vec![("image", image)]),
        StageSpec::Inspect(image) => ("inspect", vec![("image", image)]),
        StageSpec::Promote { from, to } => ("promote", vec![("from", from), ("to", to)]),
    };
    map.insert("action".into(), Value::String(action.into()));
    for (key, image) in keys {
        map.insert(key.into(), Value::String(image.to_string()));
    }
    Value::Object(map)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    use FieldError as F;

    #[test]
    fn an_instance_with_defaults_and_a_destination() {
        let c = parse_instance(&json!({
            "url": "http://127.0.0.1:5000/", "username": "baton", "password": {"env": "P"},
            "destinations": [{"url": "https://reg.example.com"}],
        }))
        .unwrap();
        assert_eq!(c.registry.url.as_str(), "http://127.0.0.1:5000/");
        assert_eq!(c.registry.authority(), "127.0.0.1:5000");
        assert_eq!(c.registry.login.as_ref().unwrap().0, "baton");
        assert_eq!(c.destinations[0].authority(), "reg.example.com");
        assert_eq!(c.destinations[0].login, None);
        assert_eq!(
            (c.poll_initial, c.poll_max, c.request_timeout),
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
            "url": "ftp://x/", "username": "a:b", "password": "literal",
            "destinations": [{"url": "http://h/path", "password": {"env": "P"}},
                             {"url": "http://127.0.0.1:5000", "colour": 1}],
            "poll_initial": "0s", "colour": "red",
        }))
        .unwrap_err();
        let paths = F::paths(&errors);
        for path in [
            "url",
            "password",
            "destinations[0].url",
            "destinations[0].username",
            "destinations[1].colour",
            "poll_initial",
            "colour",
        ] {
            assert!(paths.contains(&path), "{path} not in {errors:?}");
        }
        let missing = parse_instance(&json!({})).unwrap_err();
        assert_eq!(F::paths(&missing), ["url"]);
        let half = parse_instance(&json!({"url": "http://r", "username": "u"})).unwrap_err();
        assert_eq!(F::paths(&half), ["password"]);
        let twice = parse_instance(&json!({"url": "http://r:1",
            "destinations": [{"url": "http://r:1"}]}))
        .unwrap_err();
        assert_eq!(F::paths(&twice), ["destinations[0].url"]);
        for (url, needle) in [
            ("http://u:p@r", "credentials"),
            ("http://r/?x", "query"),
            ("http://r/v1", "path"),
            ("nope", "not a URL"),
        ] {
            let errors = parse_instance(&json!({ "url": url })).unwrap_err();
            assert!(errors[0].message.contains(needle), "{url}: {errors:?}");
        }
    }

    #[test]
    fn stage_forms() {
        let p = |v: Value| parse_stage(&v, Mode::Rendered);
        assert!(matches!(
            p(json!({"action": "wait", "image": "app:1"})),
            Ok(Some(StageSpec::Wait(_)))
        ));
        assert!(matches!(
            p(json!({"action": "inspect", "image": "app:1"})),
            Ok(Some(StageSpec::Inspect(_)))
        ));
        let spec = p(json!({"action": "promote", "from": "app:1", "to": "r.example.com/app:s"}))
            .unwrap()
            .unwrap();
        assert_eq!(
            stage_json(&spec),
            json!({"action": "promote", "from": "app:1", "to": "r.example.com/app:s"})
        );
        let templated = json!({"action": "promote", "from": "app:${{ .t }}", "to": "${{ .to }}"});
        assert_eq!(parse_stage(&templated, Mode::Templates), Ok(None));
        assert!(
            parse_stage(
                &json!({"action": "${{ .a }}", "image": "x:${{ .t }}"}),
                Mode::Templates
            )
            .is_ok()
        );
        assert_eq!(
            F::paths(&parse_stage(&templated, Mode::Rendered).unwrap_err()),
            ["from", "to"]
        );
    }

    #[test]
    fn every_stage_problem_is_reported_at_once() {
        let errors = parse_stage(
            &json!({"action": "wait", "imag": "x", "from": "a:1", "to": 3}),
            Mode::Templates,
        )
        .unwrap_err();
        assert_eq!(F::paths(&errors), ["imag", "to", "from", "image"]);
        assert!(errors[0].message.contains("image"), "{errors:?}");
        let errors = parse_stage(
            &json!({"action": "promote", "image": "a:1", "from": "r.io/a:1", "to": "b"}),
            Mode::Rendered,
        )
        .unwrap_err();
        assert_eq!(F::paths(&errors), ["image", "from", "to"]);
        assert!(errors[1].message.contains("registry host"), "{errors:?}");
        assert_eq!(
            F::paths(&parse_stage(&json!({"action": "copy"}), Mode::Rendered).unwrap_err()),
            ["action"]
        );
        assert_eq!(
            F::paths(&parse_stage(&json!({}), Mode::Rendered).unwrap_err()),
            ["action"]
        );
        assert_eq!(
            F::paths(&parse_stage(&json!("x"), Mode::Rendered).unwrap_err()),
            ["action"]
        );
    }

    #[test]
    fn the_docs_table_lists_every_instance_key() {
        let doc = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../docs/adapters/registry.md");
        baton_adapter_kit::docs::check_doc_keys::<InstanceKeys>(&doc, "Instance config");
    }
}
