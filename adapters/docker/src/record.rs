//! What baton keeps of an attempt on its own disk: the input file the container reads, a
//! cancel marker, and the result record written once the container ended, before the
//! container is removed.
//!
//! ```text
//! <state_dir>/<container name>/
//!   input.json    the input, bind-mounted read-only at $BATON_INPUT
//!   cancelled     present once a cancel or a timeout was decided
//!   result.json   the record: state, message, exit code, outputs, log tail
//! ```
//!
//! The record is what makes removal safe: it is written (to a temporary file, synced, then
//! renamed and the folder synced) before the container is removed, so a baton that dies
//! between the two finds the record and never starts the attempt again.

use std::fs::{self, DirBuilder, File};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use baton_core::{AttemptKey, ExternalState};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

/// The name of the container of `key`, which the engine keeps unique: a second create of
/// the same attempt gets 409 Conflict.
///
/// The key's characters outside `[A-Za-z0-9_.-]` become `-` (so the name stays readable),
/// and the first 12 hex digits of the key's SHA-256 keep two keys that read alike apart.
pub fn container_name(key: &AttemptKey) -> String {
    let readable: String = key
        .as_str()
        .chars()
        .take(80)
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-') {
                c
            } else {
                '-'
            }
        })
        .collect();
    let digest = hex::encode(Sha256::digest(key.as_str().as_bytes()));
    format!("baton-{readable}-{}", &digest[..12])
}

/// How an attempt ended, as recorded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Ending {
    /// Exit code 0 and readable outputs.
    Succeeded,
    /// A non-zero exit, unreadable outputs, or a timeout.
    Failed,
    /// Stopped by a cancel.
    Cancelled,
}

impl Ending {
    /// The engine's state for it.
    pub(crate) fn state(self) -> ExternalState {
        match self {
            Self::Succeeded => ExternalState::Succeeded { warnings: false },
            Self::Failed => ExternalState::Failed,
            Self::Cancelled => ExternalState::Cancelled,
        }
    }
}

/// The result of an ended container.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct Record {
    /// The container's id.
    pub(crate) container: String,
    /// How it ended.
    pub(crate) ending: Ending,
    /// The exit code, when the container ran.
    pub(crate) exit_code: Option<i64>,
    /// The explanation for people, with the log tail on a failure.
    pub(crate) message: String,
    /// The outputs (`[COUT]`, `$BATON_OUTPUT`, `exit_code`).
    pub(crate) outputs: Map<String, Value>,
    /// The end of the container's log (stdout and stderr).
    pub(crate) log_tail: String,
}

/// One attempt's folder.
#[derive(Debug, Clone)]
pub(crate) struct AttemptFiles {
    folder: PathBuf,
}

impl AttemptFiles {
    /// The folder of the container named `name` under `state_dir`.
    pub(crate) fn new(state_dir: &Path, name: &str) -> Self {
        Self {
            folder: state_dir.join(name),
        }
    }

    /// The input file, as mounted into the container.
    pub(crate) fn input_path(&self) -> PathBuf {
        self.folder.join("input.json")
    }

    fn result_path(&self) -> PathBuf {
        self.folder.join("result.json")
    }

    fn cancelled_path(&self) -> PathBuf {
        self.folder.join("cancelled")
    }

    /// Makes the folder, the owner's only: inputs may hold secrets.
    fn make_folder(&self) -> io::Result<()> {
        DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&self.folder)
    }

    /// Writes the input file, readable by any user of the container (the folder itself is
    /// not).
    pub(crate) fn write_input(&self, input: &str) -> io::Result<()> {
        self.make_folder()?;
        let tmp = self.folder.join("input.json.tmp");
        let mut file = fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o644)
            .open(&tmp)?;
        file.write_all(input.as_bytes())?;
        fs::rename(tmp, self.input_path())
    }

    /// The record, once the container's end was recorded.
    pub(crate) fn read_record(&self) -> io::Result<Option<Record>> {
        match fs::read(self.result_path()) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map(Some)
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Writes the record durably: a reader sees the whole record or none, and it survives
    /// the machine's crash once this returns.
    pub(crate) fn write_record(&self, record: &Record) -> io::Result<()> {
        self.make_folder()?;
        let tmp = self.folder.join("result.json.tmp");
        let mut file = File::create(&tmp)?;
        file.write_all(&serde_json::to_vec(record).map_err(io::Error::other)?)?;
        file.sync_all()?;
        fs::rename(&tmp, self.result_path())?;
        File::open(&self.folder)?.sync_all()
    }

    /// Records that a cancel (or a timeout) was decided, before the container is stopped,
    /// so that the record tells a stop from a crash.
    pub(crate) fn mark_cancelled(&self, why: &str) -> io::Result<()> {
        self.make_folder()?;
        fs::write(self.cancelled_path(), why)
    }

    /// Why the container was stopped, when it was.
    pub(crate) fn cancelled(&self) -> Option<String> {
        fs::read_to_string(self.cancelled_path()).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_valid_for_the_engine_and_tell_keys_apart() {
        let a = container_name(&AttemptKey::new("a-b", "c", 1));
        let b = container_name(&AttemptKey::new("a", "b-c", 1));
        assert_ne!(a, b);
        assert!(a.starts_with("baton-a-b-c-1-"), "{a}");
        let odd = container_name(&AttemptKey::new("r ü", "s:t", 2));
        assert!(odd.starts_with("baton-r---s-t-2-"), "{odd}");
        assert!(
            odd.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
        );
        let long = container_name(&AttemptKey::new(&"r".repeat(300), "s", 1));
        assert_eq!(long.len(), "baton-".len() + 80 + 1 + 12);
    }

    #[test]
    fn records_round_trip_and_cancels_are_remembered() {
        let state = tempfile::tempdir().unwrap();
        let files = AttemptFiles::new(state.path(), "baton-x");
        assert_eq!(files.read_record().unwrap(), None);
        assert_eq!(files.cancelled(), None);
        files.write_input("{}").unwrap();
        assert_eq!(fs::read_to_string(files.input_path()).unwrap(), "{}");
        files.mark_cancelled("timed out").unwrap();
        assert_eq!(files.cancelled().as_deref(), Some("timed out"));
        let record = Record {
            container: "abc".into(),
            ending: Ending::Failed,
            exit_code: Some(3),
            message: "exited with code 3".into(),
            outputs: Map::new(),
            log_tail: "boom".into(),
        };
        files.write_record(&record).unwrap();
        assert_eq!(files.read_record().unwrap(), Some(record));
        assert_eq!(Ending::Failed.state(), ExternalState::Failed);
        assert_eq!(Ending::Cancelled.state(), ExternalState::Cancelled);
        assert!(matches!(
            Ending::Succeeded.state(),
            ExternalState::Succeeded { .. }
        ));
        fs::write(files.result_path(), "{oops").unwrap();
        assert!(files.read_record().is_err());
        // A record that cannot be read is an error, never "no record" (which would start
        // the attempt again).
        fs::remove_file(files.result_path()).unwrap();
        fs::create_dir(files.result_path()).unwrap();
        assert!(files.read_record().is_err());
    }
}
