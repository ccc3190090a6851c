//! The instance block (`[adapters.<name>]`) and the stage's `with:` block, each checked in
//! one pass that reports every problem with its key path.

use std::path::{Path, PathBuf};
use std::time::Duration;

use baton_core::component::{self, RESERVED_ENV};
use baton_core::typed::{checked, duration_or_default, unknown_key};
use baton_core::{FieldError, HumanDuration, read_table};
use serde::Deserialize;
use serde_json::Value;

/// Whether template strings may stand where another type is expected.
pub use baton_core::adapter::InputMode as Mode;

/// The engine's socket when neither `host` nor `DOCKER_HOST` names another.
pub const DEFAULT_HOST: &str = "unix:///var/run/docker.sock";
/// The default `stop_grace`.
pub const DEFAULT_STOP_GRACE: Duration = Duration::from_secs(10);
/// The longest `stop_grace`: a cancel is one adapter call, which the engine bounds at a
/// minute, and the stop must fit in it with the removal after.
pub const LONGEST_STOP_GRACE: Duration = Duration::from_secs(30);
/// The smallest `memory` the engine accepts (Docker refuses less than 6 MiB).
pub const SMALLEST_MEMORY: i64 = 6 * 1024 * 1024;
/// Where the container finds its input file (`$BATON_INPUT`) and writes its outputs
/// (`$BATON_OUTPUT`): a folder of its own, which no mount may cover.
pub const BATON_DIR: &str = "/baton";

/// The instance block as written in `[adapters.<name>]` with `kind = "docker"`, before the
/// checks serde cannot make ([`parse_instance`] makes them).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InstanceKeys {
    /// The engine's API: `unix:///path/to/docker.sock`, or `tcp://host:port` for an engine
    /// that listens in plain HTTP (no TLS). Default: `DOCKER_HOST` when set, else
    /// `unix:///var/run/docker.sock`.
    #[serde(default)]
    pub host: Option<String>,
    /// The folder holding each attempt's input file and, once its container ended, its
    /// result record, a non-empty path. Default: the program's (beside `exec`'s folder).
    #[serde(default)]
    pub state_dir: Option<String>,
    /// How long a container being cancelled or timed out has between `SIGTERM` (its stop
    /// signal) and `SIGKILL`; over 0 s, at most 30 s. Default: `10s`.
    #[serde(default)]
    pub stop_grace: Option<HumanDuration>,
}

/// A checked instance block.
#[derive(Debug, Clone, PartialEq)]
pub struct InstanceConfig {
    /// The engine's address.
    pub host: Host,
    /// Where attempts' records live.
    pub state_dir: PathBuf,
    /// The time between the stop signal and `SIGKILL`.
    pub stop_grace: Duration,
}

/// Where the engine listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Host {
    /// A unix socket at this absolute path.
    Unix(PathBuf),
    /// Plain HTTP at `host:port`.
    Tcp(String),
}

impl std::fmt::Display for Host {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Unix(path) => write!(f, "unix://{}", path.display()),
            Self::Tcp(address) => write!(f, "tcp://{address}"),
        }
    }
}

/// Checks an instance block, returning the config or every problem. `docker_host` is the
/// value of `DOCKER_HOST`, if set; attempts live under `default_state_dir` unless the block
/// names another folder.
pub fn parse_instance(
    config: &Value,
    docker_host: Option<&str>,
    default_state_dir: &Path,
) -> Result<InstanceConfig, Vec<FieldError>> {
    read_table::<InstanceKeys>(config).check(config, |keys, errors| {
        let host = match (&keys.host, docker_host) {
            (Some(text), _) => checked("host", parse_host(text), errors),
            (None, Some(text)) if !text.is_empty() => checked(
                "host",
                parse_host(text).map_err(|e| format!("from DOCKER_HOST: {e}")),
                errors,
            ),
            (None, _) => parse_host(DEFAULT_HOST).ok(),
        };
        let state_dir = match keys.state_dir {
            None => Some(default_state_dir.to_owned()),
            Some(dir) if dir.is_empty() || dir.contains('\0') => {
                errors.push(FieldError::new(
                    "state_dir",
                    "expected a folder path as a non-empty string",
                ));
                None
            }
            Some(dir) => Some(PathBuf::from(dir)),
        };
        let stop_grace = duration_or_default(
            "stop_grace",
            keys.stop_grace,
            DEFAULT_STOP_GRACE,
            LONGEST_STOP_GRACE,
            errors,
        );
        Some(InstanceConfig {
            host: host?,
            state_dir: state_dir?,
            stop_grace,
        })
    })
}

fn parse_host(text: &str) -> Result<Host, String> {
    let expected = "expected `unix:///path/to/docker.sock` or `tcp://host:port`";
    if let Some(path) = text.strip_prefix("unix://") {
        return if path.starts_with('/') && !path.contains('\0') {
            Ok(Host::Unix(PathBuf::from(path)))
        } else {
            Err(format!(
                "`{text}` does not name an absolute socket path: {expected}"
            ))
        };
    }
    let address = text
        .strip_prefix("tcp://")
        .or_else(|| text.strip_prefix("http://"));
    match address {
        Some(address)
            if address
                .rsplit_once(':')
                .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok())
                && !address.contains(['/', '@', ' ']) =>
        {
            Ok(Host::Tcp(address.to_owned()))
        }
        _ if text.starts_with("https://") || text.starts_with("ssh://") => Err(format!(
            "`{text}`: baton speaks to the engine over a unix socket or plain tcp only (no TLS, no ssh): {expected}"
        )),
        _ => Err(format!("`{text}` is not an engine address: {expected}")),
    }
}

/// When to pull the image before creating the container.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Pull {
    /// Every time, so that a moved tag is followed.
    Always,
    /// Only when the engine does not have the image.
    #[default]
    IfMissing,
    /// Never: a missing image fails the stage.
    Never,
}

impl Pull {
    const NAMES: [(&'static str, Self); 3] = [
        ("always", Self::Always),
        ("if-missing", Self::IfMissing),
        ("never", Self::Never),
    ];
}

/// The container's network.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Network {
    /// No network at all but loopback.
    #[default]
    None,
    /// The machine's own network stack.
    Host,
    /// A network of that name the engine has.
    Named(String),
}

impl Network {
    /// The engine's `NetworkMode`.
    pub fn mode(&self) -> &str {
        match self {
            Self::None => "none",
            Self::Host => "host",
            Self::Named(name) => name,
        }
    }
}

/// A folder or file of the machine given to the container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mount {
    /// The absolute path on the machine running the engine.
    pub host: String,
    /// The absolute path inside the container.
    pub container: String,
    /// Whether the container may only read it (the default).
    pub read_only: bool,
}

/// A checked `with:` block.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct StageSpec {
    /// The image to run.
    pub image: String,
    /// The component's input: `with.input`, else the whole `with:` block.
    pub input: Value,
    /// Extra environment variables, values as text.
    pub env: Vec<(String, String)>,
    /// When to pull the image.
    pub pull: Pull,
    /// The memory limit in bytes.
    pub memory: Option<i64>,
    /// The CPU limit in billionths of a CPU.
    pub nano_cpus: Option<i64>,
    /// The network.
    pub network: Network,
    /// The mounts.
    pub mounts: Vec<Mount>,
    /// The user (`name`, `uid` or `uid:gid`) the component runs as, when not the image's.
    pub user: Option<String>,
    /// The working folder, when not the image's.
    pub workdir: Option<String>,
    /// The entrypoint, when not the image's.
    pub entrypoint: Option<Vec<String>>,
    /// The command, when not the image's.
    pub command: Option<Vec<String>>,
}

/// The keys a stage takes.
pub const STAGE_KEYS: [&str; 12] = [
    "image",
    "input",
    "env",
    "pull",
    "memory",
    "cpus",
    "network",
    "mounts",
    "user",
    "workdir",
    "entrypoint",
    "command",
];

/// Variables baton sets in a container: those of every component, and ContainerOps' own.
pub const CONTAINER_ENV: [&str; 6] = [
    RESERVED_ENV[0],
    RESERVED_ENV[1],
    RESERVED_ENV[2],
    RESERVED_ENV[3],
    RESERVED_ENV[4],
    "CO_DATA",
];

/// Checks a `with:` block, returning the spec or every problem, in the order the keys stand.
///
/// In [`Mode::Templates`] the spec may hold placeholders where templates stand; only the
/// errors are meant to be used.
pub fn parse_stage(with: &Value, mode: Mode) -> Result<StageSpec, Vec<FieldError>> {
    let Value::Object(map) = with else {
        return Err(vec![FieldError::new(
            "image",
            "missing: a docker stage needs a `with:` table naming at least `image`",
        )]);
    };
    let mut errors = Vec::new();
    let mut spec = StageSpec {
        input: map.get("input").cloned().unwrap_or_else(|| with.clone()),
        ..StageSpec::default()
    };
    if !map.contains_key("image") {
        errors.push(FieldError::new(
            "image",
            "missing: the image to run, such as `registry.example.com/tools/lint:1`",
        ));
    }
    for (key, value) in map {
        let template = matches!(value, Value::String(s) if mode.is_template(s));
        if template || (value.is_null() && !matches!(key.as_str(), "image" | "input")) {
            continue;
        }
        let problem = read_key(&mut spec, key, value, mode, &mut errors);
        if let Some(message) = problem {
            errors.push(FieldError::new(key, message));
        }
    }
    if errors.is_empty() {
        Ok(spec)
    } else {
        Err(errors)
    }
}

/// Reads one key into `spec`: the problem with the value as a whole, if any (problems
/// inside it go to `errors` with their own paths).
fn read_key(
    spec: &mut StageSpec,
    key: &str,
    value: &Value,
    mode: Mode,
    errors: &mut Vec<FieldError>,
) -> Option<String> {
    let text = value.as_str();
    match key {
        "image" => match text {
            Some(image) if !image.is_empty() && !image.contains(char::is_whitespace) => {
                spec.image = image.to_owned();
            }
            _ => return Some("expected an image reference, such as `alpine:3.20`".into()),
        },
        "input" => {
            if !value.is_object() {
                return Some("expected a table: the component's input (CO_DATA)".into());
            }
        }
        "env" => spec.env = component::env_entries(value, mode, &CONTAINER_ENV, errors),
        "pull" => match Pull::NAMES.iter().find(|(name, _)| Some(*name) == text) {
            Some((_, pull)) => spec.pull = *pull,
            None => return Some("expected one of always, if-missing, never".into()),
        },
        "memory" => match memory_bytes(value) {
            Ok(bytes) => spec.memory = Some(bytes),
            Err(message) => return Some(message),
        },
        "cpus" => match value.as_f64() {
            Some(cpus) if (0.01..=1024.0).contains(&cpus) => {
                spec.nano_cpus = Some((cpus * 1e9).round() as i64);
            }
            _ => return Some("expected a number of CPUs from 0.01 to 1024, such as 0.5".into()),
        },
        "network" => match text {
            Some("none") => spec.network = Network::None,
            Some("host") => spec.network = Network::Host,
            Some(name) if is_network_name(name) => spec.network = Network::Named(name.into()),
            _ => {
                return Some(
                    "expected `none` (the default), `host`, or the name of a network the engine has"
                        .into(),
                );
            }
        },
        "mounts" => spec.mounts = mounts(value, errors),
        "user" => match text {
            Some(user) if !user.is_empty() && !user.contains(char::is_whitespace) => {
                spec.user = Some(user.to_owned());
            }
            _ => return Some("expected a user: a name, `uid` or `uid:gid`".into()),
        },
        "workdir" => match text {
            Some(dir) if is_absolute(dir) => spec.workdir = Some(dir.to_owned()),
            _ => return Some("expected an absolute path inside the container".into()),
        },
        "entrypoint" | "command" => {
            let expected = format!("expected an argv list such as [sh, -c, 'echo hi'] for `{key}`");
            let argv = component::argv_list(key, value, mode, &expected, errors);
            if key == "entrypoint" {
                spec.entrypoint = argv;
            } else {
                spec.command = argv;
            }
        }
        _ => return Some(unknown_key(key, &STAGE_KEYS)),
    }
    None
}

/// `256m`, `1g`, `512k`, `1048576b` or a plain number of bytes; at least 6 MiB.
fn memory_bytes(value: &Value) -> Result<i64, String> {
    let expected = "expected a memory size such as `256m` or `1g` (units b, k, m, g), at least 6m";
    let bytes = match value {
        Value::Number(n) => n.as_i64(),
        Value::String(text) => {
            let text = text.trim().to_ascii_lowercase();
            let split = text
                .find(|c: char| !c.is_ascii_digit())
                .unwrap_or(text.len());
            let (digits, unit) = text.split_at(split);
            let scale: i64 = match unit {
                "" | "b" => 1,
                "k" | "kb" => 1 << 10,
                "m" | "mb" => 1 << 20,
                "g" | "gb" => 1 << 30,
                _ => return Err(expected.into()),
            };
            digits
                .parse::<i64>()
                .ok()
                .and_then(|n| n.checked_mul(scale))
        }
        _ => None,
    };
    match bytes {
        Some(bytes) if bytes >= SMALLEST_MEMORY => Ok(bytes),
        _ => Err(expected.into()),
    }
}

fn is_network_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphanumeric())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
}

fn is_absolute(path: &str) -> bool {
    path.starts_with('/') && !path.contains('\0')
}

fn under_baton_dir(path: &str) -> bool {
    let path = path.trim_end_matches('/');
    path.is_empty() || path == BATON_DIR || path.starts_with(&format!("{BATON_DIR}/"))
}

/// The `mounts` list, every problem in it at its own path.
fn mounts(value: &Value, errors: &mut Vec<FieldError>) -> Vec<Mount> {
    let Value::Array(items) = value else {
        errors.push(FieldError::new(
            "mounts",
            "expected a list of `{ host: /abs/path, container: /abs/path, read_only: true }`",
        ));
        return Vec::new();
    };
    let mut mounts = Vec::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        let at = |key: &str| format!("mounts[{i}].{key}");
        let Value::Object(entry) = item else {
            errors.push(FieldError::new(
                format!("mounts[{i}]"),
                "expected a table `{ host: /abs/path, container: /abs/path }`",
            ));
            continue;
        };
        for key in entry.keys() {
            if !matches!(key.as_str(), "host" | "container" | "read_only") {
                errors.push(FieldError::new(
                    at(key),
                    unknown_key(key, &["host", "container", "read_only"]),
                ));
            }
        }
        let path = |key: &str, errors: &mut Vec<FieldError>| match entry.get(key) {
            Some(Value::String(path)) if is_absolute(path) => Some(path.clone()),
            _ => {
                errors.push(FieldError::new(at(key), "expected an absolute path"));
                None
            }
        };
        let host = path("host", errors);
        let container = path("container", errors);
        if let Some(container) = &container
            && under_baton_dir(container)
        {
            errors.push(FieldError::new(
                at("container"),
                format!("`{container}` would cover `/` or baton's own `{BATON_DIR}` folder"),
            ));
        }
        let read_only = match entry.get("read_only") {
            None => true,
            Some(Value::Bool(read_only)) => *read_only,
            Some(_) => {
                errors.push(FieldError::new(
                    at("read_only"),
                    "expected true (the default) or false",
                ));
                true
            }
        };
        if let (Some(host), Some(container)) = (host, container) {
            mounts.push(Mount {
                host,
                container,
                read_only,
            });
        }
    }
    mounts
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    use FieldError as F;

    fn here() -> &'static Path {
        Path::new("/var/lib/baton/docker")
    }

    #[test]
    fn instance_defaults_follow_docker_host() {
        let c = parse_instance(&json!({}), None, here()).unwrap();
        assert_eq!(c.host, Host::Unix("/var/run/docker.sock".into()));
        assert_eq!(c.state_dir, here());
        assert_eq!(c.stop_grace, DEFAULT_STOP_GRACE);
        let c = parse_instance(&Value::Null, Some("tcp://127.0.0.1:2375"), here()).unwrap();
        assert_eq!(c.host, Host::Tcp("127.0.0.1:2375".into()));
        assert_eq!(c.host.to_string(), "tcp://127.0.0.1:2375");
        let c = parse_instance(
            &json!({"host": "unix:///run/d.sock", "state_dir": "/s", "stop_grace": "2s"}),
            Some("tcp://ignored:1"),
            here(),
        )
        .unwrap();
        assert_eq!(c.host.to_string(), "unix:///run/d.sock");
        assert_eq!(c.state_dir, Path::new("/s"));
        assert_eq!(c.stop_grace, Duration::from_secs(2));
        let errors = parse_instance(&json!({}), Some("ssh://me@box"), here()).unwrap_err();
        assert_eq!(F::paths(&errors), ["host"]);
        assert!(errors[0].message.contains("from DOCKER_HOST"), "{errors:?}");
    }

    #[test]
    fn every_instance_problem_is_reported_at_once() {
        let errors = parse_instance(
            &json!({"host": "https://docker:2376", "state_dir": "", "stop_grace": "1m", "hots": 1}),
            None,
            here(),
        )
        .unwrap_err();
        assert_eq!(
            F::paths(&errors),
            ["host", "state_dir", "stop_grace", "hots"]
        );
        assert!(errors[0].message.contains("no TLS"), "{errors:?}");
        for bad in [
            "unix://relative.sock",
            "tcp://nohost",
            "tcp://:1",
            "tcp://h:99999",
            "docker.sock",
        ] {
            let errors = parse_instance(&json!({ "host": bad }), None, here()).unwrap_err();
            assert_eq!(F::paths(&errors), ["host"], "{bad}");
        }
        let errors = parse_instance(&json!({"stop_grace": "0s"}), None, here()).unwrap_err();
        assert_eq!(F::paths(&errors), ["stop_grace"]);
    }

    #[test]
    fn a_full_stage_reads_into_its_spec() {
        let with = json!({
            "image": "bb:1", "input": {"a": 1}, "env": {"A": "x", "N": 2},
            "pull": "never", "memory": "64m", "cpus": 0.5, "network": "host",
            "mounts": [{"host": "/srv/in", "container": "/in"},
                       {"host": "/srv/out", "container": "/out", "read_only": false}],
            "user": "1000:1000", "workdir": "/work",
            "entrypoint": ["/bin/sh"], "command": ["-c", "echo hi", 3],
        });
        let spec = parse_stage(&with, Mode::Rendered).unwrap();
        assert_eq!(spec.image, "bb:1");
        assert_eq!(spec.input, json!({"a": 1}));
        assert_eq!(
            spec.env,
            [("A".into(), "x".into()), ("N".into(), "2".into())]
        );
        assert_eq!(spec.pull, Pull::Never);
        assert_eq!(spec.memory, Some(64 << 20));
        assert_eq!(spec.nano_cpus, Some(500_000_000));
        assert_eq!(spec.network, Network::Host);
        assert_eq!(spec.mounts.len(), 2);
        assert!(spec.mounts[0].read_only);
        assert!(!spec.mounts[1].read_only);
        assert_eq!(spec.user.as_deref(), Some("1000:1000"));
        assert_eq!(spec.workdir.as_deref(), Some("/work"));
        assert_eq!(spec.entrypoint, Some(vec!["/bin/sh".to_owned()]));
        assert_eq!(
            spec.command,
            Some(vec!["-c".to_owned(), "echo hi".to_owned(), "3".to_owned()])
        );
    }

    #[test]
    fn a_bare_stage_takes_the_defaults_and_its_whole_block_as_input() {
        let with = json!({"image": "bb:1", "version": "1.2"});
        let errors = parse_stage(&with, Mode::Rendered).unwrap_err();
        assert_eq!(F::paths(&errors), ["version"]);
        let with = json!({"image": "bb:1"});
        let spec = parse_stage(&with, Mode::Rendered).unwrap();
        assert_eq!(spec.input, with);
        assert_eq!(spec.pull, Pull::IfMissing);
        assert_eq!(spec.network, Network::None);
        assert_eq!(spec.network.mode(), "none");
        assert_eq!(Network::Named("ci".into()).mode(), "ci");
        assert!(spec.mounts.is_empty() && spec.env.is_empty());
        assert_eq!(
            F::paths(&parse_stage(&json!({}), Mode::Rendered).unwrap_err()),
            ["image"]
        );
        assert_eq!(
            F::paths(&parse_stage(&json!("bb:1"), Mode::Rendered).unwrap_err()),
            ["image"]
        );
    }

    #[test]
    fn every_stage_problem_is_reported_at_once_with_its_path() {
        let with = json!({
            "imag": "x", "image": "two words", "input": [1], "env": {"BATON_OUTPUT": "/x", "CO_DATA": "{}", "OK": {}},
            "pull": "sometimes", "memory": "1m", "cpus": 0, "network": "container:abc",
            "mounts": [{"host": "rel", "container": "/baton/x", "read_only": "yes", "mode": 1}, 7],
            "user": "", "workdir": "rel", "entrypoint": [], "command": ["", {}],
        });
        let errors = parse_stage(&with, Mode::Templates).unwrap_err();
        assert_eq!(
            F::paths(&errors),
            [
                "imag",
                "image",
                "input",
                "env.BATON_OUTPUT",
                "env.CO_DATA",
                "env.OK",
                "pull",
                "memory",
                "cpus",
                "network",
                "mounts[0].mode",
                "mounts[0].host",
                "mounts[0].container",
                "mounts[0].read_only",
                "mounts[1]",
                "user",
                "workdir",
                "entrypoint",
                "command[0]",
                "command[1]",
            ]
        );
        assert!(
            errors[0].message.contains("did you mean `image`"),
            "{errors:?}"
        );
        assert!(errors[12].message.contains("/baton"), "{errors:?}");
        let errors = parse_stage(&json!({"image": "x", "mounts": {}}), Mode::Rendered).unwrap_err();
        assert_eq!(F::paths(&errors), ["mounts"]);
        let errors = parse_stage(
            &json!({"image": "x", "mounts": [{"host": "/a", "container": "/"}]}),
            Mode::Rendered,
        )
        .unwrap_err();
        assert_eq!(F::paths(&errors), ["mounts[0].container"]);
    }

    #[test]
    fn templates_stand_for_any_value_only_before_rendering() {
        let with = json!({"image": "${{ .event.image }}", "memory": "${{ .m }}", "cpus": "${{ .c }}",
            "env": "${{ .e }}", "command": "${{ .argv }}", "mounts": "${{ .m }}"});
        assert!(parse_stage(&with, Mode::Templates).is_ok());
        assert_eq!(
            F::paths(&parse_stage(&with, Mode::Rendered).unwrap_err()),
            ["image", "memory", "cpus", "env", "command", "mounts"]
        );
    }

    #[test]
    fn memory_sizes() {
        for (text, bytes) in [
            (json!("64m"), 64 << 20),
            (json!("1G"), 1 << 30),
            (json!("7000k"), 7000 << 10),
            (json!("6291456b"), 6 << 20),
            (json!(6291456), 6 << 20),
            (json!("8mb"), 8 << 20),
        ] {
            assert_eq!(memory_bytes(&text), Ok(bytes), "{text}");
        }
        for bad in [
            json!("5m"),
            json!("m"),
            json!("1t"),
            json!("-8m"),
            json!(true),
            json!("99999999999999999999g"),
        ] {
            assert!(memory_bytes(&bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn the_docs_table_lists_every_instance_key() {
        let doc = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/adapters/docker.md");
        baton_adapter_kit::docs::check_doc_keys::<InstanceKeys>(&doc, "Instance config");
    }
}
