//! Problems found while loading, each tied to a file and a key path.

use std::fmt;
use std::path::{Path, PathBuf};

/// One problem in one file.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Diagnostic {
    /// The file the problem is in (`(environment)` for a bad `BATON_*` variable).
    pub file: PathBuf,
    /// Key path inside the file (`stages.build.with.parameters.SHA`, `sources.github.secret`);
    /// empty when the problem is the file itself.
    pub path: String,
    /// What is wrong and what was expected.
    pub message: String,
}

impl Diagnostic {
    /// A problem at `path` in `file`.
    pub fn new(
        file: impl Into<PathBuf>,
        path: impl Into<String>,
        message: impl Into<String>,
    ) -> Self {
        Self {
            file: file.into(),
            path: path.into(),
            message: message.into(),
        }
    }
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() {
            write!(f, "{}: {}", self.file.display(), self.message)
        } else {
            write!(
                f,
                "{}: {}: {}",
                self.file.display(),
                self.path,
                self.message
            )
        }
    }
}

/// Every problem found in one load; printed one per line, then a count line.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct Diagnostics(pub Vec<Diagnostic>);

impl Diagnostics {
    /// The problems, in the order they were found.
    pub fn iter(&self) -> std::slice::Iter<'_, Diagnostic> {
        self.0.iter()
    }

    /// How many problems.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// True when there is none.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Display for Diagnostics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for d in &self.0 {
            writeln!(f, "{d}")?;
        }
        match self.0.len() {
            1 => write!(f, "1 problem"),
            n => write!(f, "{n} problems"),
        }
    }
}

impl<'a> IntoIterator for &'a Diagnostics {
    type Item = &'a Diagnostic;
    type IntoIter = std::slice::Iter<'a, Diagnostic>;

    fn into_iter(self) -> Self::IntoIter {
        self.0.iter()
    }
}

impl IntoIterator for Diagnostics {
    type Item = Diagnostic;
    type IntoIter = std::vec::IntoIter<Diagnostic>;

    fn into_iter(self) -> Self::IntoIter {
        self.0.into_iter()
    }
}

/// Collects the problems of one file.
pub(crate) struct Sink<'a> {
    pub(crate) file: &'a Path,
    pub(crate) out: &'a mut Vec<Diagnostic>,
}

impl<'a> Sink<'a> {
    pub(crate) fn new(file: &'a Path, out: &'a mut Vec<Diagnostic>) -> Self {
        Self { file, out }
    }

    /// Records a problem at `path`.
    pub(crate) fn err(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.out.push(Diagnostic::new(self.file, path, message));
    }

    /// How many problems have been recorded in all (to tell whether a step added any).
    pub(crate) fn count(&self) -> usize {
        self.out.len()
    }
}

pub(crate) use baton_core::typed::join_path as join;
