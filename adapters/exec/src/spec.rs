//! The stage's `with:` block: `run` or `command`, `env`, `input`, `workdir`.

use std::path::PathBuf;

use baton_core::{FieldError, component};
use serde_json::{Map, Value};

pub use baton_core::component::RESERVED_ENV;

/// What to run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Program {
    /// A script for `sh -c`.
    Shell(String),
    /// An argv, run without a shell.
    Argv(Vec<String>),
}

impl Program {
    /// The argv that runs this program.
    pub(crate) fn argv(&self) -> Vec<String> {
        match self {
            // An absolute path, so that a stage `env` replacing `PATH` cannot hide the shell.
            Self::Shell(script) => vec!["/bin/sh".into(), "-c".into(), script.clone()],
            Self::Argv(argv) => argv.clone(),
        }
    }
}

/// A checked `with:` block.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct ExecSpec {
    /// What to run.
    pub program: Program,
    /// Extra environment variables, values already turned into text.
    pub env: Vec<(String, String)>,
    /// The JSON handed to the command; `null` when absent.
    pub input: Value,
    /// Where to run; baton's working directory when absent.
    pub workdir: Option<PathBuf>,
}

/// Whether template strings may stand where another type is expected.
pub(crate) use baton_core::adapter::InputMode as Mode;

/// Checks a `with:` block, returning the spec or every problem.
///
/// In [`Mode::Templates`] the returned spec may hold placeholders where templates stand; only
/// the errors are meant to be used.
pub(crate) fn parse(with: &Value, mode: Mode) -> Result<ExecSpec, Vec<FieldError>> {
    let mut errors = Vec::new();
    let empty = Map::new();
    let map = match with {
        Value::Object(map) => map,
        Value::Null => &empty,
        _ => {
            return Err(vec![FieldError::new(
                "",
                "expected a table with `run` (a shell script) or `command` (an argv list)",
            )]);
        }
    };
    for key in map.keys() {
        if !matches!(
            key.as_str(),
            "run" | "command" | "env" | "input" | "workdir"
        ) {
            errors.push(FieldError::new(
                key,
                "unknown key: exec takes `run` or `command`, and `env`, `input`, `workdir`",
            ));
        }
    }

    let program = match (map.get("run"), map.get("command")) {
        (Some(_), Some(_)) => {
            errors.push(FieldError::new(
                "command",
                "give `run` (a shell script) or `command` (an argv list), not both",
            ));
            None
        }
        (None, None) => {
            errors.push(FieldError::new(
                "run",
                "missing: give `run` (a shell script) or `command` (an argv list)",
            ));
            None
        }
        (Some(run), None) => parse_run(run, &mut errors),
        (None, Some(command)) => parse_command(command, mode, &mut errors),
    };
    let env = map
        .get("env")
        .map(|env| component::env_entries(env, mode, &RESERVED_ENV, &mut errors))
        .unwrap_or_default();
    let workdir = match map.get("workdir") {
        None | Some(Value::Null) => None,
        Some(Value::String(dir)) if !dir.is_empty() && !dir.contains('\0') => {
            Some(PathBuf::from(dir))
        }
        Some(_) => {
            errors.push(FieldError::new(
                "workdir",
                "expected a directory path as a non-empty string",
            ));
            None
        }
    };
    let input = map.get("input").cloned().unwrap_or(Value::Null);

    match program {
        Some(program) if errors.is_empty() => Ok(ExecSpec {
            program,
            env,
            input,
            workdir,
        }),
        _ => Err(errors),
    }
}

fn parse_run(run: &Value, errors: &mut Vec<FieldError>) -> Option<Program> {
    match run {
        Value::String(script) if script.trim().is_empty() => {
            errors.push(FieldError::new("run", "the script is empty"));
            None
        }
        Value::String(script) if script.contains('\0') => {
            errors.push(FieldError::new("run", "the script contains a NUL byte"));
            None
        }
        Value::String(script) => Some(Program::Shell(script.clone())),
        _ => {
            errors.push(FieldError::new(
                "run",
                "expected a shell script as a string (use `command` for an argv list)",
            ));
            None
        }
    }
}

fn parse_command(command: &Value, mode: Mode, errors: &mut Vec<FieldError>) -> Option<Program> {
    component::argv_list(
        "command",
        command,
        mode,
        "expected an argv list such as [cargo, test] (use `run` for a shell script)",
        errors,
    )
    .map(Program::Argv)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn paths(with: Value, mode: Mode) -> Vec<String> {
        parse(&with, mode)
            .err()
            .unwrap_or_default()
            .into_iter()
            .map(|e| e.path)
            .collect()
    }

    #[test]
    fn accepts_run_or_command_with_options() {
        let spec = parse(
            &json!({"run": "echo hi", "env": {"A": "x", "N": 3, "B": true}, "input": {"k": [1]}, "workdir": "/tmp"}),
            Mode::Rendered,
        )
        .unwrap();
        assert_eq!(spec.program, Program::Shell("echo hi".into()));
        assert_eq!(
            spec.env,
            [
                ("A".into(), "x".into()),
                ("N".into(), "3".into()),
                ("B".into(), "true".into())
            ]
        );
        assert_eq!(spec.input, json!({"k": [1]}));
        assert_eq!(spec.workdir, Some(PathBuf::from("/tmp")));

        let spec = parse(&json!({"command": ["sleep", 5]}), Mode::Rendered).unwrap();
        assert_eq!(spec.program.argv(), ["sleep", "5"]);
        assert_eq!(spec.input, Value::Null);
    }

    #[test]
    fn exactly_one_program() {
        assert_eq!(paths(json!({}), Mode::Rendered), ["run"]);
        assert_eq!(paths(Value::Null, Mode::Rendered), ["run"]);
        assert_eq!(
            paths(json!({"run": "x", "command": ["x"]}), Mode::Rendered),
            ["command"]
        );
        assert_eq!(paths(json!(["x"]), Mode::Rendered), [""]);
    }

    #[test]
    fn every_problem_is_reported_with_its_path() {
        let got = paths(
            json!({"command": [["nested"], ""], "env": {"BATON_INPUT": "x", "A=B": "y", "C": null}, "workdir": 3, "extra": 1}),
            Mode::Templates,
        );
        assert_eq!(
            got,
            [
                "extra",
                "command[0]",
                "env.BATON_INPUT",
                "env.A=B",
                "env.C",
                "workdir"
            ]
        );
        assert_eq!(paths(json!({"run": "  "}), Mode::Rendered), ["run"]);
        assert_eq!(paths(json!({"run": ["ls"]}), Mode::Rendered), ["run"]);
        assert_eq!(
            paths(json!({"command": "ls -l"}), Mode::Templates),
            ["command"]
        );
        assert_eq!(paths(json!({"command": []}), Mode::Rendered), ["command"]);
    }

    #[test]
    fn templates_stand_for_any_type_only_before_rendering() {
        let with =
            json!({"command": "${{ .stages.plan.outputs.argv }}", "env": "${{ .event.env }}"});
        assert!(parse(&with, Mode::Templates).is_ok());
        assert_eq!(paths(with, Mode::Rendered), ["command", "env"]);
    }
}
