//! Checking one workflow that is not (yet) a file, against a config that loaded: the
//! editor's text, the body of `POST /api/v1/workflows/validate`. The checks are those
//! `baton validate` makes of each workflow file (the same code), and the name must not be
//! another loaded workflow's.

use std::path::{Path, PathBuf};

use baton_core::Kinds;
use serde::Serialize;
use serde_json::Value;

use crate::diagnostic::{Diagnostic, Sink};
use crate::document::parse_yaml;
use crate::load::{Context, Declared, Loaded, check_workflow, duplicate_name};
use crate::yaml_lines::Lines;

/// What a workflow is checked against: the adapter kinds, the config's sources and adapter
/// instances, and the names of the workflows already loaded.
#[derive(Clone)]
pub struct WorkflowCheck {
    context: Context,
    names: Vec<(String, PathBuf)>,
}

/// One problem of a workflow.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Problem {
    /// The key path (`stages.build.with.job`, `on[0].source`); empty for the text as a whole.
    pub path: String,
    /// What is wrong and what was expected.
    pub message: String,
    /// The line (from 1) of the key the path names, or of the nearest key above it that is
    /// written in block style; for a text that is not YAML, the line the parser stopped at.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub line: Option<usize>,
}

/// The `file` of a problem found in text given directly.
const GIVEN: &str = "(workflow)";

impl WorkflowCheck {
    /// The checks `loaded` makes of its workflow files; `kinds` are the adapter kinds it was
    /// loaded with.
    pub fn new(loaded: &Loaded, kinds: &Kinds) -> Self {
        Self {
            context: Context {
                kinds: kinds.clone(),
                declared: Declared::of(&loaded.gateway),
                defaults: loaded.gateway.stage_defaults(kinds),
                has_config: loaded.config_file.is_some(),
            },
            names: loaded
                .workflows
                .iter()
                .map(|w| (w.workflow.name().to_owned(), w.file.clone()))
                .collect(),
        }
    }

    /// Every problem of the workflow in YAML (or JSON) `text`. `replacing` names the loaded
    /// workflow the text is an edit of, whose name it may keep.
    pub fn yaml(&self, text: &str, replacing: Option<&str>) -> Vec<Problem> {
        let mut found = Vec::new();
        let document = parse_yaml(text, &mut Sink::new(Path::new(GIVEN), &mut found));
        if let Some(document) = document {
            self.check(&document, replacing, &mut found);
        }
        let lines = Lines::parse(text);
        found
            .into_iter()
            .map(|d| {
                let line = if d.path.is_empty() {
                    parser_line(&d.message)
                } else {
                    lines.locate(&d.path)
                };
                Problem {
                    path: d.path,
                    message: d.message,
                    line,
                }
            })
            .collect()
    }

    /// Every problem of the workflow `document` (parsed JSON). `replacing` as for
    /// [`Self::yaml`].
    pub fn json(&self, document: &Value, replacing: Option<&str>) -> Vec<Problem> {
        let mut found = Vec::new();
        self.check(document, replacing, &mut found);
        found
            .into_iter()
            .map(|d| Problem {
                path: d.path,
                message: d.message,
                line: None,
            })
            .collect()
    }

    fn check(&self, document: &Value, replacing: Option<&str>, found: &mut Vec<Diagnostic>) {
        let mut sink = Sink::new(Path::new(GIVEN), found);
        let (name, _) = check_workflow(document, &self.context, &mut sink);
        if let Some(name) = name
            && replacing != Some(name.as_str())
            && let Some((_, earlier)) = self.names.iter().find(|(n, _)| *n == name)
        {
            sink.err("name", duplicate_name(&name, earlier));
        }
    }
}

/// The line a YAML parser's message names (`… at line 3 column 7`).
fn parser_line(message: &str) -> Option<usize> {
    let (_, rest) = message.split_once(" at line ")?;
    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
    digits.parse().ok()
}
