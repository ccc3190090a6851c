//! A small harness for end-to-end tests of the `baton` binary, so each test reads as a story:
//! write a workflow, run baton on it, look at what it printed and what it left behind.
//!
//! The test files in `tests/tests/` are integration tests of `baton-cli` (each has a line in
//! `crates/cli/Cargo.toml`), so `cargo test` builds `baton` from the current source before
//! it runs them. `$BATON_BIN` runs another binary instead.

pub use nix::sys::signal::Signal;
use nix::sys::signal::kill;
use nix::unistd::Pid;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

pub mod buildbot_api;
mod fake_github;
mod fake_jenkins;
pub mod kubernetes;
pub mod postgres;
pub mod receiver;
pub mod round_robin;
pub mod tap;
pub mod web;

/// The stateful GitHub and GitLab models (`crates/forge-fakes`), for tests that run baton
/// against them.
pub use baton_forge_fakes as forges;
pub use fake_github::{FakeGithub, StatusPost};
pub use fake_jenkins::FakeJenkins;

/// The stateful models of GitHub and GitLab (`crates/forge-fakes`), for adapter tests.
pub use baton_forge_fakes as forge;

/// The repository root.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ sits in the repository root")
        .to_path_buf()
}

/// A variable of `.containers/env`, which `scripts/containers.sh` writes when it starts the
/// registries and the Docker engine the container tests use (`scripts/test.sh` exports it).
/// A test without it fails, never skips.
pub fn container_service(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| {
        panic!("{name} is not set: run `scripts/containers.sh`, then `. .containers/env` (scripts/test.sh does both)")
    })
}

/// The head of a gateway config with one API token per role: `vera` (viewer, `$T_VIEWER`),
/// `otto` (operator, `$T_OPERATOR`) and `anna` (approver, `$T_APPROVER`), workflows from
/// `workflows/*.yaml` and a 4 KiB body limit. A test appends its sources.
pub const ALL_ROLES_GATEWAY: &str = r#"workflows = ["workflows/*.yaml"]

[server]
max_body_bytes = 4096

[api]
tokens = [
  { name = "vera", token = { env = "T_VIEWER" }, role = "viewer" },
  { name = "otto", token = { env = "T_OPERATOR" }, role = "operator" },
  { name = "anna", token = { env = "T_APPROVER" }, role = "approver" },
]
"#;

/// vera's token (viewer) in [`ALL_ROLES_ENV`].
pub const VIEWER_TOKEN: &str = "view-token-1";
/// otto's token (operator) in [`ALL_ROLES_ENV`].
pub const OPERATOR_TOKEN: &str = "oper-token-2";
/// anna's token (approver) in [`ALL_ROLES_ENV`].
pub const APPROVER_TOKEN: &str = "appr-token-3";

/// The environment of a server with [`ALL_ROLES_GATEWAY`] and [`DEPLOY_SOURCE`]: the three
/// roles' tokens, and `deploy-token` for the source.
pub const ALL_ROLES_ENV: &[(&str, &str)] = &[
    ("T_VIEWER", VIEWER_TOKEN),
    ("T_OPERATOR", OPERATOR_TOKEN),
    ("T_APPROVER", APPROVER_TOKEN),
    ("DEPLOY_TOKEN", "deploy-token"),
];

/// A generic webhook source `deploy` to append to [`ALL_ROLES_GATEWAY`]: a delivery sent with
/// `Authorization: Bearer deploy-token` has its body's `.type` as its event.
pub const DEPLOY_SOURCE: &str = r#"
[sources.deploy]
kind = "generic"
bearer = { token = { env = "DEPLOY_TOKEN" } }
event = { expr = ".type" }
"#;

/// The `baton` binary under test: `$BATON_BIN` if set, else the one cargo built for this
/// test run. Cargo names it in `CARGO_BIN_EXE_baton` while the test runs (newer cargo) and
/// puts it next to the test executables' folder (`target/<profile>/baton`).
pub fn baton_bin() -> PathBuf {
    if let Some(bin) = std::env::var_os("BATON_BIN") {
        return PathBuf::from(bin);
    }
    if let Some(bin) = std::env::var_os("CARGO_BIN_EXE_baton") {
        return PathBuf::from(bin);
    }
    // target/<profile>/deps/<test-exe> → target/<profile>/baton
    let exe = std::env::current_exe().expect("current exe");
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("target/<profile>");
    let bin = profile_dir.join("baton");
    assert!(
        bin.is_file(),
        "{} is missing: run the end-to-end tests through `cargo test -p baton-cli`, which builds it",
        bin.display()
    );
    bin
}

/// A scratch folder to run baton in.
pub struct Sandbox {
    dir: tempfile::TempDir,
}

/// What a finished `baton` command left.
#[derive(Debug)]
pub struct Finished {
    /// Exit code (None when killed by a signal).
    pub code: Option<i32>,
    /// Standard output.
    pub stdout: String,
    /// Standard error.
    pub stderr: String,
}

impl Finished {
    /// Standard output parsed as JSON.
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.stdout).unwrap_or_else(|e| {
            panic!(
                "stdout is not JSON ({e}):\n{}\nstderr:\n{}",
                self.stdout, self.stderr
            )
        })
    }

    /// The stage `id` of a `--json` run.
    pub fn stage(&self, id: &str) -> Value {
        let run = self.json();
        run["stages"]
            .as_array()
            .and_then(|s| s.iter().find(|s| s["id"] == id))
            .cloned()
            .unwrap_or_else(|| panic!("no stage {id} in {run:#}"))
    }
}

impl From<Output> for Finished {
    fn from(o: Output) -> Self {
        Self {
            code: o.status.code(),
            stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
        }
    }
}

impl Default for Sandbox {
    fn default() -> Self {
        Self::new()
    }
}

impl Sandbox {
    /// A new empty folder.
    pub fn new() -> Self {
        Self {
            dir: tempfile::tempdir().expect("temp dir"),
        }
    }

    /// The folder.
    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Writes a file (creating folders) and returns its path.
    pub fn write(&self, name: &str, text: &str) -> PathBuf {
        let path = self.dir.path().join(name);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).unwrap();
        }
        std::fs::write(&path, text).unwrap();
        path
    }

    /// Reads a file of the sandbox, or "" when it does not exist.
    pub fn read(&self, name: &str) -> String {
        std::fs::read_to_string(self.dir.path().join(name)).unwrap_or_default()
    }

    /// A `baton` command running in the sandbox, with no inherited baton settings.
    pub fn baton(&self, args: &[&str]) -> Command {
        let mut cmd = self.command(baton_bin().as_os_str());
        cmd.args(args);
        cmd
    }

    /// `program` running in the sandbox, with no inherited baton settings.
    fn command(&self, program: &std::ffi::OsStr) -> Command {
        let mut cmd = Command::new(program);
        cmd.current_dir(self.dir.path()).stdin(Stdio::null());
        for (key, _) in std::env::vars() {
            if key.starts_with("BATON_") && key != "BATON_BIN" {
                cmd.env_remove(key);
            }
        }
        cmd.env("SANDBOX", self.dir.path());
        cmd
    }

    /// Runs `baton ARGS` to its end (at most two minutes).
    pub fn run(&self, args: &[&str]) -> Finished {
        let child = self
            .baton(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn baton");
        wait_with_deadline(child, Duration::from_secs(120))
    }
}

/// Waits for a child, killing it (and failing the test) after `limit`.
pub fn wait_with_deadline(mut child: std::process::Child, limit: Duration) -> Finished {
    let begun = Instant::now();
    loop {
        if child.try_wait().expect("try_wait").is_some() {
            return child.wait_with_output().expect("output").into();
        }
        if begun.elapsed() > limit {
            let _ = child.kill();
            let out: Finished = child.wait_with_output().expect("output").into();
            panic!(
                "baton did not finish within {limit:?}:\nstdout:\n{}\nstderr:\n{}",
                out.stdout, out.stderr
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Waits (up to `limit`) until `check` holds.
pub fn eventually(limit: Duration, what: &str, mut check: impl FnMut() -> bool) {
    let begun = Instant::now();
    while !check() {
        assert!(begun.elapsed() < limit, "timed out waiting for: {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// True while a process with this pid exists.
pub fn alive(pid: i32) -> bool {
    // No signal: only checks that the process exists.
    kill(Pid::from_raw(pid), None).is_ok()
}

/// Sends `signal` to process `pid` (a child the test spawned); true when it was sent.
pub fn send_signal(pid: u32, signal: Signal) -> bool {
    i32::try_from(pid).is_ok_and(|pid| kill(Pid::from_raw(pid), signal).is_ok())
}

/// A running `baton serve`, killed when dropped.
pub struct Server {
    child: std::process::Child,
    /// `http://127.0.0.1:PORT`.
    pub url: String,
    log: std::sync::Arc<std::sync::Mutex<String>>,
    agent: ureq::Agent,
}

/// An HTTP answer.
#[derive(Debug)]
pub struct Reply {
    /// Status code.
    pub status: u16,
    /// Body text.
    pub body: String,
    /// Header names (lower case) and values, in order.
    pub headers: Vec<(String, String)>,
}

impl Reply {
    /// The body as JSON.
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.body))
    }

    /// The first value of header `name` (lower case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

impl Sandbox {
    /// Starts `baton serve -c CONFIG --listen 127.0.0.1:0` with extra environment variables,
    /// and waits until it listens.
    pub fn serve(&self, config: &str, env: &[(&str, &str)]) -> Server {
        self.serve_at(config, "127.0.0.1:0", env)
    }

    /// [`Sandbox::serve`] on a given address, for a system that calls back a fixed URL (a
    /// Buildbot master whose status push is configured once, at its start).
    pub fn serve_at(&self, config: &str, listen: &str, env: &[(&str, &str)]) -> Server {
        self.serve_with(&["-c", config, "--listen", listen], env)
    }

    /// `baton serve ARGS` with extra environment variables, once it listens.
    pub fn serve_with(&self, args: &[&str], env: &[(&str, &str)]) -> Server {
        self.spawn_server(self.baton(&[&["serve"], args].concat()), env)
    }

    /// `baton serve ARGS` started by `wrapper`, a command that ends by running the command
    /// line it is given after its own arguments (`unshare … sh -c '…; exec "$@"' …`), once it
    /// listens. [`Server::pid`] is the wrapper's, which is baton's when the wrapper `exec`s it.
    pub fn serve_through(&self, wrapper: &[&str], args: &[&str], env: &[(&str, &str)]) -> Server {
        let (program, wrapper_args) = wrapper.split_first().expect("a wrapper command");
        let mut cmd = self.command(program.as_ref());
        cmd.args(wrapper_args)
            .arg(baton_bin())
            .arg("serve")
            .args(args);
        self.spawn_server(cmd, env)
    }

    fn spawn_server(&self, mut cmd: Command, env: &[(&str, &str)]) -> Server {
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn baton serve");
        let stderr = child.stderr.take().expect("stderr");
        let log = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        let sink = log.clone();
        std::thread::spawn(move || {
            use std::io::BufRead;
            for line in std::io::BufReader::new(stderr)
                .lines()
                .map_while(Result::ok)
            {
                if let Some(rest) = line.split("listening on ").nth(1) {
                    let _ = tx.send(
                        rest.split_whitespace()
                            .next()
                            .unwrap_or_default()
                            .to_owned(),
                    );
                }
                let mut log = sink.lock().unwrap();
                log.push_str(&line);
                log.push('\n');
            }
        });
        let Ok(url) = rx.recv_timeout(Duration::from_secs(30)) else {
            let _ = child.kill();
            panic!("baton serve did not start:\n{}", log.lock().unwrap());
        };
        // Redirects are answers to check (the UI's sign-in sets its cookie on one), not
        // to follow.
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .max_redirects(0)
            .timeout_global(Some(Duration::from_secs(30)))
            .build()
            .into();
        Server {
            child,
            url,
            log,
            agent,
        }
    }
}

impl Server {
    /// Everything the server wrote to standard error so far.
    pub fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// A request with headers and an optional body.
    pub fn request(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<&[u8]>,
    ) -> Reply {
        let url = format!("{}{path}", self.url);
        let mut builder = ureq::http::Request::builder().method(method).uri(&url);
        for (k, v) in headers {
            builder = builder.header(*k, *v);
        }
        let request = builder
            .body(body.map(<[u8]>::to_vec).unwrap_or_default())
            .expect("request");
        match self.agent.run(request) {
            Ok(mut response) => {
                let status = response.status().as_u16();
                let headers = response
                    .headers()
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or_default().to_owned()))
                    .collect();
                let body = response
                    .body_mut()
                    .with_config()
                    .limit(64 << 20)
                    .read_to_string()
                    .unwrap_or_default();
                Reply {
                    status,
                    body,
                    headers,
                }
            }
            Err(e) => Reply {
                status: 0,
                body: e.to_string(),
                headers: Vec::new(),
            },
        }
    }

    /// `GET path` with a bearer token.
    pub fn get(&self, path: &str, token: &str) -> Reply {
        let auth = format!("Bearer {token}");
        self.request("GET", path, &[("authorization", &auth)], None)
    }

    /// `POST path` with a bearer token and a JSON body.
    pub fn post(&self, path: &str, token: &str, body: &str) -> Reply {
        let auth = format!("Bearer {token}");
        self.request(
            "POST",
            path,
            &[
                ("authorization", &auth),
                ("content-type", "application/json"),
            ],
            Some(body.as_bytes()),
        )
    }

    /// Sends a GitHub delivery signed with `secret`.
    pub fn github(
        &self,
        source: &str,
        secret: &str,
        event: &str,
        delivery: &str,
        body: &str,
    ) -> Reply {
        let signature = sign_sha256(secret, body.as_bytes());
        self.request(
            "POST",
            &format!("/hooks/{source}"),
            &[
                ("x-github-event", event),
                ("x-github-delivery", delivery),
                ("x-hub-signature-256", &signature),
                ("content-type", "application/json"),
            ],
            Some(body.as_bytes()),
        )
    }

    /// Sends a GitLab webhook delivery of `event` (`Pipeline Hook`) to `/hooks/<source>`
    /// with the secret `token` in `X-Gitlab-Token`, as GitLab sends it.
    pub fn gitlab(&self, source: &str, token: &str, event: &str, uuid: &str, body: &str) -> Reply {
        self.request(
            "POST",
            &format!("/hooks/{source}"),
            &[
                ("x-gitlab-event", event),
                ("x-gitlab-event-uuid", uuid),
                ("x-gitlab-token", token),
                ("content-type", "application/json"),
            ],
            Some(body.as_bytes()),
        )
    }

    /// Waits until `GET path` (as `token`) satisfies `check`, and returns that answer.
    pub fn wait_for(
        &self,
        path: &str,
        token: &str,
        what: &str,
        check: impl Fn(&Value) -> bool,
    ) -> Value {
        let begun = Instant::now();
        loop {
            let reply = self.get(path, token);
            if reply.status == 200 {
                let value = reply.json();
                if check(&value) {
                    return value;
                }
            }
            assert!(
                begun.elapsed() < Duration::from_secs(30),
                "timed out waiting for {what}; last answer: {reply:?}\nlog:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Starts a run of `workflow` as `token` with the event `event` (JSON text) through the
    /// REST API, and returns the run's id.
    pub fn start_run(&self, workflow: &str, token: &str, event: &str) -> String {
        let started = self.post(&format!("/api/v1/workflows/{workflow}/runs"), token, event);
        assert_eq!(started.status, 201, "{started:?}\n{}", self.log());
        let run = started.json()["run"].as_str().map(str::to_owned);
        run.unwrap_or_else(|| panic!("no run id in {started:?}"))
    }

    /// Waits until run `run` has ended (succeeded, failed or cancelled), and returns it.
    pub fn run_ended(&self, run: &str, token: &str) -> Value {
        let ended = |r: &Value| {
            matches!(
                r["status"].as_str(),
                Some("succeeded" | "failed" | "cancelled")
            )
        };
        self.wait_for(
            &format!("/api/v1/runs/{run}"),
            token,
            "the run to end",
            ended,
        )
    }

    /// Sends SIGTERM and waits for a clean exit; returns the exit code.
    pub fn terminate(self) -> Option<i32> {
        self.terminate_with_log().0
    }

    /// [`Server::terminate`], with everything the server wrote to standard error.
    pub fn terminate_with_log(mut self) -> (Option<i32>, String) {
        send_signal(self.child.id(), Signal::SIGTERM);
        let begun = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return (status.code(), self.log());
            }
            assert!(
                begun.elapsed() < Duration::from_secs(30),
                "baton serve did not stop on SIGTERM:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGKILLs this baton as soon as `happened` holds (within 20 s): a crash at a chosen
    /// instant, such as after an external system received work and before baton stored its
    /// answer.
    pub fn kill_when(self, what: &str, happened: impl FnMut() -> bool) {
        eventually(Duration::from_secs(20), what, happened);
        self.kill();
    }

    /// SIGKILL: no chance to clean up.
    pub fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `sha256=<hex HMAC-SHA256(secret, body)>`, as GitHub signs.
pub fn sign_sha256(secret: &str, body: &[u8]) -> String {
    use hmac::Mac;
    let mut mac =
        hmac::Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes()).expect("any key length");
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}
