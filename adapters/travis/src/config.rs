//! The instance block (`[adapters.<name>]`) and the stage's `with:` block, checked in one
//! pass that reports every problem with its key path.

use std::time::Duration;

use baton_core::secret::deserialize_optional_reference;
use baton_core::typed::{checked, duration_in_range, duration_or_default, http_timing, reported};
use baton_core::{FieldError, HumanDuration, SecretRef, read_table};
use reqwest::Url;
use serde::Deserialize;
use serde_json::{Map, Value};

/// Whether template strings may stand where another type is expected.
pub use baton_core::adapter::InputMode as Mode;
/// The longest `poll_initial` and `poll_max`, and the longest `request_timeout`.
pub use baton_core::typed::{LONGEST_POLL, LONGEST_REQUEST};

/// The default `url`: Travis CI's hosted API.
pub const DEFAULT_URL: &str = "https://api.travis-ci.com";
/// The web app of the hosted API, where build pages are.
pub const HOSTED_WEB: &str = "https://app.travis-ci.com";
/// The default `poll_initial`.
pub const DEFAULT_POLL_INITIAL: Duration = Duration::from_secs(5);
/// The default `poll_max`.
pub const DEFAULT_POLL_MAX: Duration = Duration::from_secs(30);
/// The default `request_timeout`.
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// The default `request_timeout_build`.
pub const DEFAULT_REQUEST_TIMEOUT_BUILD: Duration = Duration::from_secs(300);
/// The longest `request_timeout_build`.
pub const LONGEST_REQUEST_TIMEOUT_BUILD: Duration = Duration::from_secs(86_400);

/// The merge modes Travis documents for a request's `config` ("Triggering builds with API
/// V3"): how it combines with the repository's `.travis.yml`.
pub const MERGE_MODES: [&str; 5] = [
    "replace",
    "merge",
    "deep_merge_append",
    "deep_merge_prepend",
    "deep_merge",
];

/// The instance block as written in `[adapters.<name>]` with `kind = "travis"`, before the
/// checks serde cannot make ([`parse_instance`] makes them).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InstanceKeys {
    /// The API's root: `https://api.travis-ci.com`, or `https://<host>/api` for Travis CI
    /// Enterprise. No credentials, query or fragment. Default: `https://api.travis-ci.com`.
    #[serde(default)]
    pub url: Option<String>,
    /// The repository, `owner/name`. Required.
    #[serde(default)]
    pub repo: Option<String>,
    /// A secret reference to a Travis API token (the account's settings page) of a user with
    /// push access to the repository, sent as `Authorization: token …`. Required.
    #[serde(default, deserialize_with = "deserialize_optional_reference")]
    pub token: Option<SecretRef>,
    /// Where people open builds: derived from `url` (`https://app.travis-ci.com` for the
    /// hosted API, `url` without its `/api` for Enterprise); required for any other `url`.
    #[serde(default)]
    pub web_url: Option<String>,
    /// How long a request may wait for its build before the stage fails; over 0 s, at most
    /// 1 d. A stage's `with` may set its own. Default: `5m`.
    #[serde(default)]
    pub request_timeout_build: Option<HumanDuration>,
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
    /// The API's root, always ending in `/`.
    pub api: Url,
    /// Where build pages are, without a trailing `/`.
    pub web: String,
    /// The repository's owner.
    pub owner: String,
    /// The repository's name.
    pub name: String,
    /// The API token.
    pub token: SecretRef,
    /// How long a request may wait for its build, unless the stage says otherwise.
    pub request_timeout_build: Duration,
    /// The first poll hint.
    pub poll_initial: Duration,
    /// The longest poll hint.
    pub poll_max: Duration,
    /// The bound on one HTTP request.
    pub request_timeout: Duration,
}

impl InstanceConfig {
    /// `owner/name`.
    pub fn slug(&self) -> String {
        format!("{}/{}", self.owner, self.name)
    }
}

/// Checks an instance block, returning the config or every problem.
pub fn parse_instance(config: &Value) -> Result<InstanceConfig, Vec<FieldError>> {
    read_table::<InstanceKeys>(config).check(config, check_instance)
}

fn check_instance(keys: InstanceKeys, errors: &mut Vec<FieldError>) -> Option<InstanceConfig> {
    let api = checked(
        "url",
        api_root(keys.url.as_deref().unwrap_or(DEFAULT_URL)),
        errors,
    );
    let repo = match &keys.repo {
        Some(repo) => checked("repo", owner_and_name(repo), errors),
        None if reported(errors, "repo") => None,
        None => {
            errors.push(FieldError::new(
                "repo",
                "missing: the repository, `owner/name`, such as `octo-org/app`",
            ));
            None
        }
    };
    if keys.token.is_none() && !reported(errors, "token") {
        errors.push(FieldError::new(
            "token",
            "missing: a Travis API token (Settings > API authentication on Travis) as a secret reference, `token = { env = \"TRAVIS_TOKEN\" }`",
        ));
    }
    let web = match (&keys.web_url, &api) {
        (Some(text), _) => checked("web_url", web_root(text), errors),
        (None, Some(api)) => {
            let derived = derived_web(api);
            if derived.is_none() {
                errors.push(FieldError::new(
                    "web_url",
                    format!(
                        "missing: baton cannot tell where people open builds from `url` (`{api}` is neither {DEFAULT_URL} nor an Enterprise address ending in `/api`): give the web address, such as `https://travis.example.com`"
                    ),
                ));
            }
            derived
        }
        (None, None) => None,
    };
    let request_timeout_build = duration_or_default(
        "request_timeout_build",
        keys.request_timeout_build,
        DEFAULT_REQUEST_TIMEOUT_BUILD,
        LONGEST_REQUEST_TIMEOUT_BUILD,
        errors,
    );
    let [poll_initial, poll_max, request_timeout] = http_timing(
        [keys.poll_initial, keys.poll_max, keys.request_timeout],
        [
            DEFAULT_POLL_INITIAL,
            DEFAULT_POLL_MAX,
            DEFAULT_REQUEST_TIMEOUT,
        ],
        errors,
    );
    let (owner, name) = repo?;
    Some(InstanceConfig {
        api: api?,
        web: web?,
        owner,
        name,
        token: keys.token?,
        request_timeout_build,
        poll_initial,
        poll_max,
        request_timeout,
    })
}

/// An `http://` or `https://` URL with a host and nothing but a path, or what is wrong
/// with `text` (`kind` says what was expected, for the message).
fn http_url(text: &str, kind: &str) -> Result<Url, String> {
    let url = Url::parse(text.trim())
        .map_err(|e| format!("`{text}` is not a URL ({e}): expected {kind}"))?;
    let wrong = [
        (
            !matches!(url.scheme(), "http" | "https"),
            "is not an http:// or https:// URL",
        ),
        (url.host_str().is_none_or(str::is_empty), "has no host"),
        (
            !url.username().is_empty() || url.password().is_some(),
            "holds credentials: give `token` instead",
        ),
        (
            url.query().is_some() || url.fragment().is_some(),
            "has a query or fragment",
        ),
    ];
    match wrong.iter().find(|(bad, _)| *bad) {
        Some((_, why)) => Err(format!("`{text}` {why}: expected {kind}")),
        None => Ok(url),
    }
}

/// The API's root, ending in `/`.
fn api_root(text: &str) -> Result<Url, String> {
    let kind =
        "the API's root, `https://api.travis-ci.com` or, for Enterprise, `https://<host>/api`";
    let mut url = http_url(text, kind)?;
    let host = url.host_str().unwrap_or_default();
    if host.ends_with("travis-ci.org") {
        return Err(format!(
            "`{text}` is travis-ci.org, which is closed: use `{DEFAULT_URL}`"
        ));
    }
    if host == "app.travis-ci.com" || host == "travis-ci.com" {
        return Err(format!(
            "`{text}` is the web app: the API is at `{DEFAULT_URL}`"
        ));
    }
    let path = url.path().trim_end_matches('/').to_owned();
    if path.ends_with("/v3") {
        return Err(format!(
            "`{text}` ends in `/v3`: give the API's root; baton asks for v3 with the `Travis-API-Version` header"
        ));
    }
    url.set_path(&format!("{path}/"));
    Ok(url)
}

/// Where build pages are for the API at `api`, when that can be told.
fn derived_web(api: &Url) -> Option<String> {
    if api.host_str() == Some("api.travis-ci.com") {
        return Some(HOSTED_WEB.to_owned());
    }
    let path = api.path().trim_end_matches('/');
    let site = path.strip_suffix("/api")?;
    Some(format!("{}{site}", api.origin().ascii_serialization()))
}

fn web_root(text: &str) -> Result<String, String> {
    let url = http_url(
        text,
        "the address people open Travis at, such as `https://app.travis-ci.com`",
    )?;
    Ok(url.as_str().trim_end_matches('/').to_owned())
}

/// GitHub's owner and repository names: letters, digits, `-`, `_` and `.`.
fn owner_and_name(text: &str) -> Result<(String, String), String> {
    let part = |p: &str| {
        !p.is_empty()
            && !matches!(p, "." | "..")
            && p.bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
    };
    text.trim()
        .split_once('/')
        .filter(|(owner, name)| part(owner) && part(name))
        .map(|(owner, name)| (owner.to_owned(), name.to_owned()))
        .ok_or_else(|| {
            format!("`{text}` is not a repository: expected `owner/name`, such as `octo-org/app`")
        })
}

/// A checked `with:` block.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct StageSpec {
    /// The branch to build; Travis takes the repository's default branch when none is given.
    pub branch: Option<String>,
    /// The commit to build, when not the branch's head.
    pub sha: Option<String>,
    /// Build config merged into `.travis.yml`.
    pub config: Option<Map<String, Value>>,
    /// How `config` merges, one of [`MERGE_MODES`].
    pub merge_mode: Option<String>,
    /// The build's message (the attempt key is added to it).
    pub message: Option<String>,
    /// How long the request may wait for its build, replacing the instance's.
    pub request_timeout_build: Option<Duration>,
}

/// The keys a stage takes, for messages.
const STAGE_KEYS: [&str; 6] = [
    "branch",
    "sha",
    "config",
    "merge_mode",
    "message",
    "request_timeout_build",
];

/// What `message` may not hold: baton's own marker of the attempt.
pub(crate) const MARKER: &str = "[baton-attempt ";

/// Checks a `with:` block (none at all is an empty one), returning the spec or every
/// problem.
///
/// In [`Mode::Templates`] the spec may hold placeholders where templates stand; only the
/// errors are meant to be used.
pub fn parse_stage(with: &Value, mode: Mode) -> Result<StageSpec, Vec<FieldError>> {
    let empty = Map::new();
    let map = match with {
        Value::Null => &empty,
        Value::Object(map) => map,
        _ => {
            return Err(vec![FieldError::new(
                "branch",
                format!(
                    "expected a table with any of {}, or no `with` at all",
                    STAGE_KEYS.join(", ")
                ),
            )]);
        }
    };
    let mut errors = Vec::new();
    for key in map.keys() {
        if !STAGE_KEYS.contains(&key.as_str()) {
            errors.push(FieldError::new(
                key,
                baton_core::typed::unknown_key(key, &STAGE_KEYS),
            ));
        }
    }
    let mut spec = StageSpec::default();
    let mut text = |key: &str, valid: &dyn Fn(&str) -> bool, expected: &str| match map.get(key) {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) if mode.is_template(s) || valid(s) => Some(s.clone()),
        Some(_) => {
            errors.push(FieldError::new(key, expected));
            None
        }
    };
    spec.branch = text(
        "branch",
        &|s| !s.trim().is_empty() && !s.contains(['\n', '\r', '\0']),
        "expected a branch name, such as `main`",
    );
    spec.sha = text(
        "sha",
        &|s| (7..=40).contains(&s.len()) && s.bytes().all(|b| b.is_ascii_hexdigit()),
        "expected a commit SHA: 7 to 40 hexadecimal digits",
    );
    spec.merge_mode = text(
        "merge_mode",
        &|s| MERGE_MODES.contains(&s),
        &format!("expected one of {}", MERGE_MODES.join(", ")),
    );
    spec.message = text(
        "message",
        &|s| !s.contains('\0') && !s.contains(MARKER),
        "expected text without NUL and without `[baton-attempt …]`, which baton adds itself",
    );
    let timeout = text(
        "request_timeout_build",
        &|s| HumanDuration::parse(s).is_ok(),
        "expected a duration, such as `10m`",
    );
    spec.config = match map.get("config") {
        None | Some(Value::Null) => None,
        Some(Value::Object(config)) => Some(config.clone()),
        Some(Value::String(s)) if mode.is_template(s) => None,
        Some(_) => {
            errors.push(FieldError::new(
                "config",
                "expected a table of build config (as in .travis.yml), such as `{ env: { global: ['A=1'] } }`",
            ));
            None
        }
    };
    spec.request_timeout_build = timeout
        .filter(|t| !mode.is_template(t))
        .and_then(|t| HumanDuration::parse(&t).ok())
        .and_then(|d| {
            duration_in_range(
                "request_timeout_build",
                Some(d),
                DEFAULT_REQUEST_TIMEOUT_BUILD,
                LONGEST_REQUEST_TIMEOUT_BUILD,
                &mut errors,
            )
        });
    if errors.is_empty() {
        Ok(spec)
    } else {
        Err(errors)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    use FieldError as F;

    #[test]
    fn the_hosted_api_is_the_default_and_its_pages_are_on_the_app() {
        let c = parse_instance(&json!({"repo": "octo/app", "token": {"env": "T"}})).unwrap();
        assert_eq!(c.api.as_str(), "https://api.travis-ci.com/");
        assert_eq!(c.web, "https://app.travis-ci.com");
        assert_eq!((c.owner.as_str(), c.name.as_str()), ("octo", "app"));
        assert_eq!(c.slug(), "octo/app");
        assert_eq!(
            (
                c.request_timeout_build,
                c.poll_initial,
                c.poll_max,
                c.request_timeout
            ),
            (
                DEFAULT_REQUEST_TIMEOUT_BUILD,
                DEFAULT_POLL_INITIAL,
                DEFAULT_POLL_MAX,
                DEFAULT_REQUEST_TIMEOUT
            )
        );
    }

    #[test]
    fn enterprise_pages_are_the_host_without_api_and_other_hosts_need_web_url() {
        let c = parse_instance(&json!({
            "url": "https://travis.example.com/api/", "repo": "o/r", "token": {"file": "/t"},
            "request_timeout_build": "10m", "poll_initial": "1s", "poll_max": "2s",
            "request_timeout": "3s",
        }))
        .unwrap();
        assert_eq!(c.api.as_str(), "https://travis.example.com/api/");
        assert_eq!(c.web, "https://travis.example.com");
        assert_eq!(c.request_timeout_build, Duration::from_secs(600));
        let c = parse_instance(&json!({
            "url": "https://ci.example.com:8443/travis/api", "repo": "o/r", "token": {"env": "T"},
        }))
        .unwrap();
        assert_eq!(c.web, "https://ci.example.com:8443/travis");
        let errors = parse_instance(&json!({
            "url": "http://127.0.0.1:9000", "repo": "o/r", "token": {"env": "T"},
        }))
        .unwrap_err();
        assert_eq!(F::paths(&errors), ["web_url"]);
        assert!(errors[0].message.contains("cannot tell"), "{errors:?}");
        let c = parse_instance(&json!({
            "url": "http://127.0.0.1:9000", "web_url": "http://127.0.0.1:9000/", "repo": "o/r",
            "token": {"env": "T"},
        }))
        .unwrap();
        assert_eq!(c.web, "http://127.0.0.1:9000");
        assert_eq!(c.api.as_str(), "http://127.0.0.1:9000/");
    }

    #[test]
    fn every_instance_problem_is_reported_at_once() {
        let errors = parse_instance(&json!({
            "url": "https://app.travis-ci.com",
            "repo": "just-a-name",
            "token": "literal-token",
            "web_url": "ftp://x",
            "request_timeout_build": "2d",
            "poll_initial": "10s",
            "poll_max": "5s",
            "request_timeout": "1h",
            "colour": "red",
        }))
        .unwrap_err();
        assert_eq!(
            F::paths(&errors),
            [
                "url",
                "repo",
                "token",
                "web_url",
                "request_timeout_build",
                "poll_max",
                "request_timeout",
                "colour"
            ]
        );
        assert!(errors[0].message.contains("web app"), "{errors:?}");
        assert!(errors[2].message.contains("literal secret"), "{errors:?}");
        let missing = parse_instance(&json!({})).unwrap_err();
        assert_eq!(F::paths(&missing), ["repo", "token"]);
        for (url, needle) in [
            ("https://api.travis-ci.org", "closed"),
            ("https://api.travis-ci.com/v3", "`/v3`"),
            ("https://user:pw@api.travis-ci.com", "credentials"),
            ("https://api.travis-ci.com/?x=1", "query"),
            ("not a url", "not a URL"),
        ] {
            let errors = parse_instance(&json!({"url": url, "repo": "o/r", "token": {"env": "T"}}))
                .unwrap_err();
            assert_eq!(F::paths(&errors), ["url"], "{url}");
            assert!(errors[0].message.contains(needle), "{url}: {errors:?}");
        }
        for repo in ["o/r/x", "/r", "o/", "o/..", "o r/x"] {
            let errors = parse_instance(&json!({"repo": repo, "token": {"env": "T"}})).unwrap_err();
            assert_eq!(F::paths(&errors), ["repo"], "{repo}");
        }
    }

    #[test]
    fn stage_forms() {
        let s = parse_stage(
            &json!({"branch": "main", "sha": "0123abcd", "config": {"env": {"global": ["A=1"]}},
                    "merge_mode": "deep_merge_append", "message": "deploy v1",
                    "request_timeout_build": "10m"}),
            Mode::Rendered,
        )
        .unwrap();
        assert_eq!(s.branch.as_deref(), Some("main"));
        assert_eq!(s.sha.as_deref(), Some("0123abcd"));
        assert_eq!(s.config.unwrap()["env"]["global"][0], json!("A=1"));
        assert_eq!(s.merge_mode.as_deref(), Some("deep_merge_append"));
        assert_eq!(s.message.as_deref(), Some("deploy v1"));
        assert_eq!(s.request_timeout_build, Some(Duration::from_secs(600)));
        assert_eq!(
            parse_stage(&Value::Null, Mode::Rendered),
            Ok(StageSpec::default())
        );
        assert_eq!(
            parse_stage(&json!({}), Mode::Rendered),
            Ok(StageSpec::default())
        );
        let templated = json!({"branch": "${{ .event.ref }}", "sha": "${{ .event.after }}",
            "config": "${{ .x }}", "merge_mode": "${{ .m }}", "request_timeout_build": "${{ .t }}"});
        assert!(parse_stage(&templated, Mode::Templates).is_ok());
        assert_eq!(
            F::paths(&parse_stage(&templated, Mode::Rendered).unwrap_err()),
            ["sha", "merge_mode", "request_timeout_build", "config"]
        );
    }

    #[test]
    fn every_stage_problem_is_reported_at_once() {
        let errors = parse_stage(
            &json!({"brnch": "main", "branch": "", "sha": "xyz", "config": [1],
                    "merge_mode": "squash", "message": "a [baton-attempt r/s/1] b",
                    "request_timeout_build": "0s"}),
            Mode::Templates,
        )
        .unwrap_err();
        assert_eq!(
            F::paths(&errors),
            [
                "brnch",
                "branch",
                "sha",
                "merge_mode",
                "message",
                "config",
                "request_timeout_build"
            ]
        );
        assert!(
            errors[0].message.contains("did you mean `branch`"),
            "{errors:?}"
        );
        assert!(
            errors[3].message.contains("deep_merge_append"),
            "{errors:?}"
        );
        assert_eq!(
            F::paths(
                &parse_stage(&json!({"request_timeout_build": "2d"}), Mode::Rendered).unwrap_err()
            ),
            ["request_timeout_build"]
        );
        assert_eq!(
            F::paths(&parse_stage(&json!("main"), Mode::Rendered).unwrap_err()),
            ["branch"]
        );
    }

    #[test]
    fn the_docs_table_lists_every_instance_key() {
        let doc =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/adapters/travis.md");
        baton_adapter_kit::docs::check_doc_keys::<InstanceKeys>(&doc, "Instance config");
    }
}
