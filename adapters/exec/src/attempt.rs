//! One attempt's directory: the durable record of a command, readable by any baton process.
//! The layout is in the crate documentation.
//!
//! Nothing is fsynced: the files only need to survive baton's death, not the machine's, and
//! a machine restart ends the commands too (poll then reports them as disappeared).

use std::fs::{self, DirBuilder, File};
use std::io::{self, BufReader, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use baton_core::{AttemptKey, component};
use serde_json::{Map, Value};

/// A directory without a pid file this old belongs to a start that died before launching
/// the command. A start takes milliseconds between creating the directory and writing the
/// pid file, so this only delays the retry of a crashed start.
pub const STALE_START: Duration = Duration::from_secs(30);

/// Where retired directories of interrupted starts go, inside the state directory. The
/// leading dot keeps it apart from attempt directories, whose names never start with one.
const ABORTED_DIR: &str = ".aborted";

/// The wrapper's pid and start time; the pid is also the process group id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct PidRecord {
    /// Process id of the wrapper, leader of the command's process group.
    pub pid: i32,
    /// Field 22 of `/proc/<pid>/stat` when it was spawned.
    pub start_time: u64,
}

impl PidRecord {
    fn to_json(self) -> String {
        serde_json::json!({"pid": self.pid, "start_time": self.start_time}).to_string()
    }

    fn from_json(text: &str) -> Option<Self> {
        let value: Value = serde_json::from_str(text).ok()?;
        Some(Self {
            pid: i32::try_from(value.get("pid")?.as_i64()?).ok()?,
            start_time: value.get("start_time")?.as_u64()?,
        })
    }
}

/// What [`AttemptDir::claim`] found.
#[derive(Debug)]
pub(crate) enum Claim {
    /// The directory is new: this caller launches the command.
    Fresh,
    /// The command was launched already: adopt it.
    Adopt(PidRecord),
    /// Another start holds the directory and has not launched yet.
    Busy,
}

/// Turns a key into a directory name, one to one.
///
/// [`AttemptKey::slug`] is not used because it is not one to one (`a-b/c/1` and `a/b-c/1`
/// both give `a-b-c-1`), and two attempts sharing a directory would adopt each other's work.
/// Here `/` becomes `+`, bytes outside `[A-Za-z0-9._-]` and a leading `.` become `%XX`.
pub(crate) fn dir_name(key: &AttemptKey) -> String {
    let mut name = String::with_capacity(key.as_str().len());
    for (i, b) in key.as_str().bytes().enumerate() {
        match b {
            b'/' => name.push('+'),
            b'.' if i == 0 => name.push_str("%2E"),
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'.' | b'_' | b'-' => name.push(b as char),
            _ => name.push_str(&format!("%{b:02X}")),
        }
    }
    name
}

/// An attempt's directory and the files in it.
#[derive(Debug, Clone)]
pub(crate) struct AttemptDir {
    state_dir: PathBuf,
    path: PathBuf,
}

impl AttemptDir {
    /// The directory of `key` under `state_dir`.
    pub(crate) fn new(state_dir: &Path, key: &AttemptKey) -> Self {
        Self {
            state_dir: state_dir.to_owned(),
            path: state_dir.join(dir_name(key)),
        }
    }

    /// The directory.
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// A file inside the directory.
    pub(crate) fn file(&self, name: &str) -> PathBuf {
        self.path.join(name)
    }

    /// True when an attempt was ever begun here.
    pub(crate) fn exists(&self) -> bool {
        self.path.is_dir()
    }

    /// Takes the directory for a new start, or tells why not.
    ///
    /// The leaf is made with a plain `mkdir`, which fails if it exists: of two starts of the
    /// same attempt, only one can ever launch the command.
    ///
    /// `alone` says that no other start of this attempt can be under way (the caller holds
    /// the only start of it in this process, and baton's store lock keeps other processes
    /// off this state directory): an unfinished directory is then known to be left by a
    /// process that died, and is retired at once instead of after [`STALE_START`].
    pub(crate) fn claim(&self, alone: bool) -> io::Result<Claim> {
        // The directories may hold inputs with secrets in them: owner only.
        DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&self.state_dir)?;
        if self.create_leaf()? {
            return Ok(Claim::Fresh);
        }
        if let Some(record) = self.read_pid()? {
            // A wrapper that recorded `not-started` ran nothing: start afresh rather than
            // adopt a command that never was.
            if !(alone && self.never_ran()) {
                return Ok(Claim::Adopt(record));
            }
        } else if !(alone || self.start_is_stale()) {
            return Ok(Claim::Busy);
        }
        self.retire()?;
        Ok(if self.create_leaf()? {
            Claim::Fresh
        } else {
            Claim::Busy
        })
    }

    fn create_leaf(&self) -> io::Result<bool> {
        match DirBuilder::new().mode(0o700).create(&self.path) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// True when the directory has no pid file and has not changed for [`STALE_START`]:
    /// its start died before launching, and the wrapper (if any) gave up with it.
    pub(crate) fn start_is_stale(&self) -> bool {
        let age = fs::metadata(&self.path)
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| SystemTime::now().duration_since(t).ok());
        age.is_some_and(|age| age >= STALE_START) && !self.file("pid").exists()
    }

    /// Moves an interrupted start's directory out of the way, keeping it for inspection.
    /// A rename is atomic, so of two processes retiring it, one wins and the other fails.
    fn retire(&self) -> io::Result<()> {
        let aborted = self.state_dir.join(ABORTED_DIR);
        DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&aborted)?;
        let millis = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis())
            .unwrap_or_default();
        let name = self.path.file_name().unwrap_or_default().to_string_lossy();
        match fs::rename(&self.path, aborted.join(format!("{name}.{millis}"))) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }

    /// Removes the directory of a start that could not launch, so it can be tried again.
    pub(crate) fn remove(&self) {
        let _ = fs::remove_dir_all(&self.path);
    }

    /// Writes `input` as JSON to `input.json`.
    pub(crate) fn write_input(&self, input: &Value) -> io::Result<()> {
        let text = serde_json::to_vec(input).map_err(io::Error::other)?;
        fs::write(self.file("input.json"), text)
    }

    /// Creates the files that receive stdout and stderr.
    pub(crate) fn create_logs(&self) -> io::Result<(File, File)> {
        Ok((
            File::create(self.file("stdout"))?,
            File::create(self.file("stderr"))?,
        ))
    }

    /// Reads the pid file; `None` before the command is launched.
    pub(crate) fn read_pid(&self) -> io::Result<Option<PidRecord>> {
        match fs::read_to_string(self.file("pid")) {
            Ok(text) => PidRecord::from_json(&text).map(Some).ok_or_else(|| {
                io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("the pid file holds {text:?}"),
                )
            }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Writes the pid file with tmp + rename, so readers never see half of it.
    pub(crate) fn write_pid(&self, record: PidRecord) -> io::Result<()> {
        let tmp = self.file("pid.tmp");
        fs::write(&tmp, record.to_json())?;
        fs::rename(tmp, self.file("pid"))
    }

    /// The text of the exit file, once the wrapper wrote it.
    pub(crate) fn read_exit(&self) -> io::Result<Option<String>> {
        match fs::read_to_string(self.file("exit")) {
            Ok(text) => Ok(Some(text)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// True when the wrapper recorded that it never let the command run.
    pub(crate) fn never_ran(&self) -> bool {
        self.read_exit()
            .ok()
            .flatten()
            .is_some_and(|text| text.trim() == crate::NOT_STARTED)
    }

    /// The exit code, when the exit file exists and holds one.
    pub(crate) fn exit_code(&self) -> Option<i32> {
        self.read_exit().ok()??.trim().parse().ok()
    }

    /// True once a cancel was asked for.
    pub(crate) fn is_cancelled(&self) -> bool {
        self.file("cancelled").exists()
    }

    /// Records that a cancel was asked for, before anything is killed, so that a poll can
    /// tell a cancel from a crash.
    pub(crate) fn mark_cancelled(&self) -> io::Result<()> {
        let mut file = File::create(self.file("cancelled"))?;
        let secs = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or_default();
        writeln!(file, "{secs}")
    }

    /// The object the command wrote to `$BATON_OUTPUT`; `None` if it wrote nothing.
    pub(crate) fn output_file(&self) -> Result<Option<Map<String, Value>>, String> {
        match fs::read(self.file("output.json")) {
            Ok(bytes) => component::output_object(&bytes),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(format!("cannot read $BATON_OUTPUT: {e}")),
        }
    }

    /// Every `[COUT] KEY = value` line of stdout, later lines winning.
    pub(crate) fn cout(&self) -> Map<String, Value> {
        match File::open(self.file("stdout")) {
            Ok(file) => component::cout_outputs(BufReader::new(file)),
            Err(_) => Map::new(),
        }
    }

    /// The outputs, merged as [`component::component_outputs`] says. An unreadable
    /// `$BATON_OUTPUT` is left out here; poll reports it as the failure.
    pub(crate) fn outputs(&self) -> Map<String, Value> {
        component::component_outputs(
            self.cout(),
            self.output_file().ok().flatten(),
            self.exit_code().map(i64::from),
        )
    }

    /// The end of a log file, at most `max_bytes` and `max_lines`, as text.
    pub(crate) fn tail(&self, name: &str, max_bytes: u64, max_lines: usize) -> String {
        tail_file(&self.file(name), max_bytes, max_lines).unwrap_or_default()
    }
}

fn tail_file(path: &Path, max_bytes: u64, max_lines: usize) -> io::Result<String> {
    let mut file = File::open(path)?;
    let len = file.metadata()?.len();
    let from = len.saturating_sub(max_bytes);
    file.seek(SeekFrom::Start(from))?;
    let mut bytes = Vec::new();
    file.take(max_bytes).read_to_end(&mut bytes)?;
    let text = String::from_utf8_lossy(&bytes);
    // A cut in the middle of a line would show a fragment: start at the next whole line.
    let text = match (from > 0, text.find('\n')) {
        (true, Some(nl)) if nl + 1 < text.len() => &text[nl + 1..],
        _ => &text[..],
    };
    let lines: Vec<&str> = text.lines().collect();
    let keep = &lines[lines.len().saturating_sub(max_lines)..];
    Ok(keep.join("\n"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dir_names_are_one_to_one_and_safe() {
        let a = dir_name(&AttemptKey::new("a-b", "c", 1));
        let b = dir_name(&AttemptKey::new("a", "b-c", 1));
        assert_ne!(a, b);
        assert_eq!(a, "a-b+c+1");
        assert_eq!(dir_name(&AttemptKey::new("..", "x y", 2)), "%2E.+x%20y+2");
        assert_eq!(dir_name(&AttemptKey::new("r", "s/t", 1)), "r+s+t+1");
        assert!(!dir_name(&AttemptKey::new(".aborted", "s", 1)).starts_with('.'));
    }

    #[test]
    fn tails_keep_whole_lines() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log");
        let text: String = (1..=100).map(|i| format!("line {i}\n")).collect();
        fs::write(&path, text).unwrap();
        assert_eq!(
            tail_file(&path, 4096, 3).unwrap(),
            "line 98\nline 99\nline 100"
        );
        assert_eq!(tail_file(&path, 12, 20).unwrap(), "line 100");
        fs::write(&path, "").unwrap();
        assert_eq!(tail_file(&path, 100, 20).unwrap(), "");
    }

    #[test]
    fn pid_records_round_trip() {
        let r = PidRecord {
            pid: 42,
            start_time: 123_456,
        };
        assert_eq!(PidRecord::from_json(&r.to_json()), Some(r));
        assert_eq!(PidRecord::from_json("{\"pid\": \"x\"}"), None);
    }
}
