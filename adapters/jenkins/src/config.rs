//! The instance block (`[adapters.<name>]`) and the stage's `with:` block, checked in one
//! pass that reports every problem with its key path.

use std::time::Duration;

use baton_core::secret::deserialize_optional_reference;
use baton_core::typed::{
    checked, duration_or_default, is_relative_file_path, poll_range, reported, text_entries,
    unknown_stage_keys,
};
use baton_core::{FieldError, HumanDuration, SecretRef, read_table};
use reqwest::Url;
use serde::{Deserialize, Deserializer};
use serde_json::{Map, Value};

/// The parameter baton fills with the attempt key when the job defines it.
pub const ATTEMPT_PARAMETER: &str = "BATON_ATTEMPT";

/// How an `UNSTABLE` build counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Unstable {
    /// The stage fails (the default, as in Spinnaker).
    #[default]
    Failure,
    /// The stage succeeds with warnings.
    Success,
}

impl Unstable {
    /// The word used in config files and references.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Failure => "failure",
            Self::Success => "success",
        }
    }

    /// Parses [`Unstable::as_str`] output.
    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "failure" => Some(Self::Failure),
            "success" => Some(Self::Success),
            _ => None,
        }
    }
}

/// How baton authenticates to the controller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Credentials<S> {
    /// No credentials: anonymous access, with a crumb for every POST.
    Anonymous,
    /// `user` and an API token: HTTP Basic, no crumb needed (Jenkins 2.96 and later).
    Token {
        /// The user name.
        user: String,
        /// The API token.
        token: S,
    },
    /// `user` and a password: HTTP Basic plus a crumb bound to the session cookie.
    Password {
        /// The user name.
        user: String,
        /// The password.
        password: S,
    },
}

impl<S> Credentials<S> {
    /// The user name, if any.
    pub fn user(&self) -> Option<&str> {
        match self {
            Self::Anonymous => None,
            Self::Token { user, .. } | Self::Password { user, .. } => Some(user),
        }
    }

    /// Replaces the secret.
    pub fn map<T, E>(self, f: impl FnOnce(S) -> Result<T, E>) -> Result<Credentials<T>, E> {
        Ok(match self {
            Self::Anonymous => Credentials::Anonymous,
            Self::Token { user, token } => Credentials::Token {
                user,
                token: f(token)?,
            },
            Self::Password { user, password } => Credentials::Password {
                user,
                password: f(password)?,
            },
        })
    }
}

/// A checked instance block.
#[derive(Debug, Clone, PartialEq)]
pub struct InstanceConfig {
    /// The controller's root URL, always ending in `/`.
    pub url: Url,
    /// How to authenticate.
    pub credentials: Credentials<SecretRef>,
    /// How `UNSTABLE` counts unless a stage says otherwise.
    pub unstable: Unstable,
    /// The first poll hint.
    pub poll_initial: Duration,
    /// The longest poll hint.
    pub poll_max: Duration,
    /// The bound on one HTTP request.
    pub request_timeout: Duration,
    /// How long a stopped build has before `term`, and then before `kill`.
    pub stop_grace: Duration,
}

/// The defaults of the optional instance keys.
pub const DEFAULT_POLL_INITIAL: Duration = Duration::from_secs(2);
/// The default `poll_max`.
pub const DEFAULT_POLL_MAX: Duration = Duration::from_secs(30);
/// The default `request_timeout`.
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// The default `stop_grace`.
pub const DEFAULT_STOP_GRACE: Duration = Duration::from_secs(30);
/// The longest `poll_max` (and `stop_grace`), and the longest `request_timeout`.
pub use baton_core::typed::{LONGEST_POLL, LONGEST_REQUEST};

/// The instance block as written in `[adapters.<name>]` with `kind = "jenkins"`, before the
/// checks serde cannot make ([`parse_instance`] makes them).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InstanceKeys {
    /// The controller's root URL, `http://` or `https://`, with its path prefix if it has
    /// one (`https://ci.example.com/jenkins`); no credentials, query or fragment. Required.
    pub url: String,
    /// The Jenkins user: a non-empty name without `:`, needed with `token` or `password`.
    /// Default: none (anonymous access).
    #[serde(default)]
    pub user: Option<String>,
    /// A secret reference to an API token of `user` (HTTP Basic, no crumb needed).
    /// Default: none.
    #[serde(default, deserialize_with = "deserialize_optional_reference")]
    pub token: Option<SecretRef>,
    /// A secret reference to `user`'s password, instead of `token` (then every POST carries
    /// a crumb). Default: none.
    #[serde(default, deserialize_with = "deserialize_optional_reference")]
    pub password: Option<SecretRef>,
    /// How an `UNSTABLE` build counts unless a stage says otherwise. Default: `failure`.
    #[serde(default)]
    pub unstable: Unstable,
    /// The first poll hint; over 0 s, at most 1 h. Default: `2s`.
    #[serde(default)]
    pub poll_initial: Option<HumanDuration>,
    /// The longest poll hint; over 0 s, at most 1 h, not shorter than `poll_initial`.
    /// Default: `30s`.
    #[serde(default)]
    pub poll_max: Option<HumanDuration>,
    /// The bound on one HTTP request; over 0 s, at most 5 m. Default: `30s`.
    #[serde(default)]
    pub request_timeout: Option<HumanDuration>,
    /// How long a stopped build has before `term`, and then before `kill`; over 0 s, at
    /// most 1 h. Default: `30s`.
    #[serde(default)]
    pub stop_grace: Option<HumanDuration>,
}

/// Checks an instance block, returning the config or every problem.
pub fn parse_instance(config: &Value) -> Result<InstanceConfig, Vec<FieldError>> {
    read_table::<InstanceKeys>(config).check(config, check_instance)
}

/// The checks serde cannot make. A key that already failed to read was dropped (its default
/// stands in) and counts as given, so it causes no second problem here.
fn check_instance(keys: InstanceKeys, errors: &mut Vec<FieldError>) -> Option<InstanceConfig> {
    let has_user = keys.user.is_some() || reported(errors, "user");
    let has_token = keys.token.is_some() || reported(errors, "token");
    let has_password = keys.password.is_some() || reported(errors, "password");

    let url = checked("url", parse_root_url(&keys.url), errors);
    let user = match keys.user {
        Some(user) if user.is_empty() || user.contains(':') => {
            errors.push(FieldError::new(
                "user",
                "expected a Jenkins user name: a non-empty string without `:`",
            ));
            None
        }
        user => user,
    };
    let credentials = match (has_token, has_password) {
        (true, true) => {
            errors.push(FieldError::new(
                "password",
                "give `token` (an API token, preferred) or `password`, not both",
            ));
            None
        }
        (false, false) if has_user => {
            errors.push(FieldError::new(
                "token",
                "missing: `user` needs an API token (`token = { env = \"JENKINS_TOKEN\" }`, made on the user's Security page in Jenkins) or a `password`",
            ));
            None
        }
        (false, false) => Some(Credentials::Anonymous),
        (true, false) => match (user, keys.token) {
            (Some(user), Some(token)) => Some(Credentials::Token { user, token }),
            (None, _) if !has_user => {
                errors.push(FieldError::new(
                    "user",
                    "missing: an API token belongs to a user; give the user name",
                ));
                None
            }
            _ => None,
        },
        (false, true) => match (user, keys.password) {
            (Some(user), Some(password)) => Some(Credentials::Password { user, password }),
            (None, _) if !has_user => {
                errors.push(FieldError::new(
                    "user",
                    "missing: a password belongs to a user; give the user name",
                ));
                None
            }
            _ => None,
        },
    };

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
    Some(InstanceConfig {
        url: url?,
        credentials: credentials?,
        unstable: keys.unstable,
        poll_initial,
        poll_max,
        request_timeout,
        stop_grace,
    })
}

fn parse_root_url(text: &str) -> Result<Url, String> {
    let mut url = Url::parse(text.trim()).map_err(|e| {
        format!("`{text}` is not a URL ({e}): expected the controller's root, such as `https://jenkins.example.com/`")
    })?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(format!("`{text}` is not an http:// or https:// URL"));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(format!("`{text}` has no host"));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(
            "credentials do not belong in the URL: give `user` and `token` instead".to_owned(),
        );
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err(format!(
            "`{text}` has a query or fragment: give the controller's root URL only"
        ));
    }
    if !url.path().ends_with('/') {
        let path = format!("{}/", url.path());
        url.set_path(&path);
    }
    Ok(url)
}

/// What `unstable` takes, for messages.
const UNSTABLE_EXPECTED: &str = "expected `failure` (an UNSTABLE build fails the stage, the default) or `success` (it succeeds with warnings)";

impl<'de> Deserialize<'de> for Unstable {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let value = Value::deserialize(d)?;
        value
            .as_str()
            .and_then(Unstable::parse)
            .ok_or_else(|| serde::de::Error::custom(UNSTABLE_EXPECTED))
    }
}

fn parse_unstable(value: &Value, path: &str, errors: &mut Vec<FieldError>) -> Unstable {
    match value.as_str().and_then(Unstable::parse) {
        Some(u) => u,
        None => {
            errors.push(FieldError::new(path, UNSTABLE_EXPECTED));
            Unstable::default()
        }
    }
}

/// Whether template strings may stand where another type is expected.
pub use baton_core::adapter::InputMode as Mode;

fn is_template(mode: Mode, text: &str) -> bool {
    mode.is_template(text)
}

/// A checked `with:` block.
#[derive(Debug, Clone, PartialEq)]
pub struct StageSpec {
    /// The job's path: one name per folder level, each as Jenkins stores it.
    pub job: JobPath,
    /// Parameters, values already turned into text, in the order written.
    pub parameters: Vec<(String, String)>,
    /// The artifact whose contents become the `properties` output.
    pub properties_artifact: Option<String>,
    /// How `UNSTABLE` counts for this stage, when it overrides the instance.
    pub unstable: Option<Unstable>,
}

const STAGE_KEYS: &str = "job, parameters, properties_artifact, unstable";

/// A job's full name split into its folder levels.
///
/// Each name is as Jenkins stores it. A multibranch project stores branch `feature/foo` as
/// `feature%2Ffoo`: write `repo/feature%2Ffoo` in the string form, or the list form
/// `[repo, feature/foo]`, whose items are encoded the way multibranch projects encode them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobPath(pub Vec<String>);

impl JobPath {
    /// `a/b/c`, as written in the string form.
    pub fn display(&self) -> String {
        self.0.join("/")
    }

    /// The path below the controller's root: `job/a/job/b/`, each name percent-encoded on
    /// its own (so a stored `%2F` is sent as `%252F`), never the `/job/` separators.
    pub fn url_path(&self) -> String {
        let mut path = String::new();
        for name in &self.0 {
            path.push_str("job/");
            path.push_str(&encode_segment(name));
            path.push('/');
        }
        path
    }
}

/// Percent-encodes every byte of `text` outside the URL's unreserved set.
pub use baton_core::wire::encode_segment;

/// How a multibranch project stores a branch name as a job name: `%` and `/` escaped.
pub fn encode_branch(name: &str) -> String {
    name.replace('%', "%25").replace('/', "%2F")
}

/// Checks a `with:` block, returning the spec or every problem.
///
/// In [`Mode::Templates`] the spec may hold placeholders where templates stand; only the
/// errors are meant to be used.
pub fn parse_stage(with: &Value, mode: Mode) -> Result<StageSpec, Vec<FieldError>> {
    let mut errors = Vec::new();
    let Value::Object(map) = with else {
        return Err(vec![FieldError::new(
            "job",
            format!(
                "missing: expected a table with `job` (the job's path, `folder/job`) and optional {STAGE_KEYS}"
            ),
        )]);
    };
    unknown_stage_keys("jenkins", STAGE_KEYS, map, &mut errors);
    let job = match map.get("job") {
        None => {
            errors.push(FieldError::new(
                "job",
                "missing the job name: the job's path, such as `team/deploy` for job `deploy` in folder `team`",
            ));
            None
        }
        Some(value) => parse_job(value, mode, &mut errors),
    };
    let parameters = match map.get("parameters") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::String(text)) if is_template(mode, text) => Vec::new(),
        Some(Value::Object(params)) => parse_parameters(params, &mut errors),
        Some(_) => {
            errors.push(FieldError::new(
                "parameters",
                "expected a table of parameter names and values (strings, numbers or booleans)",
            ));
            Vec::new()
        }
    };
    let properties_artifact = match map.get("properties_artifact") {
        None | Some(Value::Null) => None,
        Some(Value::String(text)) if is_template(mode, text) => Some(text.clone()),
        Some(Value::String(path)) if is_artifact_path(path) => Some(path.clone()),
        Some(_) => {
            errors.push(FieldError::new(
                "properties_artifact",
                "expected the archived file's path relative to the build's artifacts, such as `build.properties` or `out/result.json` (no `..`, no leading `/`)",
            ));
            None
        }
    };
    let unstable = match map.get("unstable") {
        None | Some(Value::Null) => None,
        Some(Value::String(text)) if is_template(mode, text) => None,
        Some(value) => Some(parse_unstable(value, "unstable", &mut errors)),
    };
    match job {
        Some(job) if errors.is_empty() => Ok(StageSpec {
            job,
            parameters,
            properties_artifact,
            unstable,
        }),
        _ => Err(errors),
    }
}

fn parse_job(value: &Value, mode: Mode, errors: &mut Vec<FieldError>) -> Option<JobPath> {
    match value {
        Value::String(text) if is_template(mode, text) => {
            Some(JobPath(vec!["template".to_owned()]))
        }
        Value::String(text) => {
            let names: Vec<String> = text
                .trim_matches('/')
                .split('/')
                .map(str::to_owned)
                .collect();
            if text.trim().is_empty() {
                errors.push(FieldError::new(
                    "job",
                    "the job name is empty: give the job's path, such as `team/deploy`",
                ));
                return None;
            }
            if let Some(bad) = names.iter().find(|n| !is_job_name(n)) {
                errors.push(FieldError::new(
                    "job",
                    format!(
                        "`{text}` has an empty or blank level `{bad}`: write folders as `a/b/c`"
                    ),
                ));
                return None;
            }
            Some(JobPath(names))
        }
        Value::Array(items) if !items.is_empty() => {
            let mut names = Vec::new();
            for (i, item) in items.iter().enumerate() {
                match item {
                    Value::String(text) if is_template(mode, text) => names.push("t".to_owned()),
                    Value::String(text) if is_job_name(text) => names.push(encode_branch(text)),
                    _ => errors.push(FieldError::new(
                        format!("job[{i}]"),
                        "expected a job, folder or branch name (a non-empty string)",
                    )),
                }
            }
            (names.len() == items.len()).then_some(JobPath(names))
        }
        _ => {
            errors.push(FieldError::new(
                "job",
                "expected the job's path as a string (`team/deploy`) or a list of names (`[repo, feature/foo]`)",
            ));
            None
        }
    }
}

fn is_job_name(name: &str) -> bool {
    !name.trim().is_empty() && !name.contains('\0') && name != "." && name != ".."
}

fn is_artifact_path(path: &str) -> bool {
    !path.contains(['\0', '\\']) && is_relative_file_path(path)
}

fn parse_parameters(
    params: &Map<String, Value>,
    errors: &mut Vec<FieldError>,
) -> Vec<(String, String)> {
    let name_problem = |name: &str| {
        if name.trim().is_empty() {
            Some("a parameter name is empty")
        } else if name == ATTEMPT_PARAMETER {
            Some(
                "baton sets BATON_ATTEMPT itself (to the attempt key) when the job defines it; remove it here",
            )
        } else {
            None
        }
    };
    text_entries(
        "parameters",
        params,
        name_problem,
        "expected a string, number or boolean: Jenkins parameters are text",
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
    fn instance_defaults_and_credentials() {
        let c = parse_instance(&json!({
            "url": "https://ci.example.com/jenkins",
            "user": "gw",
            "token": {"env": "JENKINS_TOKEN"},
        }))
        .unwrap();
        assert_eq!(c.url.as_str(), "https://ci.example.com/jenkins/");
        assert_eq!(
            c.credentials,
            Credentials::Token {
                user: "gw".into(),
                token: SecretRef::Env("JENKINS_TOKEN".into())
            }
        );
        assert_eq!(c.unstable, Unstable::Failure);
        assert_eq!(
            (c.poll_initial, c.poll_max, c.request_timeout, c.stop_grace),
            (
                DEFAULT_POLL_INITIAL,
                DEFAULT_POLL_MAX,
                DEFAULT_REQUEST_TIMEOUT,
                DEFAULT_STOP_GRACE
            )
        );
        let anonymous = parse_instance(&json!({"url": "http://127.0.0.1:8080"})).unwrap();
        assert_eq!(anonymous.credentials, Credentials::Anonymous);
        let password = parse_instance(&json!({
            "url": "http://ci/", "user": "u", "password": {"file": "/run/pw"},
            "unstable": "success", "poll_initial": "500ms", "poll_max": "1m",
            "request_timeout": "10s", "stop_grace": "5s",
        }))
        .unwrap();
        assert!(matches!(password.credentials, Credentials::Password { .. }));
        assert_eq!(password.unstable, Unstable::Success);
        assert_eq!(password.poll_initial, Duration::from_millis(500));
    }

    #[test]
    fn instance_reports_every_problem() {
        let errors = parse_instance(&json!({
            "url": "ftp://ci",
            "user": "",
            "token": "plain",
            "password": {"env": "P"},
            "unstable": "maybe",
            "poll_initial": "10s",
            "poll_max": "5s",
            "request_timeout": "0s",
            "stop_grace": 3,
            "colour": "red",
        }))
        .unwrap_err();
        assert_eq!(
            paths(&errors),
            // In the order the keys stand in the block.
            [
                "url",
                "user",
                "token",
                "password",
                "unstable",
                "poll_max",
                "request_timeout",
                "stop_grace",
                "colour"
            ]
        );
        assert!(errors[2].message.contains("literal secret"), "{errors:?}");
        assert!(
            errors[8]
                .message
                .contains("expected one of: url, user, token"),
            "{errors:?}"
        );
        // A required key that is missing leaves nothing to check the others against.
        let missing = parse_instance(&json!({"user": "u", "pasword": {"env": "P"}})).unwrap_err();
        assert_eq!(paths(&missing), ["pasword", "url"]);
        assert_eq!(missing[1].message, "missing required key `url`");
        assert!(
            missing[0].message.contains("did you mean `password`?"),
            "{missing:?}"
        );
        let user_only = parse_instance(&json!({"url": "http://ci", "user": "u"})).unwrap_err();
        assert_eq!(paths(&user_only), ["token"]);
        let no_user = parse_instance(&json!({"url": "http://ci", "token": {"env": "T"}}));
        assert_eq!(paths(&no_user.unwrap_err()), ["user"]);
        let creds_in_url = parse_instance(&json!({"url": "http://u:p@ci"})).unwrap_err();
        assert!(creds_in_url[0].message.contains("credentials"));
        assert_eq!(paths(&parse_instance(&json!([])).unwrap_err()), [""]);
    }

    #[test]
    fn stage_forms() {
        let s = parse_stage(
            &json!({"job": "team/backend/deploy", "parameters": {"IMAGE": "reg/app@sha256:ab", "N": 3, "DRY": false}, "properties_artifact": "out/build.properties", "unstable": "success"}),
            Mode::Rendered,
        )
        .unwrap();
        assert_eq!(s.job.url_path(), "job/team/job/backend/job/deploy/");
        assert_eq!(
            s.parameters,
            [
                ("IMAGE".to_owned(), "reg/app@sha256:ab".to_owned()),
                ("N".to_owned(), "3".to_owned()),
                ("DRY".to_owned(), "false".to_owned())
            ]
        );
        assert_eq!(s.unstable, Some(Unstable::Success));
        // A multibranch branch: stored as `feature%2Ffoo`, sent as `feature%252Ffoo`.
        let s = parse_stage(&json!({"job": "repo/feature%2Ffoo"}), Mode::Rendered).unwrap();
        assert_eq!(s.job.url_path(), "job/repo/job/feature%252Ffoo/");
        let s = parse_stage(&json!({"job": ["repo", "feature/foo"]}), Mode::Rendered).unwrap();
        assert_eq!(s.job.url_path(), "job/repo/job/feature%252Ffoo/");
        assert_eq!(s.job.display(), "repo/feature%2Ffoo");
        let s = parse_stage(&json!({"job": "/my job/ä/"}), Mode::Rendered).unwrap();
        assert_eq!(s.job.url_path(), "job/my%20job/job/%C3%A4/");
        // Templates stand where the rendered value will be.
        assert!(
            parse_stage(
                &json!({"job": "${{ .event.job }}", "parameters": "${{ .event.params }}", "unstable": "${{ .x }}"}),
                Mode::Templates
            )
            .is_ok()
        );
        assert!(
            parse_stage(
                &json!({"job": "${{ .x }}", "parameters": {"A": "${{ .y }}"}}),
                Mode::Templates
            )
            .is_ok()
        );
    }

    #[test]
    fn stage_reports_every_problem() {
        let errors = parse_stage(
            &json!({"jobb": "x", "parameters": {"BATON_ATTEMPT": "k", "L": [1], "": "x"}, "properties_artifact": "../etc/passwd", "unstable": 1}),
            Mode::Templates,
        )
        .unwrap_err();
        assert_eq!(
            paths(&errors),
            [
                "jobb",
                "job",
                "parameters.BATON_ATTEMPT",
                "parameters.L",
                "parameters.",
                "properties_artifact",
                "unstable"
            ]
        );
        assert_eq!(
            paths(&parse_stage(&json!({"job": "a//b"}), Mode::Rendered).unwrap_err()),
            ["job"]
        );
        assert_eq!(
            paths(&parse_stage(&json!({"job": ["a", 1]}), Mode::Rendered).unwrap_err()),
            ["job[1]"]
        );
        assert_eq!(
            paths(&parse_stage(&json!("deploy"), Mode::Rendered).unwrap_err()),
            ["job"]
        );
        assert_eq!(
            paths(
                &parse_stage(
                    &json!({"job": "a", "parameters": "${{ .x }}"}),
                    Mode::Rendered
                )
                .unwrap_err()
            ),
            ["parameters"]
        );
    }

    #[test]
    fn the_docs_table_lists_every_instance_key() {
        let doc =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/adapters/jenkins.md");
        baton_adapter_kit::docs::check_doc_keys::<InstanceKeys>(&doc, "Instance config");
    }
}
