//! The `exec` adapter: local commands and ContainerOps-style components.
//!
//! ```yaml
//!   lint:
//!     uses: exec
//!     with:
//!       run: ./scripts/lint.sh        # a shell script for `sh -c`, or
//!       # command: [cargo, clippy]    # an argv, without a shell
//!       env: { RUST_LOG: info }
//!       input: { files: '${{ .event.commits }}' }
//!       workdir: ./service            # optional; baton's working directory by default
//! ```
//!
//! The command gets the resolved `input` as JSON on stdin and in the file named by
//! `$BATON_INPUT`, may write a JSON object of outputs to the file named by `$BATON_OUTPUT`,
//! and may print ContainerOps output lines, `[COUT] KEY = value`. `$BATON_RUN_ID`,
//! `$BATON_STAGE` and `$BATON_ATTEMPT` name the attempt. Exit code 0 is success; anything
//! else fails the stage with the code (or the signal) and the tail of stderr. Outputs are
//! the `[COUT]` values, then the `$BATON_OUTPUT` object over them, and always `exit_code`.
//!
//! # What reaches a command
//!
//! - A template in `run` is written into the script as literal text, one single-quoted
//!   word where it stands outside quotes ([`baton_core::shell`]), so event data never
//!   becomes shell syntax; `env` is the plainer way to hand a script a value.
//! - The environment is [`BASIC_ENV`] and the `LC_*` variables of baton's own, the names the
//!   instance's `inherit_env` adds (or all with `true`), then the stage's `env` and the
//!   `BATON_*` variables. A variable the config reads a secret from (`{ env = "NAME" }`,
//!   made known with [`ExecKind::hiding_env`]) is never passed, whatever `inherit_env` says.
//!
//! # Durability
//!
//! baton may be killed while a command runs, and the next baton process must adopt the
//! command, never start it twice. So nothing depends on memory: each attempt has a
//! directory, and the command runs under a small `sh` wrapper, leader of its own process
//! group, which outlives baton and records the exit status in a file.
//!
//! ```text
//! <state_dir>/<run>+<stage>+<attempt>/
//!   input.json    the resolved input; the command's stdin and $BATON_INPUT
//!   output.json   $BATON_OUTPUT: a JSON object the command may write
//!   stdout        the command's stdout ([COUT] lines are outputs)
//!   stderr        the command's stderr
//!   pid           {"pid": …, "start_time": …} of the wrapper, the process group leader
//!   exit          the exit status, or `not-started`, written by the wrapper (tmp + rename)
//!   cancelled     present once a cancel was asked for
//! ```
//!
//! - `start` claims the directory with a plain `mkdir`: a second start of the same attempt
//!   finds it and adopts the command instead of running it again.
//! - The wrapper waits for a "go" line on its stdin, which baton writes only after the pid
//!   file is in place. If baton dies before that, the wrapper reads end-of-file, records
//!   `not-started` and exits without running anything, so a command never runs without a
//!   pid file to find it by (and poll reports such an attempt as `Errored`).
//! - `find` answers the reference whenever the pid file exists, unless the wrapper recorded
//!   `not-started` (nothing ran: the attempt is started afresh).
//! - A directory left without a pid file, or with `not-started`, by a baton that died is
//!   retired to `.aborted/` at the next start of that attempt (one baton owns a state
//!   directory, through its store lock); only a start racing another one in the same
//!   process waits for it.
//! - `poll` reads the exit file; without one, a live wrapper (same pid *and* start time) is
//!   running, and a vanished one means the command died unrecorded.
//! - While the starting process lives, a task waits on the wrapper and wakes the engine the
//!   moment it exits, so completion does not wait for the next poll. An adopted command is
//!   only polled (every second).
//! - `cancel` records a `cancelled` marker, then stops the whole process group: `SIGTERM`,
//!   and `SIGKILL` after a grace period (5 s by default). A stage timeout is a cancel too.
//!
//! Linux only: liveness and group membership are read from `/proc`.

mod attempt;
mod environment;
mod instance;
mod process;
mod spec;

pub use attempt::STALE_START;
pub use environment::{BASIC_ENV, InheritEnv};
pub use instance::InstanceKeys;
pub use spec::RESERVED_ENV;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use baton_core::typed::InstanceBuild;
use baton_core::{
    Adapter, AdapterError, AdapterKind, AttemptKey, ExternalRef, ExternalState, FieldError, Logs,
    PollOutcome, PollRequest, SecretResolver, StartRequest, Waker, adapter::LogLink,
};
use serde_json::{Map, Value, json};
use tokio::io::AsyncWriteExt;

use crate::attempt::{AttemptDir, Claim, PidRecord};
use crate::environment::Environment;
use crate::spec::{ExecSpec, Mode};

/// The kind name, as in `uses: exec`.
pub const KIND: &str = "exec";

/// Where attempts live when neither the instance nor the program says otherwise, relative
/// to baton's working directory (like the default SQLite file).
pub const DEFAULT_STATE_DIR: &str = ".baton/exec";

/// How long a cancelled command has between `SIGTERM` and `SIGKILL` by default.
pub const DEFAULT_KILL_GRACE: Duration = Duration::from_secs(5);

/// The poll hint while a command runs. The wake-up on exit makes completion immediate in
/// practice; this bounds the delay for adopted commands, which have no waiter.
pub const POLL_HINT: Duration = Duration::from_secs(1);

/// How much of stderr a failure message quotes.
const FAILURE_TAIL_BYTES: u64 = 2048;
const FAILURE_TAIL_LINES: usize = 20;

/// How much of each log `logs` returns as text.
const LOG_TAIL_BYTES: u64 = 64 * 1024;
const LOG_TAIL_LINES: usize = 2000;

/// The wrapper, run by `/bin/sh -c` with the attempt directory and the command as arguments.
///
/// It runs the command as its child rather than `exec`ing it, so that it can record `$?`
/// (128 + N when the command was killed by signal N). `command -p` finds `mv` on the
/// standard path even when the stage's `env` replaced `PATH`.
const WRAPPER: &str = r#"dir=$1
shift
record() {
    printf '%s\n' "$1" >"$dir/exit.tmp" && command -p mv -f "$dir/exit.tmp" "$dir/exit"
}
if ! IFS= read -r go || [ "$go" != go ]; then
    record not-started
    exit 0
fi
"$@" <"$dir/input.json"
code=$?
record "$code"
exit "$code"
"#;

/// What the wrapper records when baton never let the command run.
const NOT_STARTED: &str = "not-started";

/// The `exec` kind. Instance settings, all optional: see [`InstanceKeys`].
#[derive(Debug, Clone)]
pub struct ExecKind {
    default_state_dir: PathBuf,
    hidden_env: Arc<BTreeSet<String>>,
}

impl Default for ExecKind {
    fn default() -> Self {
        Self::new(DEFAULT_STATE_DIR)
    }
}

impl ExecKind {
    /// A kind whose instances keep attempts under `default_state_dir` unless their settings
    /// name another directory.
    pub fn new(default_state_dir: impl Into<PathBuf>) -> Self {
        Self {
            default_state_dir: default_state_dir.into(),
            hidden_env: Arc::default(),
        }
    }

    /// A kind whose instances never pass these variables of baton's environment to a
    /// command: the ones the config reads secrets from.
    pub fn hiding_env(mut self, names: impl IntoIterator<Item = String>) -> Self {
        self.hidden_env = Arc::new(names.into_iter().collect());
        self
    }
}

impl AdapterKind for ExecKind {
    fn kind(&self) -> &'static str {
        KIND
    }

    fn summary(&self) -> &'static str {
        "runs a local command or a ContainerOps-style component"
    }

    fn docs(&self) -> &'static str {
        "docs/adapters.md#exec"
    }

    fn builtin_instance(&self) -> bool {
        true
    }

    fn script_keys(&self) -> &'static [&'static str] {
        &["run"]
    }

    fn validate_instance(&self, config: &Value) -> Vec<FieldError> {
        instance::parse_instance(config, &self.default_state_dir)
            .err()
            .unwrap_or_default()
    }

    fn validate_stage(&self, with: &Value) -> Vec<FieldError> {
        spec::parse(with, Mode::Templates).err().unwrap_or_default()
    }

    fn build(
        &self,
        name: &str,
        config: &Value,
        secrets: &dyn SecretResolver,
    ) -> Result<Arc<dyn Adapter>, AdapterError> {
        let settings = InstanceBuild::new(name, secrets)
            .config(instance::parse_instance(config, &self.default_state_dir))?;
        let environment = Environment {
            inherit: settings.inherit_env,
            hidden: self.hidden_env.clone(),
        };
        for variable in environment.hidden_asked_for() {
            tracing::warn!(
                adapter = name,
                variable,
                "inherit_env names a variable the config reads a secret from; commands never get it"
            );
        }
        let mut adapter = ExecAdapter::new(settings.state_dir).with_kill_grace(settings.kill_grace);
        adapter.environment = environment;
        Ok(Arc::new(adapter))
    }
}

/// Runs stage commands as local processes that survive baton's own death.
#[derive(Debug)]
pub struct ExecAdapter {
    state_dir: PathBuf,
    grace: Duration,
    environment: Environment,
    waker: Arc<Mutex<Option<Waker>>>,
}

/// Attempt folders being started right now, by any exec adapter of this process (several
/// instances may share a state folder).
static STARTING: std::sync::LazyLock<Mutex<std::collections::HashSet<PathBuf>>> =
    std::sync::LazyLock::new(Mutex::default);

impl ExecAdapter {
    /// An adapter keeping attempts under `state_dir` (made absolute now, so that a later
    /// change of working directory does not lose them).
    pub fn new(state_dir: impl Into<PathBuf>) -> Self {
        let state_dir = state_dir.into();
        let state_dir = std::path::absolute(&state_dir).unwrap_or(state_dir);
        Self {
            state_dir,
            grace: DEFAULT_KILL_GRACE,
            environment: Environment::default(),
            waker: Arc::default(),
        }
    }

    /// Sets how long a cancelled command has between `SIGTERM` and `SIGKILL`.
    pub fn with_kill_grace(mut self, grace: Duration) -> Self {
        self.grace = grace;
        self
    }

    /// Sets which more of baton's environment commands get, besides [`BASIC_ENV`]
    /// (default: none).
    pub fn inheriting_env(mut self, inherit: InheritEnv) -> Self {
        self.environment.inherit = inherit;
        self
    }

    /// Sets the variables of baton's environment commands never get, whatever they inherit.
    pub fn hiding_env(mut self, names: impl IntoIterator<Item = String>) -> Self {
        self.environment.hidden = Arc::new(names.into_iter().collect());
        self
    }

    /// The directory holding the attempts.
    pub fn state_dir(&self) -> &Path {
        &self.state_dir
    }

    /// The directory of one attempt (which may not exist).
    pub fn attempt_dir(&self, key: &AttemptKey) -> PathBuf {
        AttemptDir::new(&self.state_dir, key).path().to_owned()
    }

    fn dir(&self, key: &AttemptKey) -> AttemptDir {
        AttemptDir::new(&self.state_dir, key)
    }

    fn reference(dir: &AttemptDir, record: PidRecord) -> ExternalRef {
        ExternalRef {
            id: record.pid.to_string(),
            url: Some(file_url(dir.path())),
            data: json!({
                "dir": dir.path().to_string_lossy(),
                "pid": record.pid,
                "start_time": record.start_time,
            }),
        }
    }

    /// Launches the wrapper in the claimed directory and returns its pid record.
    async fn launch(
        &self,
        dir: &AttemptDir,
        key: &AttemptKey,
        spec: ExecSpec,
    ) -> Result<PidRecord, AdapterError> {
        let io = |what: &str, e: std::io::Error| {
            AdapterError::Transient(format!("exec {key}: cannot {what}: {e}"))
        };
        let (stdout, stderr) = {
            let dir = dir.clone();
            let input = spec.input.clone();
            blocking(move || {
                dir.write_input(&input)?;
                dir.create_logs()
            })
            .await?
            .map_err(|e| io("prepare the attempt directory", e))?
        };

        let mut command = tokio::process::Command::new("/bin/sh");
        command
            .arg("-c")
            .arg(WRAPPER)
            .arg("baton-exec")
            .arg(dir.path())
            .args(spec.program.argv())
            .env_clear()
            .envs(self.environment.select(std::env::vars_os()))
            .envs(spec.env.iter().map(|(k, v)| (k, v)))
            .env("BATON_INPUT", dir.file("input.json"))
            .env("BATON_OUTPUT", dir.file("output.json"))
            .env("BATON_RUN_ID", key.run_id())
            .env("BATON_STAGE", key.stage_id())
            .env("BATON_ATTEMPT", key.attempt().to_string())
            .stdin(std::process::Stdio::piped())
            .stdout(stdout)
            .stderr(stderr)
            // Its own group: it survives a signal to baton's group (a Ctrl-C), and a cancel
            // reaches every process the command started.
            .process_group(0)
            .kill_on_drop(false);
        if let Some(workdir) = &spec.workdir {
            command.current_dir(workdir);
        }
        let mut child = command.spawn().map_err(|e| match &spec.workdir {
            // A missing workdir will not appear by retrying; a failed fork may pass.
            Some(w) if e.kind() == std::io::ErrorKind::NotFound => AdapterError::Invalid(format!(
                "exec {key}: cannot start in `{}`: {e}",
                w.display()
            )),
            _ => AdapterError::Transient(format!("exec {key}: cannot start /bin/sh: {e}")),
        })?;
        let mut go = child.stdin.take();

        // Until the wrapper reads "go" it runs nothing, so on any failure here dropping its
        // stdin (end-of-file) is enough to make it exit.
        let pid = child.id().and_then(|p| i32::try_from(p).ok());
        let record = pid
            .and_then(|pid| {
                process::stat(pid).map(|s| PidRecord {
                    pid,
                    start_time: s.start_time,
                })
            })
            .ok_or_else(|| {
                AdapterError::Transient(format!("exec {key}: the wrapper vanished at once"))
            })?;
        dir.write_pid(record)
            .map_err(|e| io("write the pid file", e))?;

        // A cancel that raced this start left its marker: never let the command begin then.
        if !dir.is_cancelled()
            && let Some(stdin) = go.as_mut()
            && let Err(e) = stdin.write_all(b"go\n").await
        {
            tracing::warn!(%key, error = %e, "the exec wrapper did not take its go signal");
        }
        drop(go);

        let waker = self.waker.clone();
        let key = key.clone();
        tokio::spawn(async move {
            if let Err(e) = child.wait().await {
                tracing::warn!(%key, error = %e, "cannot wait for the exec wrapper");
            }
            let waker = waker.lock().unwrap_or_else(PoisonError::into_inner).clone();
            if let Some(waker) = waker {
                waker.wake(&key);
            }
        });
        Ok(record)
    }
}

/// Runs file work off the async threads.
async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> T + Send + 'static,
) -> Result<T, AdapterError> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| AdapterError::Transient(format!("exec: a file task failed: {e}")))
}

fn io_error(key: &AttemptKey, e: std::io::Error) -> AdapterError {
    AdapterError::Transient(format!("exec {key}: {e}"))
}

fn not_found(key: &AttemptKey, dir: &AttemptDir) -> AdapterError {
    AdapterError::NotFound(format!(
        "exec {key}: no attempt directory at {}",
        dir.path().display()
    ))
}

fn outcome(state: ExternalState, raw: &str, message: impl Into<String>) -> PollOutcome {
    let mut outcome = PollOutcome::state(state).with_message(message);
    outcome.raw = Some(raw.to_owned());
    outcome
}

/// "exited with code 3", or "was killed by SIGKILL (exit status 137)".
///
/// `sh` reports a death by signal N as 128 + N, as does a command that exits with such a
/// code itself; the two cannot be told apart, and the signal is the likelier reading.
fn describe_exit(code: i32) -> String {
    if (129..=128 + 64).contains(&code) {
        format!(
            "the command was killed by {} (exit status {code})",
            process::signal_name(code - 128)
        )
    } else {
        format!("the command exited with code {code}")
    }
}

/// The outcome of a command whose wrapper recorded `exit_text`.
fn finished(dir: &AttemptDir, exit_text: &str) -> PollOutcome {
    if exit_text.trim() == NOT_STARTED {
        return if dir.is_cancelled() {
            outcome(
                ExternalState::Cancelled,
                NOT_STARTED,
                "cancelled before the command ran",
            )
        } else {
            outcome(
                ExternalState::Errored,
                NOT_STARTED,
                "the command never ran: the baton process starting it stopped before letting it go",
            )
        };
    }
    let Ok(code) = exit_text.trim().parse::<i32>() else {
        return outcome(
            ExternalState::Errored,
            "exit ?",
            format!("the exit file holds {exit_text:?}, not an exit status"),
        );
    };
    let raw = format!("exit {code}");
    if code == 0 {
        // A clean exit with unreadable outputs would hand the next stages garbage: fail.
        return match dir.output_file() {
            Ok(_) => outcome(
                ExternalState::Succeeded { warnings: false },
                &raw,
                "the command exited with code 0",
            ),
            Err(problem) => outcome(
                ExternalState::Failed,
                &raw,
                format!("the command exited with code 0, but {problem}"),
            ),
        };
    }
    if dir.is_cancelled() {
        return outcome(
            ExternalState::Cancelled,
            &raw,
            format!("cancelled: {}", describe_exit(code)),
        );
    }
    let mut message = describe_exit(code);
    let tail = dir.tail("stderr", FAILURE_TAIL_BYTES, FAILURE_TAIL_LINES);
    if !tail.trim().is_empty() {
        message.push_str("; the end of stderr:\n");
        message.push_str(&tail);
    }
    outcome(ExternalState::Failed, &raw, message)
}

fn poll_dir(dir: &AttemptDir, key: &AttemptKey) -> Result<PollOutcome, AdapterError> {
    if !dir.exists() {
        return Err(not_found(key, dir));
    }
    if let Some(exit) = dir.read_exit().map_err(|e| io_error(key, e))? {
        return Ok(finished(dir, &exit));
    }
    let Some(record) = dir.read_pid().map_err(|e| io_error(key, e))? else {
        return Ok(if !dir.start_is_stale() {
            outcome(
                ExternalState::Queued,
                "starting",
                "the command is being started",
            )
            .next_poll(POLL_HINT)
        } else if dir.is_cancelled() {
            outcome(
                ExternalState::Cancelled,
                "cancelled",
                "cancelled before the command ran",
            )
        } else {
            outcome(
                ExternalState::Failed,
                "gone",
                "the start of this attempt was interrupted before the command ran",
            )
        });
    };
    if process::is_alive(record.pid, record.start_time) {
        return Ok(outcome(
            ExternalState::Running,
            "running",
            format!("running as process group {}", record.pid),
        )
        .next_poll(POLL_HINT));
    }
    // The wrapper may have written its exit file between the first look and its death.
    if let Some(exit) = dir.read_exit().map_err(|e| io_error(key, e))? {
        return Ok(finished(dir, &exit));
    }
    Ok(if dir.is_cancelled() {
        outcome(
            ExternalState::Cancelled,
            "cancelled",
            "cancelled: the process group was stopped",
        )
    } else {
        outcome(
            ExternalState::Failed,
            "gone",
            "the process disappeared without recording an exit code (its wrapper was killed, or the machine restarted)",
        )
    })
}

/// A `file://` URL for a local path, with the bytes a URL cannot hold escaped.
fn file_url(path: &Path) -> String {
    let mut url = String::from("file://");
    for b in path.to_string_lossy().bytes() {
        match b {
            // Unreserved characters, and `/` and `+`, which a URL path may hold as they are.
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'/' | b'.' | b'_' | b'-' | b'~' | b'+' => {
                url.push(b as char);
            }
            _ => url.push_str(&format!("%{b:02X}")),
        }
    }
    url
}

impl ExecAdapter {
    /// Claims the attempt's directory and launches the command (see [`AttemptDir::claim`]).
    async fn start_claimed(
        &self,
        dir: &AttemptDir,
        key: &AttemptKey,
        spec: ExecSpec,
    ) -> Result<ExternalRef, AdapterError> {
        let claim = {
            let dir = dir.clone();
            // This process holds the only start of the attempt (`STARTING`), and baton's store
            // lock keeps other processes off the state folder.
            blocking(move || dir.claim(true)).await?
        };
        match claim.map_err(|e| io_error(key, e))? {
            Claim::Fresh => {}
            Claim::Adopt(record) => return Ok(Self::reference(dir, record)),
            Claim::Busy => {
                return Err(AdapterError::Transient(format!(
                    "exec {key}: another start of this attempt is under way, or died less than {}s ago",
                    STALE_START.as_secs()
                )));
            }
        }
        match self.launch(dir, key, spec).await {
            Ok(record) => Ok(Self::reference(dir, record)),
            Err(e) => {
                // Nothing ran (the wrapper never got its go): free the attempt for a retry.
                dir.remove();
                Err(e)
            }
        }
    }
}

#[async_trait]
impl Adapter for ExecAdapter {
    fn kind(&self) -> &'static str {
        KIND
    }

    async fn start(&self, request: &StartRequest) -> Result<ExternalRef, AdapterError> {
        let key = &request.key;
        let spec = spec::parse(&request.input, Mode::Rendered).map_err(|errors| {
            AdapterError::Invalid(format!("exec {key}: {}", FieldError::join(&errors)))
        })?;
        let dir = self.dir(key);
        // Only one start of an attempt at a time in this process: a second one must not touch
        // the folder the first is filling (it could take it for one a dead process left).
        if !STARTING.lock().unwrap().insert(dir.path().to_path_buf()) {
            return Err(AdapterError::Transient(format!(
                "exec {key}: another start of this attempt is under way"
            )));
        }
        let result = self.start_claimed(&dir, key, spec).await;
        STARTING.lock().unwrap().remove(dir.path());
        result
    }

    async fn find(
        &self,
        key: &AttemptKey,
        _input: &Value,
    ) -> Result<Option<ExternalRef>, AdapterError> {
        let dir = self.dir(key);
        let record = {
            let dir = dir.clone();
            blocking(move || {
                if dir.never_ran() {
                    Ok(None)
                } else {
                    dir.read_pid()
                }
            })
            .await?
        };
        Ok(record
            .map_err(|e| io_error(key, e))?
            .map(|record| Self::reference(&dir, record)))
    }

    async fn poll(&self, request: &PollRequest<'_>) -> Result<PollOutcome, AdapterError> {
        // The reference's data is informational: everything is read from the directory the
        // key names, so a damaged reference cannot point this at another process.
        let dir = self.dir(request.key);
        let key = request.key.clone();
        blocking(move || poll_dir(&dir, &key)).await?
    }

    async fn outputs(
        &self,
        key: &AttemptKey,
        _external: &ExternalRef,
    ) -> Result<Map<String, Value>, AdapterError> {
        let dir = self.dir(key);
        if !dir.exists() {
            return Err(not_found(key, &dir));
        }
        blocking(move || dir.outputs()).await
    }

    async fn cancel(&self, key: &AttemptKey, _external: &ExternalRef) -> Result<(), AdapterError> {
        let dir = self.dir(key);
        let target = blocking(move || -> std::io::Result<Option<i32>> {
            // Never started, or finished: nothing to stop, and a late marker must not turn a
            // recorded result into a cancel.
            if !dir.exists() || dir.read_exit()?.is_some() {
                return Ok(None);
            }
            dir.mark_cancelled()?;
            Ok(dir
                .read_pid()?
                .filter(|r| process::is_alive(r.pid, r.start_time))
                .map(|r| r.pid))
        })
        .await?
        .map_err(|e| io_error(key, e))?;
        if let Some(pgid) = target {
            process::stop_group(pgid, self.grace).await;
        }
        Ok(())
    }

    async fn logs(&self, key: &AttemptKey, _external: &ExternalRef) -> Result<Logs, AdapterError> {
        let dir = self.dir(key);
        if !dir.exists() {
            return Err(not_found(key, &dir));
        }
        blocking(move || {
            let stdout = dir.tail("stdout", LOG_TAIL_BYTES, LOG_TAIL_LINES);
            let stderr = dir.tail("stderr", LOG_TAIL_BYTES, LOG_TAIL_LINES);
            Logs {
                links: ["stdout", "stderr"]
                    .into_iter()
                    .map(|name| LogLink {
                        name: name.to_owned(),
                        url: file_url(&dir.file(name)),
                    })
                    .collect(),
                text: Some(format!(
                    "--- stdout ---\n{stdout}\n--- stderr ---\n{stderr}\n"
                )),
            }
        })
        .await
    }

    fn attach(&self, waker: Waker) {
        *self.waker.lock().unwrap_or_else(PoisonError::into_inner) = Some(waker);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_wrapper_never_told_to_go_runs_nothing() {
        let state = tempfile::tempdir().unwrap();
        let key = AttemptKey::new("r", "s", 1);
        let dir = AttemptDir::new(state.path(), &key);
        assert!(matches!(dir.claim(false).unwrap(), Claim::Fresh));
        dir.write_input(&Value::Null).unwrap();
        let marker = state.path().join("ran");
        // A closed stdin is what the wrapper sees when baton dies before sending "go".
        let status = tokio::process::Command::new("/bin/sh")
            .arg("-c")
            .arg(WRAPPER)
            .arg("baton-exec")
            .arg(dir.path())
            .arg("touch")
            .arg(&marker)
            .stdin(std::process::Stdio::null())
            .status()
            .await
            .unwrap();
        assert!(status.success());
        assert!(!marker.exists(), "the command must not run");
        let outcome = poll_dir(&dir, &key).unwrap();
        assert_eq!(outcome.state, ExternalState::Errored);
        assert!(outcome.message.unwrap().contains("never ran"));
        dir.mark_cancelled().unwrap();
        assert_eq!(
            poll_dir(&dir, &key).unwrap().state,
            ExternalState::Cancelled
        );
        // Nothing ran, so the next start of the attempt (alone, after a restart) begins
        // afresh instead of waiting for the directory to look stale.
        assert!(dir.never_ran());
        assert!(matches!(dir.claim(false).unwrap(), Claim::Busy));
        assert!(matches!(dir.claim(true).unwrap(), Claim::Fresh));
        assert!(!dir.never_ran());
    }

    #[test]
    fn exits_are_described() {
        assert_eq!(describe_exit(3), "the command exited with code 3");
        assert_eq!(
            describe_exit(137),
            "the command was killed by SIGKILL (exit status 137)"
        );
        assert_eq!(describe_exit(255), "the command exited with code 255");
    }

    #[test]
    fn file_urls_escape() {
        assert_eq!(
            file_url(Path::new("/tmp/a b/+x%")),
            "file:///tmp/a%20b/+x%25"
        );
    }

    #[test]
    fn instance_settings() {
        let kind = ExecKind::default();
        assert!(kind.validate_instance(&json!({})).is_empty());
        assert!(kind.validate_instance(&Value::Null).is_empty());
        assert!(
            kind.validate_instance(
                &json!({"state_dir": "/var/lib/baton/exec", "kill_grace": "10s"})
            )
            .is_empty()
        );
        let paths: Vec<_> = kind
            .validate_instance(&json!({"state_dir": 1, "kill_grace": "soon", "x": 1}))
            .into_iter()
            .map(|e| e.path)
            .collect();
        assert_eq!(paths, ["state_dir", "kill_grace", "x"]);
    }
}
