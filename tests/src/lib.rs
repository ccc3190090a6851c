//! A small harness for end-to-end tests of the `baton` binary, so each test reads as a story:
//! write a workflow, run baton on it, look at what it printed and what it left behind.
//!
//! The binary is the one `cargo build -p baton-cli` put next to the test executables
//! (`target/<profile>/baton`), or `$BATON_BIN`. `scripts/test.sh` builds it first.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

/// The repository root.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ sits in the repository root")
        .to_path_buf()
}

/// The `baton` binary under test.
pub fn baton_bin() -> PathBuf {
    if let Some(bin) = std::env::var_os("BATON_BIN") {
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
        "{} is missing: build it first with `cargo build -p baton-cli` (scripts/test.sh does)",
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
        let mut cmd = Command::new(baton_bin());
        cmd.args(args)
            .current_dir(self.dir.path())
            .stdin(Stdio::null());
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
    // SAFETY: kill with signal 0 only checks that the process exists.
    unsafe { libc::kill(pid, 0) == 0 }
}
